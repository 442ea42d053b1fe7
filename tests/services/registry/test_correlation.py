"""The registry's lines carry the request's id, and the study or job its path names (never the UID)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from hounsfield.access import Role
from hounsfield.catalog import open_database
from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database
from hounsfield.logs import DEFAULT_CORRELATION_KEY, setup_logging, study_correlation_id
from hounsfield.registry.app import create_app
from hounsfield.router.routing import Router
from tests.services.registry.test_api import STUDY, _index
from tests.support import bearer


@pytest.fixture
def log(settings: Settings) -> Iterator[io.StringIO]:
    """The process's JSON lines, as ``hounsfield registry`` sets them up; the test runner's logging after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging("INFO", "registry", stream=stream, correlation_key=settings.log_correlation_key)
    yield stream
    setup_logging("INFO", "registry", stream=io.StringIO(), correlation_key=DEFAULT_CORRELATION_KEY)
    root.handlers[:], root.level = handlers, level
    logging.captureWarnings(False)


def _reads(stream: io.StringIO) -> list[dict]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == "hounsfield.registry.reads"]


def test_a_requests_lines_carry_its_id_and_the_study_or_job_it_names(
    settings: Settings, tokens: dict[Role, str], log: io.StringIO
) -> None:
    client = TestClient(create_app(settings), headers=bearer(tokens[Role.VIEWER]))  # the deployments written
    db = Database(settings.sqlalchemy_url)
    _index(db, "CT", 10)
    (job,) = Router(settings, db, lambda job: None).on_study_complete(
        StudyComplete(study_instance_uid=STUDY, trigger="manual")
    )
    log.truncate(0), log.seek(0)

    detail = client.get(f"/studies/{STUDY}", headers={"X-Request-ID": "from-the-proxy.1"})
    job_read = client.get(f"/jobs/{job.id}")
    listing = client.get("/studies", headers={"X-Request-ID": "not a token; " + "x" * 80})
    study_line, job_line, listing_line = _reads(log)

    correlation = study_correlation_id(STUDY, settings.log_correlation_key)
    assert detail.json()["correlation_id"] == correlation, "the dashboard shows the id that finds the study's lines"
    assert detail.headers["X-Request-ID"] == "from-the-proxy.1"
    assert (study_line["study"], study_line["job"], study_line["request"]) == (correlation, None, "from-the-proxy.1")
    assert job_line["job"] == job.id and job_line["study"] is None
    assert job_line["request"] == job_read.headers["X-Request-ID"] != "from-the-proxy.1"
    made = listing.headers["X-Request-ID"]
    assert len(made) == 16 and listing_line["request"] == made, "a request id that is no short token is replaced"
    assert (listing_line["study"], listing_line["job"]) == (None, None), "nothing of the earlier requests stays"
    assert STUDY not in log.getvalue()


def test_the_router_logs_for_the_study_and_hands_each_job_on_with_its_ids(settings: Settings, log: io.StringIO) -> None:
    db = open_database(settings)  # the schema and the configuration's deployments
    _index(db, "CT", 10)
    seen = []
    (job,) = Router(settings, db, lambda job: seen.append(logging.getLogger("enqueue").info("sent"))).on_study_complete(
        StudyComplete(study_instance_uid=STUDY, trigger="manual")
    )
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    correlation = study_correlation_id(STUDY, settings.log_correlation_key)
    sent = [line for line in lines if line["logger"] == "enqueue"]
    assert [(line["study"], line["job"]) for line in sent] == [(correlation, job.id)]
    routed = [line for line in lines if line["message"].startswith("study routed")]
    assert [(line["study"], line["job"]) for line in routed] == [(correlation, None)]
