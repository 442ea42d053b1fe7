"""The ingest journal on its own: records come back after a crash exactly as written, or not at all."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from hounsfield.listener.journal import Journal, JournalBusy, JournalRefused

MiB = 1 << 20


def _record(index: int, size: int = 10_000) -> tuple[dict, bytes]:
    data = hashlib.sha256(str(index).encode()).digest() * (size // 32)
    return {"index": index, "sha256": hashlib.sha256(data).hexdigest()}, data


def _append(journal: Journal, index: int, size: int = 10_000) -> int:
    meta, data = _record(index, size)
    half = len(data) // 2
    seq, _ = journal.append(meta, (data[:half], memoryview(data)[half:]))  # parts are joined as written
    journal.wait_durable(seq)
    return seq


def test_records_after_the_checkpoint_come_back_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=MiB, initial_segments=2)
    assert journal.open() == []
    seqs = [_append(journal, index) for index in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    journal.checkpoint(2)
    journal.close()  # as a crash leaves it: no further checkpoint

    reopened = Journal(tmp_path, segment_bytes=MiB, initial_segments=2)
    entries = reopened.open()
    assert [entry.seq for entry in entries] == [3, 4, 5]
    for entry in entries:
        meta, data = _record(entry.meta["index"])
        assert entry.meta == meta and entry.data == data
    reopened.checkpoint(entries[-1].seq)
    assert _append(reopened, 99) == 6, "sequence numbers go on across restarts"
    reopened.close()


@pytest.mark.parametrize(
    ("offset", "replayed"),
    [
        pytest.param(2 * 12288 + 200, [1, 2], id="the third record's data loses a byte"),
        pytest.param(12288 + 30, [1], id="the second record's meta (under its CRC) changes"),
    ],
)
def test_a_record_torn_by_a_crash_ends_the_replay(tmp_path: Path, offset: int, replayed: list[int]) -> None:
    journal = Journal(tmp_path, segment_bytes=MiB, initial_segments=1)
    journal.open()
    for index in range(3):  # records of 10,000 bytes of data take 12 KiB each
        _append(journal, index)
    journal.close()
    segment = next(tmp_path.glob("segment-*.wal"))
    with segment.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    entries = Journal(tmp_path, segment_bytes=MiB, initial_segments=1).open()
    assert [entry.seq for entry in entries] == replayed


def test_segments_are_reused_and_stale_records_never_replayed(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=MiB, initial_segments=2, max_segments=3)
    journal.open()
    last = 0
    for index in range(400):  # about 4.7 MiB of records through a journal of at most 3 MiB
        last = _append(journal, index, size=10_000)
        if index % 30 == 29:
            journal.checkpoint(last)
    assert len(list(tmp_path.glob("segment-*.wal"))) <= 3
    journal.checkpoint(last - 5)
    journal.close()
    entries = Journal(tmp_path, segment_bytes=MiB, initial_segments=2, max_segments=3).open()
    assert [entry.seq for entry in entries] == list(range(last - 4, last + 1))


def test_a_full_journal_refuses_after_waiting(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=MiB, initial_segments=2, max_segments=2, wait_s=0.2)
    journal.open()
    asked = []
    journal.on_sealed = lambda: asked.append(True)
    with pytest.raises(JournalRefused, match="full"):
        for index in range(300):
            _append(journal, index)
    assert asked, "the journal asked for a checkpoint before refusing"
    journal.close()


def test_a_record_larger_than_a_segment_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=MiB, initial_segments=1)
    journal.open()
    data = bytes(2 * MiB)
    with pytest.raises(JournalRefused, match="does not fit"):
        journal.append({"sha256": hashlib.sha256(data).hexdigest()}, (data,))
    journal.close()


def test_concurrent_writers_share_fdatasyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal(tmp_path, segment_bytes=8 * MiB, initial_segments=1)
    journal.open()
    syncs = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    barrier = threading.Barrier(8)

    def writer(start: int) -> None:
        barrier.wait()
        for index in range(start, start + 25):
            _append(journal, index)

    threads = [threading.Thread(target=writer, args=(n * 100,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert journal.last_seq == 200
    assert len(syncs) < 200, "each fdatasync covered the records of every writer waiting for it"
    journal.close()
    entries = Journal(tmp_path, segment_bytes=8 * MiB, initial_segments=1).open()
    assert [entry.seq for entry in entries] == list(range(1, 201))


class _Told:
    """What a :meth:`Journal.watch` callback heard, and from which thread."""

    def __init__(self, events: list[tuple[str, object]] | None = None) -> None:
        self.calls: list[tuple[int, JournalRefused | None]] = []
        self.threads: list[threading.Thread] = []
        self.events = events
        self.heard = threading.Event()

    def __call__(self, durable: int, error: JournalRefused | None) -> None:
        self.calls.append((durable, error))
        self.threads.append(threading.current_thread())
        if self.events is not None:
            self.events.append(("told", durable))
        self.heard.set()

    def wait(self) -> None:
        assert self.heard.wait(10), "the journal's sync thread never told its watcher"
        self.heard.clear()


def test_sync_soon_makes_records_durable_in_the_background_and_tells_the_watchers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path, segment_bytes=MiB, initial_segments=2)  # one segment in use: one fd to sync
    journal.open()
    events: list[tuple[str, object]] = []
    real = os.fdatasync

    def recording(fd: int) -> None:
        real(fd)
        events.append(("fdatasync", fd))

    monkeypatch.setattr(os, "fdatasync", recording)
    told, other = _Told(events), _Told()
    journal.watch(told)
    journal.watch(other)

    seqs = []
    for index in range(5):
        meta, data = _record(index)
        seqs.append(journal.append(meta, (data,))[0])
        events.append(("append", seqs[-1]))
    assert journal.durable == 0 and events[-1] == ("append", 5), "appending alone syncs nothing"
    journal.sync_soon(seqs[-1])
    told.wait()
    other.wait()
    assert told.calls == [(5, None)] and journal.durable == 5
    assert [kind for kind, _ in events] == ["append"] * 5 + ["fdatasync", "told"], (
        "the five records shared one fdatasync, after they were written and before the watcher heard"
    )
    assert told.threads[0].name == "journal-sync" and told.threads[0] is not threading.current_thread()

    journal.unwatch(other)
    for index in range(5, 8):
        meta, data = _record(index)
        events.append(("append", journal.append(meta, (data,))[0]))
    journal.sync_soon(8)
    told.wait()
    assert told.calls[-1] == (8, None)
    assert [kind for kind, _ in events[7:]] == ["append"] * 3 + ["fdatasync", "told"]
    assert len(other.calls) == 1, "an unwatched callback is not called again"

    # Already durable and reported (the same bytes again, in an earlier record): reported again for
    # whoever asks now, without another sync (the engine would otherwise wait for a report that never came).
    journal.sync_soon(6)
    told.wait()
    assert told.calls[-1] == (8, None)
    journal.close()
    assert not told.threads[0].is_alive(), "close() stops the sync thread"
    assert len(told.calls) == 3 and [kind for kind, _ in events].count("fdatasync") == 2
    entries = Journal(tmp_path, segment_bytes=MiB, initial_segments=2).open()
    assert [entry.seq for entry in entries] == list(range(1, 9))


def test_a_failed_background_sync_is_reported_and_the_journal_refuses_from_then_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path, segment_bytes=MiB, initial_segments=2)
    journal.open()
    told = _Told()
    journal.watch(told)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", failing)
    meta, data = _record(1)
    seq, _ = journal.append(meta, (data,))
    journal.sync_soon(seq)
    told.wait()
    ((durable, error),) = told.calls
    assert isinstance(error, JournalRefused) and "Input/output error" in str(error)
    assert durable < seq and journal.durable < seq, "the record is not durable: never to be acknowledged"
    monkeypatch.undo()  # the disk works again, but the page cache may have lost the data: still refused
    meta, data = _record(2)
    with pytest.raises(JournalRefused):
        journal.append(meta, (data,))
    with pytest.raises(JournalRefused):
        journal.wait_durable(seq)
    assert journal.last_seq == seq
    journal.close()


def test_an_append_that_must_not_wait_is_busy_when_no_segment_is_free(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=MiB, initial_segments=2, max_segments=2, wait_s=0.2)
    journal.open()
    per_segment = MiB // 12288  # records of 10,000 bytes of data take 12 KiB each
    for index in range(2 * per_segment):  # both segments filled with records not yet applied
        meta, data = _record(index)
        journal.append(meta, (data,), block=False)
    last = journal.last_seq
    assert last == 2 * per_segment

    meta, data = _record(999)
    with pytest.raises(JournalBusy) as busy:
        journal.append(meta, (data,), block=False)
    assert not isinstance(busy.value, OSError), "busy is not a refusal: the caller appends again where it may wait"
    assert journal.last_seq == last, "nothing was written"
    with pytest.raises(JournalRefused, match="full"):  # one that may wait still waits, then refuses
        journal.append(meta, (data,))
    assert journal.last_seq == last

    journal.checkpoint(last)  # applied: both segments are free again
    assert journal.append(meta, (data,), block=False)[0] == last + 1
    journal.wait_durable(last + 1)
    journal.close()
    entries = Journal(tmp_path, segment_bytes=MiB, initial_segments=2, max_segments=2).open()
    assert [(entry.seq, entry.meta) for entry in entries] == [(last + 1, meta)]
