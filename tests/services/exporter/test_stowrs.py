"""STOW-RS export against a real Orthanc with its DICOMweb plugin (Debian package orthanc-dicomweb).

Real components: Orthanc as the PACS (with and without HTTP basic authentication), the worker's own
pipeline running the example application on a stored study, and the job's recorded deliveries.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from orthanc_api_client import OrthancApiClient
from pydantic import ValidationError
from sqlalchemy import select

from hounsfield.config import DestinationSettings, Settings
from hounsfield.db import Job, JobState, Result
from hounsfield.demo.orthanc import LocalOrthanc, free_port
from hounsfield.exporter.delivery import DestinationUnreachable, ExportFailed, deliver
from hounsfield.worker.pipeline import execute_job
from tests.support import routed_job, write_study


@pytest.fixture(scope="module")
def dicomweb_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    pacs = LocalOrthanc(tmp_path_factory.mktemp("orthanc"), aet="WEBPACS", dicomweb=True)
    pacs.start()
    yield pacs
    pacs.stop()


def _stow(url: str, **options: object) -> DestinationSettings:
    return DestinationSettings.model_validate({"protocol": "stow-rs", "url": url, **options})


def test_results_are_stored_over_stow_rs_and_found_over_qido(tmp_path: Path, dicomweb_pacs: LocalOrthanc) -> None:
    study_uid, files = write_study(tmp_path / "study", seed=31, shape=(6, 32, 32))
    assert deliver(files, _stow(dicomweb_pacs.dicomweb_url), calling_ae="HOUNSFIELD") == 1
    found = DICOMwebClient(dicomweb_pacs.dicomweb_url).search_for_instances(study_instance_uid=study_uid)
    expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert {item["00080018"]["Value"][0] for item in found} == expected


def test_an_instance_the_pacs_cannot_store_fails_with_its_reason(tmp_path: Path, dicomweb_pacs: LocalOrthanc) -> None:
    _, files = write_study(tmp_path / "study", seed=32, shape=(2, 16, 16))
    broken = pydicom.dcmread(files[0])
    del broken.SeriesInstanceUID  # Orthanc cannot file an instance without its series
    broken.save_as(files[0])
    with pytest.raises(ExportFailed, match=r"export to STOW-RS http://127\.0\.0\.1:\d+/dicom-web: refused") as failed:
        deliver(files, _stow(dicomweb_pacs.dicomweb_url, retries=0), calling_ae="HOUNSFIELD")
    assert not isinstance(failed.value, DestinationUnreachable)


def test_basic_authentication_takes_its_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study_uid, files = write_study(tmp_path / "study", seed=33, shape=(2, 16, 16))
    pacs = LocalOrthanc(tmp_path / "orthanc", aet="LOCKEDPACS", dicomweb=True, users={"hounsfield": "s3cret"})
    pacs.start()
    try:
        destination = _stow(
            pacs.dicomweb_url, username="hounsfield", password_env="PACS_PASSWORD", retries=0, allow_insecure_http=True
        )  # the test's Orthanc speaks http only
        with pytest.raises(ExportFailed, match="the password's variable PACS_PASSWORD is not set"):
            deliver(files, destination, calling_ae="HOUNSFIELD")
        monkeypatch.setenv("PACS_PASSWORD", "wrong")
        with pytest.raises(ExportFailed, match="refused the request: HTTP 401"):
            deliver(files, destination, calling_ae="HOUNSFIELD")
        monkeypatch.setenv("PACS_PASSWORD", "s3cret")
        deliver(files, destination, calling_ae="HOUNSFIELD")
        orthanc = OrthancApiClient(pacs.url, user="hounsfield", pwd="s3cret")
        assert len(orthanc.studies.get_instances_ids(orthanc.studies.lookup(study_uid))) == len(files)
    finally:
        pacs.stop()


def test_an_unreachable_dicomweb_service_is_worth_waiting_for(tmp_path: Path) -> None:
    _, files = write_study(tmp_path, seed=34, shape=(2, 16, 16))
    destination = _stow(f"http://127.0.0.1:{free_port()}/dicom-web", retries=1, retry_backoff_s=0.1)
    started = time.monotonic()
    with pytest.raises(DestinationUnreachable, match=r"unreachable after 2 attempt\(s\): ConnectionError"):
        deliver(files, destination, calling_ae="HOUNSFIELD")
    assert time.monotonic() - started < 10, "the destination's retries only, not the client library's own"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"protocol": "stow-rs"}, "protocol stow-rs needs url"),
        ({"protocol": "dimse", "host": "pacs"}, "protocol dimse \\(C-STORE\\) needs ae_title, port"),
        ({"protocol": "stow-rs", "url": "ftp://pacs"}, "url"),
        ({"protocol": "stow-rs", "url": "http://pacs", "username": "u"}, "username and password_env go together"),
        (
            {"protocol": "stow-rs", "url": "http://pacs", "token_env": "T", "username": "u", "password_env": "P"},
            "choose one of token_env",
        ),
    ],
)
def test_a_destination_missing_what_its_protocol_needs_is_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DestinationSettings.model_validate(options)


@pytest.mark.parametrize("mode", ["clinical", "shadow"])
def test_a_job_delivers_its_seg_and_sr_over_stow_rs_and_shadow_never_reaches_a_clinical_one(
    tmp_path: Path, settings: Settings, dicomweb_pacs: LocalOrthanc, mode: str
) -> None:
    settings = settings.model_copy(update={"destinations": {"web": _stow(dicomweb_pacs.dicomweb_url)}})
    context, job = routed_job(tmp_path, settings, 35 if mode == "clinical" else 36, destinations=["web"], mode=mode)
    db, study_uid = context.db, job.study_instance_uid
    assert execute_job(context, job.id) is JobState.DONE
    with db.session() as session:
        results = session.scalars(select(Result).where(Result.job_id == job.id)).all()
        assert session.get(Job, job.id).state is JobState.DONE  # type: ignore[union-attr]
    assert sorted(r.kind for r in results) == ["SEG", "SR"]
    found = DICOMwebClient(dicomweb_pacs.dicomweb_url).search_for_instances(study_instance_uid=study_uid)
    if mode == "clinical":
        assert {item["00080018"]["Value"][0] for item in found} == {r.sop_instance_uid for r in results}
        assert all(r.exported_to == ["web"] for r in results)
    else:
        assert found == [] and all(not r.exported_to for r in results)
    db.dispose()
