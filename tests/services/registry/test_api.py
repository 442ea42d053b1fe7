from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hounsfield.access import Role
from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database
from hounsfield.db.index import IndexedInstance, record_instance
from hounsfield.registry.app import create_app
from hounsfield.router.routing import Router
from tests.support import bearer

STUDY = "1.2.826.0.1.3680043.10.1392.1"


def _index(db: Database, modality: str, count: int) -> None:
    for i in range(count):
        item = IndexedInstance(
            study_instance_uid=STUDY, series_instance_uid=f"{STUDY}.{(modality == 'CT' and 1) or 2}",
            sop_instance_uid=f"{STUDY}.9.{modality}.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1", patient_id="P1", accession_number="A1", study_date="20260101",
            modality=modality, series_number=1, series_description="axial", instance_number=i + 1,
            calling_ae="CT01", called_ae="HOUNSFIELD", tags={"Modality": modality}, path=f"/x/{i}.dcm",
            size=1, sha256="0" * 64, revision=0,
        )  # fmt: skip
        with db.session() as session:
            record_instance(session, item)


@pytest.fixture
def client(settings: Settings, tokens: dict[Role, str]) -> TestClient:
    return TestClient(create_app(settings), headers=bearer(tokens[Role.VIEWER]))


def test_health_reports_database_and_broker(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["broker"] in ("ok", "unreachable")


def test_studies_jobs_and_events_are_listed(client: TestClient, settings: Settings) -> None:
    db = Database(settings.sqlalchemy_url)
    _index(db, "CT", 10)
    queued = []
    Router(settings, db, queued.append).on_study_complete(StudyComplete(study_instance_uid=STUDY, trigger="manual"))
    studies = client.get("/studies").json()
    assert [s["study_instance_uid"] for s in studies] == [STUDY]
    assert "patient_id" not in studies[0], "the listing carries no patient identifiers"
    detail = client.get(f"/studies/{STUDY}").json()
    assert detail["state"] == "routed" and detail["completion_trigger"] == "manual"
    assert detail["series"][0]["instance_count"] == 10
    assert [e["kind"] for e in detail["events"]] == ["study-complete", "job-queued"]
    jobs = client.get("/jobs", params={"state": "queued"}).json()
    assert len(jobs) == 1 and jobs[0]["id"] == queued[0].id
    assert client.get(f"/jobs/{queued[0].id}").json()["deployment"] == "ct-lesion-seg"
    assert client.get("/results", params={"job_id": queued[0].id}).json() == []


def test_clear_errors_for_bad_requests(client: TestClient) -> None:
    missing = client.get("/studies/1.2.3")
    assert missing.status_code == 404 and "no study" in missing.json()["detail"]
    bad_state = client.get("/jobs", params={"state": "exploded"})
    assert bad_state.status_code == 422
    assert bad_state.json()["detail"][0]["loc"] == ["query", "state"]
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_openapi_lists_every_route(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/health", "/studies", "/studies/{study_uid}", "/jobs", "/jobs/{job_id}", "/results"} <= paths


def test_sqlite_folder_is_created(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'deep' / 'er' / 'x.db'}")
    db.create_schema()
    assert (tmp_path / "deep" / "er" / "x.db").exists()


def test_the_api_documents_follow_their_setting(settings: Settings, tokens: dict[Role, str]) -> None:
    for served in (True, False):
        registry = settings.registry.model_copy(update={"api_docs": served, "stow_enabled": False})
        with TestClient(create_app(settings.model_copy(update={"registry": registry}))) as client:
            for path in ("/openapi.json", "/docs", "/redoc"):
                assert client.get(path).status_code == (200 if served else 404), (path, served)
            assert client.get("/health").status_code == 200


def test_a_value_the_database_cannot_store_is_a_422_not_a_server_error(client: TestClient) -> None:
    """PostgreSQL refuses NUL characters in text: schemathesis found `GET /models?use_case=%00` answered 500."""
    for path, params in [
        ("/models", {"use_case": "\x00"}),
        ("/studies/1.2.3%004", {}),
        ("/results", {"job_id": "\x00"}),
    ]:
        response = client.get(path, params=params)
        assert response.status_code < 500, (path, response.status_code, response.text)
    refused = client.get("/models", params={"use_case": "\x00"})
    assert refused.status_code in (404, 422), refused.text  # SQLite holds NUL: no such use case
