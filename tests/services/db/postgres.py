"""A PostgreSQL server for the database tests (import as ``tests.services.db.postgres``).

``TEST_POSTGRES_URL`` names a server to use (a role that may create databases; CI starts the
distribution's cluster and sets it). Without it a throw-away cluster is made with the installed
PostgreSQL binaries (``initdb`` + ``pg_ctl`` in a temporary folder, on a free loopback port, run as
the ``postgres`` OS user when the tests run as root), and removed after the session. When no
binaries are installed the PostgreSQL variants are skipped, or fail with ``TEST_POSTGRES_REQUIRED=1``
(CI sets it: there they must run). Each test gets its own database (:func:`scratch_database`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from hounsfield.demo.orthanc import free_port

__all__ = ["postgres_bindir", "scratch_database", "server_url", "whole_suite_on_postgres"]

URL_ENV = "TEST_POSTGRES_URL"
REQUIRED_ENV = "TEST_POSTGRES_REQUIRED"
DATABASE_ENV = "TEST_DATABASE"
"""``postgresql``: every test's ``settings`` (and the end-to-end stack) put their database on PostgreSQL,
a scratch database per test, instead of SQLite in the data folder. ``make test`` runs a second pass so."""


def whole_suite_on_postgres() -> bool:
    """Whether this run puts every test's database on PostgreSQL (``TEST_DATABASE=postgresql``)."""
    return os.environ.get(DATABASE_ENV, "sqlite") == "postgresql"


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/<version>/bin)."""
    debian = sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres_user(folder: Path) -> Callable[[], None] | None:
    """Root may not run a PostgreSQL server: hand ``folder`` to the ``postgres`` user and run as it."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("tests run as root and there is no 'postgres' user to run a PostgreSQL server as")
    os.chown(folder, user.pw_uid, user.pw_gid)

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return demote


@contextmanager
def _throwaway_cluster(bindir: Path) -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="hounsfield-pg-"))
    demote = _as_postgres_user(folder)
    data, port = folder / "data", free_port()
    env = {**os.environ, "LC_ALL": "C"}

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, env=env, preexec_fn=demote, cwd=folder)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        # Durability is not under test here: no fsync keeps CREATE DATABASE per test cheap.
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        options += " -c synchronous_commit=off"
        run(
            str(bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(folder / "log"), "-o", options
        )
    except subprocess.CalledProcessError as exc:
        log = (folder / "log").read_text(errors="replace")[-2000:] if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr.decode(errors='replace')[-2000:]}{log}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(data)],
            capture_output=True,
            env=env,
            preexec_fn=demote,
            cwd=folder,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def server_url() -> Iterator[str]:
    """The URL of a PostgreSQL server the tests may create databases on (see the module docstring)."""
    given = os.environ.get(URL_ENV)
    if given:
        yield make_url(given).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return
    bindir = postgres_bindir()
    if bindir is None:
        reason = f"PostgreSQL is not installed (no initdb) and {URL_ENV} is not set"
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(f"{reason}, but {REQUIRED_ENV}=1")
        pytest.skip(reason)
    with _throwaway_cluster(bindir) as url:
        yield url


@contextmanager
def scratch_database(server: str) -> Iterator[str]:
    """A new, empty database on ``server`` for one test; dropped afterwards (connections included)."""
    name = f"hounsfield_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            _drop(admin, name)
        finally:
            admin.dispose()


def _drop(admin: Engine, name: str) -> None:
    """Drop ``name`` after closing this role's sessions on it.

    Not ``WITH (FORCE)``: that also has to terminate an autovacuum worker that happens to be on the
    database, which a role without ``pg_signal_backend`` may not do. A plain ``DROP DATABASE`` asks
    autovacuum to stand down itself; a session that is still closing makes it retry briefly.
    """
    deadline = time.monotonic() + 30
    while True:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND usename = current_user AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            try:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                return
            except OperationalError as exc:  # ObjectInUse: a terminated session has not gone yet
                if getattr(exc.orig, "sqlstate", None) != "55006" or time.monotonic() > deadline:
                    raise
        time.sleep(0.1)


def allow_connections(server: str, name: str, allowed: bool) -> None:
    """PostgreSQL as while it restarts: database ``name`` on ``server`` refuses new connections and its
    sessions are ended (``allowed`` False); or it takes them again."""
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'))
            if not allowed:
                connection.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name}
                )
    finally:
        admin.dispose()
