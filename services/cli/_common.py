"""What the ``hounsfield`` commands share: options, settings, the database, the CLI's principal, errors."""

from __future__ import annotations

import getpass
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from hounsfield.config import ConfigurationInvalid, Settings, load_settings
from hounsfield.logs import setup_logging

if TYPE_CHECKING:
    from hounsfield.access import Principal
    from hounsfield.db import Database, Session

__all__ = [
    "ConfigOption",
    "ReasonOption",
    "cli_principal",
    "database",
    "err",
    "invalid",
    "load_yaml",
    "session_or_exit",
    "settings_or_exit",
    "stop_on_signals",
]

err = Console(stderr=True, soft_wrap=True)  # an error is one line, however long: a wrapped one breaks grep

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML configuration file (default: $HOUNSFIELD_CONFIG).", exists=True, dir_okay=False
    ),
]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (kept with the transition and audited).")]


def settings_or_exit(config: Path | None, process: str, **overrides: object) -> Settings:
    """The configuration (exit 2 with every bad key when it is refused), and the process's logging."""
    try:
        settings = load_settings(config, **overrides)
    except ConfigurationInvalid as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    setup_logging(
        settings.log_level, process, log_format=settings.log_format, correlation_key=settings.log_correlation_key
    )
    return settings


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM: long-running commands stop in order when it is."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def database(config: Path | None) -> tuple[Settings, Database]:
    """The settings and the prepared database, for commands that work on the database directly.

    A declared deployment that clashes with the catalog is printed and exits 2.
    """
    from hounsfield.catalog import open_database
    from hounsfield.errors import Refused

    settings = settings_or_exit(config, "cli")
    try:
        return settings, open_database(settings)
    except Refused as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from None


@contextmanager
def session_or_exit(db: Database) -> Iterator[Session]:
    """A session on ``db`` (disposed after); a refusal of the catalog is printed and exits 1 (a failed
    validation with every check, good and bad)."""
    from hounsfield.catalog import DeploymentChecksFailed
    from hounsfield.errors import Refused

    try:
        with db.session() as session:
            yield session
    except Refused as exc:
        if isinstance(exc, DeploymentChecksFailed):
            for check in exc.checks:
                mark = "ok " if check.ok else "[red]bad[/red]"
                err.print(f"{mark} {check.check}: {check.detail}", highlight=False)
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.dispose()


def cli_principal() -> Principal:
    """The CLI acts as an administrator (it runs with access to the configuration and database)."""
    from hounsfield.access import Principal, Role

    return Principal(f"cli:{getpass.getuser()}", Role.ADMIN, "cli")


def load_yaml(path: Path) -> object:
    """A YAML file's data; an unreadable or broken file is printed and exits 2."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        err.print(f"[red]{path}: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None


def invalid(source: str, exc: Exception) -> typer.Exit:
    """Print a validation failure with each error's location; the exit to raise."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        for item in exc.errors():
            where = ".".join(str(part) for part in item["loc"]) or "(top level)"
            err.print(f"[red]{source}: {where}: {item['msg']}[/red]", highlight=False)
    else:
        err.print(f"[red]{source}: {exc}[/red]", highlight=False)
    return typer.Exit(2)
