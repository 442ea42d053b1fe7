"""Success follows durability, in order: every instance a sender is told is stored was on stable storage
before that answer left.

A kill -9 cannot show this (the page cache survives a killed process), so the order is recorded: the
listener's journal writes and ``fdatasync`` calls, and its C-STORE responses, with real senders (dcmtk
and pynetdicom, two associations at once); without the journal, each file's and folder's fsync.
Removing a sync, or answering before it, fails these tests. STOW-RS and C-GET arrivals are checked the
same way in ``tests/services/registry/test_stow.py`` and ``tests/services/listener/test_fetch.py``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from hounsfield.config import Settings
from hounsfield.db import Instance
from hounsfield.demo.stack import storescu
from hounsfield.dicom_status import Status
from hounsfield.listener import intake
from hounsfield.listener.engine.association import Association
from hounsfield.listener.engine.dimse import C_STORE_RQ
from hounsfield.listener.ingest import JournaledStore
from hounsfield.listener.journal import Journal, JournalBusy
from hounsfield.listener.server import Listener
from tests.support import Order, write_study


def _record_successes(recorded: Order, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record each C-STORE Success the engine sends as ``("success", SOP Instance UID)``, before it leaves."""
    respond = Association._respond

    def recording_respond(self: Association, message: Any, status: int, reason: str = "") -> None:
        if message.command.command_field == C_STORE_RQ and status == Status.SUCCESS:
            recorded.add("success", message.command.affected_sop_instance_uid)
        respond(self, message, status, reason)

    monkeypatch.setattr(Association, "_respond", recording_respond)


@pytest.fixture
def order(monkeypatch: pytest.MonkeyPatch) -> Order:
    recorded = Order()
    append, fdatasync = Journal.append, os.fdatasync

    def recording_append(self: Journal, meta: dict[str, Any], parts: Any, **options: Any) -> Any:
        placed = append(self, meta, parts, **options)
        recorded.add("journal-write", str(meta.get("sop_instance_uid", "")))
        return placed

    def recording_fdatasync(fd: int) -> None:
        recorded.add("sync-begin")
        fdatasync(fd)
        recorded.add("sync-end")

    monkeypatch.setattr(Journal, "append", recording_append)
    monkeypatch.setattr(os, "fdatasync", recording_fdatasync)
    _record_successes(recorded, monkeypatch)
    return recorded


@pytest.fixture
def listener(settings: Settings) -> Iterator[Listener]:
    assert settings.listener.journal, "the journal is on by default"
    running = Listener(settings, lambda job: None)
    running.start()
    yield running
    running.stop()


def _pynetdicom(settings: Settings, files: list[Path]) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", settings.listener.port, ae_title="HOUNSFIELD")
    assert assoc.is_established
    try:
        for path in files:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    finally:
        assoc.release()


def test_each_success_follows_the_sync_of_its_journal_record(
    listener: Listener, settings: Settings, order: Order, tmp_path: Path
) -> None:
    _, dcmtk_files = write_study(tmp_path / "a", seed=71, shape=(12, 32, 32))
    _, pynetdicom_files = write_study(tmp_path / "b", seed=72, shape=(12, 32, 32))
    sender = threading.Thread(target=_pynetdicom, args=(settings, pynetdicom_files))
    sender.start()  # two associations at once: the syncs are shared (group commit)
    storescu(dcmtk_files, host="127.0.0.1", port=settings.listener.port, called_ae="HOUNSFIELD", calling_ae="DCMTK")
    sender.join(60)
    listener.flush()

    successes = [(i, uid) for i, (kind, uid) in enumerate(order.events) if kind == "success"]
    assert len(successes) == 24
    for answered, uid in successes:
        written = order.events.index(("journal-write", uid))
        began = order.first("sync-begin", after=written)
        assert began is not None, f"no fdatasync after the record of {uid} was written"
        ended = order.first("sync-end", after=began)
        assert ended is not None and ended < answered, f"Success for {uid} was sent before its record was synced"


