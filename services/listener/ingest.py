"""The listener's durable path: the ingest journal first, the store's files and index rows right after.

:class:`JournaledStore` is what :func:`~hounsfield.listener.storage.receive_instance` writes to when
the listener runs with its journal (the default). For one instance it:

1. decides where the instance goes (its file path and revision, or that the same bytes are already
   stored or on their way: a duplicate), under one lock, so that two associations sending the same
   SOP Instance UID never take the same path;
2. appends a journal record holding the Part 10 file and its index row, and waits until the record
   is on stable storage (``fdatasync``, shared by concurrent associations); only then is Success sent.
   The DICOM engine's own thread does the append without waiting (:meth:`JournaledStore.write_nowait`)
   and answers when the journal's sync thread reports the record durable.

A background thread (the *applier*) then, in journal order, writes each file of a durable record into
the study store (in place: replay rewrites it after a crash; no fsync of its own), commits the index
rows of everything waiting in one transaction, and tells the completeness tracker. Whatever a
transport wants to happen after its instances are indexed (the association-release completion
trigger) is queued behind them with :meth:`JournaledStore.then`, so the router never sees a study
before its rows.

The journal is the index's write-ahead log: an acknowledged instance is in the journal, and the
journal is replayed into the store and index at start-up. Every second of quiet (and whenever a
journal segment fills) the applier syncs the store's file system (``syncfs``) and checkpoints the
journal, which then reuses its segments.

Datasets too large for memory arrive as spool files (:class:`~hounsfield.listener.storage.SpooledDataset`)
and keep their own durable path (:meth:`JournaledStore.adopt`: fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hounsfield.db import Database
from hounsfield.db.group_commit import DatabaseUnavailable, GroupCommit
from hounsfield.db.index import IndexedInstance, indexed_digests
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.journal import Journal, JournalBusy, JournalEntry, JournalLocation
from hounsfield.logs import log_context
from hounsfield.store import StoredInstance, StoreFull, StudyStore, move_durably, sha256_file

__all__ = ["JournaledStore"]

logger = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
_FLOOR_RECHECK_BYTES = 64 << 20
_LOOP_LOCK_WAIT_S = 0.005
"""How long the event loop's thread waits for the placement lock (held for long only by a retention
purge) before it hands the instance to the thread pool."""


@dataclass(eq=False)
class _Digest:
    """The SHA-256 of some bytes, taken when first asked for: comparing two copies is the rare case."""

    def __init__(self, compute: Callable[[], str] | None = None, value: str = "") -> None:
        self._compute = compute
        self._value = value

    def __call__(self) -> str:
        if not self._value and self._compute is not None:
            self._value = self._compute()
        return self._value


def _sha256(parts: Sequence[Buffer]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


@dataclass(eq=False)
class _Reservation:
    """A path taken by an instance not yet in place: its content, and how to wait for it."""

    size: int
    sha256: _Digest
    seq: int = 0
    """The journal record that holds it (0: a spool file being moved into place)."""
    moved: threading.Event | None = None


@dataclass(eq=False)
class _Apply:
    """One queued instance: write its file (from its journal record), index it, tell the tracker."""

    item: IndexedInstance
    key: Hashable
    location: JournalLocation | None = None
    """Where the file's bytes are in the journal (none: the file is already in place)."""
    seq: int = 0


def _sha256_at(journal: Journal, location: JournalLocation) -> str:
    return hashlib.sha256(journal.read(location)).hexdigest()


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return function


_SYNCFS = _libc_syncfs()


