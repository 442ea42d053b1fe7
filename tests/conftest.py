"""Shared fixtures: settings on a temporary data folder, synthetic studies on disk."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hounsfield.access import Principal, Role, create_token
from hounsfield.config import Settings, load_settings
from hounsfield.db import Database
from hounsfield.demo.orthanc import free_port
from hounsfield.supervisor import LocalRedis
from tests.services.db import postgres
from tests.support import CT_RULE

os.environ.setdefault("TCP_NODELAY", "1")

TEST_PRINCIPAL = Principal("tests", Role.ADMIN, "cli")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Commands run in-process (Typer's CliRunner) set up process logging on a stream that is closed
    after them; later tests' records would go to it. Each test leaves the root logger as it found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _no_hounsfield_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("HOUNSFIELD_"):
            monkeypatch.delenv(key)


@pytest.fixture
def default_database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The database of this run's ``settings``: None (SQLite in ``data_dir``), or a scratch PostgreSQL one."""
    if not postgres.whole_suite_on_postgres():
        yield None
        return
    with postgres.scratch_database(request.getfixturevalue("postgres_server")) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, default_database_url: str | None) -> Settings:
    """Settings with one CT deployment and a free listener port (no services started)."""
    return load_settings(
        None,
        data_dir=tmp_path / "data",
        database_url=default_database_url,
        listener={
            "host": "127.0.0.1",
            "port": free_port(),
            "quiet_period_s": 1.0,
            "min_free_disk_mb": 64,
            "journal_segment_mb": 8,  # four are made at the first start: keep that small in tests
            "open_mode": True,  # tests send from many made-up AE titles; the policy has its own tests
        },
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
        deployments=[
            {
                "name": "ct-lesion-seg",
                "app": "hounsfield_operators.ct_lesion_seg.app:CTLesionSegApp",
                "model_path": "operators/ct_lesion_seg/models/model.ts",
                "model_name": "CT lesion segmentation",
                "model_version": "1.0.0",
                "rule": CT_RULE,
                "destinations": ["pacs"],
            }
        ],
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server URL: $TEST_POSTGRES_URL, else a throw-away cluster (tests/services/db/postgres.py)."""
    with postgres.server_url() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL (its own database, dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hounsfield.db'}"
        return
    with postgres.scratch_database(request.getfixturevalue("postgres_server")) as url:
        yield url


@pytest.fixture
def tokens(settings: Settings) -> dict[Role, str]:
    """An API token for every role, made in ``settings``' database before any app starts."""
    db = Database(settings.sqlalchemy_url)
    db.create_schema()
    made = {}
    with db.session() as session:
        for role in Role:
            _, made[role] = create_token(session, TEST_PRINCIPAL, f"test-{role.value}", role)
    db.dispose()
    return made


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    """A redis-server of the test's own (append-only, as ``hounsfield up`` runs it) on a free port."""
    server = LocalRedis(tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
