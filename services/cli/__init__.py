"""The ``hounsfield`` command: one Typer app, its commands grouped by what they work on.

- :mod:`~hounsfield.cli.services`: ``up``, ``listener``, ``worker``, ``registry``, ``fetch``, ``echo``,
  ``config``, ``demo``;
- :mod:`~hounsfield.cli.access`: ``tokens``; :mod:`~hounsfield.cli.catalog`: ``models``, ``rules``,
  ``deployments``; :mod:`~hounsfield.cli.results`: ``results``; :mod:`~hounsfield.cli.feedback`:
  ``feedback``; :mod:`~hounsfield.cli.store`: ``store`` (status, purge);
  :mod:`~hounsfield.cli.database`: ``db``; :mod:`~hounsfield.cli.maps`: ``map`` (new,
  validate, run, package, publish); :mod:`~hounsfield.cli.logs`: ``logs`` (a study's correlation id).

Commands import what they run when they run, so that ``hounsfield --help`` and ``hounsfield echo``
(the listener's readiness probe, every few seconds) start quickly.
"""

from __future__ import annotations

import typer

from hounsfield.cli import access, catalog, database, feedback, logs, maps, results, services, store

__all__ = ["app", "main"]

app = typer.Typer(help="Hounsfield: from a trained MONAI model to a result in the PACS.", no_args_is_help=True)

for command in (services.up, services.listener, services.worker, services.registry, services.echo, services.fetch):
    app.command()(command)
app.command("config")(services.show_config)
app.command()(services.demo)
app.add_typer(database.db, name="db")
app.add_typer(access.tokens, name="tokens")
app.add_typer(catalog.models, name="models")
app.add_typer(catalog.rules, name="rules")
app.add_typer(catalog.deployments, name="deployments")
app.add_typer(results.results, name="results")
app.add_typer(feedback.feedback, name="feedback")
app.add_typer(maps.maps, name="map")
app.add_typer(store.store, name="store")
app.add_typer(logs.logs, name="logs")


def main() -> None:
    app()
