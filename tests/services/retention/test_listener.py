"""The issue's key test: a listener whose store is a small tmpfs takes a steady inflow far beyond the disk's
size, sent with dcmtk's storescu; with retention on, every instance is accepted and free space never
reaches the floor (without it, the listener soon refuses with 0xA700)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from hounsfield.config import Settings
from hounsfield.db import Event, Instance, StudyState
from hounsfield.demo.stack import StackFailed, storescu
from hounsfield.listener.metrics import ListenerMetrics
from hounsfield.listener.retention import RetentionThread
from hounsfield.listener.server import Listener
from tests.services.retention.conftest import Rig
from tests.support import wait_for

MiB = 1 << 20
DISK_MB = 128  # the journal's four 8 MiB segments take 32 of it
FLOOR_MB = 8
STUDIES, PER_STUDY, ROWS = 72, 10, 360  # 72 studies of 10 x 253 KiB: about 180 MiB, well beyond the disk
PIXELS = bytes(range(256)) * (ROWS * ROWS * 2 // 256)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "store"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _write_study(folder: Path, index: int) -> list[Path]:
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for number in range(PER_STUDY):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.Modality, ds.InstanceNumber = f"P{index}", "CT", number + 1
        ds.Rows = ds.Columns = ROWS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = PIXELS
        path = folder / f"{index}-{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _settings(settings: Settings, store: Path, *, retention: bool) -> Settings:
    listener = settings.listener.model_copy(update={"min_free_disk_mb": FLOOR_MB, "journal_segment_mb": 8})
    kept = settings.retention.model_copy(
        update={
            "enabled": retention, "high_water_percent": 60.0, "low_water_percent": 45.0, "floor_margin_mb": 4,
            "watch_s": 0.1, "interval_s": 3600.0,
        }
    )  # fmt: skip
    # No deployments: every study ends without a route, so a purge may take it once it is complete.
    return settings.model_copy(update={"data_dir": store, "listener": listener, "retention": kept, "deployments": []})


def test_a_steady_inflow_beyond_the_disk_is_all_accepted_and_never_reaches_the_floor(
    settings: Settings, tmpfs: Path, tmp_path: Path
) -> None:
    configured = _settings(settings, tmpfs, retention=True)
    listener = Listener(configured, lambda job: None)
    listener.start()
    lowest = [shutil.disk_usage(tmpfs).free]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.01):
            lowest[0] = min(lowest[0], shutil.disk_usage(tmpfs).free)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    started = time.monotonic()
    failed_sends = 0
    try:
        for batch in range(0, STUDIES, 2):
            files = _write_study(outbox, batch) + _write_study(outbox, batch + 1)
            try:
                port = configured.listener.port
                storescu(files, host="127.0.0.1", port=port, called_ae="HOUNSFIELD", calling_ae="CT01")
            except StackFailed:  # storescu exits non-zero when an instance is refused: counted below
                failed_sends += 1
            for path in files:
                path.unlink()
        listener.flush()
    finally:
        sampling.set()
        sampler.join()
        listener.stop()  # its retention thread too: no purge runs between the counts below
    elapsed = time.monotonic() - started
    metrics = listener.metrics.registry.get_sample_value
    refused = metrics("hounsfield_listener_instances_total", {"transport": "dimse", "outcome": "out_of_resources"})
    stored = metrics("hounsfield_listener_instances_total", {"transport": "dimse", "outcome": "stored"})
    purged = metrics("hounsfield_retention_purged_studies_total", {"reason": "high_water"})
    with listener.db.session() as session:
        purged_events = session.scalar(select(func.count()).select_from(Event).where(Event.kind == "purged"))
        indexed = session.scalar(select(func.count()).select_from(Instance))
    listener.db.dispose()
    sent = STUDIES * PER_STUDY
    assert not refused and not failed_sends, f"{refused:.0f} of {sent} instances refused with 0xA700"
    assert stored == sent, "every instance accepted and stored"
    assert sent * len(PIXELS) > 1.3 * DISK_MB * MiB, "the inflow is well beyond the disk's size"
    assert purged and purged_events == purged, "studies were purged for the high-water mark, each with its event"
    assert indexed is not None and indexed < sent
    assert lowest[0] > FLOOR_MB * MiB, f"free space fell to {lowest[0] / MiB:.1f} MiB (floor {FLOOR_MB} MiB)"
    assert elapsed < 60


def test_the_listener_thread_applies_the_policies_every_interval(rig: Rig) -> None:
    cfg = rig.settings.retention.model_copy(update={"interval_s": 0.3, "watch_s": 0.1})
    rig.settings = rig.settings.model_copy(update={"retention": cfg})
    expired = rig.study(days_ago=40)
    metrics = ListenerMetrics(rig.store)
    thread = RetentionThread(rig.settings, rig.db, rig.store, metrics, journal=None)
    thread.start()
    try:
        wait_for(lambda: rig.state(expired.uid) is StudyState.PURGED, timeout=10)
    finally:
        thread.stop()
    assert metrics.registry.get_sample_value("hounsfield_retention_purged_studies_total", {"reason": "expired"}) == 1