def sync_file_system(path: Path) -> None:
    """Flush every dirty page of the file system ``path`` is on (``syncfs``; ``sync`` elsewhere)."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    finally:
        os.close(fd)


class JournaledStore:
    """The journal, the placement of instances, and the applier thread."""

    def __init__(
        self,
        store: StudyStore,
        db: Database,
        tracker: CompletenessTracker,
        journal: Journal,
        *,
        max_pending_bytes: int = 128 << 20,
        checkpoint_after_s: float = 1.0,
        quiet_s: float = 0.05,
        apply_within_s: float = 1.0,
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.journal = journal
        self._index = GroupCommit(db)
        self._db = db
        self._max_pending_bytes = max_pending_bytes
        self._checkpoint_after_s = checkpoint_after_s
        self._quiet_s = quiet_s
        self._apply_within_s = apply_within_s
        self._first_enqueued = self._last_enqueued = 0.0
        self._barriers = 0
        self._place_lock = threading.Lock()
        self._reserved: dict[Path, _Reservation] = {}
        self._unapplied: Counter[str] = Counter()
        """Per study: instances queued (acknowledged) whose file and index row are not yet applied."""
        self._queue: deque[_Apply | Callable[[], None]] = deque()
        self._queued = threading.Condition()
        self._pending_bytes = 0
        self._applied_seq = 0
        self._blocked_at = 0
        """The first journal record whose file could not be written: no checkpoint reaches it."""
        self._checkpoint_wanted = False
        self._stopping = False
        self._folders: set[Path] = set()
        self._thread: threading.Thread | None = None
        self._replayed = False
        self._free_at_check = 0
        self._since_check = 0
        self._checked_at = 0.0
        journal.on_sealed = self._want_checkpoint

    # -- start and stop -------------------------------------------------------------------------------

    def replay(self) -> int:
        """Open the journal and apply what it holds after its last checkpoint; returns how many records.

        Run before serving. Files are rewritten from the journal (a crash may have left them partial);
        index rows are added where the index lacks them (the same SHA-256 already indexed is left
        alone, so that replay does not reopen studies that were complete).
        """
        self.store.root.mkdir(parents=True, exist_ok=True)
        entries = self.journal.open()
        self._replayed = True
        if not entries:
            return 0
        items, rewritten = [], 0
        for entry in entries:
            item = self._replayed_item(entry)
            if item is None:
                continue
            digest = hashlib.sha256(entry.data).hexdigest()
            rewritten += self._rewrite_file(Path(item.path), entry.data, digest, entry.seq)
            items.append(dataclasses.replace(item, sha256=digest))
        indexed = self._indexed_digests([item.sop_instance_uid for item in items])
        missing = [item for item in items if indexed.get(item.sop_instance_uid) != item.sha256]
        errors = self._index.record_batch(missing) if missing else []
        failed = sum(1 for error in errors if error is not None)
        sync_file_system(self.store.root)
        self.journal.checkpoint(entries[-1].seq)
        self._applied_seq = entries[-1].seq
        logger.warning(
            "ingest journal replayed: %d instance file(s) rewritten, %d index row(s) added, %d failed",
            rewritten, len(missing) - failed, failed,
        )  # fmt: skip
        return len(entries)

    def _replayed_item(self, entry: JournalEntry) -> IndexedInstance | None:
        """The record's index row, its path rebuilt from its UIDs (a damaged record must not write
        outside the store); None, with its data set aside, when the record cannot say where it goes."""
        known = {field.name for field in dataclasses.fields(IndexedInstance)}
        try:
            item = IndexedInstance(**{key: value for key, value in entry.meta.items() if key in known})
            path = self.store.instance_path(
                item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid, int(item.revision)
            )
        except (TypeError, ValueError) as exc:
            # Acknowledged once, so never dropped: kept beside the journal for a person to look at.
            aside = self.journal.folder / "unreplayable" / f"{entry.seq}.dcm"
            aside.parent.mkdir(exist_ok=True)
            self._rewrite_file(aside, entry.data, hashlib.sha256(entry.data).hexdigest(), entry.seq)
            logger.error(
                "ingest journal: record %d cannot be replayed (%s); its file is kept at %s",
                entry.seq, type(exc).__name__, aside,
            )  # fmt: skip
            return None
        return dataclasses.replace(item, path=str(path))

    def _indexed_digests(self, sop_uids: list[str]) -> dict[str, str]:
        with self._db.session() as session:
            return indexed_digests(session, sop_uids)

    def start(self) -> None:
        if not self._replayed:
            raise RuntimeError("replay the journal before starting")
        self._thread = threading.Thread(target=self._run, name="ingest-applier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Apply everything queued, sync and checkpoint, stop the thread and close the journal."""
        with self._queued:
            self._stopping = True
            self._queued.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.journal.close()

    def backlog(self) -> tuple[int, int]:
        """(instances, bytes) acknowledged and not yet applied to the store and index."""
        with self._queued:
            return sum(1 for work in self._queue if isinstance(work, _Apply)), self._pending_bytes

    def drain(self, timeout: float = 30.0) -> bool:
        """Apply everything queued so far now and wait for it (its files and index rows); False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return not self._queue
        done = threading.Event()
        self.then(done.set)
        return done.wait(timeout)

    # -- the receiving threads ------------------------------------------------------------------------

    def write(self, item: IndexedInstance, parts: Sequence[Buffer], key: Hashable) -> StoredInstance:
        """Make one instance durable in the journal and queue it; its path and revision are chosen here.

        ``parts`` joined are the Part 10 file, ``item.size`` bytes; ``item.path``, ``revision`` and
        ``sha256`` are filled in here and by the applier (which hashes the file as it writes it).
        Raises :class:`OSError` (:class:`StoreFull` below the disk floor, :class:`JournalRefused`)
        when it cannot: nothing was acknowledged then.
        """
        stored, seq = self.write_nowait(item, parts, key)
        if seq:
            self.journal.wait_durable(seq)
        return stored

    def write_nowait(
        self, item: IndexedInstance, parts: Sequence[Buffer], key: Hashable, *, block: bool = True
    ) -> tuple[StoredInstance, int]:
        """:meth:`write` without the wait for durability: the instance, and the journal record that must
        be durable before its Success (0: none; ask with :meth:`Journal.sync_soon` or wait for it).

        With ``block=False`` it never waits (an event loop's thread): where it would have to (no free
        journal segment is ready, or the same instance is being moved into place from a spool file)
        it raises :class:`JournalBusy` with nothing written or queued.
        """
        incoming = _Digest(lambda: _sha256(parts))
        deadline = time.monotonic() + self.journal.wait_s
        while True:
            full, moved = False, None
            if not self._place_lock.acquire(timeout=-1 if block else _LOOP_LOCK_WAIT_S):
                raise JournalBusy("the placement is held elsewhere (a retention purge, as a rule)")
            try:
                path, revision, reservation, on_disk = self._place(item, incoming)
                placed = dataclasses.replace(item, path=str(path), revision=revision)
                if reservation is None and not on_disk:
                    self._check_floor(item.size)
                    try:
                        # Never waits here: the applier needs this lock to free room in the journal.
                        # vars(): the row as it is (json only reads it); dataclasses.asdict would deep-copy it.
                        seq, location = self.journal.append(vars(placed), parts, block=False)
                    except JournalBusy:
                        if not block:
                            raise
                        full = True  # waited for below, outside the lock; then placed again
                    else:
                        stored = _Digest(functools.partial(_sha256_at, self.journal, location))
                        self._reserved[path] = _Reservation(item.size, stored, seq)
                        self._enqueue(_Apply(placed, key, location, seq), item.size)
                        duplicate = False
                        if revision:
                            logger.warning(
                                "instance stored again with different content; kept as revision %d", revision
                            )
                        break
                elif reservation is None or reservation.seq:
                    # The same bytes are stored, or on their way in an earlier journal record: indexed
                    # only once that record is durable (its seq), as the record's own instance is.
                    seq = reservation.seq if reservation is not None else 0
                    placed = dataclasses.replace(placed, sha256=incoming())
                    self._enqueue(_Apply(placed, key, seq=seq), 0)
                    duplicate = True
                    break
                else:
                    moved = reservation.moved
            finally:
                self._place_lock.release()
            if full:
                self.journal.wait_for_room(until=deadline)
                continue
            if moved is not None:
                if not block:
                    raise JournalBusy("the same instance is being moved into place")
                moved.wait()  # the same bytes, being moved into place from a spool file: look again
        return StoredInstance(path, placed.sha256, item.size, revision, duplicate=duplicate), seq

    def adopt(self, item: IndexedInstance, spooled: Path, key: Hashable) -> StoredInstance:
        """Move a complete spool file into place durably (fsync, rename, fsync of the folder) and queue its row."""
        mine: _Reservation | None = None
        incoming = _Digest(value=item.sha256)
        while True:
            with self._place_lock:
                path, revision, reservation, on_disk = self._place(item, incoming)
                placed = dataclasses.replace(item, path=str(path), revision=revision)
                if reservation is None and not on_disk:
                    mine = _Reservation(item.size, incoming, moved=threading.Event())
                    self._reserved[path] = mine
                    break
                if reservation is None or reservation.seq:
                    self._enqueue(_Apply(placed, key), 0)
                    seq = reservation.seq if reservation is not None else 0
                    break
                moved = reservation.moved
            if moved is not None:
                moved.wait()
        if mine is None:
            if seq:
                self.journal.wait_durable(seq)
            return StoredInstance(path, item.sha256, item.size, revision, duplicate=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # not the cache: retention may have removed it
            move_durably(spooled, path)
            with self._place_lock:
                self._enqueue(_Apply(placed, key), 0)
        finally:
            with self._place_lock:
                self._reserved.pop(path, None)
            if mine.moved is not None:
                mine.moved.set()
        if revision:
            logger.warning("instance stored again with different content; kept as revision %d", revision)
        return StoredInstance(path, item.sha256, item.size, revision, duplicate=False)

    def then(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the applier thread once everything queued before it is indexed."""
        with self._place_lock:
            self._enqueue(call, 0)

    @contextlib.contextmanager
    def holding_study(self, study_uid: str) -> Iterator[bool]:
        """Hold the placement of every instance while a study's files are removed (retention's purge).

        Yields False when the journal holds acknowledged instances of the study not yet applied (or one
        is being moved into place): the study must not be purged now. While held, no instance is
        placed, so none can be found already stored in a file about to go.
        """
        folder = self.store.studies / study_uid
        with self._place_lock:
            busy = self._unapplied[study_uid] > 0 or any(folder in path.parents for path in self._reserved)
            yield not busy
            if not busy:  # its folders may be gone: make them again when needed; space may have been freed
                self._folders = {known for known in self._folders if folder not in known.parents}
                self._checked_at = 0.0

    def _place(self, item: IndexedInstance, incoming: _Digest) -> tuple[Path, int, _Reservation | None, bool]:
        """(path, revision, the reservation holding the same bytes, whether they are on disk there).

        Content is compared (SHA-256) only when the path is already taken by as many bytes.
        """
        revision = 0
        first = self.store.instance_path(item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid)
        while True:
            path = first if not revision else first.with_name(f"{item.sop_instance_uid}.r{revision}.dcm")
            reservation = self._reserved.get(path)
            if reservation is not None:
                if reservation.size == item.size and reservation.sha256() == incoming():
                    return path, revision, reservation, False
            else:
                try:
                    size = os.stat(path).st_size
                except FileNotFoundError:
                    return path, revision, None, False
                if size == item.size and sha256_file(path) == incoming():
                    return path, revision, None, True
            revision += 1

    def _check_floor(self, size: int) -> None:
        """Refuse (:class:`StoreFull`) what would take the disk below the floor (placement lock held).

        The free space is read again after every 64 MiB or second; in between, what was journaled
        since is counted against it.
        """
        floor = self.store.min_free_bytes
        if not floor:
            return
        now = time.monotonic()
        if self._since_check + size > _FLOOR_RECHECK_BYTES or now - self._checked_at > 1.0:
            self._free_at_check = shutil.disk_usage(self.store.root).free - self._pending_bytes
            self._since_check, self._checked_at = 0, now
        free = self._free_at_check - self._since_check
        if free - size < floor:
            self._checked_at = 0.0  # read it again next time: space may have been freed
            raise StoreFull(
                f"free disk space {max(free, 0) // 2**20} MiB would fall below the floor of {floor // 2**20} MiB"
            )
        self._since_check += size

    def _enqueue(self, work: _Apply | Callable[[], None], size: int) -> None:
        """Queue in journal order (called with the placement lock held)."""
        with self._queued:
            now = time.monotonic()
            if not self._queue:
                self._first_enqueued = now
            self._last_enqueued = now
            self._queue.append(work)
            if isinstance(work, _Apply):
                self._unapplied[work.item.study_instance_uid] += 1
            self._pending_bytes += size
            barrier = not isinstance(work, _Apply)
            if barrier:
                self._barriers += 1
            # Wake the applier only when it has something new to decide on: not for every instance.
            if barrier or len(self._queue) == 1 or self._pending_bytes >= self._max_pending_bytes:
                self._queued.notify_all()

    def _want_checkpoint(self) -> None:
        with self._queued:
            self._checkpoint_wanted = True
            self._queued.notify_all()

    # -- the applier ------------------------------------------------------------------------------------

    def _run(self) -> None:
        last_work = time.monotonic()
        while True:
            with self._queued:
                while not self._due():
                    idle = time.monotonic() - last_work
                    if self.journal.applied < self._applied_seq and idle >= self._checkpoint_after_s:
                        break
                    self._queued.wait(self._wait_s())
                work = list(self._queue)
                self._queue.clear()
                self._barriers = 0
                stopping, wanted = self._stopping, self._checkpoint_wanted
                self._checkpoint_wanted = False
            if work:
                self._apply(work)
                last_work = time.monotonic()
                with self._queued:
                    self._queued.notify_all()
            idle = time.monotonic() - last_work >= self._checkpoint_after_s
            if self.journal.applied < self._applied_seq and (wanted or stopping or idle or not work):
                self._checkpoint()
            elif wanted:
                self.journal.checkpoint(self.journal.applied)  # frees sealed segments already applied
            if stopping and not self._queue:
                return

    def _due(self) -> bool:
        """Whether the applier should run now (called with the queue's lock held).

        While instances keep arriving, applying them is put off (up to ``apply_within_s``): their
        records are durable, and the file writes and index transaction would compete with the
        receiving threads. It runs once arrivals pause for ``quiet_s``, when something waits for it
        (an association's end, :meth:`drain`), when the journal runs short of segments, when a lot is
        waiting, and on stop.
        """
        if self._stopping or self._checkpoint_wanted:
            return True
        if not self._queue:
            return False
        if self._barriers or self._pending_bytes >= self._max_pending_bytes:
            return True
        now = time.monotonic()
        return now - self._last_enqueued >= self._quiet_s or now - self._first_enqueued >= self._apply_within_s

    def _wait_s(self) -> float:
        if not self._queue:
            return self._checkpoint_after_s
        now = time.monotonic()
        until_quiet = self._last_enqueued + self._quiet_s - now
        until_due = self._first_enqueued + self._apply_within_s - now
        return max(0.001, min(until_quiet, until_due))

    def _checkpoint(self) -> None:
        target = self._applied_seq if not self._blocked_at else min(self._applied_seq, self._blocked_at - 1)
        try:
            sync_file_system(self.store.root)
            self.journal.checkpoint(target)
        except OSError as exc:  # the records stay in the journal and are replayed at the next start
            logger.error("ingest journal checkpoint failed: %s", exc.strerror or exc)
        self._checkpoint_index()

    def _checkpoint_index(self) -> None:
        """Checkpoint SQLite's write-ahead log, which the listener's commits leave to this thread."""
        try:
            self._db.checkpoint_wal()
        except Exception as exc:  # busy, or the database away: the next checkpoint tries again
            logger.warning("index checkpoint failed (%s)", type(exc).__name__)

    def _apply(self, work: list[_Apply | Callable[[], None]]) -> None:
        batch: list[_Apply] = []
        for entry in work:
            if isinstance(entry, _Apply):
                batch.append(entry)
                continue
            self._apply_batch(batch)
            batch = []
            try:
                entry()
            except Exception:  # another room's callback: never stop the applier
                logger.exception("a queued call after storing failed")
        self._apply_batch(batch)

    def _apply_batch(self, batch: list[_Apply]) -> None:
        if not batch:
            return
        written = 0
        ready: list[_Apply] = []
        durable = self._durable_up_to(max(entry.seq for entry in batch))
        for entry in batch:
            if entry.seq > durable:  # never acknowledged (the journal failed): not applied, not checkpointed
                self._hold(entry.seq)
                continue
            if entry.location is None and self._blocked_at and entry.seq >= self._blocked_at:
                # The same bytes as a record whose file may not be written: its row waits with it (replay).
                self._hold(entry.seq)
                continue
            if entry.location is not None:
                path = Path(entry.item.path)
                try:
                    data = self.journal.read(entry.location)
                    entry.item = dataclasses.replace(entry.item, sha256=hashlib.sha256(data).hexdigest())
                    self._write_file(path, (data,), entry.seq)
                except OSError as exc:
                    # Durable in the journal, which keeps it (no checkpoint passes it): the next start
                    # replays it. It stays reserved until then.
                    with log_context(study_uid=entry.item.study_instance_uid):
                        logger.error("could not write an instance file from the journal: %s", exc.strerror or exc)
                    self._hold(entry.seq)
                    continue
                with self._place_lock:
                    self._reserved.pop(path, None)
                written += entry.item.size
            ready.append(entry)
        errors = self._record([entry.item for entry in ready]) if ready else []
        for entry, error in zip(ready, errors, strict=True):
            with log_context(study_uid=entry.item.study_instance_uid):  # one instance after another, any study
                if error is not None:
                    logger.error(
                        "instance not indexed (%s); the journal keeps it for the next start", type(error).__name__
                    )
                    self._hold(entry.seq)
                    continue
                self.tracker.instance_received(entry.key, entry.item.study_instance_uid, entry.item.calling_ae)
        applied = [entry for entry, error in zip(ready, errors, strict=True) if error is None]
        with self._place_lock:  # what failed stays in the journal, unapplied, for the next start
            for entry in applied:
                study_uid = entry.item.study_instance_uid
                self._unapplied[study_uid] -= 1
                if self._unapplied[study_uid] <= 0:
                    del self._unapplied[study_uid]
        with self._queued:
            self._pending_bytes -= written
            self._applied_seq = max([self._applied_seq, *(entry.seq for entry in batch)])
            self._queued.notify_all()

    def _durable_up_to(self, seq: int) -> int:
        """Wait until journal record ``seq`` is durable (it is, as a rule, by the time the applier runs):
        a file is written into the store only from a durable record, which replay would write again.
        Returns the last durable record (below ``seq`` when the journal failed)."""
        if seq:
            try:
                self.journal.wait_durable(seq)
            except OSError:
                return self.journal.durable
        return seq

    def _hold(self, seq: int) -> None:
        """Keep journal record ``seq`` (and what follows) from being checkpointed away."""
        if seq and (not self._blocked_at or seq < self._blocked_at):
            self._blocked_at = seq

    def _record(self, items: list[IndexedInstance]) -> list[Exception | None]:
        """Index rows, retried while the database is unavailable (the journal keeps the instances)."""
        delay = 0.1
        while True:
            errors = self._index.record_batch(items)
            unavailable = [error for error in errors if isinstance(error, DatabaseUnavailable)]
            if not unavailable or self._stopping:
                return errors
            logger.warning("the index database is unavailable; retrying in %.1f s", delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _folder(self, folder: Path) -> None:
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._folders.add(folder)

    def _rewrite_file(self, path: Path, data: bytes, digest: str, seq: int) -> bool:
        """Replay's write: leave a file that already holds ``data`` alone, else write it under a temporary
        name and rename it over the path. Never in place: an indexed file may be hard-linked into a
        running job's workspace, which must not see it truncated, and a failed write must not remove it.
        Returns whether it wrote."""
        try:
            if os.stat(path).st_size == len(data) and sha256_file(path) == digest:
                return False
        except FileNotFoundError:
            pass
        self._folder(path.parent)
        temporary = path.parent / f".incoming-j{seq}"
        self._write_file(temporary, (data,), seq)
        os.replace(temporary, path)
        return True

    def _write_file(self, path: Path, parts: Sequence[Buffer], seq: int) -> None:
        """Write ``parts`` at ``path``, in place; durability comes from the next syncfs.

        No temporary name and rename: the applier writes here only a new path (no file was there when
        the instance was placed) from a durable journal record after the last checkpoint (see
        :meth:`_apply_batch`), and the replay at the next start rewrites every such record, so a crash
        that leaves this file partial leaves it to be rewritten. A failed write removes what it left.
        ``seq`` names the record (0: none).
        """
        self._folder(path.parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:  # the folder was removed since it was made: make it again
            self._folders.discard(path.parent)
            self._folder(path.parent)
            fd = os.open(path, flags, 0o644)
        try:
            total = sum(len(part) for part in parts)
            written = os.writev(fd, parts)
            if written < total:  # a short write: the rest, from where it stopped
                rest = memoryview(b"".join(parts))[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        os.close(fd)
