"""Helpers shared by tests (import as ``tests.support``)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Job
from hounsfield.db.index import IndexedInstance, record_instance
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series

if TYPE_CHECKING:
    from hounsfield.worker.pipeline import WorkerContext
    from hounsfield.worker.runtimes import ApplicationRun

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_APP = "hounsfield_operators.ct_lesion_seg.app:CTLesionSegApp"
EXAMPLE_MAP = REPO / "operators" / "ct_lesion_seg"
EXAMPLE_MODEL = EXAMPLE_MAP / "models" / "model.ts"

CT_RULE = {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, {"kind": "instance_count", "min": 8}]}


def write_study(
    folder: Path, seed: int, *, modality: str = "CT", shape=(16, 64, 64), **kwargs
) -> tuple[str, list[Path]]:
    """A small synthetic series on disk; returns its StudyInstanceUID and files."""
    phantom = make_phantom(seed, shape_zyx=shape, n_lesions=1)
    files = write_dicom_series(phantom, folder, modality=modality, uid_seed=f"test-{seed}-{modality}", **kwargs)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 50 ms until it is true; :class:`AssertionError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def bare_ct() -> Dataset:
    """A CT header with fresh UIDs and nothing else (no pixels): the least a listener indexes."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    return ds


def index_series(
    db: Database,
    study_uid: str,
    series_uid: str,
    count: int,
    *,
    description: str = "",
    modality: str = "CT",
    folder: Path = Path("/nonexistent"),
) -> None:
    """Index rows for ``count`` instances of one series, as the listener writes them (no files unless
    ``folder`` holds them: a job on such a series fails at pre-flight)."""
    for i in range(count):
        item = IndexedInstance(
            study_instance_uid=study_uid, series_instance_uid=series_uid, sop_instance_uid=f"{series_uid}.{i}",
            sop_class_uid=CTImageStorage, transfer_syntax_uid="1.2.840.10008.1.2.1", patient_id="P",
            accession_number="A", study_date="20260101", modality=modality, series_number=1,
            series_description=description, instance_number=i + 1, calling_ae="CT01", called_ae="HOUNSFIELD",
            tags={"Modality": modality, "SeriesDescription": description}, path=str(folder / f"{series_uid}.{i}.dcm"),
            size=1, sha256="0" * 64, revision=0,
        )  # fmt: skip
        with db.session() as session:
            record_instance(session, item)


def index_files(db: Database, files: list[Path], *, calling_ae: str = "CT01") -> str:
    """Index rows for DICOM files already on disk, as the listener writes them; returns the study UID."""
    study_uid = ""
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study_uid = str(ds.StudyInstanceUID)
        item = IndexedInstance(
            study_instance_uid=study_uid, series_instance_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), patient_id="", accession_number="",
            study_date="", modality=str(ds.Modality), series_number=1, series_description="",
            instance_number=int(ds.InstanceNumber), calling_ae=calling_ae, called_ae="HOUNSFIELD",
            tags={"Modality": str(ds.Modality)}, path=str(path), size=path.stat().st_size, sha256="0" * 64, revision=0,
        )  # fmt: skip
        with db.session() as session:
            record_instance(session, item)
    return study_uid


def routed_job(
    tmp_path: Path, settings: Settings, seed: int, *, patient_id: str = "HF-PHANTOM-0001", **deployment: object
) -> tuple[WorkerContext, Job]:
    """A stored study (of ``patient_id``) routed to the first configured deployment (with ``deployment``'s
    changes), its database migrated; the job queued, and the worker's context to run it."""
    from hounsfield.catalog import prepare_database
    from hounsfield.router.routing import Router
    from hounsfield.store import StudyStore
    from hounsfield.worker.pipeline import WorkerContext

    declared = settings.deployments[0].model_copy(update=deployment)
    settings = settings.model_copy(update={"deployments": [declared]})
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    study_uid, files = write_study(tmp_path / "study", seed=seed, shape=(8, 32, 32), patient_id=patient_id)
    index_files(db, files)
    (job,) = Router(settings, db, lambda job: None).on_study_complete(
        StudyComplete(study_instance_uid=study_uid, trigger="manual")
    )
    return WorkerContext(settings=settings, db=db, store=StudyStore(settings.data_dir)), job


