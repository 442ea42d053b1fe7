"""STOW-RS as senders see it: hand-built multipart bodies, dicomweb-client and Orthanc against the registry."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from requests import HTTPError
from sqlalchemy import func, select

from hounsfield.access import Role
from hounsfield.config import Settings
from hounsfield.db import Database, Event, Instance, Job, Series, Study, StudyState
from hounsfield.db.access import AuditEntry
from hounsfield.demo.orthanc import free_port
from hounsfield.dicom_status import Status
from hounsfield.listener.storage import Received, part10_bytes
from hounsfield.registry import stow as stow_api
from hounsfield.registry.app import create_app
from tests.support import Order, bearer, wait_for, write_study

BOUNDARY = "hounsfield-test-boundary-7f3a"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAILED, REFERENCED, RETRIEVE_URL = "00081198", "00081199", "00081190"
SOP_CLASS, SOP_INSTANCE, FAILURE_REASON = "00081150", "00081155", "00081197"


def _body(parts: list[bytes], *, closed: bool = True, part_type: str = "application/dicom") -> bytes:
    chunks = [f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n" for part in parts]
    return b"".join(chunks) + (f"--{BOUNDARY}--\r\n".encode() if closed else b"")


def _dataset_bytes(part10: bytes) -> bytes:
    """The dataset of a Part 10 file as encoded, without preamble and file meta."""
    stream = BytesIO(part10)
    read_preamble(stream, False)
    read_dataset(stream, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    return part10[stream.tell() :]


def _relabelled(path: Path, *, implicit: bool, claimed_syntax: str) -> bytes:
    """A Part 10 file whose meta names ``claimed_syntax`` over a dataset encoded otherwise."""
    ds = pydicom.dcmread(path)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return part10_bytes(
        buffer.getvalue(),
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=claimed_syntax,
    )


def _failures(answer: dict) -> dict[str, int]:
    return {
        item[SOP_INSTANCE].get("Value", [""])[0]: item[FAILURE_REASON]["Value"][0] for item in answer[FAILED]["Value"]
    }


def _referenced(answer: dict) -> list[str]:
    return [item[SOP_INSTANCE]["Value"][0] for item in answer.get(REFERENCED, {}).get("Value", [])]


def _instance_count(db: Database, study_uid: str | None = None) -> int:
    query = select(func.count()).select_from(Instance)
    if study_uid is not None:
        query = query.join(Series).where(Series.study_instance_uid == study_uid)
    with db.session() as session:
        return int(session.scalar(query) or 0)


@pytest.fixture
def sender(tokens: dict[Role, str]) -> dict[str, str]:
    """Bearer headers of a sender (a PACS pushing over STOW-RS)."""
    return bearer(tokens[Role.SENDER])


@pytest.fixture
def stow(settings: Settings, sender: dict[str, str]) -> Iterator[tuple[TestClient, list[Job], Database]]:
    """The registry app with its lifespan running (tracker and router), jobs appended to a list."""
    queued: list[Job] = []
    app = create_app(settings, enqueue=queued.append)
    with TestClient(app, headers=sender) as client:
        yield client, queued, app.state.db


@pytest.fixture
def served(settings: Settings, tokens: dict[Role, str]) -> Iterator[tuple[str, Database]]:
    """The registry app on a real uvicorn server (loopback, free port) for out-of-process peers."""
    app = create_app(settings, enqueue=lambda job: None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    yield f"http://127.0.0.1:{port}", app.state.db
    server.should_exit = True
    thread.join(timeout=10)


def test_study_is_stored_indexed_and_answered(
    stow: tuple[TestClient, list[Job], Database], settings: Settings, tmp_path: Path
) -> None:
    client, _, db = stow
    study_uid, files = write_study(tmp_path / "ct", seed=21)
    sent = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f.read_bytes() for f in files}

    answer = client.post("/dicomweb/studies", content=_body(list(sent.values())), headers={"Content-Type": STOW_TYPE})

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    body = answer.json()
    assert FAILED not in body
    assert body[RETRIEVE_URL]["Value"] == [f"http://testserver/dicomweb/studies/{study_uid}"]
    assert sorted(_referenced(body)) == sorted(sent)
    for item in body[REFERENCED]["Value"]:
        assert item[SOP_CLASS]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
        url = item[RETRIEVE_URL]["Value"][0]
        assert url.startswith(f"http://testserver/dicomweb/studies/{study_uid}/series/")
        assert url.endswith(f"/instances/{item[SOP_INSTANCE]['Value'][0]}")
    with db.session() as session:
        instances = session.scalars(select(Instance)).all()
        series = session.scalars(select(Series)).all()
        study = session.get(Study, study_uid)
        assert study is not None and study.accession_number == "HF0001"
        assert [(s.calling_ae, s.called_ae) for s in series] == [("STOW-RS", settings.listener.ae_title)]
        assert sorted(i.sop_instance_uid for i in instances) == sorted(sent)
        for instance in instances:
            stored = Path(instance.path).read_bytes()
            assert Path(instance.path).is_relative_to(settings.data_dir.resolve())
            # stored as it arrived: the same dataset bytes behind a file meta of our own
            assert _dataset_bytes(stored) == _dataset_bytes(sent[instance.sop_instance_uid])
            assert instance.transfer_syntax_uid == ExplicitVRLittleEndian


@pytest.mark.filterwarnings("ignore:Expected explicit VR, but found implicit VR")
def test_partial_failure_names_each_failed_instance(
    stow: tuple[TestClient, list[Job], Database], tmp_path: Path
) -> None:
    client, _, db = stow
    study_uid, files = write_study(tmp_path / "a", seed=22)
    other_uid, others = write_study(tmp_path / "b", seed=23, shape=(2, 16, 16))
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    other = pydicom.dcmread(others[0], stop_before_pixels=True).SOPInstanceUID
    parts = [
        files[0].read_bytes(),
        files[1].read_bytes(),
        others[0].read_bytes(),  # another study on a study-scoped URL
        _relabelled(files[2], implicit=False, claimed_syntax=DeflatedExplicitVRLittleEndian),  # meta lies: deflated
        _relabelled(files[3], implicit=True, claimed_syntax=ExplicitVRLittleEndian),  # meta lies: explicit VR
        _relabelled(files[4], implicit=False, claimed_syntax="1.2.826.0.1.3680043.10.1392.99"),  # unknown syntax
        b"this is not a DICOM file",
    ]

    answer = client.post(f"/dicomweb/studies/{study_uid}", content=_body(parts), headers={"Content-Type": STOW_TYPE})

    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert sorted(_referenced(body)) == sorted(uids[:2])
    assert _failures(body) == {other: 0xA900, uids[2]: 0xC210, uids[3]: 0xC210, uids[4]: 0xC122, "": 0xC210}
    assert body[RETRIEVE_URL]["Value"] == [f"http://testserver/dicomweb/studies/{study_uid}"]
    warnings = answer.headers.get_list("warning")
    assert any("StudyInstanceUID is not the study the request names (A900)" in w for w in warnings)
    assert any("encoded with implicit VR, not as its transfer syntax says (C210)" in w for w in warnings)
    assert any("not a DICOM Part 10 file" in w for w in warnings)
    assert any("transfer syntax this node does not take (C122)" in w for w in warnings)
    assert _instance_count(db, study_uid) == 2
    with db.session() as session:
        assert session.get(Study, other_uid) is None, "an instance of another study is not stored"


def test_nothing_stored_is_409(stow: tuple[TestClient, list[Job], Database], tmp_path: Path) -> None:
    client, _, db = stow
    study_uid, _ = write_study(tmp_path / "a", seed=24, shape=(2, 16, 16))
    _, others = write_study(tmp_path / "b", seed=25, shape=(2, 16, 16))
    answer = client.post(
        f"/dicomweb/studies/{study_uid}", content=_body([others[0].read_bytes()]), headers={"Content-Type": STOW_TYPE}
    )
    assert answer.status_code == 409
    assert list(_failures(answer.json()).values()) == [0xA900]
    assert REFERENCED not in answer.json() and RETRIEVE_URL not in answer.json()
    assert _instance_count(db) == 0


def test_a_resent_instance_is_a_success(stow: tuple[TestClient, list[Job], Database], tmp_path: Path) -> None:
    client, _, db = stow
    _, files = write_study(tmp_path / "ct", seed=26, shape=(2, 16, 16))
    data = files[0].read_bytes()
    first = client.post("/dicomweb/studies", content=_body([data]), headers={"Content-Type": STOW_TYPE})
    again = client.post("/dicomweb/studies", content=_body([data, data]), headers={"Content-Type": STOW_TYPE})
    assert first.status_code == again.status_code == 200
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    assert _referenced(again.json()) == [uid, uid]
    assert _instance_count(db) == 1
    with db.session() as session:
        instance = session.get(Instance, uid)
        assert instance is not None and instance.revision == 0
        assert len(list(Path(instance.path).parent.iterdir())) == 1, "no second file for the same bytes"
    metrics = client.get("/metrics").text
    assert 'hounsfield_listener_instances_total{outcome="stored",transport="stow-rs"} 1.0' in metrics
    assert 'hounsfield_listener_instances_total{outcome="duplicate",transport="stow-rs"} 2.0' in metrics


def test_with_a_metrics_port_the_metrics_leave_the_api_port(
    settings: Settings, sender: dict[str, str], tmp_path: Path
) -> None:
    """``registry.metrics_port`` (the chart sets it): Prometheus scrapes a port of its own, which an Ingress
    routing the API never reaches; the API's port answers 404 for ``/metrics``."""
    port = free_port()
    registry = settings.registry.model_copy(update={"metrics_port": port})
    app = create_app(settings.model_copy(update={"registry": registry}), enqueue=lambda job: None)
    _, files = write_study(tmp_path / "ct", seed=28, shape=(1, 16, 16))
    with TestClient(app, headers=sender) as client:
        stored = client.post(
            "/dicomweb/studies", content=_body([files[0].read_bytes()]), headers={"Content-Type": STOW_TYPE}
        )
        assert stored.status_code == 200
        assert client.get("/metrics").status_code == 404
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'hounsfield_listener_instances_total{outcome="stored",transport="stow-rs"} 1.0' in metrics
        assert "# TYPE hounsfield_drift_drifting gauge" in metrics  # input drift: served on the same port
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)  # stopped with the app


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        f"multipart/related; boundary={BOUNDARY}",
        f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
        f"multipart/form-data; boundary={BOUNDARY}",
    ],
)
def test_other_media_types_are_415(
    stow: tuple[TestClient, list[Job], Database], tmp_path: Path, content_type: str
) -> None:
    client, _, db = stow
    _, files = write_study(tmp_path / "ct", seed=27, shape=(2, 16, 16))
    answer = client.post(
        "/dicomweb/studies", content=_body([files[0].read_bytes()]), headers={"Content-Type": content_type}
    )
    assert answer.status_code == 415
    assert 'type="application/dicom"' in answer.json()["detail"]
    assert _instance_count(db) == 0


