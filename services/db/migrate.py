"""Schema migrations (Alembic, kept inside the package: no alembic.ini); ``hounsfield db`` runs them.

The migration scripts live in ``services/db/migrations``; the Alembic configuration is built here in
code. :func:`upgrade` brings any database to a revision: a database made by ``create_all`` before
migrations existed (tables, no ``alembic_version``) is stamped at the initial revision first, so
older SQLite files keep working. :meth:`hounsfield.db.Database.create_schema` calls it with
``fast_empty``: an empty database then gets the models' tables in one ``create_all`` and is stamped
at head, which is the same schema as running every migration (``tests/services/db/test_migrations.py``
holds the two equal) at a fraction of the cost; the listener tests make many databases.

Upgrades are serialized: on PostgreSQL by a transaction-scoped advisory lock, on SQLite by taking
the write lock (``BEGIN IMMEDIATE``) before looking at the schema; either way the whole upgrade is
one transaction (both have transactional DDL), so a failed migration leaves the database as it was.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, Table, inspect, text

from hounsfield.db.engine import make_engine
from hounsfield.db.models import Base

__all__ = [
    "INITIAL_REVISION",
    "INITIAL_TABLES",
    "MIGRATIONS_DIR",
    "MODEL_MODULES",
    "alembic_config",
    "current_revision",
    "head_revision",
    "migrated_tables",
    "target_metadata",
    "upgrade",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
INITIAL_REVISION = "0001"
INITIAL_TABLES = frozenset({"studies", "series", "instances", "jobs", "results", "events"})
"""The tables of the initial revision: what ``create_all`` made before migrations existed."""

MODEL_MODULES: tuple[str, ...] = (
    "hounsfield.db.models",
    "hounsfield.db.access",
    "hounsfield.db.catalog",
    "hounsfield.db.deployments",
    "hounsfield.db.withdrawals",
    "hounsfield.db.feedback",
    "hounsfield.db.drift",
)
"""The modules whose tables the migrations own. A module added here needs a migration for its tables
(``tests/services/db/test_migrations.py`` fails until the migrated schema matches them)."""

_LOCK_KEY = 0x486F756E73666C64  # "Hounsfld": the advisory lock that serializes upgrades on PostgreSQL


def target_metadata() -> MetaData:
    """The ORM metadata with every module in :data:`MODEL_MODULES` imported (autogenerate's target)."""
    for module in MODEL_MODULES:
        importlib.import_module(module)
    return Base.metadata


def migrated_tables() -> list[Table]:
    """The tables defined in :data:`MODEL_MODULES`, in dependency order."""
    metadata = target_metadata()
    names = {
        mapper.local_table.name
        for mapper in Base.registry.mappers
        if mapper.class_.__module__ in MODEL_MODULES and isinstance(mapper.local_table, Table)
    }
    for module in MODEL_MODULES:  # plain tables too (association tables have no mapped class)
        names |= {value.name for value in vars(importlib.import_module(module)).values() if isinstance(value, Table)}
    return [table for table in metadata.sorted_tables if table.name in names]


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration pointing at the package's migrations (what alembic.ini would say)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision of the migration chain."""
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


@contextmanager
def _connection(target: Engine | str) -> Iterator[Connection]:
    """A connection to ``target`` (a URL gets an engine of its own: SQLite pragmas included)."""
    if isinstance(target, Engine):
        with target.connect() as connection:
            yield connection
        return
    engine = make_engine(target)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def current_revision(target: Engine | str) -> str | None:
    """The revision the database is at; None when it has no version table (empty, or made by create_all)."""
    with _connection(target) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _lock(connection: Connection) -> None:
    """Serialize schema changes: concurrent starts (listener, worker, registry) must not race."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        # pysqlite begins a transaction only before DML; take the write lock now, for the DDL too.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(target: Engine | str, revision: str = "head", *, fast_empty: bool = False) -> str | None:
    """Bring the database to ``revision`` (default: head) and return the revision it is at.

    A database with the initial tables but no version table (made by ``create_all`` before
    migrations) is stamped at :data:`INITIAL_REVISION` and upgraded from there. With ``fast_empty``
    a database without any migrated table gets the models' tables directly and is stamped at head
    (only for ``revision="head"``).

    On SQLite foreign keys are off while migrating (a batch migration recreates a table, which
    referencing rows would otherwise block) and checked with ``PRAGMA foreign_key_check`` before
    the commit.
    """
    with _connection(target) as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # no effect inside a transaction
        try:
            reached = _upgrade_locked(connection, revision, fast_empty=fast_empty)
        finally:
            if sqlite:
                connection.rollback()  # nothing left after a commit; undoes a failed migration
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
    return reached


def _upgrade_locked(connection: Connection, revision: str, *, fast_empty: bool) -> str | None:
    _lock(connection)
    context = MigrationContext.configure(connection)
    current = context.get_current_heads()
    if revision == "head" and current == (head_revision(),):
        connection.commit()
        return current[0]
    if not current:
        existing = set(inspect(connection).get_table_names())
        if fast_empty and revision == "head" and not existing & {t.name for t in migrated_tables()}:
            Base.metadata.create_all(connection, tables=migrated_tables())
            context.stamp(_scripts(), "head")
            connection.commit()
            logger.info("created the database schema at revision %s", head_revision())
            return head_revision()
        if existing & INITIAL_TABLES:
            initial = [table for table in migrated_tables() if table.name in INITIAL_TABLES]
            Base.metadata.create_all(connection, tables=initial)  # any initial table an old version lacked
            context.stamp(_scripts(), INITIAL_REVISION)
            logger.info("database made before migrations: stamped at revision %s", INITIAL_REVISION)
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
    if connection.dialect.name == "sqlite":
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            tables = sorted({str(row[0]) for row in broken})
            raise RuntimeError(f"migration to {revision} left rows with broken foreign keys in {', '.join(tables)}")
    reached = MigrationContext.configure(connection).get_current_revision()
    connection.commit()
    logger.info("database at revision %s", reached)
    return reached
