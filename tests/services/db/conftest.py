"""Database-layer fixtures: a migrated database on each backend (see ``database_url`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hounsfield.db import Database


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A :class:`Database` with the schema at head, on SQLite and on PostgreSQL."""
    database = Database(database_url)
    database.create_schema()
    yield database
    database.dispose()
