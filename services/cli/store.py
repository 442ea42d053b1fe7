"""``hounsfield store``: the study store's usage, marks and retention policy; purging it (or a dry run)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from hounsfield.cli._common import ConfigOption, cli_principal, database

if TYPE_CHECKING:
    from hounsfield.retention import PurgePlan

__all__ = ["store"]

store = typer.Typer(help="The study store: usage, retention policy, purging.")
_MIB = 1 << 20


def _plan_lines(plan: PurgePlan) -> list[str]:
    lines = ["study\treason\tsource\tlast job end\treference\tkeep (days, set by)\tinstances\tbytes"]
    for c in plan.candidates:
        last_job = c.last_job_end.isoformat(timespec="seconds") if c.last_job_end else "-"
        lines.append(
            f"{c.study_instance_uid}\t{c.reason}\t{','.join(c.calling_aes) or '-'}\t{last_job}\t"
            f"{c.reference_at.isoformat(timespec='seconds')}\t{c.keep_days:g} ({c.keep_set_by})\t"
            f"{c.instances}\t{c.bytes}"
        )
    return lines


@store.command("status")
def store_status(config: ConfigOption = None) -> None:
    """The store's disk usage, its marks and floor, the retention policy, and what a purge would take now."""
    from hounsfield.retention import keep_policy, plan_purge
    from hounsfield.store import StudyStore

    settings, db = database(config)
    try:
        plan = plan_purge(settings, db, StudyStore(settings.data_dir).root)
    finally:
        db.dispose()
    usage, cfg, policy = plan.usage, settings.retention, keep_policy(settings)
    typer.echo(f"store\t{settings.data_dir}")
    typer.echo(
        f"disk\t{usage.total // _MIB} MiB, {usage.free // _MIB} MiB free, {usage.used_percent:.1f}% used"
        f"{' (above high water)' if usage.above_high_water else ''}"
    )
    typer.echo(f"marks\thigh {cfg.high_water_percent:g}%, low {cfg.low_water_percent:g}%")
    typer.echo(f"floor\t{usage.floor // _MIB} MiB (listener.min_free_disk_mb), margin {usage.margin // _MIB} MiB")
    state = "on" if cfg.enabled else "off (retention.enabled: false; the listener purges nothing)"
    typer.echo(f"retention\t{state}")
    typer.echo(f"keep\t{policy.default_days:g} days after the last job ended (never routed: after completion)")
    for kind, overrides in (("source", policy.sources), ("deployment", policy.deployments), ("rule", policy.rules)):
        for name, days in sorted(overrides.items()):
            typer.echo(f"keep\t{kind} {name}: {days:g} days")
    results = f"{cfg.results_keep_days:g} days" if cfg.results_keep_days else "forever"
    audit = f"{cfg.audit_keep_days:g} days" if cfg.audit_keep_days else "forever"
    typer.echo(f"results\tkept {results}")
    typer.echo(f"audit\tkept {audit}")
    held = ", ".join(f"{why} {n}" for why, n in sorted(plan.held.items())) or "none"
    typer.echo(f"held\t{held}")
    typer.echo(f"purge now\t{len(plan.candidates)} study(ies), {plan.bytes // _MIB} MiB")
    typer.echo(f"kept\t{plan.waiting} study(ies) within their keep")


@store.command("purge")
def store_purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would go and why (one line per study); delete nothing.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Purge the study store now by the retention policy (expired studies; above high water the oldest
    too), whether or not ``retention.enabled`` is set. Each study purged is an event on its path."""
    from hounsfield.retention import Purger, StoreNotMounted
    from hounsfield.store import StudyStore

    settings, db = database(config)
    try:
        purger = Purger(settings, db, StudyStore(settings.data_dir), principal=cli_principal())
        plan = purger.plan()
        if dry_run:
            for line in _plan_lines(plan):
                typer.echo(line)
            typer.echo(f"would purge {len(plan.candidates)} study(ies), {plan.bytes} bytes; nothing deleted")
            return
        report = purger.run_policies()
    except StoreNotMounted as exc:
        typer.echo(f"not purged: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        db.dispose()
    purged = ", ".join(f"{reason} {n}" for reason, n in sorted(report.studies.items())) or "none"
    typer.echo(
        f"purged {sum(report.studies.values())} study(ies) ({purged}), {report.instances} instance(s), "
        f"{sum(report.bytes.values())} bytes; skipped {report.skipped}; results removed {report.results_removed}; "
        f"events deleted {report.events_deleted}, audit rows deleted {report.audit_deleted}"
    )
    if report.failures:
        raise typer.Exit(1)
