"""Start-up recovery: what a crash can leave in the study store, and what recover_store makes of it."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select, update

from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Instance, Series, Study, StudyState
from hounsfield.db.index import complete_study
from hounsfield.demo.stack import storescu
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.recovery import recover_store
from hounsfield.listener.server import Listener
from hounsfield.store import StudyStore
from tests.support import write_study


@pytest.fixture
def store(tmp_path: Path) -> StudyStore:
    return StudyStore(tmp_path / "data")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'data' / 'index.db'}")
    database.create_schema()
    yield database
    database.dispose()


def _part10(study: str, series: str, sop: str, *, description: str = "axial", series_number: int = 2) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.AccessionNumber, ds.StudyDate = "REC0001", "ACC42", "20240115"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "CT", series_number, 3, description
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _instances(db: Database) -> dict[str, Instance]:
    with db.session() as session:
        return {row.sop_instance_uid: row for row in session.scalars(select(Instance))}


def test_an_instance_on_disk_but_not_indexed_is_indexed_from_its_header(store: StudyStore, db: Database) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    stored = store.write_instance(study, series, sop, _part10(study, series, sop))  # crash before the commit

    report = recover_store(store, db, called_ae="HOUNSFIELD")

    assert report.instances_indexed == 1 and report.files_scanned == 1 and report.unreadable_files == 0
    row = _instances(db)[sop]
    assert (row.path, row.size, row.sha256, row.revision) == (str(stored.path), stored.size, stored.sha256, 0)
    assert row.sop_class_uid == CTImageStorage and row.transfer_syntax_uid == ExplicitVRLittleEndian
    assert row.instance_number == 3
    with db.session() as session:
        indexed_study = session.get(Study, study)
        indexed_series = session.get(Series, series)
        assert indexed_study is not None and indexed_series is not None
        assert indexed_study.state is StudyState.RECEIVING
        assert (indexed_study.patient_id, indexed_study.accession_number) == ("REC0001", "ACC42")
        assert (indexed_series.modality, indexed_series.series_number) == ("CT", 2)
        assert indexed_series.called_ae == "HOUNSFIELD" and indexed_series.tags["SeriesDescription"] == "axial"
    assert report.receiving_studies == 1


def test_temporary_files_are_removed_and_nothing_else(store: StudyStore, db: Database) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    stored = store.write_instance(study, series, sop, _part10(study, series, sop))
    leftover = stored.path.parent / ".incoming-k2j3h4"
    leftover.write_bytes(b"half an instance")

    report = recover_store(store, db)

    assert report.temp_files_removed == 1 and not leftover.exists()
    assert stored.path.read_bytes() == _part10(study, series, sop)
    assert sorted(p.name for p in stored.path.parent.iterdir()) == [stored.path.name]


def test_a_second_run_finds_store_and_index_in_step(store: StudyStore, db: Database) -> None:
    for _ in range(3):
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        store.write_instance(study, series, sop, _part10(study, series, sop))
    first = recover_store(store, db)
    before = {uid: (row.path, row.sha256, row.received_at) for uid, row in _instances(db).items()}

    second = recover_store(store, db)

    assert first.instances_indexed == 3
    assert second.clean and second.files_scanned == 3 and second.instances_indexed == 0
    assert {uid: (row.path, row.sha256, row.received_at) for uid, row in _instances(db).items()} == before


def test_a_newer_revision_whose_index_update_was_lost_is_indexed(store: StudyStore, db: Database) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    store.write_instance(study, series, sop, _part10(study, series, sop))
    recover_store(store, db)  # r0 indexed
    with db.session() as session:  # the row was committed a while before the next write
        session.execute(update(Instance).values(received_at=datetime.now(UTC) - timedelta(minutes=5)))
    revised = store.write_instance(study, series, sop, _part10(study, series, sop, description="revised"))
    assert revised.revision == 1

    report = recover_store(store, db)

    assert report.instances_indexed == 1
    row = _instances(db)[sop]
    assert (row.path, row.revision, row.sha256) == (str(revised.path), 1, revised.sha256)


def test_an_older_revision_sent_again_keeps_the_index_on_it(store: StudyStore, db: Database) -> None:
    """The row points at r0 because r0's bytes came again after r1: recovery must not undo that."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    original = store.write_instance(study, series, sop, _part10(study, series, sop))
    revised = store.write_instance(study, series, sop, _part10(study, series, sop, description="revised"))
    past = time.time() - 300
    os.utime(revised.path, (past, past))  # r1 was written five minutes ago; r0 came again since
    recover_store(store, db)  # indexes r1 (no row yet)
    with db.session() as session:
        session.execute(
            update(Instance).values(path=str(original.path), revision=0, sha256=original.sha256, size=original.size)
        )

    report = recover_store(store, db)

    assert report.instances_indexed == 0
    assert _instances(db)[sop].path == str(original.path)


