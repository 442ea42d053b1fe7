"""The listener as a sender sees it: dcmtk storescu and pynetdicom SCUs against a running SCP."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import func, select

from hounsfield.config import Settings
from hounsfield.db import Event, Instance, Job, Study, StudyState
from hounsfield.demo.stack import storescu
from hounsfield.listener.server import Listener
from tests.support import bare_ct, wait_for, write_study


@pytest.fixture
def listener(settings: Settings) -> Iterator[tuple[Listener, list[Job]]]:
    queued: list[Job] = []
    running = Listener(settings, queued.append)
    running.start()
    yield running, queued
    running.stop()


def _send(settings: Settings, files: list[Path], calling_ae: str = "MODALITY") -> None:
    storescu(files, host="127.0.0.1", port=settings.listener.port, called_ae="HOUNSFIELD", calling_ae=calling_ae)


def test_echo_answers_with_dcmtk(listener: tuple[Listener, list[Job]], settings: Settings) -> None:
    proc = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "HOUNSFIELD", "127.0.0.1", str(settings.listener.port)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_ct_study_is_stored_indexed_and_routed_on_release(
    listener: tuple[Listener, list[Job]], settings: Settings, tmp_path: Path
) -> None:
    running, queued = listener
    study_uid, files = write_study(tmp_path / "ct", seed=3)
    _send(settings, files)
    wait_for(lambda: len(queued) == 1)
    with running.db.session() as session:
        study = session.get(Study, study_uid)
        assert study is not None and study.state is StudyState.ROUTED
        assert study.completion_trigger == "association-release"
        stored = session.scalars(select(Instance)).all()
        assert len(stored) == len(files)
        for instance in stored:
            on_disk = pydicom.dcmread(instance.path)
            assert on_disk.SOPInstanceUID == instance.sop_instance_uid
        kinds = [
            e.kind
            for e in session.scalars(select(Event).where(Event.study_instance_uid == study_uid).order_by(Event.id))
        ]
    assert kinds == ["study-complete", "job-queued"]
    job = queued[0]
    assert job.deployment == "ct-lesion-seg" and job.study_instance_uid == study_uid
    assert job.timings["completeness"] >= 0


def test_mr_study_is_stored_and_recorded_as_no_route(
    listener: tuple[Listener, list[Job]], settings: Settings, tmp_path: Path
) -> None:
    running, queued = listener
    study_uid, files = write_study(tmp_path / "mr", seed=4, modality="MR")
    _send(settings, files)

    def routed() -> bool:
        with running.db.session() as session:
            study = session.get(Study, study_uid)
            return study is not None and study.state is StudyState.NO_ROUTE

    wait_for(routed)
    assert queued == []
    with running.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == len(files)
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_resending_the_same_study_makes_no_second_job(
    listener: tuple[Listener, list[Job]], settings: Settings, tmp_path: Path
) -> None:
    running, queued = listener
    study_uid, files = write_study(tmp_path / "ct", seed=5)
    _send(settings, files)
    wait_for(lambda: len(queued) == 1)
    _send(settings, files)

    def repeat_seen() -> bool:
        with running.db.session() as session:
            return (
                "job-exists" in session.scalars(select(Event.kind).where(Event.study_instance_uid == study_uid)).all()
            )

    wait_for(repeat_seen)
    assert len(queued) == 1
    with running.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert session.scalar(select(func.count()).select_from(Instance)) == len(files)


def _bare_ct(**overrides: object) -> Dataset:
    ds = bare_ct()
    for key, value in overrides.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize(
    ("overrides", "status"),
    [({"StudyInstanceUID": None}, 0xA900), ({"SeriesInstanceUID": "not-a-uid"}, 0xA900)],
)
def test_instances_without_valid_uids_are_refused(
    listener: tuple[Listener, list[Job]], settings: Settings, overrides: dict, status: int
) -> None:
    running, _ = listener
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", settings.listener.port, ae_title="HOUNSFIELD")
    assert assoc.is_established
    response = assoc.send_c_store(_bare_ct(**overrides))
    good = assoc.send_c_store(_bare_ct())
    assoc.release()
    assert response.Status == status
    assert good.Status == 0x0000, "the association keeps serving after a refused instance"
    running.flush()
    with running.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1


def test_quiet_period_completes_a_study_after_an_abort(
    listener: tuple[Listener, list[Job]], settings: Settings, tmp_path: Path
) -> None:
    running, queued = listener
    study_uid, files = write_study(tmp_path / "ct", seed=6)
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", settings.listener.port, ae_title="HOUNSFIELD")
    for path in files:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    assoc.abort()
    wait_for(lambda: len(queued) == 1, timeout=10)
    with running.db.session() as session:
        assert session.get(Study, study_uid).completion_trigger == "quiet-period"


def test_a_release_after_a_refused_instance_leaves_the_study_to_the_quiet_period(
    listener: tuple[Listener, list[Job]], settings: Settings, tmp_path: Path
) -> None:
    """The sender will send the refused instance again: completing the study at this release would route
    it without that instance (and route it a second time when it comes)."""
    running, queued = listener
    study_uid, files = write_study(tmp_path / "ct", seed=7)
    refused = pydicom.dcmread(files[0])
    refused.SOPInstanceUID = "not-a-uid"  # refused 0xA900, as the disk's floor would refuse it 0xA700
    ae = AE(ae_title="REFUSED")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", settings.listener.port, ae_title="HOUNSFIELD")
    for path in files[1:]:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    assert assoc.send_c_store(refused).Status != 0
    assoc.release()
    running.flush()
    released = time.monotonic()
    wait_for(lambda: len(queued) == 1, timeout=settings.listener.quiet_period_s + 10)
    assert time.monotonic() - released >= settings.listener.quiet_period_s * 0.8, "completed at the release"
    with running.db.session() as session:
        assert session.get(Study, study_uid).completion_trigger == "quiet-period"


def test_full_disk_answers_out_of_resources_and_keeps_nothing(settings: Settings, tmp_path: Path) -> None:
    tight = settings.model_copy(update={"listener": settings.listener.model_copy(update={"min_free_disk_mb": 2**40})})
    running = Listener(tight, [].append)
    running.start()
    try:
        ae = AE(ae_title="FULLDISK")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", tight.listener.port, ae_title="HOUNSFIELD")
        assert assoc.send_c_store(_bare_ct()).Status == 0xA700
        assoc.release()
        running.flush()
        with running.db.session() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 0
        assert not list((tight.data_dir / "studies").rglob("*.dcm"))
    finally:
        running.stop()


def test_same_instance_twice_is_idempotent_and_changed_bytes_are_kept(
    listener: tuple[Listener, list[Job]], settings: Settings
) -> None:
    running, _ = listener
    ae = AE(ae_title="RESENDER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ds = _bare_ct()
    assoc = ae.associate("127.0.0.1", settings.listener.port, ae_title="HOUNSFIELD")
    assert assoc.send_c_store(ds).Status == 0
    assert assoc.send_c_store(ds).Status == 0
    ds.SeriesDescription = "changed"
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    running.flush()
    files = sorted((settings.data_dir / "studies").rglob("*.dcm"))
    assert [f.name for f in files] == [f"{ds.SOPInstanceUID}.dcm", f"{ds.SOPInstanceUID}.r1.dcm"]
    assert pydicom.dcmread(files[0]).get("SeriesDescription") is None, "the first copy is never overwritten"
    with running.db.session() as session:
        (instance,) = session.scalars(select(Instance)).all()
        assert instance.revision == 1 and instance.path == str(files[1])
