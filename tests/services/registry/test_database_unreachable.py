"""The registry while its database cannot be reached (PostgreSQL restarting, failing over): 503 with the
reason and Retry-After, never a bare 500; and it answers again once the database is back.

Real PostgreSQL: the test's own database stops taking connections (``ALLOW_CONNECTIONS false``, its
sessions ended), as a restarting server refuses them.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from hounsfield.access import Role, create_token
from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.registry.app import create_app
from hounsfield.registry.gate import DATABASE_RETRY_AFTER_S, DATABASE_UNREACHABLE_DETAIL
from tests.conftest import TEST_PRINCIPAL
from tests.services.db import postgres
from tests.support import bearer

pytestmark = pytest.mark.postgresql


def test_an_unreachable_database_is_a_503_with_its_reason_then_answers_again(
    settings: Settings, postgres_server: str
) -> None:
    with postgres.scratch_database(postgres_server) as url:
        on_postgres = settings.model_copy(update={"database_url": url})
        db = Database(on_postgres.sqlalchemy_url)
        db.create_schema()
        with db.session() as session:
            _, token = create_token(session, TEST_PRINCIPAL, "test-viewer", Role.VIEWER)
        db.dispose()
        name = make_url(url).database
        assert name is not None
        with TestClient(create_app(on_postgres), headers=bearer(token)) as client:
            assert client.get("/studies").status_code == 200
            postgres.allow_connections(postgres_server, name, allowed=False)
            try:
                for path in ("/studies", "/jobs", "/health"):
                    response = client.get(path)
                    assert response.status_code == 503, (path, response.status_code, response.text[:300])
                    assert response.json() == {"detail": DATABASE_UNREACHABLE_DETAIL}
                    assert response.headers["Retry-After"] == str(DATABASE_RETRY_AFTER_S)
            finally:
                postgres.allow_connections(postgres_server, name, allowed=True)
            assert client.get("/studies").status_code == 200, "it answers again once the database is back"
