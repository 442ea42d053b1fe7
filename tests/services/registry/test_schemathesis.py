"""Property-based tests of the whole registry API from its OpenAPI document (schemathesis).

Every operation gets requests generated from its schema (valid and invalid ones, with an admin's
credential so that the handlers themselves run, not only the authentication): none may answer 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from hounsfield.access import Role
from hounsfield.config import Settings
from hounsfield.registry.app import create_app
from tests.support import bearer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# STOW-RS bodies are raw bytes (multipart/related of DICOM files): arbitrary bytes, which the intake
# must refuse with a 4xx, never a 5xx.
schemathesis.openapi.media_type("multipart/related", st.binary(max_size=4096))


@pytest.fixture
def registry(settings: Settings, tokens: dict[Role, str]) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    app = create_app(settings, enqueue=lambda job: None)
    with TestClient(app):  # runs the lifespan: the STOW-RS intake is up
        yield app, bearer(tokens[Role.ADMIN])


def test_no_request_gets_a_server_error(registry: tuple[FastAPI, dict[str, str]]) -> None:
    app, admin = registry
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, "every route is in the OpenAPI document"
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def no_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=admin, checks=[not_a_server_error])

        no_server_error()
