"""``hounsfield logs``: what finds a study's lines in the services' logs."""

from __future__ import annotations

from typing import Annotated

import typer

from hounsfield.cli._common import ConfigOption, settings_or_exit

__all__ = ["logs"]

logs = typer.Typer(help="The services' logs: the correlation ids that find a study's lines (docs/logs.md).")


@logs.command("study-id")
def study_id(
    study_uid: Annotated[str, typer.Argument(help="The study's Study Instance UID.")],
    config: ConfigOption = None,
) -> None:
    """Print the study's correlation id: the ``study`` field of its log lines in every process."""
    from hounsfield.logs import study_correlation_id

    settings = settings_or_exit(config, "cli")
    typer.echo(study_correlation_id(study_uid.strip(), settings.log_correlation_key))
