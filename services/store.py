"""The study store: immutable instance files written atomically, and per-job workspaces.

Layout under ``root``::

    studies/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    jobs/<job id>/<run>/{input,output,work}
    spool/<host>/.spool-*.dcm   (large incoming datasets while they arrive; never acknowledged yet)

Each host (a pod, in a cluster) spools in a folder of its own: several listeners and registries
share one ReadWriteMany store, and each clears only its own leftovers at start.

Paths are built only from validated UIDs, so a hostile UID cannot escape the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hounsfield.errors import HounsfieldError

__all__ = [
    "InvalidUID",
    "StoreFull",
    "StoredInstance",
    "StudyStore",
    "Workspace",
    "check_uid",
    "fsync_folder",
    "move_durably",
    "sha256_file",
]

logger = logging.getLogger(__name__)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUID(HounsfieldError, ValueError):
    """A UID refused: empty, too long, or not digits and dots."""


def check_uid(value: object, name: str) -> str:
    """Return ``value`` as a UID string or raise :class:`InvalidUID` naming the attribute."""
    uid = str(value or "").strip().rstrip("\x00")
    if not uid:
        raise InvalidUID(f"{name} is missing")
    if len(uid) > 64 or not _UID.match(uid):
        raise InvalidUID(f"{name} is not a valid UID")
    return uid


class StoreFull(HounsfieldError, OSError):
    """Writing would take the store's disk below its configured floor; nothing was written."""


@dataclass(frozen=True)
class StoredInstance:
    path: Path
    sha256: str
    size: int
    revision: int
    duplicate: bool
    """The same bytes were already stored: nothing was written."""


@dataclass(frozen=True)
class Workspace:
    root: Path
    input: Path
    output: Path
    work: Path


def fsync_folder(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_durably(source: Path, target: Path) -> None:
    """fsync ``source``, rename it to ``target`` (same file system), fsync the target's folder."""
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)
    fsync_folder(target.parent)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StudyStore:
    """Files on local (or shared, ReadWriteMany) disk."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.studies = root / "studies"
        self.jobs = root / "jobs"
        self.spool_dir = root / "spool" / socket.gethostname()

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str, revision: int = 0) -> Path:
        parts = [check_uid(study_uid, "StudyInstanceUID"), check_uid(series_uid, "SeriesInstanceUID")]
        name = check_uid(sop_uid, "SOPInstanceUID") + (f".r{revision}" if revision else "") + ".dcm"
        return self.studies.joinpath(*parts, name)

    def _target(self, study_uid: str, series_uid: str, sop_uid: str, digest: str, size: int) -> tuple[Path, int, bool]:
        """Where content with ``digest`` goes: (path, revision, already stored there)."""
        path = self.instance_path(study_uid, series_uid, sop_uid)
        revision = 0
        while True:
            try:
                existing = path.stat().st_size
            except FileNotFoundError:
                return path, revision, False
            if existing == size and sha256_file(path) == digest:
                return path, revision, True
            revision += 1
            path = self.instance_path(study_uid, series_uid, sop_uid, revision)

    def write_instance(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes | bytearray) -> StoredInstance:
        """Write ``data`` durably: temp file, fsync, rename, fsync of the folder.

        A second copy with identical bytes is a no-op; different bytes become a new revision file
        beside the first, so that nothing already accepted is overwritten.
        """
        digest = hashlib.sha256(data).hexdigest()
        path, revision, duplicate = self._target(study_uid, series_uid, sop_uid, digest, len(data))
        if duplicate:
            return StoredInstance(path, digest, len(data), revision, duplicate=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(path.parent).free if self.min_free_bytes else len(data)
        if free - len(data) < self.min_free_bytes:
            raise StoreFull(
                f"free disk space {free // 2**20} MiB would fall below the floor of {self.min_free_bytes // 2**20} MiB"
            )
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=path.parent)
        except FileNotFoundError:  # retention removed the emptied folder meanwhile: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        fsync_folder(path.parent)
        if revision:
            logger.warning("instance stored again with different content; kept as revision %d", revision)
        return StoredInstance(path, digest, len(data), revision, duplicate=False)

    def adopt_instance(
        self, study_uid: str, series_uid: str, sop_uid: str, spooled: Path, *, sha256: str, size: int
    ) -> StoredInstance:
        """Move a complete spool file (under :attr:`spool_dir`) into place: fsync, rename, fsync folder.

        The caller wrote it (and checked the disk floor while it grew) and gives its digest and size;
        duplicates and revisions are handled as by :meth:`write_instance`. A duplicate leaves the spool
        file where it is for the caller to delete.
        """
        path, revision, duplicate = self._target(study_uid, series_uid, sop_uid, sha256, size)
        if duplicate:
            return StoredInstance(path, sha256, size, revision, duplicate=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        move_durably(spooled, path)
        if revision:
            logger.warning("instance stored again with different content; kept as revision %d", revision)
        return StoredInstance(path, sha256, size, revision, duplicate=False)

    def clear_spool(self) -> int:
        """Remove spool files left by an earlier run (never acknowledged); returns how many."""
        removed = 0
        for leftover in self.spool_dir.glob(".spool-*"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def workspace(self, job_id: str, run: str | None = None) -> Workspace:
        """A fresh, empty workspace for one job run (an earlier attempt's leftovers are removed).

        ``run`` names the run: ``jobs/<job id>/<run>/``. Two runs of one job at once (its message delivered
        again while its first worker still runs it: Redis restarted under it) never share a workspace,
        so that neither removes the other's files."""
        if not re.fullmatch(r"[0-9a-f-]{8,64}", job_id):
            raise ValueError("job id must be a UUID")
        if run is not None and not re.fullmatch(r"[0-9a-f]{1,32}", run):
            raise ValueError("a run is named by hex digits")
        root = self.jobs / job_id if run is None else self.jobs / job_id / run
        shutil.rmtree(root, ignore_errors=True)
        ws = Workspace(root, root / "input", root / "output", root / "work")
        for folder in (ws.input, ws.output, ws.work):
            folder.mkdir(parents=True)
        return ws

    def remove_workspace(self, job_id: str, run: str | None = None) -> None:
        """Remove a run's workspace (the job's folder too once no run is left in it)."""
        if run is None:
            shutil.rmtree(self.jobs / job_id, ignore_errors=True)
            return
        shutil.rmtree(self.jobs / job_id / run, ignore_errors=True)
        with contextlib.suppress(OSError):  # another run of the job still has its workspace there
            (self.jobs / job_id).rmdir()

    @staticmethod
    def link_into(sources: list[Path], folder: Path) -> None:
        """Hard-link (or copy across devices) instance files into a workspace folder."""
        for index, source in enumerate(sources):
            target = folder / f"{index:06d}.dcm"
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
