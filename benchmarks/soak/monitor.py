"""What the soak samples every second: throughput, queue depth, time to result, memory, HTTP answers.

Every figure is read from the real thing: acknowledged instances from the modalities' ledger, indexed
instances and jobs from the database, queue depth from Redis (:func:`hounsfield.queues.queue_depths`),
resident memory of every process and its children from ``/proc`` (psutil), and the registry's answers
to a sign-in'd read of its studies list. A sample taken while its source is down (PostgreSQL or Redis
restarting) leaves that figure out rather than stalling.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from benchmarks.soak.cluster import Cluster, rss_mb
from benchmarks.soak.modalities import Ledger
from hounsfield.db import Instance, Job, JobState, Study
from hounsfield.queues import queue_depths

__all__ = ["HttpAnswer", "Monitor"]


@dataclass(frozen=True)
class HttpAnswer:
    """A registry answer other than 2xx: its code and the reason it gave."""

    at: float
    status: int
    reason: str


@dataclass(eq=False)
class Monitor(threading.Thread):
    cluster: Cluster
    ledger: Ledger
    t0: float
    """``time.monotonic()`` at the soak's start."""
    t0_epoch: float
    """``time.time()`` at the soak's start."""
    stop_event: threading.Event
    interval_s: float = 1.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    finished: list[tuple[float, float]] = field(default_factory=list)
    """Each job done: (seconds since the start when it finished, its time to result in seconds)."""
    http_answers: list[HttpAnswer] = field(default_factory=list)
    http_probes: int = 0

    def __post_init__(self) -> None:
        super().__init__(name="monitor", daemon=True)
        self._engine = create_engine(
            self.cluster.postgres.url, pool_pre_ping=True, connect_args={"connect_timeout": 2}, pool_size=1
        )
        self._redis = redis.Redis(port=self.cluster.redis.port, socket_timeout=1, socket_connect_timeout=1)
        self._http = httpx.Client(timeout=5)
        self._last_finished: datetime | None = None

    def run(self) -> None:
        while not self.stop_event.wait(max(0.0, self.interval_s - self._sample_once())):
            pass

    def _sample_once(self) -> float:
        started = time.monotonic()
        sample: dict[str, Any] = {"t": round(started - self.t0, 2), "acked": self.ledger.acked_count()}
        sample |= self._database()
        with contextlib.suppress(redis.RedisError):  # restarting: no figure this second
            sample["queue_depth"] = queue_depths(self._redis)
        sample["rss_mb"] = {name: rss_mb(pid) for name, pid in self.cluster.pids().items()}
        self._probe_registry(started - self.t0)
        self.samples.append(sample)
        return time.monotonic() - started

    def _database(self) -> dict[str, Any]:
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SET statement_timeout = 2000"))
                indexed = connection.scalar(select(func.count()).select_from(Instance))
                states = dict(connection.execute(select(Job.state, func.count()).group_by(Job.state)).all())
                done = select(Job.finished_at, Study.last_received_at).join(Study).where(Job.state == JobState.DONE)
                if self._last_finished is not None:
                    done = done.where(Job.finished_at > self._last_finished)
                rows = connection.execute(done.order_by(Job.finished_at)).all()
        except SQLAlchemyError:
            return {}
        for finished_at, last_received in rows:
            self._last_finished = finished_at
            at = _epoch(finished_at) - self.t0_epoch
            self.finished.append((round(at, 2), round((finished_at - last_received).total_seconds(), 3)))
        return {"indexed": indexed, "jobs": {str(getattr(k, "value", k)): v for k, v in states.items()}}

    def _probe_registry(self, at: float) -> None:
        try:
            headers = self.cluster.api_headers
            response = self._http.get(f"{self.cluster.api}/studies", params={"limit": 1}, headers=headers)
        except (httpx.HTTPError, OSError):
            return  # down (not started yet): no answer to judge
        self.http_probes += 1
        if response.is_success:
            return
        try:
            reason = str(response.json().get("detail") or "")
        except ValueError:
            reason = ""
        self.http_answers.append(HttpAnswer(round(at, 2), response.status_code, reason[:200]))

    def close(self) -> None:
        self._engine.dispose()
        self._http.close()


def _epoch(value: datetime) -> float:
    """A database timestamp (UTC, naive or aware) as seconds since the epoch."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
