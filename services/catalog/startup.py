"""What every process that routes or serves the catalog does at start: migrate, seed, sync.

:func:`open_database` is how the listener, the registry, ``hounsfield up``, ``hounsfield fetch`` and
the CLI's catalog commands get their database: the schema migrated, the use-case taxonomy seeded,
the configuration's deployments written (:func:`~hounsfield.catalog.deployments.sync_declared`).
"""

from __future__ import annotations

from typing import Literal

from hounsfield.catalog.deployments import sync_declared
from hounsfield.catalog.taxonomy import seed_taxonomy
from hounsfield.config import Settings
from hounsfield.db import Database

__all__ = ["open_database", "prepare_database"]


def prepare_database(db: Database, settings: Settings) -> None:
    """Migrate the schema, seed the use-case taxonomy and write the configuration's deployments.

    Raises :class:`~hounsfield.errors.Conflict` when a declared deployment clashes with the registry.
    """
    db.create_schema()
    with db.session() as session:
        seed_taxonomy(session)
    sync_declared(db, settings)


def open_database(
    settings: Settings, *, synchronous: Literal["FULL", "NORMAL"] = "FULL", autocheckpoint: bool = True
) -> Database:
    """The settings' database, prepared (:func:`prepare_database`); disposed again when preparing fails."""
    db = Database(settings.sqlalchemy_url, synchronous=synchronous, autocheckpoint=autocheckpoint)
    try:
        prepare_database(db, settings)
    except BaseException:
        db.dispose()
        raise
    return db
