"""The gate refuses a result that does not belong to its job: another patient, another study, another
frame of reference, or instances the job never had. Real results: the example application's SEG and SR
of a phantom study, and an application whose warm process leaks one job's identity into the next."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from hounsfield.config import Settings
from hounsfield.db import Event, Job, JobState, Result
from hounsfield.exporter.identity import JobIdentity, identity_problems
from hounsfield.worker.pipeline import WorkerContext, execute_job
from tests.services.exporter.conftest import run_example
from tests.support import routed_job, write_study


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobIdentity, pydicom.Dataset, pydicom.Dataset]:
    files, out = run_example(tmp_path_factory.mktemp("identity"), seed=52, shape=(8, 32, 32))
    identity = JobIdentity.of_inputs(str(pydicom.dcmread(files[0]).StudyInstanceUID), files)
    return identity, pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(out / "sr.dcm")


def test_the_applications_own_results_belong_to_its_job(
    example: tuple[JobIdentity, pydicom.Dataset, pydicom.Dataset],
) -> None:
    identity, seg, sr = example
    results = frozenset({str(seg.SOPInstanceUID), str(sr.SOPInstanceUID)})
    assert identity_problems(seg, identity, results) == []
    assert identity_problems(sr, identity, results) == [], "the SR references the CT and the job's own SEG"
    assert identity_problems(sr, identity) == ["1 referenced instance(s) are neither the job's input nor its results"]


@pytest.mark.parametrize(
    ("keyword", "problem"),
    [
        ("PatientID", "PatientID differs from the job's input"),
        ("PatientName", "PatientName differs from the job's input"),
        ("PatientBirthDate", "PatientBirthDate differs from the job's input"),
        ("StudyInstanceUID", "StudyInstanceUID is not the job's study"),
        ("FrameOfReferenceUID", "FrameOfReferenceUID is none of the input's"),
    ],
)
def test_another_patient_study_or_frame_of_reference_is_refused(
    example: tuple[JobIdentity, pydicom.Dataset, pydicom.Dataset], keyword: str, problem: str
) -> None:
    identity, seg, _ = example
    changed = copy.deepcopy(seg)
    value = {"PatientName": "Other^Patient", "PatientBirthDate": "19991231", "PatientID": "OTHER-0042"}
    setattr(changed, keyword, value.get(keyword, generate_uid()))
    problems = identity_problems(changed, identity, frozenset({str(seg.SOPInstanceUID)}))
    assert problems == [problem]
    assert "OTHER-0042" not in " ".join(problems) and "Other" not in " ".join(problems), "no values in the reasons"


def test_a_reference_to_an_instance_the_job_never_had_is_refused(
    example: tuple[JobIdentity, pydicom.Dataset, pydicom.Dataset], tmp_path: Path
) -> None:
    _, seg, _ = example
    _, other_files = write_study(tmp_path, seed=53, shape=(8, 32, 32))  # the same patient, another study
    other = JobIdentity.of_inputs(str(seg.StudyInstanceUID), other_files)
    problems = identity_problems(seg, other, frozenset({str(seg.SOPInstanceUID)}))
    assert "FrameOfReferenceUID is none of the input's" in problems
    assert any("referenced instance(s) are neither the job's input nor its results" in p for p in problems)


def test_an_application_leaking_the_previous_jobs_patient_never_reaches_the_pacs(
    settings: Settings, tmp_path: Path
) -> None:
    """Two studies of two patients, one warm application process: the second job's results carry the
    first job's patient and study. The gate refuses them, the job fails with the reason, nothing is kept."""
    app = {"app": "tests.services.worker.leaking_app:LeakingApp", "destinations": []}
    first, first_job = routed_job(tmp_path / "a", settings, 61, patient_id="PAT-A", **app)
    second, second_job = routed_job(tmp_path / "b", settings, 62, patient_id="PAT-B", **app)
    shared = WorkerContext(
        settings=second.settings, db=second.db, store=second.store, in_process=first.runtimes.in_process
    )
    try:
        assert execute_job(first, first_job.id) is JobState.DONE
        assert execute_job(shared, second_job.id) is JobState.FAILED
        with second.db.session() as session:
            failed = session.get(Job, second_job.id)
            assert failed is not None and failed.error is not None
            assert "does not belong to this job" in failed.error and "PatientID differs" in failed.error
            assert "StudyInstanceUID is not the job's study" in failed.error and "PAT-A" not in failed.error
            assert session.query(Result).filter(Result.job_id == second_job.id).count() == 0, "nothing kept"
            kinds = [e.kind for e in session.query(Event).filter(Event.job_id == second_job.id).order_by(Event.id)]
        assert kinds[-1] == "job-failed" and "job-exporting" not in kinds
    finally:
        first.runtimes.in_process.close()
        first.db.dispose()
        second.db.dispose()
