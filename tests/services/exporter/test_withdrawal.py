"""Withdrawing a job's results: IOCM rejection notes reach the PACS that has them, and are recorded.

Real components: Orthanc as the PACS (stopped and restarted for the outage), the example application
run by the worker's own pipeline, dciodvfy at the validation gate, the registry's API and the CLI on
SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml
from fastapi.testclient import TestClient
from orthanc_api_client import OrthancApiClient
from sqlalchemy import select
from typer.testing import CliRunner

from hounsfield.access import Role
from hounsfield.catalog import prepare_database
from hounsfield.cli import app as cli
from hounsfield.config import DestinationSettings, Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Event, Job, JobState, Result
from hounsfield.db.access import AuditEntry
from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.registry.app import create_app
from hounsfield.router.routing import Router
from hounsfield.worker.pipeline import WorkerContext, _export, execute_job
from tests.support import bearer, index_series, routed_job
from tests.support import settings_on_both_backends as settings_on_both_backends  # the settings fixture, on both

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    orthanc = LocalOrthanc(tmp_path_factory.mktemp("orthanc"), aet="IOCMPACS")
    orthanc.start()
    yield orthanc
    orthanc.stop()


def _dimse(pacs: LocalOrthanc, **options: object) -> DestinationSettings:
    return DestinationSettings.model_validate(
        {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port, "retries": 0, **options}
    )


def _done_job(settings: Settings, tmp_path: Path, seed: int) -> tuple[WorkerContext, Job]:
    """A clinical job of the example application on a stored study, its SEG and SR delivered."""
    context, job = routed_job(tmp_path, settings, seed, mode="clinical", destinations=sorted(settings.destinations))
    assert execute_job(context, job.id) is JobState.DONE
    return context, job


def _notes_in(pacs: LocalOrthanc, study_uid: str) -> list[pydicom.Dataset]:
    orthanc = OrthancApiClient(pacs.url)
    found = []
    for instance_id in orthanc.studies.get_instances_ids(orthanc.studies.lookup(study_uid)):
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instances.get_file(instance_id)))
        if ds.SOPClassUID == KOS:
            found.append(ds)
    return found


def _referenced(note: pydicom.Dataset) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in note.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def test_withdrawn_results_get_a_rejection_note_titled_for_each_pacs(
    settings: Settings, tokens: dict[Role, str], pacs: LocalOrthanc, tmp_path: Path
) -> None:
    destinations = {"pacs": _dimse(pacs), "safety-aware": _dimse(pacs, patient_safety_rejection=True)}
    settings = settings.model_copy(update={"destinations": destinations})
    context, job = _done_job(settings, tmp_path, seed=41)
    with context.db.session() as session:
        results = session.scalars(select(Result).where(Result.job_id == job.id)).all()
    withdrawn = {r.sop_instance_uid for r in results}
    assert len(withdrawn) == 2 and all(sorted(r.exported_to) == ["pacs", "safety-aware"] for r in results)

    body = {"reason": "patient-safety", "comment": "vendor recall of 1.0.0"}
    with TestClient(create_app(context.settings, enqueue=lambda job: None)) as client:
        url = f"/jobs/{job.id}/withdraw"
        assert client.post(url, json=body, headers=bearer(tokens[Role.MODEL_DEVELOPER])).status_code == 403
        assert (
            client.post("/jobs/nope/withdraw", json=body, headers=bearer(tokens[Role.RADIOLOGIST])).status_code == 404
        )
        assert client.post(url, json={"reason": "boredom"}, headers=bearer(tokens[Role.RADIOLOGIST])).status_code == 422
        answer = client.post(url, json=body, headers=bearer(tokens[Role.RADIOLOGIST]))
        assert answer.status_code == 200, answer.text
        notes = answer.json()["notes"]
        assert notes["pacs"]["title"].startswith("(113001, DCM") and notes["pacs"]["delivered_at"]
        assert notes["safety-aware"]["title"].startswith("(113037, DCM") and notes["safety-aware"]["delivered_at"]
        again = client.post(url, json=body, headers=bearer(tokens[Role.RADIOLOGIST]))
        assert again.status_code == 200 and again.json()["notes"] == notes, "a second call sends nothing new"
        other = client.post(url, json={"reason": "quality"}, headers=bearer(tokens[Role.ADMIN]))
        assert other.status_code == 409 and "patient-safety" in other.json()["detail"]

    in_pacs = _notes_in(pacs, job.study_instance_uid)
    assert sorted(str(n.ConceptNameCodeSequence[0].CodeValue) for n in in_pacs) == ["113001", "113037"]
    assert {str(n.SOPInstanceUID) for n in in_pacs} == {notes[d]["sop_instance_uid"] for d in destinations}
    assert all(_referenced(n) == withdrawn for n in in_pacs), "each note references exactly the withdrawn SEG and SR"

    with context.db.session() as session:
        kinds = session.scalars(select(Event.kind).where(Event.job_id == job.id)).all()
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "results.withdraw")).all()
    assert kinds.count("results-withdrawn") == 1 and kinds.count("rejection-note-delivered") == 2
    assert [(a.entity_id, a.after["reason"]) for a in audit] == [(job.id, "patient-safety")]
    _export(context, job, ["pacs"], "clinical")  # an export retried after the withdrawal
    with context.db.session() as session:
        assert "export-withdrawn" in session.scalars(select(Event.kind).where(Event.job_id == job.id)).all()
    context.db.dispose()


def test_a_pacs_down_at_withdrawal_gets_its_note_when_asked_again(settings: Settings, tmp_path: Path) -> None:
    pacs = LocalOrthanc(tmp_path / "orthanc", aet="LATEPACS")
    pacs.start()
    try:
        settings = settings.model_copy(update={"destinations": {"late": _dimse(pacs)}})
        context, job = _done_job(settings, tmp_path, seed=42)
        config = tmp_path / "hounsfield.yaml"
        config.write_text(yaml.safe_dump(context.settings.model_dump(mode="json", by_alias=True)))
        pacs.stop()
        runner = CliRunner()
        args = [
            "results",
            "withdraw",
            job.id,
            "--reason",
            "quality",
            "--comment",
            "wrong series",
            "--config",
            str(config),
        ]
        down = runner.invoke(cli, args)
        assert down.exit_code == 1 and "late\tnot delivered" in down.stdout and "unreachable" in down.stdout
        pacs.start()
        up = runner.invoke(cli, args)
        assert up.exit_code == 0, up.output
        assert "late\tdelivered\t(113001, DCM" in up.stdout
        (note,) = _notes_in(pacs, job.study_instance_uid)
        assert str(note.ConceptNameCodeSequence[0].CodeMeaning) == "Rejected for Quality Reasons"
    finally:
        pacs.stop()
    with context.db.session() as session:
        kinds = session.scalars(select(Event.kind).where(Event.job_id == job.id).order_by(Event.id)).all()
    assert kinds[-3:] == ["results-withdrawn", "rejection-note-failed", "rejection-note-delivered"]
    context.db.dispose()


def test_a_job_without_results_cannot_be_withdrawn(settings: Settings, tokens: dict[Role, str]) -> None:
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    study_uid = "1.2.826.0.1.3680043.10.1392.77"
    index_series(db, study_uid, f"{study_uid}.1", 8)
    (job,) = Router(settings, db, lambda job: None).on_study_complete(
        StudyComplete(study_instance_uid=study_uid, trigger="manual")
    )
    with TestClient(create_app(settings, enqueue=lambda job: None)) as client:
        answer = client.post(f"/jobs/{job.id}/withdraw", json={"reason": "quality"}, headers=bearer(tokens[Role.ADMIN]))
    assert answer.status_code == 409 and "no results" in answer.json()["detail"]
    db.dispose()
