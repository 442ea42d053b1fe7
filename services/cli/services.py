"""The commands that run Hounsfield: ``up``, ``listener``, ``worker``, ``registry``, ``fetch``, ``echo``,
``config`` and ``demo``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from hounsfield.cli._common import ConfigOption, err, settings_or_exit, stop_on_signals
from hounsfield.logs import setup_logging

__all__ = ["demo", "echo", "fetch", "listener", "registry", "show_config", "up", "worker"]


def up(config: ConfigOption = None) -> None:
    """Run every service in the foreground (redis-server too when no Redis URL is set). Ctrl-C stops them."""
    from hounsfield.access import SignInImpossible, ensure_sign_in_possible
    from hounsfield.catalog import open_database
    from hounsfield.errors import Refused
    from hounsfield.registry.auth import Authenticator
    from hounsfield.supervisor import run_up

    settings = settings_or_exit(config, "up")
    db = None
    try:
        db = open_database(settings)  # a declared deployment the catalog refuses stops here
        # The registry would refuse to start: say so before starting anything.
        authenticator = Authenticator(db, settings.registry.oidc)
        ensure_sign_in_possible(settings, db, oidc_configured=authenticator.oidc_configured)
    except (SignInImpossible, Refused) as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    finally:
        if db is not None:
            db.dispose()
    raise typer.Exit(run_up(settings, config, stop_on_signals()))


def listener(config: ConfigOption = None) -> None:
    """The DICOM listener (C-ECHO, C-STORE) with the router."""
    from hounsfield.listener.server import run

    settings = settings_or_exit(config, "listener")
    run(settings, stop_on_signals())


def worker(config: ConfigOption = None) -> None:
    """A Celery worker that runs the deployed applications."""
    from hounsfield.worker.service import run

    run(settings_or_exit(config, "worker"))


def registry(
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="Port (default from the configuration).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
) -> None:
    """The registry HTTP API."""
    import uvicorn

    from hounsfield.access import SignInImpossible
    from hounsfield.registry.app import create_app

    settings = settings_or_exit(config, "registry")
    try:
        api = create_app(settings)
    except SignInImpossible as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    uvicorn.run(
        api,
        host=host or settings.registry.host,
        port=port or settings.registry.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through this process's logging (one format, redacted)
        access_log=False,
    )


def echo(
    host: Annotated[str, typer.Option(help="The DICOM node's host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Its port.", min=1, max=65535)] = 11112,
    called_ae: Annotated[str, typer.Option("--called-ae", help="Its AE title.")] = "HOUNSFIELD",
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="Our AE title (a source it accepts).")] = "HF_ECHO",
    timeout: Annotated[float, typer.Option(help="Seconds for each step.", min=0.1)] = 10.0,
) -> None:
    """Send one C-ECHO (the listener's readiness probe); exit 0 only when it answers Success."""
    from hounsfield.listener.echo import echo as send_echo

    outcome = send_echo(host, port, called_ae=called_ae, calling_ae=calling_ae, timeout_s=timeout)
    (Console() if outcome.ok else err).print(outcome.detail, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if outcome.ok else 1)


def fetch(
    source: Annotated[str, typer.Option("--source", "-s", help="A source in listener.sources with query settings.")],
    accession: Annotated[str | None, typer.Option("--accession", help="Accession number.")] = None,
    patient_id: Annotated[str | None, typer.Option("--patient-id", help="Patient ID.")] = None,
    study_date: Annotated[
        str | None, typer.Option("--study-date", help="Study date, YYYYMMDD or YYYYMMDD-YYYYMMDD.")
    ] = None,
    study_uid: Annotated[str | None, typer.Option("--study-uid", help="Study Instance UID.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Query and compare; retrieve nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Handle at most this many of the matching studies.")] = 100,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the listener to complete C-MOVEd studies.")
    ] = 10.0,
    config: ConfigOption = None,
) -> None:
    """Find studies on a source PACS (C-FIND) and retrieve here what is missing (C-MOVE or C-GET)."""
    from hounsfield.errors import Refused
    from hounsfield.listener.fetch import FetchFailed, render_report, run_fetch

    settings = settings_or_exit(config, "fetch")
    try:
        report = run_fetch(
            settings, source, dry_run=dry_run, limit=limit, wait_s=wait,
            accession_number=accession, patient_id=patient_id, study_date=study_date, study_instance_uid=study_uid,
        )  # fmt: skip
    except Refused as exc:  # a declared deployment clashes with the catalog
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    except FetchFailed as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, "error": str(exc)}))
        err.print(f"[red]fetch failed:[/red] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from exc
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        Console().print(render_report(report))
    for problem in report.problems:
        err.print(f"[red]{problem}[/red]", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


def show_config(config: ConfigOption = None) -> None:
    """Validate the configuration and print it as JSON."""
    settings = settings_or_exit(config, "config")
    typer.echo(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2))


def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    keep: Annotated[bool, typer.Option(help="Keep the demo's data folder and leave nothing running.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the results.")] = 300.0,
    map_target: Annotated[
        str | None,
        typer.Option("--map", help="Run this MAP (an application folder or image) instead of the example."),
    ] = None,
) -> None:
    """Send a synthetic CT study to Hounsfield and show its SEG and SR arriving in a local Orthanc."""
    from hounsfield.demo.run import DemoFailed, print_summary, run_demo
    from hounsfield.errors import HounsfieldError

    setup_logging("WARNING", "demo", log_format="text")  # a person at a terminal; the services log JSON
    deployments = None
    if map_target is not None:
        from hounsfield.maps.running import demo_deployment

        try:
            deployments = [demo_deployment(map_target)]
        except HounsfieldError as exc:
            err.print(f"[red]demo: {exc}[/red]", highlight=False)
            raise typer.Exit(2) from None
    try:
        summary = run_demo(timeout_s=timeout, keep=keep, progress=None if as_json else err, deployments=deployments)
    except DemoFailed as exc:
        err.print(f"[red]demo failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_summary(summary, Console())
