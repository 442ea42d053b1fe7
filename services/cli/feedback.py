"""``hounsfield feedback``: radiologists' verdicts on results, and what each model version earned."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, cast

import typer

from hounsfield.cli._common import ConfigOption, cli_principal, database, err, session_or_exit

if TYPE_CHECKING:
    from hounsfield.feedback.verdicts import Verdict

__all__ = ["feedback"]

feedback = typer.Typer(help="Radiologists' feedback: verdicts on results, corrections, agreement per model version.")


@feedback.command("give")
def feedback_give(
    result: Annotated[str, typer.Argument(help="The result's id or SOP Instance UID.")],
    verdict: Annotated[str, typer.Argument(help="accept, reject or comment.")],
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="Why it is rejected (hounsfield feedback reasons).")
    ] = None,
    comment: Annotated[str | None, typer.Option(help="In words; no patient data.")] = None,
    config: ConfigOption = None,
) -> None:
    """Record a verdict on a result (audited, as the CLI's administrator)."""
    from hounsfield.errors import Invalid, Refused
    from hounsfield.feedback import give_feedback

    if verdict not in ("accept", "reject", "comment"):
        err.print(f"[red]unknown verdict {verdict!r}: accept, reject or comment[/red]", highlight=False)
        raise typer.Exit(2)
    settings, db = database(config)
    try:
        row = give_feedback(
            settings,
            db,
            result,
            verdict=cast("Verdict", verdict),
            reason=reason,
            comment=comment,
            principal=cli_principal(),
        )
    except Invalid as exc:
        err.print(f"[red]{exc.field}: {exc.reason}[/red]", highlight=False)
        raise typer.Exit(2) from None
    except Refused as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    typer.echo(f"feedback {row.id}: {row.kind} on result {row.result_id} ({row.model_name} {row.model_version})")


@feedback.command("reasons")
def feedback_reasons() -> None:
    """The reasons a rejection may give."""
    from hounsfield.feedback import REJECTION_REASONS

    for name, meaning in REJECTION_REASONS.items():
        typer.echo(f"{name}\t{meaning}")


@feedback.command("list")
def feedback_list(
    model: Annotated[str | None, typer.Option(help="Only this model's.")] = None,
    version: Annotated[str | None, typer.Option(help="Only this version's (with --model).")] = None,
    kind: Annotated[str | None, typer.Option(help="accept, reject, comment or correction.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    config: ConfigOption = None,
) -> None:
    """Feedback, newest first: id, kind, result, model version, who, reason or mean Dice, comment."""
    from hounsfield.db.feedback import FeedbackKind, feedback_rows

    try:
        wanted = FeedbackKind(kind) if kind else None
    except ValueError:
        err.print(f"[red]unknown kind {kind!r}: {', '.join(k.value for k in FeedbackKind)}[/red]", highlight=False)
        raise typer.Exit(2) from None
    _, db = database(config)
    with session_or_exit(db) as session:
        rows = feedback_rows(session, model_name=model, model_version=version, kind=wanted, limit=limit)
        for row in rows:
            detail = row.reason or (f"dice {row.mean_dice:.3f}" if row.mean_dice is not None else "")
            typer.echo(
                f"{row.id}\t{row.kind}\tresult {row.result_id}\t{row.model_name} {row.model_version}\t"
                f"{row.given_by}\t{detail}\t{row.comment or ''}"
            )


@feedback.command("summary")
def feedback_summary(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    use_case: Annotated[str | None, typer.Option("--use-case", help="Only this use case (its key).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, as the API's /feedback/summary.")] = False,
    config: ConfigOption = None,
) -> None:
    """Per use case, model and version: agreement rate, rejections by reason, mean Dice of corrections."""
    from hounsfield.feedback import summarise

    _, db = database(config)
    try:
        summaries = summarise(db, model_name=model, model_version=version, use_case=use_case)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps([s.model_dump() for s in summaries], indent=2))
        return
    if not summaries:
        typer.echo("no feedback yet")
        return
    for s in summaries:
        rate = f"{s.agreement_rate:.1%}" if s.agreement_rate is not None else "-"
        dice = f"{s.mean_correction_dice:.3f}" if s.mean_correction_dice is not None else "-"
        reasons = ", ".join(f"{name} {count}" for name, count in s.rejection_reasons.items()) or "-"
        typer.echo(
            f"{s.use_case or '(no use case)'}\t{s.model_name} {s.model_version}\tagreement {rate} "
            f"({s.accepted} accepted, {s.rejected} rejected)\trejections: {reasons}\t"
            f"corrections {s.corrections} (mean Dice {dice})\tcomments {s.comments}"
        )
