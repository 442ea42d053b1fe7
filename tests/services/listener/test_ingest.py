"""The journaled durable path: what a Success promises holds before and after the journal is applied."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode
from sqlalchemy import select

from hounsfield.db import Database, Instance, Study, StudyState
from hounsfield.dicom_status import Status
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.ingest import JournaledStore
from hounsfield.listener.journal import Journal
from hounsfield.listener.storage import Origin, StoreContext, part10_bytes, receive_instance
from hounsfield.logs import LogContext, current_log_context, study_correlation_id
from hounsfield.store import StudyStore
from tests.support import bare_ct

ORIGIN = Origin("assoc-1", "MODALITY", "HOUNSFIELD")


@dataclass
class Rig:
    root: Path
    db: Database
    store: StudyStore
    tracker: CompletenessTracker
    journaled: JournaledStore
    context: StoreContext

    def rows(self) -> dict[str, Instance]:
        with self.db.session() as session:
            rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
            session.expunge_all()
        return rows


def _rig(root: Path, *, start: bool = True, min_free_bytes: int = 0, checkpoint_after_s: float = 1.0) -> Rig:
    db = Database(f"sqlite:///{root / 'index.db'}")
    db.create_schema()
    store = StudyStore(root / "store", min_free_bytes=min_free_bytes)
    tracker = CompletenessTracker(lambda event: None, complete_on_release=True, quiet_period_s=60)
    journal = Journal(root / "journal", segment_bytes=8 << 20, initial_segments=2)
    journaled = JournaledStore(store, db, tracker, journal, checkpoint_after_s=checkpoint_after_s)
    journaled.replay()
    if start:
        journaled.start()
    return Rig(root, db, store, tracker, journaled, StoreContext(store, db, tracker, journal=journaled))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = _rig(tmp_path)
    yield made
    made.journaled.stop()
    made.db.dispose()


def _dataset(study_uid: str | None = None, description: str = "") -> tuple[pydicom.Dataset, bytes]:
    ds = bare_ct()
    ds.SOPInstanceUID = generate_uid()
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
    if description:
        ds.SeriesDescription = description
    return ds, bytes(encode(ds, False, True))


def _receive(context: StoreContext, data: bytes) -> int:
    return receive_instance(context, data, ExplicitVRLittleEndian, ORIGIN).status


def _expected_file(ds: pydicom.Dataset, data: bytes) -> bytes:
    return part10_bytes(
        data, sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID, transfer_syntax=ExplicitVRLittleEndian
    )


def test_acknowledged_instances_are_applied_to_files_and_rows(rig: Rig) -> None:
    sent = [_dataset() for _ in range(5)]
    for _, data in sent:
        assert _receive(rig.context, data) == Status.SUCCESS
    assert rig.journaled.drain(10)
    rows = rig.rows()
    for ds, data in sent:
        row = rows[ds.SOPInstanceUID]
        assert Path(row.path).read_bytes() == _expected_file(ds, data)
    assert not list(rig.store.root.rglob(".incoming-*"))


def test_a_crash_before_applying_is_replayed_at_the_next_start(tmp_path: Path) -> None:
    first = _rig(tmp_path, start=False)  # the applier never runs: acknowledged, then the process dies
    sent = [_dataset() for _ in range(4)]
    for _, data in sent:
        assert _receive(first.context, data) == Status.SUCCESS
    assert first.rows() == {} and not list(first.store.root.rglob("*.dcm"))
    first.journaled.journal.close()
    first.db.dispose()

    second = _rig(tmp_path)
    try:
        rows = second.rows()
        assert set(rows) == {ds.SOPInstanceUID for ds, _ in sent}
        for ds, data in sent:
            assert Path(rows[ds.SOPInstanceUID].path).read_bytes() == _expected_file(ds, data)
        assert second.journaled.journal.applied == 4, "the replay was checkpointed"
    finally:
        second.journaled.stop()
        second.db.dispose()
    third = _rig(tmp_path)
    try:
        assert third.journaled.journal.applied == 4 and third.journaled.journal.last_seq == 4
    finally:
        third.journaled.stop()
        third.db.dispose()


def test_replay_leaves_studies_already_indexed_alone(tmp_path: Path) -> None:
    first = _rig(tmp_path, checkpoint_after_s=3600)  # applied at once, checkpointed only after an hour
    ds, data = _dataset()
    assert _receive(first.context, data) == Status.SUCCESS
    assert first.journaled.drain(10)
    with first.db.session() as session:
        session.get(Study, ds.StudyInstanceUID).state = StudyState.ROUTED
    # A crash now: the rows are committed, the checkpoint not written, so the record is replayed.
    assert first.journaled.journal.applied == 0
    first.journaled.journal.close()
    first.db.dispose()

    second = _rig(tmp_path)
    try:
        with second.db.session() as session:
            assert session.get(Study, ds.StudyInstanceUID).state is StudyState.ROUTED
        assert Path(second.rows()[ds.SOPInstanceUID].path).read_bytes() == _expected_file(ds, data)
        assert second.journaled.journal.applied == 1
    finally:
        second.journaled.stop()
        second.db.dispose()


def test_the_same_bytes_again_before_they_are_applied_are_a_duplicate(tmp_path: Path) -> None:
    rig = _rig(tmp_path, start=False)
    ds, data = _dataset()
    first = receive_instance(rig.context, data, ExplicitVRLittleEndian, ORIGIN)
    again = receive_instance(rig.context, data, ExplicitVRLittleEndian, ORIGIN)
    changed = bytes(encode(_with(ds, SeriesDescription="changed"), False, True))
    revised = receive_instance(rig.context, changed, ExplicitVRLittleEndian, ORIGIN)
    assert first.ok and not first.duplicate
    assert again.ok and again.duplicate
    assert revised.ok and not revised.duplicate
    assert rig.journaled.journal.last_seq == 2, "a duplicate adds no journal record"
    instances, waiting = rig.journaled.backlog()
    assert instances == 3 and waiting == _file_size(ds, data) + _file_size(ds, changed)
    rig.journaled.start()
    try:
        assert rig.journaled.drain(10)
        files = sorted(p.name for p in rig.store.root.rglob("*.dcm"))
        assert files == [f"{ds.SOPInstanceUID}.dcm", f"{ds.SOPInstanceUID}.r1.dcm"]
        row = rig.rows()[ds.SOPInstanceUID]
        assert row.revision == 1 and Path(row.path).read_bytes() == _expected_file(ds, changed)
        assert rig.journaled.backlog() == (0, 0)
    finally:
        rig.journaled.stop()
        rig.db.dispose()


def _file_size(ds: pydicom.Dataset, data: bytes) -> int:
    return len(_expected_file(ds, data))


def _with(ds: pydicom.Dataset, **values: object) -> pydicom.Dataset:
    copy = pydicom.Dataset(ds)
    for key, value in values.items():
        setattr(copy, key, value)
    return copy


def test_a_queued_call_runs_after_the_instances_before_it_are_indexed(rig: Rig) -> None:
    seen: list[int] = []
    done = threading.Event()

    def count_rows() -> None:
        seen.append(len(rig.rows()))
        done.set()

    for _ in range(3):
        _receive(rig.context, _dataset()[1])
    rig.context.then(count_rows)
    assert done.wait(10)
    assert seen == [3]


def test_the_applier_works_for_each_instances_study_and_after_them_for_none(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One applier thread applies instances of any study in turn: what it does for each (its log lines, the
    tracker it tells) carries that instance's study, never the one before, and nothing stays after."""
    seen: list[tuple[str, str | None, str]] = []
    after: list[LogContext] = []
    done = threading.Event()
    told = rig.tracker.instance_received

    def telling(key: Hashable, study_uid: str, calling_ae: str) -> None:
        seen.append((study_uid, current_log_context().study, threading.current_thread().name))
        told(key, study_uid, calling_ae)

    monkeypatch.setattr(rig.tracker, "instance_received", telling)
    studies = [generate_uid(), generate_uid()]
    for uid in (studies[0], studies[1], studies[0]):
        assert _receive(rig.context, _dataset(uid)[1]) == Status.SUCCESS
    rig.context.then(lambda: (after.append(current_log_context()), done.set()))
    assert done.wait(10)
    assert seen == [(uid, study_correlation_id(uid), "ingest-applier") for uid in (studies[0], studies[1], studies[0])]
    assert after == [LogContext()]


