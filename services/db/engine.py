"""The SQLAlchemy engine of a database URL, with SQLite's pragmas (WAL, durability, busy timeout); its errors
never carry the values of the statement that failed (they are logged)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, make_url

__all__ = ["make_engine", "shown_url"]


_BACKSTOP_CHECKPOINT_PAGES = 10_000
"""Without automatic checkpoints a commit still checkpoints once the log passes this many pages (40 MB):
a backstop for a process that stops checkpointing itself (a listener that routes but receives nothing)."""


def _sqlite_pragmas(dbapi_connection: Any, synchronous: str, autocheckpoint: bool) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the listener, worker and registry processes read while one writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    if not autocheckpoint:
        cursor.execute(f"PRAGMA wal_autocheckpoint={_BACKSTOP_CHECKPOINT_PAGES}")
    cursor.close()


def make_engine(url: str, *, synchronous: Literal["FULL", "NORMAL"] = "FULL", autocheckpoint: bool = True) -> Engine:
    """An engine for ``url``; on SQLite its folder is made and every connection gets the pragmas.

    ``autocheckpoint=False``: a commit does not copy SQLite's write-ahead log into the database file (and
    sync it) on its way, which can hold a commit for a tenth of a second while the disk is busy; the
    process checkpoints itself when it can wait (:meth:`~hounsfield.db.Database.checkpoint_wal`), and
    commits do only past a 40 MB log, a backstop.
    """
    kwargs: dict[str, Any] = {
        "pool_pre_ping": not url.startswith("sqlite"),  # a SQLite file never hangs up
        "hide_parameters": True,  # a database error's message must not carry the row's values (patient IDs)
    }
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(
            engine, "connect", lambda connection, _record: _sqlite_pragmas(connection, synchronous, autocheckpoint)
        )
    return engine


def shown_url(url: str) -> str:
    """``url`` as it may be printed: the password hidden."""
    return make_url(url).render_as_string(hide_password=True)