def test_broken_bodies_are_400(stow: tuple[TestClient, list[Job], Database], tmp_path: Path) -> None:
    client, _, db = stow
    _, files = write_study(tmp_path / "ct", seed=28, shape=(3, 16, 16))
    whole = _body([f.read_bytes() for f in files])
    cut = whole[: len(whole) - len(files[2].read_bytes()) // 2]  # inside the last part

    truncated = client.post("/dicomweb/studies", content=cut, headers={"Content-Type": STOW_TYPE})
    assert truncated.status_code == 400
    assert "closing boundary" in truncated.json()["detail"]
    assert "2 instance(s) complete before that were stored" in truncated.json()["detail"]
    assert _instance_count(db) == 2, "parts complete before the break are kept, the cut one is not"

    garbage = client.post("/dicomweb/studies", content=b"no boundary anywhere", headers={"Content-Type": STOW_TYPE})
    assert garbage.status_code == 400 and "malformed" in garbage.json()["detail"]
    empty = client.post("/dicomweb/studies", content=f"--{BOUNDARY}--\r\n", headers={"Content-Type": STOW_TYPE})
    assert empty.status_code == 400 and "no DICOM instance" in empty.json()["detail"]
    no_boundary = client.post(
        "/dicomweb/studies", content=whole, headers={"Content-Type": 'multipart/related; type="application/dicom"'}
    )
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["detail"]
    bad_url = client.post("/dicomweb/studies/not-a-uid", content=whole, headers={"Content-Type": STOW_TYPE})
    assert bad_url.status_code == 400 and "StudyInstanceUID" in bad_url.json()["detail"]
    assert _instance_count(db) == 2


def test_a_part_of_another_type_fails_alone(stow: tuple[TestClient, list[Job], Database], tmp_path: Path) -> None:
    client, _, _ = stow
    _, files = write_study(tmp_path / "ct", seed=29, shape=(1, 16, 16))
    body = _body([files[0].read_bytes()])
    json_part = f"--{BOUNDARY}\r\nContent-Type: application/dicom+json\r\n\r\n[{{}}]\r\n".encode()
    answer = client.post("/dicomweb/studies", content=json_part + body, headers={"Content-Type": STOW_TYPE})
    assert answer.status_code == 202
    assert list(_failures(answer.json()).values()) == [0xC210]
    assert any("not application/dicom" in w for w in answer.headers.get_list("warning"))


def test_bodies_above_the_limit_are_413(settings: Settings, sender: dict[str, str], tmp_path: Path) -> None:
    small = settings.model_copy(update={"registry": settings.registry.model_copy(update={"max_stow_body_mb": 1})})
    ds = pydicom.dcmread(write_study(tmp_path / "ct", seed=30, shape=(1, 16, 16))[1][0])
    ds.Rows, ds.Columns = 1024, 1024
    ds.PixelData = bytes(1024 * 1024 * 2)  # 2 MiB of pixels
    buffer = BytesIO()
    ds.save_as(buffer)
    body = _body([buffer.getvalue()])
    with TestClient(create_app(small, enqueue=lambda job: None), headers=sender) as client:
        declared = client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE})
        chunked = client.post(
            "/dicomweb/studies",
            content=(body[i : i + 65536] for i in range(0, len(body), 65536)),  # no Content-Length
            headers={"Content-Type": STOW_TYPE},
        )
        assert declared.status_code == chunked.status_code == 413
        assert "exceeds 1 MiB" in chunked.json()["detail"]
        assert _instance_count(Database(small.sqlalchemy_url)) == 0


