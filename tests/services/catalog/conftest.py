"""Catalog tests run on SQLite and on PostgreSQL (an empty database each)."""

from tests.support import settings_on_both_backends

__all__ = ["settings_on_both_backends"]
