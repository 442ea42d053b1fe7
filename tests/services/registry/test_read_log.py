"""Reads of patient data are logged: who, which route, how many items; never the patient data itself."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from hounsfield.access import Role
from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database
from hounsfield.db.index import IndexedInstance, record_instance
from hounsfield.registry.app import create_app
from hounsfield.registry.read_log import READS_LOGGER
from hounsfield.router.routing import Router
from tests.support import bearer

STUDY = "1.2.826.0.1.3680043.10.1392.77"
PATIENT_ID, PATIENT_NAME, ACCESSION = "HF-PATIENT-7731", "DOE^JANE", "ACC-55123"


def _index_study(db: Database, count: int = 10) -> None:
    """A CT series of ``count`` instances of one identifiable patient."""
    for i in range(count):
        item = IndexedInstance(
            study_instance_uid=STUDY, series_instance_uid=f"{STUDY}.1", sop_instance_uid=f"{STUDY}.1.{i}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
            patient_id=PATIENT_ID, accession_number=ACCESSION, study_date="20260101", modality="CT",
            series_number=1, series_description="axial", instance_number=i + 1, calling_ae="CT01",
            called_ae="HOUNSFIELD", tags={"Modality": "CT", "PatientName": PATIENT_NAME}, path=f"/x/{i}.dcm",
            size=1, sha256="0" * 64, revision=0,
        )  # fmt: skip
        with db.session() as session:
            record_instance(session, item)


def test_every_read_is_logged_without_patient_data(
    settings: Settings, tokens: dict[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(settings.sqlalchemy_url)
    client = TestClient(create_app(settings), headers=bearer(tokens[Role.VIEWER]))
    _index_study(db)
    queued = []
    Router(settings, db, queued.append).on_study_complete(StudyComplete(study_instance_uid=STUDY, trigger="manual"))
    (job,) = queued

    with caplog.at_level(logging.INFO, logger=READS_LOGGER):
        assert client.get("/studies").status_code == 200
        assert client.get(f"/studies/{STUDY}").status_code == 200
        assert client.get("/jobs", params={"study_uid": STUDY}).status_code == 200
        assert client.get(f"/jobs/{job.id}", headers=bearer(tokens[Role.RADIOLOGIST])).status_code == 200
        assert client.get("/results", params={"job_id": job.id}).status_code == 200
    reads = [r for r in caplog.records if r.name == READS_LOGGER]
    assert [(r.levelno, r.getMessage()) for r in reads] == [
        (logging.INFO, "GET /studies read by test-viewer (viewer): 1 item(s)"),
        (logging.INFO, "GET /studies/{study_uid} read by test-viewer (viewer): 1 item(s)"),
        (logging.INFO, "GET /jobs read by test-viewer (viewer): 1 item(s)"),
        (logging.INFO, "GET /jobs/{job_id} read by test-radiologist (radiologist): 1 item(s)"),
        (logging.INFO, "GET /results read by test-viewer (viewer): 0 item(s)"),
    ]
    for secret in (STUDY, PATIENT_ID, PATIENT_NAME, ACCESSION, job.id):
        assert secret not in caplog.text, "no UID, patient ID, name or accession number in the read log"


def test_refused_reads_are_not_logged_as_reads(
    settings: Settings, tokens: dict[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    client = TestClient(create_app(settings))
    with caplog.at_level(logging.INFO, logger=READS_LOGGER):
        assert client.get("/studies").status_code == 401
        assert client.get("/studies", headers=bearer(tokens[Role.SENDER])).status_code == 403
        assert client.get(f"/studies/{STUDY}", headers=bearer(tokens[Role.VIEWER])).status_code == 404
        assert client.get("/jobs", params={"limit": 0}, headers=bearer(tokens[Role.VIEWER])).status_code == 422
    assert [r for r in caplog.records if r.name == READS_LOGGER] == []
