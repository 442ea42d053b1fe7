"""The ``hounsfield`` command."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from services.config import ConfigError, Settings, load_settings
from services.logs import setup_logging

__all__ = ["app"]

app = typer.Typer(help="Hounsfield: from a trained MONAI model to a result in the PACS.", no_args_is_help=True)
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML configuration file (default: $HOUNSFIELD_CONFIG).", exists=True, dir_okay=False
    ),
]


def _settings(config: Path | None, process: str, **overrides: object) -> Settings:
    try:
        settings = load_settings(config, **overrides)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    setup_logging(settings.log_level, process)
    return settings


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command()
def up(config: ConfigOption = None) -> None:
    """Run every service in the foreground (redis-server too when no Redis URL is set). Ctrl-C stops them."""
    from services.supervisor import run_up

    settings = _settings(config, "up")
    raise typer.Exit(run_up(settings, config, _stop_on_signals()))


@app.command()
def listener(config: ConfigOption = None) -> None:
    """The DICOM listener (C-ECHO, C-STORE) with the router."""
    from services.listener.server import run

    settings = _settings(config, "listener")
    run(settings, _stop_on_signals())


@app.command()
def worker(config: ConfigOption = None) -> None:
    """A Celery worker that runs the deployed applications."""
    from services.worker.service import run

    run(_settings(config, "worker"))


@app.command()
def registry(
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="Port (default from the configuration).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
) -> None:
    """The registry HTTP API."""
    import uvicorn

    from services.registry.app import create_app

    settings = _settings(config, "registry")
    uvicorn.run(
        create_app(settings),
        host=host or settings.registry.host,
        port=port or settings.registry.port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


@app.command()
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
    from services.listener.retrieve import FetchFailed, render_report, run_fetch

    settings = _settings(config, "fetch")
    try:
        report = run_fetch(
            settings, source, dry_run=dry_run, limit=limit, wait_s=wait,
            accession_number=accession, patient_id=patient_id, study_date=study_date, study_instance_uid=study_uid,
        )  # fmt: skip
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


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Validate the configuration and print it as JSON."""
    settings = _settings(config, "config")
    typer.echo(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2))


@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    keep: Annotated[bool, typer.Option(help="Keep the demo's data folder and leave nothing running.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the results.")] = 300.0,
) -> None:
    """Send a synthetic CT study to Hounsfield and show its SEG and SR arriving in a local Orthanc."""
    from services.demo.run import DemoError, print_summary, run_demo

    setup_logging("WARNING", "demo")
    try:
        summary = run_demo(timeout_s=timeout, keep=keep, progress=None if as_json else err)
    except DemoError as exc:
        err.print(f"[red]demo failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_summary(summary, Console())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