def test_without_the_journal_the_file_and_its_folder_are_synced_before_success(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The per-file path (``listener.journal: false``, and STOW-RS and C-GET arrivals through the same
    receiver): the file and its folder are fsynced before the instance's Success."""
    recorded = Order()
    recorded.record_fsyncs(monkeypatch)
    _record_successes(recorded, monkeypatch)
    unjournaled = settings.model_copy(update={"listener": settings.listener.model_copy(update={"journal": False})})
    running = Listener(unjournaled, lambda job: None)
    running.start()
    try:
        _, files = write_study(tmp_path / "c", seed=73, shape=(8, 32, 32))
        storescu(files, host="127.0.0.1", port=settings.listener.port, called_ae="HOUNSFIELD", calling_ae="DCMTK")
    finally:
        running.stop()
    assert len([e for e in recorded.events if e[0] == "success"]) == len(files)
    recorded.assert_files_synced_before("success", running.store.studies)


def test_with_the_journal_full_the_engine_stores_through_its_thread_pool(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With several associations, C-STOREs are journaled on the engine's loop, which must not wait: when
    no journal segment is free (``JournalBusy``), the instance goes to the thread pool, which waits for the
    applier's checkpoint to free one, and the sender still gets Success for every instance."""
    monkeypatch.setattr(  # two segments of 1 MiB (the settings allow 8 MiB at least): 28 slices each
        intake, "Journal", lambda folder, **_: Journal(folder, segment_bytes=1 << 20, max_segments=2)
    )
    appended: list[tuple[int, int]] = []  # (seq, segment fd)
    stored_by: list[tuple[str, bool, bool]] = []  # (thread, block, after the journal was busy)
    parked, busy = threading.Event(), threading.Event()
    append, checkpoint, write_nowait = Journal.append, Journal.checkpoint, JournaledStore.write_nowait

    def recording_append(self: Journal, meta: dict[str, Any], parts: Any, **options: Any) -> Any:
        seq, location = append(self, meta, parts, **options)
        appended.append((seq, location.fd))
        return seq, location

    def first_segment_applied(applied: int) -> bool:
        later = [seq for seq, fd in appended if fd != appended[0][1]]
        return bool(later) and applied >= min(later) - 1

    def held_checkpoint(self: Journal, applied: int) -> None:
        # The applier's checkpoint that frees the first segment waits until the journal was busy: the
        # second segment fills meanwhile, so the loop finds no free segment.
        if not busy.is_set() and threading.current_thread().name == "ingest-applier" and first_segment_applied(applied):
            parked.set()
            busy.wait(30)
        checkpoint(self, applied)

    def recording_write_nowait(self: JournaledStore, *args: Any, block: bool = True) -> Any:
        try:
            placed = write_nowait(self, *args, block=block)
        except JournalBusy:
            parked.wait(30)  # the placement lock is free here: the applier gets to its checkpoint first
            busy.set()
            raise
        stored_by.append((threading.current_thread().name, block, busy.is_set()))
        return placed

    monkeypatch.setattr(Journal, "append", recording_append)
    monkeypatch.setattr(Journal, "checkpoint", held_checkpoint)
    monkeypatch.setattr(JournaledStore, "write_nowait", recording_write_nowait)
    study_uid, files = write_study(tmp_path / "d", seed=74, shape=(90, 128, 128))

    running = Listener(settings, lambda job: None)
    running.start()
    statuses: list[int] = []
    try:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(CTImageStorage)
        associations = [ae.associate("127.0.0.1", settings.listener.port, ae_title="HOUNSFIELD") for _ in range(2)]
        try:
            assert all(assoc.is_established for assoc in associations)
            after_busy = 0
            for index, path in enumerate(files):  # both associations stay established throughout
                statuses.append(associations[index % 2].send_c_store(pydicom.dcmread(path)).Status)
                after_busy += busy.is_set()
                if after_busy > 6:
                    break
        finally:
            for assoc in associations:
                assoc.release()
        running.flush()
        with running.db.session() as session:
            indexed = session.scalar(select(func.count()).select_from(Instance))
    finally:
        running.stop()

    assert busy.is_set(), "the journal had no free segment while two associations were established"
    assert statuses == [Status.SUCCESS] * len(statuses) and len(statuses) < len(files)
    assert ("dicom-engine", False, False) in stored_by, "before that, instances were journaled on the loop"
    fallback = [name for name, block, after in stored_by if block and after]
    assert fallback and all(name.startswith("dicom-store") for name in fallback), "then in the thread pool"
    assert indexed == len(statuses)
    assert len(list(running.store.studies.joinpath(study_uid).rglob("*.dcm"))) == len(statuses)


def test_a_purge_holding_the_placement_does_not_stall_the_engine(
    listener: Listener, settings: Settings, tmp_path: Path
) -> None:
    """Retention's purge holds the placement lock across a database transaction. Meanwhile a C-STORE of
    one of several associations goes to the thread pool (which may wait) instead of the engine's loop
    waiting, so every other association is still served: here a C-ECHO, answered at once."""
    assert listener.journal is not None
    _, files = write_study(tmp_path / "e", seed=75, shape=(2, 32, 32))
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    first, second = (ae.associate("127.0.0.1", settings.listener.port, ae_title="HOUNSFIELD") for _ in range(2))
    held, release = threading.Event(), threading.Event()

    def purge() -> None:  # as retention's purge holds it (JournaledStore.holding_study)
        with listener.journal._place_lock:
            held.set()
            release.wait(10)

    purging = threading.Thread(target=purge)
    statuses: list[int] = []
    try:
        assert first.is_established and second.is_established
        purging.start()
        assert held.wait(5)
        storing = threading.Thread(target=lambda: statuses.append(first.send_c_store(pydicom.dcmread(files[0])).Status))
        storing.start()
        time.sleep(0.5)  # the C-STORE has reached the engine, whose loop met the held lock
        started = time.monotonic()
        echoed = second.send_c_echo()
        echo_s = time.monotonic() - started
        release.set()
        storing.join(10)
    finally:
        release.set()
        purging.join(10)
        first.release()
        second.release()
    assert echoed.Status == Status.SUCCESS and echo_s < 1.0, f"the engine answered after {echo_s:.2f} s"
    assert statuses == [Status.SUCCESS], "the instance was stored once the purge let go"
