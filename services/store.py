"""The study store: immutable instance files written atomically, and per-job workspaces.

Layout under ``root``::

    studies/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    jobs/<job id>/{input,output,work}

Paths are built only from validated UIDs, so a hostile UID cannot escape the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["InvalidUID", "StoreFull", "StoredInstance", "StudyStore", "Workspace", "check_uid"]

logger = logging.getLogger(__name__)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUID(ValueError):
    """A UID that is empty, too long or not digits and dots."""


def check_uid(value: object, name: str) -> str:
    """Return ``value`` as a UID string or raise :class:`InvalidUID` naming the attribute."""
    uid = str(value or "").strip().rstrip("\x00")
    if not uid:
        raise InvalidUID(f"{name} is missing")
    if len(uid) > 64 or not _UID.match(uid):
        raise InvalidUID(f"{name} is not a valid UID")
    return uid


class StoreFull(OSError):
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
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

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str, revision: int = 0) -> Path:
        parts = [check_uid(study_uid, "StudyInstanceUID"), check_uid(series_uid, "SeriesInstanceUID")]
        name = check_uid(sop_uid, "SOPInstanceUID") + (f".r{revision}" if revision else "") + ".dcm"
        return self.studies.joinpath(*parts, name)

    def write_instance(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> StoredInstance:
        """Write ``data`` durably: temp file, fsync, rename, fsync of the folder.

        A second copy with identical bytes is a no-op; different bytes become a new revision file
        beside the first, so that nothing already accepted is overwritten.
        """
        digest = hashlib.sha256(data).hexdigest()
        path = self.instance_path(study_uid, series_uid, sop_uid)
        revision = 0
        while path.exists():
            if path.stat().st_size == len(data) and _sha256_file(path) == digest:
                return StoredInstance(path, digest, len(data), revision, duplicate=True)
            revision += 1
            path = self.instance_path(study_uid, series_uid, sop_uid, revision)
        path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(path.parent).free if self.min_free_bytes else len(data)
        if free - len(data) < self.min_free_bytes:
            raise StoreFull(
                f"free disk space {free // 2**20} MiB would fall below the floor of {self.min_free_bytes // 2**20} MiB"
            )
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
        _fsync_dir(path.parent)
        if revision:
            logger.warning("instance stored again with different content; kept as revision %d", revision)
        return StoredInstance(path, digest, len(data), revision, duplicate=False)

    def workspace(self, job_id: str) -> Workspace:
        """A fresh, empty workspace for one job run (an earlier attempt's leftovers are removed)."""
        if not re.fullmatch(r"[0-9a-f-]{8,64}", job_id):
            raise ValueError("job id must be a UUID")
        root = self.jobs / job_id
        shutil.rmtree(root, ignore_errors=True)
        ws = Workspace(root, root / "input", root / "output", root / "work")
        for folder in (ws.input, ws.output, ws.work):
            folder.mkdir(parents=True)
        return ws

    def remove_workspace(self, job_id: str) -> None:
        shutil.rmtree(self.jobs / job_id, ignore_errors=True)

    @staticmethod
    def link_into(sources: list[Path], folder: Path) -> None:
        """Hard-link (or copy across devices) instance files into a workspace folder."""
        for index, source in enumerate(sources):
            target = folder / f"{index:06d}.dcm"
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
