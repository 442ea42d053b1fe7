"""The ingest journal: an append-only, preallocated write-ahead log of received instances.

Answering a C-STORE with Success needs the instance on stable storage. Writing each instance as its
own file costs a file creation, an ``fsync`` that commits the file system's metadata, a rename and an
``fsync`` of the folder: about 1.6 ms for a CT slice on this project's reference machine, as much as
dcmtk's ``storescp`` takes for its whole (unsynced) work. The journal makes the same guarantee with
one ``fdatasync`` of data written into a file whose blocks already exist (0.4 ms for the same slice),
and lets several associations share one ``fdatasync`` (group commit).

Records are appended to fixed-size segment files, created zero-filled (their blocks allocated and
written once) and recycled once everything in them has been applied elsewhere. A record is::

    magic "HFJ1" | seq (u64) | meta length (u32) | data length (u32) | XXH3-128 of the data (16 bytes)
        | CRC-32 of (seq, lengths, data hash, meta)
    meta: JSON (what the index row needs)
    data: the Part 10 file, as it will be written into the store
    zero padding to a 4 KiB boundary

Sequence numbers grow by one from record to record, across segments and across restarts. A
segment is read from its start until a record does not follow (wrong magic, a CRC or SHA-256 that
does not match: a record torn by a crash, or a stale one from the segment's earlier use, whose
sequence number is smaller). XXH3 checks the data for a torn write at 40 GB/s, so the hash costs
nothing beside the ``fdatasync``; the store's SHA-256 is taken later, by whoever applies the record.
``checkpoint`` names the last sequence number applied to the store and
index and made durable there; records after it are replayed at start-up.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from hounsfield.errors import HounsfieldError
from hounsfield.store import fsync_folder

__all__ = ["Journal", "JournalBusy", "JournalEntry", "JournalLocation", "JournalRefused"]

logger = logging.getLogger(__name__)

MAGIC = b"HFJ1"
_HEADER = struct.Struct("<4sQII16sI")
_ALIGN = 4096
_ZEROS = bytes(1 << 20)
_CHECKPOINT = "checkpoint.json"


class JournalRefused(HounsfieldError, OSError):
    """The journal refuses a record: it does not fit, no room came within the wait, or a write or sync failed."""


class JournalBusy(HounsfieldError):
    """An append that must not wait (``block=False``) would have to: no free segment is ready.

    Nothing was written; append again from a thread that may wait.
    """


@dataclass(frozen=True)
class JournalEntry:
    """One record read back at start-up."""

    seq: int
    meta: dict[str, Any]
    data: bytes


@dataclass(frozen=True)
class JournalLocation:
    """Where one record's data is: read it back with :meth:`Journal.read` until its segment is checkpointed."""

    fd: int
    offset: int
    length: int


@dataclass(eq=False)
class _Segment:
    number: int
    path: Path
    fd: int
    used: int = 0
    last_seq: int = 0
    """The last sequence number written in this segment's current use (0: none yet)."""


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def _crc(seq: int, meta: bytes, data_length: int, data_hash: bytes) -> int:
    return zlib.crc32(meta, zlib.crc32(struct.pack("<QII16s", seq, len(meta), data_length, data_hash)))