def bearer(token: str) -> dict[str, str]:
    """The headers of a request with ``token`` as its bearer credential."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(name="settings")
def settings_on_both_backends(settings: Settings, database_url: str) -> Settings:
    """The shared settings with their database on each backend (an empty one per test): import this
    fixture into a test module or conftest to run its tests on SQLite and on PostgreSQL."""
    return settings.model_copy(update={"database_url": database_url})


def application_run(
    *,
    input_dir: Path,
    output_dir: Path,
    workdir: Path,
    app: str = EXAMPLE_APP,
    model_path: Path = EXAMPLE_MODEL,
    timeout_s: float = 600.0,
    job_id: str = "job-1",
    **deployment: object,
) -> ApplicationRun:
    """What a runtime is asked to run: a job of a running deployment of ``app`` (any other deployment
    field given, e.g. ``runtime``, ``map_path``, ``application_root``), on these folders."""
    from hounsfield.catalog.read_model import DeploymentSpec
    from hounsfield.contracts.rules import TagEquals
    from hounsfield.db.deployments import Stage
    from hounsfield.worker.runtimes import ApplicationRun

    rule = TagEquals(kind="tag_equals", keyword="Modality", value="CT")
    spec = DeploymentSpec(
        name="test-deployment", model_name="test-model", model_version="1.0.0", display_name="Test model",
        device_uid=None, stage=Stage.RESEARCH, rule_name="test-rule", rule=rule, destinations=(), queue="routine",
        app=app, model_path=model_path, manufacturer="Hounsfield", timeout_s=timeout_s,
        **deployment,  # type: ignore[arg-type]
    )  # fmt: skip
    return ApplicationRun(job_id, spec, input_dir, output_dir, workdir)


class Order:
    """Events in the order they happened, across threads (durability tests record syncs and answers)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def add(self, kind: str, what: str = "") -> None:
        with self._lock:
            self.events.append((kind, what))

    def first(self, kind: str, after: int) -> int | None:
        return next((i for i in range(after + 1, len(self.events)) if self.events[i][0] == kind), None)

    def record_fsyncs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Record each ``os.fsync`` as ``("fsync", the file's or folder's path)``, once it returned."""
        fsync = os.fsync

        def recording_fsync(fd: int) -> None:
            fsync(fd)
            self.add("fsync", os.readlink(f"/proc/self/fd/{fd}"))

        monkeypatch.setattr(os, "fsync", recording_fsync)

    def assert_files_synced_before(self, answer: str, store: Path) -> None:
        """Every ``(answer, SOP Instance UID)`` event came after its file (written as ``.incoming-*``, then
        renamed) and that file's folder were fsynced."""
        answered = [(i, uid) for i, (kind, uid) in enumerate(self.events) if kind == answer]
        assert answered, f"no {answer} was recorded"
        for index, uid in answered:
            before = [what for kind, what in self.events[:index] if kind == "fsync"]
            stored = next(store.rglob(f"{uid}.dcm"))
            files = [Path(what) for what in before if Path(what).name.startswith(".incoming-")]
            assert any(path.parent == stored.parent for path in files), f"{uid}: its file was not synced first"
            assert str(stored.parent) in before, f"{uid}: its folder was not synced before the {answer}"


def with_raw_value(data: bytes, tag: bytes, raw: bytes) -> bytes:
    """``data`` (an explicit VR little endian dataset) with its short-VR top-level element whose first bytes
    are ``tag`` (``b"\\x08\\x00\\x18\\x00UI"``) holding exactly ``raw``, as a sender might: pydicom would
    tidy such a value as it writes it."""
    at = data.index(tag)
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    return data[: at + 6] + len(raw).to_bytes(2, "little") + raw + data[at + 8 + length :]
