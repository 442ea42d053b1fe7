"""Drift tests run on SQLite and on PostgreSQL (an empty database each)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hounsfield.config import Settings
from hounsfield.db import Database
from tests.services.drift.profiled import SMALL_WINDOWS, ProfiledJobs
from tests.support import settings_on_both_backends

__all__ = ["jobs", "settings_on_both_backends"]


@pytest.fixture
def jobs(settings: Settings) -> Iterator[ProfiledJobs]:
    """Profiled jobs of ``ct-lesion-seg`` 1.0.0, with windows of 40 and 30 jobs (minimums 20 and 15)."""
    settings = settings.model_copy(update={"drift": SMALL_WINDOWS})
    db = Database(settings.sqlalchemy_url)
    db.create_schema()
    yield ProfiledJobs(settings, db)
    db.dispose()