class Journal:
    """Segments in ``folder``; one writer process per folder.

    :meth:`open` first (it returns the records to replay), then any number of threads may
    :meth:`append` and :meth:`wait_durable`. :meth:`checkpoint` frees the segments whose records are
    all applied. ``max_segments`` bounds the disk the journal takes; when every segment holds records
    not yet applied, :meth:`append` waits up to ``wait_s`` for a checkpoint, then refuses.
    """

    def __init__(
        self,
        folder: Path,
        *,
        segment_bytes: int = 64 << 20,
        initial_segments: int = 4,
        max_segments: int = 8,
        wait_s: float = 30.0,
    ) -> None:
        if segment_bytes % _ALIGN or segment_bytes < 1 << 20:
            raise ValueError("segment_bytes must be a multiple of 4 KiB and at least 1 MiB")
        self.folder = folder
        self.segment_bytes = segment_bytes
        self.max_segments = max(2, max_segments)
        self.initial_segments = min(max(1, initial_segments), self.max_segments)
        self.wait_s = wait_s
        self._lock = threading.Lock()  # appends, in sequence order
        self._space = threading.Condition(self._lock)
        self._sync = threading.Condition()  # durability state
        self._segments: list[_Segment] = []
        self._free: list[_Segment] = []
        self._sealed: list[_Segment] = []
        self._active: _Segment | None = None
        self._next_seq = 1
        self._applied = 0
        self._written = 0
        self._durable = 0
        self._dirty: set[int] = set()
        self._syncing = False
        self._failed: str = ""
        self._spare_thread: threading.Thread | None = None
        self._creating = False
        self._numbers = itertools.count()
        self._wanted = 0
        """The highest record :meth:`sync_soon` was asked to make durable."""
        self._announced = 0
        self._again = False
        """A caller asked for a record already reported: report again."""
        self._watchers: list[Callable[[int, JournalRefused | None], None]] = []
        self._sync_thread: threading.Thread | None = None
        self._closing = False
        self.on_sealed: Any = None
        """Called (no arguments, from an appending thread) when the journal runs short of free
        segments: time to apply and checkpoint."""

    # -- start-up ----------------------------------------------------------------------------------------

    def open(self) -> list[JournalEntry]:
        """Open (or create) the journal; returns the records after the last checkpoint, in order.

        The caller applies them and calls :meth:`checkpoint` with the last one's ``seq`` before
        appending: until then their segments are not reused.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self._applied = self._read_checkpoint()
        entries: list[JournalEntry] = []
        highest = self._applied
        paths = sorted(self.folder.glob("segment-*.wal"))
        for path in paths:
            try:
                number = int(path.stem.split("-", 1)[1])
            except ValueError:
                continue
            fd = os.open(path, os.O_RDWR)
            if os.fstat(fd).st_size != self.segment_bytes:
                # Another segment size was configured: read what it holds, then make it the new size.
                found = list(self._scan(fd))
                os.ftruncate(fd, 0)
                self._zero_fill(fd)
            else:
                found = list(self._scan(fd))
            segment = _Segment(number, path, fd)
            for entry in found:
                highest = max(highest, entry.seq)
                if entry.seq > self._applied:
                    entries.append(entry)
                    segment.last_seq = max(segment.last_seq, entry.seq)
            self._segments.append(segment)
        entries.sort(key=lambda entry: entry.seq)
        self._next_seq = highest + 1
        self._written = self._durable = highest
        for segment in self._segments:
            (self._sealed if segment.last_seq else self._free).append(segment)
        self._numbers = itertools.count(max((s.number for s in self._segments), default=-1) + 1)
        while len(self._segments) < self.initial_segments:  # the first start: made before serving
            self._free.append(self._create(next(self._numbers)))
        if entries:
            logger.warning("ingest journal: %d record(s) after the last checkpoint will be replayed", len(entries))
        return entries

    def _read_checkpoint(self) -> int:
        try:
            return int(json.loads((self.folder / _CHECKPOINT).read_text(encoding="utf-8"))["applied"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            # Written atomically, so this is damage: replay everything the segments hold (idempotent).
            logger.error("ingest journal: unreadable checkpoint (%s); replaying every record", type(exc).__name__)
            return 0

    def _scan(self, fd: int) -> list[JournalEntry]:
        """The records from the segment's start while each follows the one before."""
        size = os.fstat(fd).st_size
        offset, previous, found = 0, None, []
        while offset + _HEADER.size <= size:
            magic, seq, meta_length, data_length, data_hash, crc = _HEADER.unpack(os.pread(fd, _HEADER.size, offset))
            if magic != MAGIC or (previous is not None and seq != previous + 1):
                break
            length = _aligned(_HEADER.size + meta_length + data_length)
            if offset + length > size:
                break
            meta_bytes = os.pread(fd, meta_length, offset + _HEADER.size)
            if _crc(seq, meta_bytes, data_length, data_hash) != crc:
                break
            if seq > self._applied:
                data = os.pread(fd, data_length, offset + _HEADER.size + meta_length)
                try:
                    meta = json.loads(meta_bytes)
                except ValueError:
                    break
                if len(data) != data_length or xxhash.xxh3_128_digest(data) != data_hash:
                    break  # torn: the header reached the disk, the data did not
                found.append(JournalEntry(seq, meta, data))
            previous = seq
            offset += length
        return found

    def _create(self, number: int, *, register: bool = True) -> _Segment:
        path = self.folder / f"segment-{number:04d}.wal"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._zero_fill(fd)
            fsync_folder(self.folder)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        segment = _Segment(number, path, fd)
        if register:
            self._segments.append(segment)
        return segment

    def _zero_fill(self, fd: int) -> None:
        # Written, not fallocated: an fdatasync then has no extent to convert, only data to flush.
        remaining = self.segment_bytes
        while remaining:
            remaining -= os.write(fd, _ZEROS[: min(remaining, len(_ZEROS))])
        os.fsync(fd)

    # -- appending ---------------------------------------------------------------------------------------

    def fits(self, data_length: int, meta_length: int = 4096) -> bool:
        """Whether a record of this size fits in one segment."""
        return _aligned(_HEADER.size + meta_length + data_length) <= self.segment_bytes

    def append(
        self, meta: dict[str, Any], parts: Sequence[bytes | bytearray | memoryview], *, block: bool = True
    ) -> tuple[int, JournalLocation]:
        """Write one record: ``meta`` (JSON-able) and its data, ``parts`` joined.

        Returns its sequence number and where its data is; the record is durable once
        :meth:`wait_durable` returns for it (or :meth:`sync_soon`'s watchers hear of it). Raises
        :class:`JournalRefused` when it cannot be written; with ``block=False``, :class:`JournalBusy`
        instead of waiting for a free segment (an event loop's thread must not wait).
        """
        meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
        data_length = sum(len(part) for part in parts)
        hasher = xxhash.xxh3_128()
        for part in parts:
            hasher.update(part)
        data_hash = hasher.digest()
        length = _aligned(_HEADER.size + len(meta_bytes) + data_length)
        if length > self.segment_bytes:
            raise JournalRefused(f"a record of {length} bytes does not fit a journal segment")
        with self._lock:
            if self._failed:
                raise JournalRefused(self._failed)
            segment = self._room_for(length, block=block)
            seq = self._next_seq
            crc = _crc(seq, meta_bytes, data_length, data_hash)
            header = _HEADER.pack(MAGIC, seq, len(meta_bytes), data_length, data_hash, crc)
            padding = length - _HEADER.size - len(meta_bytes) - data_length
            buffers = [header, meta_bytes, *parts]
            if padding:
                buffers.append(_ZEROS[:padding])
            try:
                written = os.pwritev(segment.fd, buffers, segment.used)
                if written != length:
                    raise OSError(f"short write to the journal ({written} of {length} bytes)")
            except OSError as exc:
                # The bytes may be half there; the next record would then not follow it. Stop here.
                self._failed = f"the ingest journal failed: {exc.strerror or exc}"
                logger.error("%s", self._failed)
                raise JournalRefused(self._failed) from exc
            location = JournalLocation(segment.fd, segment.used + _HEADER.size + len(meta_bytes), data_length)
            segment.used += length
            segment.last_seq = seq
            self._next_seq = seq + 1
            with self._sync:
                self._written = seq
                self._dirty.add(segment.fd)
        return seq, location

    @staticmethod
    def read(location: JournalLocation) -> bytes:
        """A record's data, read back (from the page cache, as a rule)."""
        data = os.pread(location.fd, location.length, location.offset)
        if len(data) != location.length:
            raise OSError(f"short read from the journal ({len(data)} of {location.length} bytes)")
        return data

    def _room_for(self, length: int, *, block: bool = True) -> _Segment:
        """The segment the next record goes to (called with the append lock held)."""
        active = self._active
        if active is not None and active.used + length <= self.segment_bytes:
            return active
        if not block and not self._free:
            raise JournalBusy("no free journal segment is ready")
        if active is not None:
            self._sealed.append(active)
            self._active = None
        deadline = time.monotonic() + self.wait_s
        while not self._free:
            remaining = deadline - time.monotonic()
            if self._creating:
                self._space.wait(max(remaining, 0.01))  # the spare being prepared notifies
                continue
            if len(self._segments) < self.max_segments:
                self._free.append(self._create(next(self._numbers)))
                break
            if self.on_sealed is not None:
                self.on_sealed()
            if remaining <= 0:
                raise JournalRefused("the ingest journal is full: its records are not being applied")
            self._space.wait(remaining)
        segment = self._free.pop(0)
        segment.used = 0
        segment.last_seq = 0
        self._active = segment
        self._prepare_spare()
        if not self._free and self.on_sealed is not None:
            self.on_sealed()  # the last free segment is in use: time to checkpoint the full ones
        return segment

    def wait_for_room(self, *, until: float | None = None) -> None:
        """Wait until a free segment is ready (made here if the journal may grow), asking for a checkpoint
        meanwhile (``on_sealed``); raises :class:`JournalRefused` when none came by ``until`` (a monotonic
        time; default ``wait_s`` from now) or the journal failed. For a caller that must not wait while
        it holds a lock of its own: it appends with ``block=False`` and, busy, waits here outside it."""
        deadline = until if until is not None else time.monotonic() + self.wait_s
        with self._lock:
            while not self._free:
                if self._failed:
                    raise JournalRefused(self._failed)
                if not self._creating and len(self._segments) < self.max_segments:
                    self._free.append(self._create(next(self._numbers)))
                    return
                if self.on_sealed is not None:
                    self.on_sealed()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise JournalRefused("the ingest journal is full: its records are not being applied")
                self._space.wait(min(remaining, 1.0))

    def _prepare_spare(self) -> None:
        """Create the next segment in the background, so that an append seldom waits for a zero fill.

        Called with the append lock held.
        """
        if self._free or self._creating or len(self._segments) >= self.max_segments:
            return
        self._creating = True
        number = next(self._numbers)

        def create() -> None:
            segment: _Segment | None = None
            try:
                segment = self._create(number, register=False)
            except OSError as exc:
                logger.warning("ingest journal: could not prepare a segment: %s", exc.strerror or exc)
            with self._lock:
                self._creating = False
                if segment is not None:
                    self._segments.append(segment)
                    self._free.append(segment)
                self._space.notify_all()

        self._spare_thread = threading.Thread(target=create, name="journal-spare", daemon=True)
        self._spare_thread.start()

    def wait_durable(self, seq: int) -> None:
        """Return once record ``seq`` (and every one before it) is on stable storage.

        The first waiting thread runs ``fdatasync`` for everyone written so far; the others wait for
        it (group commit). Raises :class:`JournalRefused` if the sync fails.
        """
        with self._sync:
            while self._durable < seq:
                if self._failed:
                    raise JournalRefused(self._failed)
                if self._syncing:
                    self._sync.wait()
                    continue
                self._syncing = True
                target, fds = self._written, list(self._dirty)
                self._dirty.clear()
                self._sync.release()
                error: OSError | None = None
                try:
                    for fd in fds:
                        os.fdatasync(fd)
                except OSError as exc:
                    error = exc
                finally:
                    self._sync.acquire()
                    self._syncing = False
                if error is not None:
                    # After a failed fdatasync the page cache may have dropped the data: never retry.
                    self._failed = f"the ingest journal failed: {error.strerror or error}"
                    logger.error("%s", self._failed)
                    self._sync.notify_all()
                    raise JournalRefused(self._failed) from error
                self._durable = max(self._durable, target)
                self._sync.notify_all()

    def watch(self, callback: Callable[[int, JournalRefused | None], None]) -> None:
        """Have ``callback(durable, error)`` called from the journal's sync thread after each sync that
        :meth:`sync_soon` asked for: every record up to ``durable`` is on stable storage; ``error``, when
        the sync failed (the journal refuses every record from then on)."""
        self._watchers.append(callback)

    def unwatch(self, callback: Callable[[int, JournalRefused | None], None]) -> None:
        """Stop calling ``callback`` (its loop is closing)."""
        if callback in self._watchers:
            self._watchers.remove(callback)

    def sync_soon(self, seq: int) -> None:
        """Make record ``seq`` durable in the background, without waiting here.

        The journal's sync thread runs the same group commit as :meth:`wait_durable` (one ``fdatasync``
        for everything written meanwhile) and then tells the :meth:`watch` callbacks.
        """
        with self._sync:
            if seq <= self._announced:
                # Already reported (durable, or the journal failed): report again for this caller,
                # who may have asked after the report went out (the same bytes again, in an earlier record).
                self._again = True
            elif seq <= self._wanted:
                return  # a sync on its way covers it
            self._wanted = max(self._wanted, seq)
            if self._sync_thread is None:
                self._sync_thread = threading.Thread(target=self._sync_loop, name="journal-sync", daemon=True)
                self._sync_thread.start()
            self._sync.notify_all()

    def _sync_loop(self) -> None:
        while True:
            with self._sync:
                while self._wanted <= self._announced and not self._again and not self._closing:
                    self._sync.wait()
                if self._closing and self._wanted <= self._announced:
                    return
                target, self._again = self._wanted, False
            error: JournalRefused | None = None
            try:
                self.wait_durable(target)
            except JournalRefused as exc:
                error = exc
            with self._sync:
                durable = self._durable
                self._announced = max(self._announced, target if error is not None else durable)
            for callback in list(self._watchers):
                try:
                    callback(durable, error)
                except Exception:  # another room's callback: never stop the sync thread
                    logger.exception("a journal durability callback failed")

    # -- checkpoints ------------------------------------------------------------------------------------

    @property
    def applied(self) -> int:
        return self._applied

    @property
    def durable(self) -> int:
        """The last record known to be on stable storage."""
        with self._sync:
            return self._durable

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._next_seq - 1

    @property
    def sealed(self) -> int:
        """Full segments waiting for a checkpoint."""
        with self._lock:
            return len(self._sealed)

    def checkpoint(self, applied: int) -> None:
        """Record that every record up to ``applied`` is durable in the store and index; reuse segments.

        Written atomically (temporary file, fsync, rename, fsync of the folder).
        """
        if applied > self._applied:
            path = self.folder / _CHECKPOINT
            temporary = path.with_suffix(".tmp")
            with temporary.open("w", encoding="utf-8") as handle:
                json.dump({"applied": applied}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
            fsync_folder(self.folder)
        with self._lock:
            self._applied = max(self._applied, applied)
            done = [segment for segment in self._sealed if segment.last_seq <= self._applied]
            for segment in done:
                self._sealed.remove(segment)
                self._free.append(segment)
            if done:
                self._space.notify_all()

    def close(self) -> None:
        with self._sync:
            self._closing = True
            self._sync.notify_all()
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=30)
            self._sync_thread = None
        spare = self._spare_thread
        if spare is not None:
            spare.join(timeout=30)
        with self._lock:
            for segment in self._segments:
                os.close(segment.fd)
            self._segments.clear()
            self._free.clear()
            self._sealed.clear()
            self._active = None
