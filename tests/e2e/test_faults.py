"""Faults on the whole path with real services: the PACS goes away while results are ready.

Its own Orthanc and ``hounsfield up`` (the PACS is stopped and started here, which the other
end-to-end tests must not see).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from orthanc_api_client import OrthancApiClient

from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.demo.stack import HounsfieldStack
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series
from tests.e2e.conftest import running_stack

pytestmark = pytest.mark.e2e
OUTAGE_S = 60.0


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pacs: LocalOrthanc, request: pytest.FixtureRequest
) -> Iterator[HounsfieldStack]:
    overrides = {"worker": {"export_retry_first_s": 2.0, "export_retry_max_s": 8.0}}
    with running_stack(tmp_path_factory, pacs, request, overrides=overrides) as running:
        yield running


def _job(stack: HounsfieldStack, study_uid: str) -> dict | None:
    study = stack.study(study_uid)
    return study["jobs"][0] if study and study["jobs"] else None


def test_results_wait_for_a_stopped_pacs_and_arrive_once(
    stack: HounsfieldStack, pacs: LocalOrthanc, tmp_path: Path
) -> None:
    files = write_dicom_series(make_phantom(31337, n_lesions=1), tmp_path / "ct", uid_seed="fault-31337")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs.stop()
    stopped_at = time.monotonic()
    try:
        stack.send(files)
        deadline = time.monotonic() + 120
        while (job := _job(stack, study_uid)) is None or job["state"] != "waiting":
            assert job is None or job["state"] not in ("done", "failed"), job
            assert time.monotonic() < deadline, "the job never started waiting for the PACS"
            time.sleep(0.5)
        assert sorted(r["kind"] for r in job["results"]) == ["SEG", "SR"], "results are kept while waiting"
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
    finally:
        pacs.start()

    study = stack.wait_for_study(study_uid, timeout=120)
    (job,) = study["jobs"]
    assert job["state"] == "done", job["error"]
    assert job["timings"]["export_wait"] >= OUTAGE_S - 25, job["timings"]  # it waited (results came ~20 s in)
    kinds = [e["kind"] for e in study["events"]]
    assert "export-waiting" in kinds and "export-retry" in kinds and kinds[-1] == "job-done"
    assert all(r["exported_to"] == ["pacs"] for r in job["results"])
    orthanc = OrthancApiClient(pacs.url)
    stored = orthanc.studies.get_instances_ids(orthanc.studies.lookup(study_uid))
    assert len(stored) == 2, "SEG and SR arrived exactly once"
