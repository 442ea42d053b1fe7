"""SQLite's write-ahead log, with real connections to one file: a transaction that will write takes the
write lock first (``take_write_lock``), and a process whose commits do not checkpoint the log
(``autocheckpoint=False``) checkpoints it itself (``Database.checkpoint_wal``). Both are nothing on
PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError

from hounsfield.db import Database, Study, StudyState, database_unreachable, take_write_lock

STUDY = "1.2.826.0.1.3680043.10.1392.31"


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[tuple[Database, sqlite3.Connection]]:
    """A migrated SQLite file database holding one receiving study, and another real connection to the
    same file (another process's: the listener indexing instances)."""
    path = tmp_path / "index.db"
    db = Database(f"sqlite:///{path}")
    db.create_schema()
    with db.session() as session:
        session.add(Study(study_instance_uid=STUDY, patient_id="P1", accession_number="A1"))
    other = sqlite3.connect(path, timeout=30, check_same_thread=False)
    yield db, other
    other.close()
    db.dispose()


def _other_commits(other: sqlite3.Connection, patient_id: str) -> None:
    other.execute("UPDATE studies SET patient_id = ?", (patient_id,))
    other.commit()


def _study(db: Database) -> tuple[str, StudyState]:
    with db.session() as session:
        study = session.get(Study, STUDY)
        assert study is not None
        return study.patient_id, study.state


def test_a_sqlite_transaction_that_read_first_fails_busy_when_another_commit_came_before_its_write(
    sqlite_db: tuple[Database, sqlite3.Connection],
) -> None:
    """Why the lock is taken: the busy timeout does not wait this out (the snapshot read is stale)."""
    db, other = sqlite_db
    # A savepoint opens a deferred transaction, as the router's savepoint for each study would without the lock.
    with db.session() as session, pytest.raises(OperationalError) as raised, session.begin_nested():
        assert session.scalar(select(Study.patient_id)) == "P1"  # its snapshot
        _other_commits(other, "P2")
        session.execute(update(Study).values(state=StudyState.COMPLETE))
    assert getattr(raised.value.orig, "sqlite_errorname", None) == "SQLITE_BUSY_SNAPSHOT"
    assert database_unreachable(raised.value), "tried again later, never recorded as the work's failure"
    assert _study(db) == ("P2", StudyState.RECEIVING)


def test_a_transaction_that_takes_the_write_lock_first_reads_and_writes_while_another_commit_waits(
    sqlite_db: tuple[Database, sqlite3.Connection],
) -> None:
    db, other = sqlite_db
    with db.session() as session:
        take_write_lock(session)
        with session.begin_nested():  # as the router routes each study: a savepoint of its own
            read = session.scalar(select(Study.patient_id))
            committing = threading.Thread(target=_other_commits, args=(other, "P3"))
            committing.start()
            committing.join(timeout=0.5)
            assert committing.is_alive(), "the other connection's commit waits for this transaction"
            session.execute(update(Study).values(state=StudyState.COMPLETE))
    committing.join(timeout=30)
    assert not committing.is_alive()
    assert read == "P1"
    assert _study(db) == ("P3", StudyState.COMPLETE), "both writes landed, the other one after this one"


def test_taking_the_write_lock_waits_for_another_writer_and_reads_what_it_committed(
    sqlite_db: tuple[Database, sqlite3.Connection],
) -> None:
    db, other = sqlite_db
    other.execute("BEGIN IMMEDIATE")  # another process is writing
    other.execute("UPDATE studies SET patient_id = 'P4'")
    releasing = threading.Timer(0.3, other.commit)
    releasing.start()
    started = time.monotonic()
    with db.session() as session:
        take_write_lock(session)
        waited = time.monotonic() - started
        read = session.scalar(select(Study.patient_id))
        session.execute(update(Study).values(state=StudyState.COMPLETE))
    releasing.join()
    assert waited >= 0.25, "the lock was taken while the other writer held it"
    assert read == "P4"
    assert _study(db) == ("P4", StudyState.COMPLETE)


def test_the_write_lock_and_the_checkpoint_are_one_statement_on_sqlite_and_none_on_postgresql(db: Database) -> None:
    sent: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    with db.session() as session:
        session.add(Study(study_instance_uid=STUDY, patient_id="P1", accession_number="A1"))
    with db.session() as session:
        sent.clear()
        take_write_lock(session)
        locking = list(sent)
        assert session.get(Study, STUDY).state is StudyState.RECEIVING  # type: ignore[union-attr]
    sent.clear()
    db.checkpoint_wal()
    if db.engine.dialect.name == "sqlite":
        assert locking == ["UPDATE studies SET state = state WHERE 0"]
        assert sent == ["PRAGMA wal_checkpoint(PASSIVE)"]
    else:
        assert locking == [] and sent == []


_WRITE_800_KB = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) "
    "INSERT INTO blobs SELECT randomblob(4000) FROM n"
)


def _write_8_mb(db: Database) -> None:
    """Ten commits of 800 KB: twice the 1000 pages at which a commit checkpoints by default."""
    for _ in range(10):
        with db.transaction() as connection:
            connection.exec_driver_sql(_WRITE_800_KB)


def _sqlite_file(tmp_path: Path, name: str, *, autocheckpoint: bool) -> tuple[Database, Path, Path]:
    path = tmp_path / name
    db = Database(f"sqlite:///{path}", autocheckpoint=autocheckpoint)
    with db.transaction() as connection:
        connection.exec_driver_sql("CREATE TABLE blobs (b BLOB)")
    db.checkpoint_wal()
    return db, path, tmp_path / f"{name}-wal"


def test_without_autocheckpoint_commits_leave_the_log_to_checkpoint_wal(tmp_path: Path) -> None:
    db, path, wal = _sqlite_file(tmp_path, "listener.db", autocheckpoint=False)
    try:
        before = path.stat().st_size
        _write_8_mb(db)
        assert path.stat().st_size == before, "no commit copied the log into the database file"
        assert wal.stat().st_size > 8_000_000
        db.checkpoint_wal()
        assert path.stat().st_size > before + 8_000_000, "the checkpoint copied every page"
        log = wal.stat().st_size
        _write_8_mb(db)
        assert wal.stat().st_size < log * 1.5, "the checkpointed log was written again from its start, not grown"
        with db.transaction() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM blobs").scalar() == 4000
    finally:
        db.dispose()


def test_with_autocheckpoint_commits_copy_the_log_into_the_database_file(tmp_path: Path) -> None:
    """The default, which the test above differs from."""
    db, path, wal = _sqlite_file(tmp_path, "registry.db", autocheckpoint=True)
    try:
        before = path.stat().st_size
        _write_8_mb(db)
        assert path.stat().st_size > before + 4_000_000
        assert wal.stat().st_size < 8_000_000
    finally:
        db.dispose()


def test_without_autocheckpoint_a_commit_still_checkpoints_past_the_backstop(tmp_path: Path) -> None:
    """A process that stops checkpointing itself (a listener that routes but receives nothing) does not
    grow the log without bound: past 10,000 pages (40 MB) a commit checkpoints it."""
    db, path, wal = _sqlite_file(tmp_path, "idle-listener.db", autocheckpoint=False)
    try:
        before = path.stat().st_size
        for _ in range(6):  # 48 MB of commits
            _write_8_mb(db)
        assert path.stat().st_size > before + 40_000_000, "a commit past the backstop copied the log"
        assert wal.stat().st_size < 48_000_000
    finally:
        db.dispose()
