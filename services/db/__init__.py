"""Database access: engine, sessions, the tables and every query outside the catalog's own
(SQLite by default, PostgreSQL in production).

The modules here hold the tables and the statements that read and write them: :mod:`.index`
(studies, series, instances, the study's path), :mod:`.jobs` (jobs and results), :mod:`.access`
(API tokens, the audit log), :mod:`.withdrawals`, :mod:`.group_commit` (the listener's batched
index writes); the catalog's tables (:mod:`.catalog`, :mod:`.deployments`) are queried by the
domain package :mod:`hounsfield.catalog` itself. Rooms above call these functions; they write no SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import sqlalchemy.exc
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

from hounsfield.db.engine import make_engine
from hounsfield.db.migrate import migrated_tables, upgrade
from hounsfield.db.models import Base, Event, Instance, Job, JobState, Result, Series, Study, StudyState, utcnow
from hounsfield.errors import Invalid

__all__ = [
    "DATABASE_UNREACHABLE",
    "Base",
    "Database",
    "Event",
    "Instance",
    "Job",
    "JobState",
    "Result",
    "Series",
    "Session",
    "Study",
    "StudyState",
    "database_unreachable",
    "ping",
    "take_write_lock",
    "utcnow",
]

logger = logging.getLogger(__name__)

DATABASE_UNREACHABLE: tuple[type[Exception], ...] = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
"""The driver's exception classes that may mean the database cannot be reached: catch these, then ask
:func:`database_unreachable` whether this one does (an ``OperationalError`` can be a statement's own fault too)."""

_UNREACHABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "55000"})
"""PostgreSQL's answers while it cannot serve: shut down by an administrator, crashed, starting or stopping,
and a database not accepting connections (``ALLOW_CONNECTIONS false``). Class ``08`` (connection
exceptions) counts too."""
_UNREACHABLE_SQLITE = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL"})
"""SQLite's: the file locked by another process, or not openable or writable now."""


def take_write_lock(session: Session) -> None:
    """On SQLite, make ``session``'s transaction a writer now (an UPDATE of no row); elsewhere nothing.

    A SQLite transaction that reads first and writes later fails at its first write, busy, when another
    connection committed in between (its snapshot is stale: no busy timeout waits that out). One that
    starts by writing waits for the lock instead (``busy_timeout``). For a short transaction that will
    write anyway, such as routing a study.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE studies SET state = state WHERE 0"))


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached (restarting, failing over, a connection cut,
    a file locked or its disk full): work that meets it is tried again later, never recorded as failed (the
    record could not be written anyway). A statement's own error (a constraint, a cancelled query, bad SQL)
    is not: that one is the work's failure."""
    if isinstance(exc, sqlalchemy.exc.InterfaceError):
        return True
    if not isinstance(exc, sqlalchemy.exc.OperationalError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    sqlite_name = getattr(orig, "sqlite_errorname", None)
    if sqlite_name is not None:
        return any(str(sqlite_name) == n or str(sqlite_name).startswith(f"{n}_") for n in _UNREACHABLE_SQLITE)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state is None:  # no answer from the server at all: refused, reset, closed
        return True
    return str(state).startswith("08") or str(state) in _UNREACHABLE_SQLSTATES


class Database:
    """One engine and session factory per process.

    ``synchronous`` is SQLite's commit durability. ``FULL`` (the default) fsyncs the WAL at every
    commit. The listener opens its index with ``NORMAL``: in WAL mode a commit then survives a crash
    of any process (kill -9 included) but not an operating-system crash or power loss, which may
    lose the last commits. It does so because it commits often, and because every instance is durable
    before its Success (its ingest journal record synced, or its own file fsynced): a row lost that
    way is rebuilt from the journal or the file (the store is the record; the index can be re-derived
    from it).
    """

    def __init__(
        self, url: str, *, synchronous: Literal["FULL", "NORMAL"] = "FULL", autocheckpoint: bool = True
    ) -> None:
        self.url = url
        self.engine: Engine = make_engine(url, synchronous=synchronous, autocheckpoint=autocheckpoint)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def checkpoint_wal(self) -> None:
        """On SQLite, copy the write-ahead log into the database file as far as readers allow (a passive
        checkpoint); elsewhere nothing. For a process whose commits do not (``autocheckpoint=False``)."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def create_schema(self) -> None:
        """Bring the schema to the newest migration (idempotent; concurrent callers are serialized).

        An empty database gets the migrated tables in one ``create_all`` and is stamped at head (the
        same schema as running every migration, which a test holds; much cheaper for the many
        short-lived test databases); one made by ``create_all`` before migrations existed is stamped
        at the initial revision and upgraded. Tables of ORM modules that have no migration yet (not
        in :data:`hounsfield.db.migrate.MODEL_MODULES`) are then created directly, with a warning.
        """
        upgrade(self.engine, fast_empty=True)
        migrated = {table.name for table in migrated_tables()}
        pending = [table for table in Base.metadata.sorted_tables if table.name not in migrated]
        if pending:
            existing = set(inspect(self.engine).get_table_names())
            missing = [table for table in pending if table.name not in existing]
            if missing:
                logger.warning("tables without a migration, created directly: %s", ", ".join(t.name for t in missing))
                Base.metadata.create_all(self.engine, tables=missing)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error.

        A value the database cannot hold (a NUL character in text on PostgreSQL, a number beyond its
        column) is the caller's mistake, not the database's: :class:`~hounsfield.errors.Invalid` (422
        from the registry), never a server error.
        """
        with self._sessions() as session, session.begin():
            try:
                yield session
            except DataError as exc:
                raise Invalid("request", f"a value the database cannot store ({_data_error(exc)})") from exc

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection in a transaction (commit on success): no ORM session to set up."""
        with self.engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        self.engine.dispose()


def _data_error(exc: DataError) -> str:
    """Which kind of value the database refused, in our words (its own message may quote the value)."""
    text_ = str(exc.orig).lower()
    if "nul" in text_ or "0x00" in text_:
        return "a NUL character in text"
    if "out of range" in text_:
        return "a number out of range"
    return "a value of the wrong form"


def ping(session: Session) -> None:
    """Ask the database for nothing: raises when it cannot answer (a health check)."""
    session.execute(text("SELECT 1"))