@pytest.mark.filterwarnings("ignore:Expected explicit VR, but found implicit VR")
def test_large_instances_go_through_a_spool_file(
    stow: tuple[TestClient, list[Job], Database], settings: Settings, tmp_path: Path
) -> None:
    client, _, db = stow
    study_uid, files = write_study(tmp_path / "ct", seed=36, shape=(2, 16, 16))
    big = pydicom.dcmread(files[0])
    big.Rows, big.Columns = 2048, 2048
    big.PixelData = bytes(range(256)) * (2048 * 2048 * 2 // 256)  # 8 MiB: beyond the 4 MiB kept in memory
    buffer = BytesIO()
    big.save_as(buffer)
    lying = pydicom.dcmread(files[1])
    lying.Rows, lying.Columns = 2048, 2048
    lying.PixelData = bytes(2048 * 2048 * 2)
    lying_path = tmp_path / "lying.dcm"
    lying.save_as(lying_path)
    parts = [buffer.getvalue(), _relabelled(lying_path, implicit=True, claimed_syntax=ExplicitVRLittleEndian)]

    answer = client.post(f"/dicomweb/studies/{study_uid}", content=_body(parts), headers={"Content-Type": STOW_TYPE})

    assert answer.status_code == 202, answer.text
    assert _referenced(answer.json()) == [big.SOPInstanceUID]
    assert _failures(answer.json()) == {lying.SOPInstanceUID: 0xC210}
    with db.session() as session:
        instance = session.get(Instance, big.SOPInstanceUID)
        assert instance is not None
        assert _dataset_bytes(Path(instance.path).read_bytes()) == _dataset_bytes(buffer.getvalue())
    spool = settings.data_dir / "spool" / socket.gethostname() / "stow"
    assert spool.is_dir(), "the large parts were spooled"
    assert list(spool.iterdir()) == [], "no spool file is left behind, stored or refused"
    cut = _body([parts[1]])[: 6 << 20]  # the sender stops inside a spooled part
    assert client.post("/dicomweb/studies", content=cut, headers={"Content-Type": STOW_TYPE}).status_code == 400
    assert list(spool.iterdir()) == [], "an unfinished part's spool file is dropped"


def test_stow_study_is_completed_by_the_quiet_period_and_routed(
    settings: Settings, sender: dict[str, str], tmp_path: Path
) -> None:
    quiet = settings.model_copy(update={"listener": settings.listener.model_copy(update={"quiet_period_s": 2.0})})
    study_uid, files = write_study(tmp_path / "ct", seed=31)
    queued: list[Job] = []
    app = create_app(quiet, enqueue=queued.append)
    db: Database = app.state.db
    with TestClient(app, headers=sender) as client:
        halves = [files[:8], files[8:]]  # one study over two requests, as DICOMweb senders often do
        for half in halves:
            answer = client.post(
                "/dicomweb/studies", content=_body([f.read_bytes() for f in half]), headers={"Content-Type": STOW_TYPE}
            )
            assert answer.status_code == 200
            with db.session() as session:
                study = session.get(Study, study_uid)
                assert study is not None and study.state is StudyState.RECEIVING, "a request's end completes nothing"
        wait_for(lambda: len(queued) == 1)
        time.sleep(0.5)  # nothing more arrives after the first completion
    assert len(queued) == 1
    with db.session() as session:
        study = session.get(Study, study_uid)
        assert study is not None and study.state is StudyState.ROUTED
        assert study.completion_trigger == "quiet-period"
        jobs = session.scalars(select(Job).where(Job.study_instance_uid == study_uid)).all()
        assert [j.id for j in jobs] == [queued[0].id] and jobs[0].deployment == "ct-lesion-seg"
        kinds = [e.kind for e in session.scalars(select(Event).where(Event.study_instance_uid == study_uid))]
    assert kinds == ["study-complete", "job-queued"]
    assert _instance_count(db, study_uid) == len(files)


def test_stow_can_be_switched_off(settings: Settings, sender: dict[str, str], tmp_path: Path) -> None:
    off = settings.model_copy(update={"registry": settings.registry.model_copy(update={"stow_enabled": False})})
    with TestClient(create_app(off, enqueue=lambda job: None), headers=sender) as client:
        _, files = write_study(tmp_path / "ct", seed=32, shape=(1, 16, 16))
        answer = client.post(
            "/dicomweb/studies", content=_body([files[0].read_bytes()]), headers={"Content-Type": STOW_TYPE}
        )
        assert answer.status_code == 404
        assert "/dicomweb/studies" not in client.get("/openapi.json").json()["paths"]


def test_openapi_lists_the_stow_routes(stow: tuple[TestClient, list[Job], Database]) -> None:
    paths = stow[0].get("/openapi.json").json()["paths"]
    assert {"/dicomweb/studies", "/dicomweb/studies/{study_uid}"} <= set(paths)
    assert 'multipart/related; type="application/dicom"' in paths["/dicomweb/studies"]["post"]["requestBody"]["content"]


def test_dicomweb_client_stores_through_a_real_server(
    served: tuple[str, Database], sender: dict[str, str], tmp_path: Path
) -> None:
    url, db = served
    study_uid, files = write_study(tmp_path / "ct", seed=33, shape=(16, 256, 256))  # > 1 MB: sent chunked
    datasets = [pydicom.dcmread(f) for f in files]
    assert httpx.post(f"{url}/dicomweb/studies", content=b"", timeout=10).status_code == 401, "no credential"
    peer = DICOMwebClient(url=f"{url}/dicomweb", headers=sender)

    answer = peer.store_instances(datasets)

    assert len(answer.ReferencedSOPSequence) == len(files)
    assert "FailedSOPSequence" not in answer
    assert answer.RetrieveURL.endswith(f"/dicomweb/studies/{study_uid}")  # the host as the client named it
    assert _instance_count(db, study_uid) == len(files)
    _, others = write_study(tmp_path / "other", seed=34, shape=(1, 16, 16))
    with pytest.raises(HTTPError) as refused:
        peer.store_instances([pydicom.dcmread(others[0])], study_instance_uid=study_uid)
    assert refused.value.response.status_code == 409


@pytest.mark.skipif(not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists(), reason="orthanc-dicomweb")
def test_orthanc_pushes_a_study_over_stow(served: tuple[str, Database], sender: dict[str, str], tmp_path: Path) -> None:
    url, db = served
    study_uid, files = write_study(tmp_path / "ct", seed=35, shape=(8, 32, 32))
    peer = {"Url": f"{url}/dicomweb/", "HttpHeaders": sender}  # Orthanc sends the sender's token
    orthanc = _OrthancWithDicomWeb(tmp_path / "orthanc", servers={"hounsfield": peer})
    orthanc.start()
    try:
        for f in files:
            httpx.post(f"{orthanc.url}/instances", content=f.read_bytes(), timeout=30).raise_for_status()
        (orthanc_study,) = httpx.get(f"{orthanc.url}/studies", timeout=30).json()
        pushed = httpx.post(
            f"{orthanc.url}/dicom-web/servers/hounsfield/stow", json={"Resources": [orthanc_study]}, timeout=60
        )
        assert pushed.status_code == 200, pushed.text
    finally:
        orthanc.stop()
    assert _instance_count(db, study_uid) == len(files)


class _OrthancWithDicomWeb:
    """Orthanc with its DICOMweb plugin and ``servers`` as DICOMweb peers (REST only, no DICOM port)."""

    def __init__(self, folder: Path, *, servers: dict[str, dict[str, object]]) -> None:
        self.folder, self.servers = folder, servers
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "stow-peer", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "HttpPort": int(self.url.rsplit(":", 1)[1]),
            "DicomServerEnabled": False, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomWeb": {"Enable": True, "Servers": self.servers},
        }  # fmt: skip
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen([executable, str(self.folder / "orthanc.json")], stdout=log, stderr=log)
        wait_for(self._up, timeout=30)

    def _up(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "Orthanc exited; see orthanc.log"
        try:
            return httpx.get(f"{self.url}/system", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def test_each_stored_instance_was_synced_before_the_answer(
    stow: tuple[TestClient, list[Job], Database], settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STOW-RS answers once, for the whole request: every instance it lists as stored had its file and
    its folder fsynced before that answer was sent."""
    client, _, _ = stow
    _, files = write_study(tmp_path, seed=74, shape=(6, 32, 32))
    recorded = Order()
    recorded.record_fsyncs(monkeypatch)
    answer = client.post(
        "/dicomweb/studies", content=_body([p.read_bytes() for p in files]), headers={"Content-Type": STOW_TYPE}
    )
    assert answer.status_code == 200
    for uid in _referenced(answer.json()):
        recorded.add("answered", uid)  # the answer had left when the client saw it: every fsync before counts
    recorded.assert_files_synced_before("answered", settings.data_dir / "studies")
    assert len(_referenced(answer.json())) == len(files)


def _empty_parts(count: int) -> bytes:
    """``count`` empty parts without headers under boundary ``b``: 9 bytes each, as the outside review sent them."""
    return b"--b\r\n\r\n" + b"\r\n--b\r\n\r\n" * (count - 1) + b"\r\n--b--\r\n"


def _capped(settings: Settings, parts: int) -> Settings:
    return settings.model_copy(update={"registry": settings.registry.model_copy(update={"max_stow_parts": parts})})


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _stow_audit(db: Database) -> list[AuditEntry]:
    with db.session() as session:
        rows = list(
            session.scalars(select(AuditEntry).where(AuditEntry.action == "stow.store").order_by(AuditEntry.id))
        )
        session.expunge_all()
        return rows


def test_parts_beyond_max_stow_parts_are_413_before_they_are_parsed(
    stow: tuple[TestClient, list[Job], Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outside review's body: 250,000 empty parts in 2.25 MB. Refused at part 10,001 (the default
    ``registry.max_stow_parts``): the parts beyond it are never opened, and the request's allocations stay
    a few MiB, not the hundreds a per-part outcome and response item cost."""
    client, _, _ = stow
    opened = 0
    split = stow_api._split_part10

    def counted(head: bytearray) -> tuple[Dataset, int]:
        nonlocal opened
        opened += 1
        return split(head)

    monkeypatch.setattr(stow_api, "_split_part10", counted)
    body = _empty_parts(250_000)
    tracemalloc.start()
    try:
        answer = client.post(
            "/dicomweb/studies",
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 413, answer.text[:200]
    assert "more than 10000 parts (registry.max_stow_parts)" in answer.json()["detail"]
    assert opened == 10_000, "every part up to the limit counts, empty ones too; none beyond it is parsed"
    assert peak < 16 << 20, f"{peak / 2**20:.1f} MiB allocated at the peak"


def test_parts_complete_before_the_part_limit_stay_stored(
    settings: Settings, sender: dict[str, str], tmp_path: Path
) -> None:
    """``registry.max_stow_parts`` parts are taken; at the next one the request is 413, the parts before it kept."""
    capped = _capped(settings, 3)
    _, files = write_study(tmp_path / "ct", seed=37, shape=(5, 16, 16))
    with TestClient(create_app(capped, enqueue=lambda job: None), headers=sender) as client:
        at_limit = client.post(
            "/dicomweb/studies", content=_body([f.read_bytes() for f in files[:3]]), headers={"Content-Type": STOW_TYPE}
        )
        beyond = client.post(
            "/dicomweb/studies", content=_body([f.read_bytes() for f in files]), headers={"Content-Type": STOW_TYPE}
        )
        with_a_bad_one = client.post(
            "/dicomweb/studies",
            content=_body([b"", *[f.read_bytes() for f in files[3:]]]),
            headers={"Content-Type": STOW_TYPE},
        )
    assert at_limit.status_code == 200, "the closing boundary is no part"
    assert beyond.status_code == 413
    detail = beyond.json()["detail"]
    assert "more than 3 parts (registry.max_stow_parts)" in detail
    assert "3 instance(s) complete before that were stored" in detail
    assert with_a_bad_one.status_code == 202, "an empty part counts, and fails alone"
    assert _instance_count(Database(capped.sqlalchemy_url)) == 5


def test_refusals_are_logged_a_few_then_counted(
    stow: tuple[TestClient, list[Job], Database], caplog: pytest.LogCaptureFixture
) -> None:
    """500 bad parts: the first eight refusals are logged, then one line counts the rest."""
    client, _, _ = stow
    parts = [b"not a DICOM file", b""] * 250
    with caplog.at_level(logging.WARNING, logger="hounsfield.registry.stow"):
        answer = client.post("/dicomweb/studies", content=_body(parts), headers={"Content-Type": STOW_TYPE})
    assert answer.status_code == 409
    assert len(answer.json()[FAILED]["Value"]) == 500
    lines = [
        r.getMessage() for r in caplog.records if r.name == "hounsfield.registry.stow" and r.levelno >= logging.WARNING
    ]
    assert len(lines) == 9, lines
    assert lines[:8] == ["STOW-RS part refused (0xC210): a part is not a DICOM Part 10 file"] * 8
    assert "492 more part(s) refused" in lines[8]


def test_the_answer_to_many_failed_parts_is_bounded(
    settings: Settings, sender: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``registry.max_stow_parts`` items in FailedSOPSequence, a few Warning headers, and the
    answer is built off the event loop; beyond the limit the answer is a short 413."""
    built_on_loop: list[bool] = []
    respond = stow_api.stow_response

    def spied(*args: Any) -> Any:
        built_on_loop.append(_on_event_loop())
        return respond(*args)

    monkeypatch.setattr(stow_api, "stow_response", spied)
    json_part = f"--{BOUNDARY}\r\nContent-Type: application/dicom+json\r\n\r\n[{{}}]\r\n".encode()
    with TestClient(create_app(_capped(settings, 5000), enqueue=lambda job: None), headers=sender) as client:
        body = json_part * 2500 + _body([b"not a DICOM file"] * 2500)
        tracemalloc.start()
        try:
            at_limit = client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        beyond = client.post(
            "/dicomweb/studies", content=_body([b"not a DICOM file"] * 50_000), headers={"Content-Type": STOW_TYPE}
        )
    assert at_limit.status_code == 409
    assert len(at_limit.json()[FAILED]["Value"]) == 5000
    assert len(at_limit.content) < 5000 * 128, "about 90 bytes per failed part"
    warnings = at_limit.headers.get_list("warning")
    assert len(warnings) == 2 and all(len(w) < 256 for w in warnings)
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MiB allocated at the peak"
    assert beyond.status_code == 413 and len(beyond.content) < 512
    assert "warning" not in beyond.headers
    assert built_on_loop == [False], "the DICOM JSON answer is built off the event loop (and only when one is sent)"


def test_distinct_warnings_are_kept_up_to_a_bound() -> None:
    """Past eight distinct reasons a failed part costs no warning text: neither kept nor sent."""
    outcomes = stow_api.StowOutcomes()
    for n in range(1000):
        outcomes.add(Received(Status.CANNOT_UNDERSTAND, f"reason number {n}"))
    assert len(outcomes.warnings) == 8
    answer = stow_api.stow_response(outcomes, "http://testserver/", None)
    assert answer.status_code == 409
    assert answer.headers.getlist("warning") == [f"299 hounsfield: reason number {n} (C210)" for n in range(8)]


def test_each_request_that_stored_something_is_audited(
    stow: tuple[TestClient, list[Job], Database], tmp_path: Path
) -> None:
    """One ``stow.store`` row per request that stored something (a refused one too: its parts stayed
    stored), the sender's token as the actor, counts only (never patient data); none when nothing was."""
    client, _, db = stow
    study_uid, files = write_study(tmp_path / "a", seed=38, shape=(3, 16, 16))
    _, others = write_study(tmp_path / "b", seed=39, shape=(1, 16, 16))
    sent = [f.read_bytes() for f in files]

    one_study = client.post("/dicomweb/studies", content=_body(sent[:2]), headers={"Content-Type": STOW_TYPE})
    several = client.post(
        "/dicomweb/studies",
        content=_body([sent[0], sent[2], others[0].read_bytes(), b"not DICOM"]),
        headers={"Content-Type": STOW_TYPE},
    )
    nothing = client.post("/dicomweb/studies", content=_body([b"not DICOM"]), headers={"Content-Type": STOW_TYPE})
    cut = client.post("/dicomweb/studies", content=_body(sent, closed=False), headers={"Content-Type": STOW_TYPE})

    assert (one_study.status_code, several.status_code, nothing.status_code, cut.status_code) == (200, 202, 409, 400)
    rows = _stow_audit(db)
    assert [(r.actor, r.actor_role, r.via, r.entity) for r in rows] == [("test-sender", "sender", "token", "study")] * 3
    assert [(r.entity_id, r.before, r.after) for r in rows] == [
        (study_uid, None, {"stored": 2, "duplicates": 0, "failed": 0, "studies": 1}),
        ("several", None, {"stored": 3, "duplicates": 1, "failed": 1, "studies": 2}),
        (study_uid, None, {"stored": 2, "duplicates": 2, "failed": 0, "studies": 1}),  # 400, the parts before it kept
    ]
