"""C-STORE export against a real Orthanc, including one that is down at first, and over TLS to dcmtk's storescp."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from orthanc_api_client import OrthancApiClient

from hounsfield.config import DestinationSettings, OutboundTLSSettings
from hounsfield.demo.orthanc import LocalOrthanc, free_port
from hounsfield.exporter.delivery import DestinationUnreachable, ExportFailed, deliver
from tests.pki import PKI, make_pki
from tests.support import write_study

STORESCP = "/usr/bin/storescp"
ENV = {**os.environ, "TCP_NODELAY": "1"}


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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_pacs(tmp_path: Path) -> Iterator[Callable[[Path, Path, Path], tuple[int, Path]]]:
    """dcmtk's storescp on a TLS port that requires a client certificate signed by the CA it is given."""
    started: list[subprocess.Popen[bytes]] = []

    def start(cert: Path, key: Path, ca: Path) -> tuple[int, Path]:
        port, received = free_port(), tmp_path / f"received-{len(started)}"
        received.mkdir()
        argv = [STORESCP, "+tls", str(key), str(cert), "+cf", str(ca), "-aet", "TLSPACS", "-od", str(received)]
        log = (tmp_path / f"storescp-{len(started)}.log").open("wb")
        started.append(subprocess.Popen([*argv, str(port)], env=ENV, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return port, received
            time.sleep(0.05)
        raise RuntimeError("storescp did not listen within 10 s")

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def _tls_destination(port: int, **tls: object) -> DestinationSettings:
    return DestinationSettings(
        ae_title="TLSPACS", host="127.0.0.1", port=port, retries=0, tls=OutboundTLSSettings.model_validate(tls)
    )


def test_results_go_over_tls_to_a_pacs_that_requires_a_client_certificate(
    tls_pacs: Callable[[Path, Path, Path], tuple[int, Path]], pki: PKI, tmp_path: Path
) -> None:
    _, files = write_study(tmp_path / "study", seed=23, shape=(4, 32, 32))
    port, received = tls_pacs(pki.server_cert, pki.server_key, pki.ca)
    destination = _tls_destination(port, ca_bundle=pki.ca, certificate=pki.client_cert, private_key=pki.client_key)
    assert deliver(files, destination, calling_ae="HOUNSFIELD") == 1
    stored = sorted(str(pydicom.dcmread(path).SOPInstanceUID) for path in received.iterdir())
    assert stored == sorted(str(pydicom.dcmread(path).SOPInstanceUID) for path in files)


def test_tls_refuses_a_pacs_it_cannot_verify_and_never_falls_back_to_plain(
    tls_pacs: Callable[[Path, Path, Path], tuple[int, Path]], pki: PKI, tmp_path: Path
) -> None:
    _, files = write_study(tmp_path / "study", seed=24, shape=(4, 32, 32))
    client = {"certificate": pki.client_cert, "private_key": pki.client_key}
    rogue_port, rogue_received = tls_pacs(pki.rogue_server_cert, pki.rogue_server_key, pki.ca)
    with pytest.raises(DestinationUnreachable, match="over TLS"):
        deliver(files, _tls_destination(rogue_port, ca_bundle=pki.ca, **client), calling_ae="HOUNSFIELD")
    port, received = tls_pacs(pki.server_cert, pki.server_key, pki.ca)
    wrong_name = _tls_destination(port, ca_bundle=pki.ca, server_hostname="pacs.elsewhere.example", **client)
    with pytest.raises(DestinationUnreachable, match="over TLS"):
        deliver(files, wrong_name, calling_ae="HOUNSFIELD")
    with pytest.raises(DestinationUnreachable):  # the PACS requires a client certificate
        deliver(files, _tls_destination(port, ca_bundle=pki.ca), calling_ae="HOUNSFIELD")
    plain = DestinationSettings(ae_title="TLSPACS", host="127.0.0.1", port=port, retries=0)
    with pytest.raises(DestinationUnreachable):
        deliver(files, plain, calling_ae="HOUNSFIELD")
    assert not any(rogue_received.iterdir()) and not any(received.iterdir())
    with pytest.raises(ExportFailed, match="TLS settings cannot be used") as unusable:
        deliver(files, _tls_destination(port, ca_bundle=tmp_path / "missing.pem"), calling_ae="HOUNSFIELD")
    assert not isinstance(unusable.value, DestinationUnreachable), "a configuration error is not retried"
