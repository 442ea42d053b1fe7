"""The faults of a soak, one after another under load, each one ended before the next begins.

Kinds, in the order they come round (a short soak sees each once):

- ``worker-kill``: a worker killed with SIGKILL (its application's process too), started again 2 s later;
- ``listener-kill``: the listener killed with SIGKILL mid-association, started again at once (its journal
  replays what it had acknowledged);
- ``redis-restart``: redis-server stopped (SIGTERM; it writes its append-only file out), 3 s down;
- ``disk-floor``: the data folder's file system filled to the listener's floor (``listener.min_free_disk_mb``)
  by a ballast file for 10 s: instances are refused (0xA700) until it is removed;
- ``postgres-restart``: PostgreSQL stopped (``pg_ctl stop -m fast``: every connection cut), 3 s down;
- ``orthanc-restart``: the PACS stopped, 10 s down: results wait and go when it is back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.soak.cluster import Cluster

__all__ = ["KINDS", "Chaos", "Fault"]

logger = logging.getLogger(__name__)

KINDS = ("worker-kill", "listener-kill", "redis-restart", "disk-floor", "postgres-restart", "orthanc-restart")
_MB = 2**20


@dataclass
class Fault:
    """One fault: when it began and ended (seconds since the soak's start), and how it went."""

    kind: str
    target: str
    start: float
    end: float = 0.0
    detail: str = ""
    recovered_s: float = 0.0
    """How long the faulted service took to answer again once started (0 for the disk)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Chaos(threading.Thread):
    """Injects a fault every ``every_s`` seconds (the first after ``first_s``) until ``stop`` is set."""

    def __init__(
        self, cluster: Cluster, *, t0: float, stop: threading.Event, every_s: float = 20.0, first_s: float = 15.0
    ) -> None:
        super().__init__(name="chaos", daemon=True)
        self.cluster = cluster
        self.t0 = t0
        self.stop_event = stop
        self.every_s = every_s
        self.first_s = first_s
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self._workers = [name for name in cluster.services if name.startswith("worker-")]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> None:
        n = 0
        next_at = self.first_s
        while not self.stop_event.wait(max(0.0, next_at - self.now())):
            kind = KINDS[n % len(KINDS)]
            try:
                self.inject(kind, n)
            except Exception as exc:
                logger.exception("fault %s could not be injected or recovered", kind)
                self.errors.append(f"{kind}: {exc}")
            n += 1
            next_at = max(self.now(), next_at + self.every_s)

    def inject(self, kind: str, n: int) -> Fault:
        action: dict[str, Callable[[int], Fault]] = {
            "worker-kill": self._worker_kill,
            "listener-kill": self._listener_kill,
            "redis-restart": self._redis_restart,
            "disk-floor": self._disk_floor,
            "postgres-restart": self._postgres_restart,
            "orthanc-restart": self._orthanc_restart,
        }
        fault = action[kind](n)
        fault.end = self.now()
        self.faults.append(fault)
        logger.info("fault %s on %s: %.1f-%.1f s %s", kind, fault.target, fault.start, fault.end, fault.detail)
        return fault

    def _restart(self, fault: Fault, name: str) -> None:
        fault.recovered_s = self.cluster.services[name].start(timeout=180)

    def _worker_kill(self, n: int) -> Fault:
        name = self._workers[(n // len(KINDS)) % len(self._workers)]
        fault = Fault("worker-kill", name, self.now())
        self.cluster.services[name].kill()
        time.sleep(2.0)
        self._restart(fault, name)
        return fault

    def _listener_kill(self, n: int) -> Fault:
        fault = Fault("listener-kill", "listener", self.now())
        self.cluster.services["listener"].kill()
        self._restart(fault, "listener")
        return fault

    def _down_for(
        self, kind: str, target: str, stop: Callable[[], None], start: Callable[[], None], down_s: float
    ) -> Fault:
        fault = Fault(kind, target, self.now())
        stop()
        time.sleep(down_s)
        started = time.monotonic()
        start()
        fault.recovered_s = time.monotonic() - started
        return fault

    def _redis_restart(self, n: int) -> Fault:
        return self._down_for("redis-restart", "redis", self.cluster.redis.stop, self.cluster.redis.start, 3.0)

    def _postgres_restart(self, n: int) -> Fault:
        postgres = self.cluster.postgres
        return self._down_for("postgres-restart", "postgres", postgres.stop, postgres.start, 3.0)

    def _orthanc_restart(self, n: int) -> Fault:
        return self._down_for("orthanc-restart", "orthanc", self.cluster.pacs.stop, self.cluster.pacs.start, 10.0)

    def _disk_floor(self, n: int) -> Fault:
        fault = Fault("disk-floor", "data file system", self.now())
        ballast = self.cluster.data_dir / "soak-ballast"
        free = _free_bytes(self.cluster.data_dir)
        size = free - self.cluster.floor_mb * _MB + 16 * _MB  # 16 MiB below the floor
        if size <= 0:
            fault.detail = "already below the floor"
        else:
            _fill(ballast, size)
            fault.detail = f"{size // _MB} MiB ballast, {_free_bytes(self.cluster.data_dir) // _MB} MiB left"
        try:
            time.sleep(10.0)
        finally:
            ballast.unlink(missing_ok=True)
        return fault


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _fill(path: Path, size: int) -> None:
    """A file that takes ``size`` bytes of the file system at once (allocated, not written)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