def test_unreadable_files_are_counted_and_left_in_place(store: StudyStore, db: Database) -> None:
    study, series = generate_uid(), generate_uid()
    garbage = store.instance_path(study, series, generate_uid())
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 40)
    elsewhere = generate_uid()  # a file whose header names another study than its folder
    misplaced = store.instance_path(study, series, elsewhere)
    misplaced.write_bytes(_part10(generate_uid(), series, elsewhere))

    report = recover_store(store, db)

    assert report.unreadable_files == 2 and report.instances_indexed == 0
    assert garbage.exists() and misplaced.exists()
    assert _instances(db) == {}


def test_an_index_row_without_its_file_is_reported_not_removed(store: StudyStore, db: Database) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    stored = store.write_instance(study, series, sop, _part10(study, series, sop))
    recover_store(store, db)
    stored.path.unlink()

    report = recover_store(store, db)

    assert report.missing_files == 1 and not report.clean
    assert sop in _instances(db)


def test_receiving_studies_get_a_quiet_period_after_the_restart(store: StudyStore, db: Database) -> None:
    receiving, completed = generate_uid(), generate_uid()
    for study in (receiving, completed):
        series, sop = generate_uid(), generate_uid()
        store.write_instance(study, series, sop, _part10(study, series, sop))
    recover_store(store, db)
    with db.session() as session:
        assert complete_study(session, completed, "association-release")
        session.execute(update(Series).values(calling_ae="MODALITY"))
    events: list[StudyComplete] = []
    done = threading.Event()

    def complete(event: StudyComplete) -> None:
        events.append(event)
        done.set()

    tracker = CompletenessTracker(complete, complete_on_release=True, quiet_period_s=0.3)
    started = time.monotonic()
    report = recover_store(store, db, tracker)
    tracker.start()
    try:
        assert done.wait(10), "the receiving study was never completed"
        waited = time.monotonic() - started
        time.sleep(0.5)  # room for a wrong second event
    finally:
        tracker.stop()

    assert report.receiving_studies == 1
    assert [(e.study_instance_uid, e.trigger, e.calling_ae) for e in events] == [
        (receiving, "quiet-period", "MODALITY")
    ]
    assert waited >= 0.3
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 2


def test_an_empty_or_absent_store_is_fine(store: StudyStore, db: Database) -> None:
    report = recover_store(store, db)
    assert report.clean and report.files_scanned == 0 and report.receiving_studies == 0


def test_a_clean_stop_skips_the_walk_and_a_crash_does_not(settings: Settings, tmp_path: Path) -> None:
    """After a clean stop nothing can be half-written: the next start resumes receiving studies only.

    Without the marker (a crash removes nothing, but the start before it did) the store is walked.
    """
    first = Listener(settings, [].append)
    first.start()
    assert first.recovery is not None and first.recovery.files_scanned == 0  # a new, empty store
    _, files = write_study(tmp_path / "ct", seed=8, shape=(3, 16, 16))
    storescu(files, host="127.0.0.1", port=settings.listener.port, called_ae="HOUNSFIELD", calling_ae="CT")
    first.stop()

    # An instance file the index does not know about: only a walk of the store would find it.
    stray_study, stray_series, stray_sop = generate_uid(), generate_uid(), generate_uid()
    stray = StudyStore(settings.data_dir).instance_path(stray_study, stray_series, stray_sop)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(_part10(stray_study, stray_series, stray_sop))

    clean = Listener(settings, [].append)
    clean.start()
    clean.stop()
    assert clean.recovery is not None and clean.recovery.files_scanned == 0, "a clean stop: no walk"
    assert stray_sop not in _instances(clean.db)

    markers = list(settings.data_dir.glob(".listener-stopped-cleanly-*"))
    assert len(markers) == 1
    markers[0].unlink()  # what a kill -9 leaves: the start before it removed the marker
    crashed = Listener(settings, [].append)
    crashed.start()
    try:
        assert crashed.recovery is not None and crashed.recovery.files_scanned == len(files) + 1
        assert crashed.recovery.instances_indexed == 1
        assert stray_sop in _instances(crashed.db)
    finally:
        crashed.stop()
