"""``hounsfield db``: the database schema's migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hounsfield.cli._common import ConfigOption

__all__ = ["db"]

db = typer.Typer(help="The database schema: migrations.", no_args_is_help=True)

UrlOption = Annotated[str | None, typer.Option("--url", help="Database URL (default: from the configuration).")]


def _url(config: Path | None, url: str | None) -> str:
    if url is not None:
        return url
    from hounsfield.config import ConfigurationInvalid, load_settings

    try:
        return load_settings(config).sqlalchemy_url
    except ConfigurationInvalid as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


@db.command("upgrade")
def upgrade_command(
    config: ConfigOption = None,
    url: UrlOption = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Run the migrations up to REVISION (an older database made without migrations is stamped first)."""
    from hounsfield.db.engine import shown_url
    from hounsfield.db.migrate import head_revision, upgrade

    target = _url(config, url)
    reached = upgrade(target, revision)
    typer.echo(f"{shown_url(target)}: at revision {reached} (head {head_revision()})")


@db.command("current")
def current_command(config: ConfigOption = None, url: UrlOption = None) -> None:
    """Print the database's revision; exit 1 when it is not at head."""
    from hounsfield.db.engine import shown_url
    from hounsfield.db.migrate import current_revision, head_revision

    target = _url(config, url)
    revision = current_revision(target)
    head = head_revision()
    state = "head" if revision == head else f"behind head {head}"
    typer.echo(f"{shown_url(target)}: revision {revision or 'none'} ({state})")
    if revision != head:
        raise typer.Exit(1)
