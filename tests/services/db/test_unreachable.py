"""What counts as an unreachable database (``hounsfield.db.database_unreachable``), with errors raised by
real servers: work that meets one is tried again later; a statement's own error fails the work."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from hounsfield.db import DATABASE_UNREACHABLE, database_unreachable
from hounsfield.demo.orthanc import free_port
from tests.services.db import postgres


def _raised(url: str, statement: str, **connect_args: object) -> Exception:
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    except DATABASE_UNREACHABLE as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{statement!r} raised nothing the worker would catch")


def test_sqlite_locked_is_unreachable_and_a_missing_table_is_not(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    holder = sqlite3.connect(path)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.commit()
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the file
    try:
        locked = _raised(f"sqlite:///{path}", "SELECT * FROM t", timeout=0.1)
        assert "locked" in str(locked) and database_unreachable(locked)
    finally:
        holder.rollback()
        holder.close()
    missing = _raised(f"sqlite:///{path}", "SELECT * FROM absent")
    assert isinstance(missing, sqlalchemy.exc.OperationalError) and not database_unreachable(missing)


def test_nothing_listening_is_unreachable() -> None:
    refused = _raised(f"postgresql+psycopg://hounsfield@127.0.0.1:{free_port()}/absent", "SELECT 1")
    assert database_unreachable(refused)


@pytest.mark.postgresql
def test_postgresql_stopping_or_refusing_is_unreachable_and_a_cancelled_statement_is_not(postgres_server: str) -> None:
    with postgres.scratch_database(postgres_server) as url:
        url = url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url
        cancelled = _raised(url, "SET statement_timeout = 50; SELECT pg_sleep(5)")
        assert "statement timeout" in str(cancelled) and not database_unreachable(cancelled)

        engine = create_engine(url, poolclass=NullPool)
        admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        name = make_url(url).database
        try:
            with engine.connect() as connection, admin.connect() as control:
                pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
                control.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})  # as a fast shutdown does
                with pytest.raises(DATABASE_UNREACHABLE) as terminated:
                    connection.execute(text("SELECT 1"))
            assert database_unreachable(terminated.value)
            with admin.connect() as control:
                control.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            try:
                refusing = _raised(url, "SELECT 1")
                assert database_unreachable(refusing)
            finally:
                with admin.connect() as control:
                    control.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        finally:
            engine.dispose()
            admin.dispose()