def test_below_the_disk_floor_nothing_is_journaled(tmp_path: Path) -> None:
    rig = _rig(tmp_path, min_free_bytes=1 << 60)
    try:
        received = receive_instance(rig.context, _dataset()[1], ExplicitVRLittleEndian, ORIGIN)
        assert received.status == Status.OUT_OF_RESOURCES
        assert "below the floor" in received.reason
        assert rig.journaled.journal.last_seq == 0
    finally:
        rig.journaled.stop()
        rig.db.dispose()


def test_a_record_that_cannot_say_where_it_goes_is_kept_aside(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", segment_bytes=8 << 20, initial_segments=2)
    journal.open()
    seq, _ = journal.append({"study_instance_uid": "not a uid"}, (b"the bytes that were acknowledged",))
    journal.wait_durable(seq)
    journal.close()

    rig = _rig(tmp_path)
    try:
        kept = tmp_path / "journal" / "unreplayable" / f"{seq}.dcm"
        assert kept.read_bytes() == b"the bytes that were acknowledged"
        assert rig.rows() == {} and rig.journaled.journal.applied == seq
    finally:
        rig.journaled.stop()
        rig.db.dispose()


def _instance_path(rig: Rig, ds: pydicom.Dataset) -> Path:
    return rig.store.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def test_the_applier_never_writes_a_file_from_a_record_that_is_not_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = _rig(tmp_path)
    try:

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fdatasync", failing)
        ds, data = _dataset()
        # The engine's own thread: journaled, not yet durable; its Success would wait for the sync.
        received = receive_instance(rig.context, data, ExplicitVRLittleEndian, ORIGIN, defer_durability=True)
        assert received.ok and received.durable_seq == 1
        assert rig.journaled.drain(10)  # the applier ran: its wait for the record's sync failed

        assert not _instance_path(rig, ds).exists() and not list(rig.store.root.rglob("*.dcm"))
        assert rig.rows() == {}, "never acknowledged, so never indexed"
        later = receive_instance(rig.context, _dataset()[1], ExplicitVRLittleEndian, ORIGIN)
        assert later.status == Status.OUT_OF_RESOURCES, "the failed journal takes nothing more"
    finally:
        rig.journaled.stop()
        rig.db.dispose()
    assert rig.journaled.journal.applied == 0, "no checkpoint passed the record"


def test_a_durable_record_is_written_into_the_store_in_place_after_its_sync(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fdatasync, real_open, real_replace, real_rename = os.fdatasync, os.open, os.replace, os.rename

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        events.append(("sync", ""))

    def opening(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            events.append(("create", str(path)))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    def moving(real: object, source: object, target: object, *args: object, **kwargs: object) -> None:
        events.append(("move", str(target)))
        real(source, target, *args, **kwargs)  # type: ignore[operator]

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "replace", lambda *a, **k: moving(real_replace, *a, **k))
    monkeypatch.setattr(os, "rename", lambda *a, **k: moving(real_rename, *a, **k))

    ds, data = _dataset()
    received = receive_instance(rig.context, data, ExplicitVRLittleEndian, ORIGIN, defer_durability=True)
    assert received.ok and received.durable_seq == 1
    assert rig.journaled.drain(10)  # nobody asked for the sync: the applier waits for it itself

    path = _instance_path(rig, ds)
    assert path.read_bytes() == _expected_file(ds, data)
    assert Path(rig.rows()[ds.SOPInstanceUID].path) == path
    in_store = [(kind, what) for kind, what in events if Path(what).is_relative_to(rig.store.studies)]
    assert in_store == [("create", str(path))], "written at its own name: no temporary file, no rename"
    assert events.index(("sync", "")) < events.index(("create", str(path))), "the record was durable first"
    assert not list(rig.store.root.rglob(".incoming-*"))


def test_a_full_journal_is_freed_by_the_applier_while_a_writer_waits_for_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that finds every segment holding unapplied records waits for room outside the placement
    lock, which the applier needs to apply them and checkpoint: the instance is stored within moments,
    not refused after the journal's wait (it deadlocked until ``wait_s`` when the writer waited holding it)."""
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    store = StudyStore(tmp_path / "store")
    tracker = CompletenessTracker(lambda event: None, complete_on_release=True, quiet_period_s=60)
    journal = Journal(tmp_path / "journal", segment_bytes=1 << 20, initial_segments=2, max_segments=2, wait_s=20)
    # The applier runs only when asked (here: the journal short of segments).
    journaled = JournaledStore(store, db, tracker, journal, quiet_s=600, apply_within_s=600)
    journaled.replay()
    # No checkpoint frees a segment before a writer has found the journal full and waits for room.
    waiting = threading.Event()
    wait_for_room, checkpoint = journal.wait_for_room, journal.checkpoint

    def recording_wait(*, until: float | None = None) -> None:
        waiting.set()
        wait_for_room(until=until)

    def held_checkpoint(applied: int) -> None:
        waiting.wait(15)
        checkpoint(applied)

    monkeypatch.setattr(journal, "wait_for_room", recording_wait)
    monkeypatch.setattr(journal, "checkpoint", held_checkpoint)
    journaled.start()
    context = StoreContext(store, db, tracker, journal=journaled)
    try:
        sent = []
        for _ in range(700):  # a record takes 4 KiB: past the two 1 MiB segments, twice over
            ds, data = _dataset()
            sent.append(ds.SOPInstanceUID)
            started = time.monotonic()
            assert _receive(context, data) == Status.SUCCESS
            assert time.monotonic() - started < 10, "a write waited for room as long as the journal allows"
        assert waiting.is_set(), "the journal was never full"
        assert journaled.drain(10)
        with db.session() as session:
            indexed = set(session.scalars(select(Instance.sop_instance_uid)))
        assert indexed == set(sent)
    finally:
        journaled.stop()
        db.dispose()


def test_replay_leaves_a_complete_file_alone_and_replaces_a_partial_one_whole(tmp_path: Path) -> None:
    """A record after the checkpoint whose file is complete (applied, then a crash before the checkpoint)
    keeps its file: the same inode, which a running job may have hard-linked into its workspace, never
    truncated. One whose file a crash left partial gets a new file, renamed over it."""
    first = _rig(tmp_path, checkpoint_after_s=3600)  # applied at once, checkpointed only after an hour
    sent = [_dataset() for _ in range(2)]
    for _, data in sent:
        assert _receive(first.context, data) == Status.SUCCESS
    assert first.journaled.drain(10)
    rows = first.rows()
    complete, partial = (Path(rows[ds.SOPInstanceUID].path) for ds, _ in sent)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    linked = workspace / "input.dcm"
    os.link(complete, linked)  # as a worker's workspace holds it
    inode, written = complete.stat().st_ino, complete.stat().st_mtime_ns
    partial.write_bytes(partial.read_bytes()[:100])  # as a crash in the middle of its write leaves it
    partial_inode = partial.stat().st_ino
    assert first.journaled.journal.applied == 0
    first.journaled.journal.close()
    first.db.dispose()

    second = _rig(tmp_path)
    try:
        assert (complete.stat().st_ino, complete.stat().st_mtime_ns) == (inode, written), "left alone, not rewritten"
        assert linked.stat().st_nlink == 2
        assert linked.read_bytes() == _expected_file(*sent[0])
        assert partial.read_bytes() == _expected_file(*sent[1])
        assert partial.stat().st_ino != partial_inode, "the partial file was replaced, not written over"
        assert not list(second.store.root.rglob(".incoming-*"))
        assert second.journaled.journal.applied == 2
    finally:
        second.journaled.stop()
        second.db.dispose()
