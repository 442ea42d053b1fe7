"""Where one incoming dataset's fragments go while they arrive.

Small datasets (most images) are collected in memory and handed to the store in one piece. A
dataset that grows past ``threshold`` (a multi-frame object of hundreds of megabytes) is written,
behind its Part 10 preamble and file meta, to a spool file on the store's own file system while the
fragments arrive, and hashed on the way; the store then only fsyncs and renames it. So the memory
one association needs stays bounded whatever the sender sends, and the disk floor is checked as the
file grows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hounsfield.listener.storage import SpooledDataset

__all__ = ["DatasetSink"]

logger = logging.getLogger(__name__)

_FLOOR_CHECK_EVERY = 64 << 20


class DatasetSink:
    """Collects one dataset: a :class:`bytearray`, or a spool file once it passes ``threshold``.

    ``prefix`` makes the preamble and file meta that precede the dataset in the spool file; it is
    called only when the dataset is spooled. A failure (disk floor, write error) stops the writing
    but not the reading: the rest of the dataset is consumed and dropped, and :attr:`failure` says
    why, so that the association can answer out of resources and carry on.
    """

    def __init__(self, *, spool_dir: Path, threshold: int, min_free_bytes: int, prefix: Callable[[], bytes]) -> None:
        self._spool_dir = spool_dir
        self._threshold = threshold
        self._min_free_bytes = min_free_bytes
        self._prefix = prefix
        self._memory: bytearray | None = bytearray()
        self._fd = -1
        self._path: Path | None = None
        self._offset = 0
        self._size = 0
        self._digest: hashlib._Hash | None = None
        self._since_check = 0
        self._head = b""
        self.received = 0
        """Dataset bytes received so far (whether kept or dropped)."""
        self.failure = ""

    @property
    def spooled(self) -> bool:
        return self._path is not None

    def write(self, fragment: memoryview) -> None:
        """Append one PDV fragment."""
        self.received += len(fragment)
        if self.failure:
            return
        if self._memory is not None:
            self._memory += fragment
            if len(self._memory) > self._threshold:
                self._spill()
            return
        self._append(fragment)

    def _spill(self) -> None:
        assert self._memory is not None
        try:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            self._check_floor(len(self._memory))
            fd, name = tempfile.mkstemp(prefix=".spool-", suffix=".dcm", dir=self._spool_dir)
        except OSError as exc:
            self._fail(f"the study store cannot take it: {exc.strerror or exc}")
            return
        self._fd, self._path = fd, Path(name)
        self._digest = hashlib.sha256()
        prefix = self._prefix()
        self._offset = len(prefix)
        memory, self._memory = self._memory, None
        self._head = bytes(memory)  # where the header usually is whole: read from memory, not the file
        self._append(memoryview(prefix))
        self._append(memoryview(memory))

    def _append(self, data: memoryview) -> None:
        assert self._digest is not None
        try:
            self._since_check += len(data)
            if self._since_check >= _FLOOR_CHECK_EVERY:
                self._since_check = 0
                self._check_floor(_FLOOR_CHECK_EVERY)
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            self._fail(f"the study store cannot take it: {exc.strerror or exc}")
            return
        self._digest.update(data)
        self._size += len(data)

    def _check_floor(self, coming: int) -> None:
        if not self._min_free_bytes:
            return
        free = shutil.disk_usage(self._spool_dir).free
        if free - coming < self._min_free_bytes:
            raise OSError(
                f"free disk space {free // 2**20} MiB would fall below the floor of {self._min_free_bytes // 2**20} MiB"
            )

    def _fail(self, reason: str) -> None:
        logger.warning("incoming dataset dropped: %s", reason)
        self.failure = reason
        self.discard()

    def finish(self) -> bytearray | SpooledDataset | None:
        """The whole dataset (None after a failure); the spool file then belongs to the caller."""
        if self.failure:
            return None
        if self._memory is not None:
            return self._memory
        assert self._path is not None and self._digest is not None
        os.close(self._fd)
        self._fd = -1
        spooled = SpooledDataset(self._path, self._offset, self._size, self._digest.hexdigest(), self._head)
        self._path = None
        return spooled

    def discard(self) -> None:
        """Drop what was collected (an aborted association, a failure); idempotent."""
        self._memory = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
