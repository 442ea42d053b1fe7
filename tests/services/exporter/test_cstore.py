"""C-STORE export against a real Orthanc, including one that is down at first."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from orthanc_api_client import OrthancApiClient

from hounsfield.config import DestinationSettings
from hounsfield.demo.orthanc import LocalOrthanc, free_port
from hounsfield.exporter.delivery import DestinationUnreachable, deliver
from tests.support import write_study


def test_results_wait_for_a_pacs_that_comes_back(tmp_path: Path) -> None:
    study_uid, files = write_study(tmp_path / "study", seed=21, shape=(8, 32, 32))
    pacs = LocalOrthanc(tmp_path / "orthanc", aet="LATEPACS")
    destination = DestinationSettings(
        ae_title="LATEPACS", host="127.0.0.1", port=pacs.dicom_port, retries=5, retry_backoff_s=0.5
    )
    starter = threading.Timer(1.0, pacs.start)
    starter.start()
    try:
        attempts = deliver(files, destination, calling_ae="HOUNSFIELD")
        starter.join()
        assert attempts > 1, "the first attempt found the PACS down"
        orthanc = OrthancApiClient(pacs.url)
        assert len(orthanc.studies.get_instances_ids(orthanc.studies.lookup(study_uid))) == len(files)
    finally:
        starter.join()
        pacs.stop()


def test_an_unreachable_pacs_fails_with_a_reason(tmp_path: Path) -> None:
    _, files = write_study(tmp_path, seed=22, shape=(8, 32, 32))
    destination = DestinationSettings(
        ae_title="GONE", host="127.0.0.1", port=free_port(), retries=1, retry_backoff_s=0.1
    )
    started = time.monotonic()
    with pytest.raises(
        DestinationUnreachable, match=r"GONE@127.0.0.1:\d+ unreachable after 2 attempt\(s\): association"
    ):
        deliver(files, destination, calling_ae="HOUNSFIELD")
    assert time.monotonic() - started < 30
