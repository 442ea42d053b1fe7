"""Registry fixtures: every registry test on SQLite and on PostgreSQL; one API token per role; bearer headers."""

from __future__ import annotations

import pytest

from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.registry.auth import Role, create_token


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    """The shared settings with their database on each backend (an empty one per test)."""
    return settings.model_copy(update={"database_url": database_url})


@pytest.fixture
def tokens(settings: Settings) -> dict[Role, str]:
    """An API token for every role, made in ``settings``' database before any app starts."""
    db = Database(settings.sqlalchemy_url)
    db.create_schema()
    made = {}
    with db.session() as session:
        for role in Role:
            _, made[role] = create_token(session, f"test-{role.value}", role, "tests")
    db.dispose()
    return made


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
