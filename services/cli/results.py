"""``hounsfield results``: take a job's results back from the PACS (IHE IOCM rejection notes)."""

from __future__ import annotations

from typing import Annotated

import typer

from hounsfield.cli._common import ConfigOption, cli_principal, database, err

__all__ = ["results"]

results = typer.Typer(help="Results: take a job's results back from the PACS (IHE IOCM rejection notes).")


@results.command("withdraw")
def results_withdraw(
    job_id: str,
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="quality (113001) or patient-safety (113037 where supported).")
    ],
    comment: Annotated[str | None, typer.Option(help="Why, in words (no patient data).")] = None,
    config: ConfigOption = None,
) -> None:
    """Withdraw a job's results: each PACS that has them gets a rejection note. Run it again to send the
    notes a destination could not take yet; exits 1 while any is missing."""
    from hounsfield.errors import Refused
    from hounsfield.exporter.rejection import Reason
    from hounsfield.exporter.withdrawal import withdraw_job

    if reason not in ("quality", "patient-safety"):
        err.print(f"[red]unknown reason {reason!r}: quality or patient-safety[/red]", highlight=False)
        raise typer.Exit(2)
    why: Reason = "quality" if reason == "quality" else "patient-safety"
    settings, db = database(config)
    try:
        made = withdraw_job(settings, db, job_id, reason=why, comment=comment, principal=cli_principal())
    except Refused as exc:  # no such job, no results, withdrawn for another reason
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    missing = 0
    for name, note in sorted(made.notes.items()):
        if note.get("delivered_at"):
            typer.echo(f"{name}\tdelivered\t{note['title']}\t{note['sop_instance_uid']}")
        else:
            missing += 1
            typer.echo(f"{name}\tnot delivered\t{note.get('error')}")
    if not made.notes:
        typer.echo(f"job {job_id}: withdrawn; no destination had received its results")
    if missing:
        raise typer.Exit(1)
