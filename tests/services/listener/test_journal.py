"""The ingest journal on its own: records come back after a crash exactly as written, or not at all."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from hounsfield.listener.journal import Journal, JournalRefused

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
