"""Group commit of index rows: one transaction for whatever instances are waiting.

Every stored instance needs its index row committed before its Success. With several associations
at once, committing each row in its own transaction makes the writers queue on the database's
write lock (SQLite's busy handler even sleeps milliseconds). :class:`GroupCommit` lets the first
waiting thread commit the rows of every thread waiting behind it in one transaction, and each
caller still returns only once its own row is committed (or raises that row's error):
:class:`IndexConflict` (a constraint refused the row) or :class:`DatabaseUnavailable` (locked, gone).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError, OperationalError

from hounsfield.db import Database
from hounsfield.db.index import IndexedInstance, record_instances, upsert_rows
from hounsfield.errors import HounsfieldError

__all__ = ["DatabaseUnavailable", "GroupCommit", "IndexConflict"]

logger = logging.getLogger(__name__)

_MAX_BATCH = 256


class IndexConflict(HounsfieldError):
    """The index refused a row (a constraint: another writer indexed the same study or series first)."""


class DatabaseUnavailable(HounsfieldError):
    """The index database could not take the rows (locked past its timeout, disk full, gone)."""


@dataclass(eq=False)  # entries are compared by identity
class _Entry:
    item: IndexedInstance
    done: bool = False
    error: Exception | None = None


class GroupCommit:
    """Commits index rows for many threads, several rows per transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._commit_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_Entry] = []

    def record(self, item: IndexedInstance) -> None:
        """Return once ``item`` is committed; raise :class:`IndexConflict`/:class:`DatabaseUnavailable` if not."""
        entry = _Entry(item)
        with self._pending_lock:
            self._pending.append(entry)
        with self._commit_lock:
            if not entry.done:
                with self._pending_lock:
                    batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                if not any(waiting is entry for waiting in batch):  # more than a batch waits: ours goes too
                    batch.append(entry)
                    with self._pending_lock:
                        self._pending.remove(entry)
                self._commit(batch)
        if entry.error is not None:
            raise entry.error

    def record_batch(self, items: list[IndexedInstance]) -> list[Exception | None]:
        """Commit ``items`` (one transaction when they all go in); each one's error, or None."""
        entries = [_Entry(item) for item in items]
        with self._commit_lock:
            for start in range(0, len(entries), _MAX_BATCH):
                self._commit(entries[start : start + _MAX_BATCH])
        return [entry.error for entry in entries]

    def _write(self, items: list[IndexedInstance]) -> None:
        engine = self._db.engine
        if engine.dialect.name != "sqlite":
            with self._db.transaction() as connection:
                record_instances(connection, items)
            return
        # SQLite: the same statements and encodings through the DBAPI cursor, without SQLAlchemy's
        # per-statement execution context (most of an index write's cost otherwise).
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                for sql, rows in upsert_rows(engine.dialect, items):
                    cursor.executemany(sql, rows)
                raw.commit()
            except sqlite3.IntegrityError as exc:
                raw.rollback()
                raise IntegrityError("index upsert", None, exc) from exc
            except sqlite3.OperationalError as exc:
                raw.rollback()
                raise OperationalError("index upsert", None, exc) from exc
            finally:
                cursor.close()
        finally:
            raw.close()

    def _commit(self, batch: list[_Entry]) -> None:
        try:
            self._write([entry.item for entry in batch])
        except (IntegrityError, OperationalError) as exc:
            if len(batch) == 1:
                kind = IndexConflict if isinstance(exc, IntegrityError) else DatabaseUnavailable
                error = kind(f"the index refused the row: {type(exc.orig).__name__}")
                error.__cause__ = exc
                batch[0].error = error
                return
            # One bad row must not fail the others: commit them one by one.
            for entry in batch:
                self._commit([entry])
            return
        for entry in batch:
            entry.done = True
