"""Prometheus metrics of the registry process: the queues' depths and the unfinished jobs, read at scrape
time, the API's requests, and the STOW-RS intake's metrics when it runs.

Scrape-time readings are custom collectors: the depth of each Celery queue from Redis
(:func:`hounsfield.queues.queue_depths`, a pipeline of ``LLEN``), and the jobs in each unfinished state
from the database (:func:`hounsfield.db.jobs.active_job_counts`, capped per state). A source that does not
answer leaves its gauges out of that scrape and sets ``hounsfield_registry_source_up`` to 0 for it.
Requests are counted by route template (``/jobs/{job_id}``, never the path itself), method and status by
prometheus-fastapi-instrumentator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import redis
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics

from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.db.jobs import JobCountsUnavailable, active_job_counts
from hounsfield.queues import queue_depths

__all__ = ["RegistryMetrics"]

logger = logging.getLogger(__name__)

_UP = "hounsfield_registry_source_up"
_UP_HELP = "1 when the registry could read the source (broker, database) at this scrape, else 0."


class _Reading(Protocol):
    """A gauge family read from ``source`` at each scrape."""

    source: str

    def read(self) -> GaugeMetricFamily:
        """The family's values now; raises :class:`JobCountsUnavailable` or a Redis error when the source is down."""
        ...


class _ReadAtScrape(Collector):
    """Each reading's family, and one ``hounsfield_registry_source_up`` family for all their sources (a metric
    name appears once in a scrape: Prometheus refuses a second HELP line for it)."""

    def __init__(self, *readings: _Reading) -> None:
        self._readings = readings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(_UP, _UP_HELP, labels=["source"])
        for reading in self._readings:
            try:
                family = reading.read()
            except (JobCountsUnavailable, redis.RedisError, ValueError) as exc:  # ValueError: a URL that is not Redis
                logger.warning("%s not read for metrics: %s", reading.source, type(exc).__name__)
                up.add_metric([reading.source], 0)
            else:
                up.add_metric([reading.source], 1)
                yield family
        yield up


class _QueueDepths:
    """``hounsfield_queue_depth{queue}`` from Redis."""

    source = "broker"

    def __init__(self, broker_url: str, timeout_s: float) -> None:
        self._broker_url = broker_url
        self._timeout_s = timeout_s
        self._client: redis.Redis | None = None

    def read(self) -> GaugeMetricFamily:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self._broker_url, socket_connect_timeout=self._timeout_s, socket_timeout=self._timeout_s
            )
        depth = GaugeMetricFamily(
            "hounsfield_queue_depth",
            "Jobs waiting on each queue (stat, routine, batch) on the broker.",
            labels=["queue"],
        )
        for name, size in queue_depths(self._client).items():
            depth.add_metric([name], size)
        return depth


class _ActiveJobs:
    """``hounsfield_jobs{state}`` for the unfinished states, from the database."""

    source = "database"

    def __init__(self, db: Database, cap: int) -> None:
        self._db = db
        self._cap = cap

    def read(self) -> GaugeMetricFamily:
        with self._db.session() as session:
            counts = active_job_counts(session, cap=self._cap)
        jobs = GaugeMetricFamily(
            "hounsfield_jobs",
            "Jobs in each unfinished state (queued, running, exporting, waiting), each counted up to "
            "registry.metrics_jobs_count_max.",
            labels=["state"],
        )
        for state, count in counts.items():
            jobs.add_metric([state.value], count)
        return jobs


class RegistryMetrics:
    """The registry process's metrics, in a registry of their own (:attr:`registry`: another room running in
    the registry process adds its metrics or collectors there; see :meth:`include` for a whole registry)."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.registry = CollectorRegistry()
        broker = _QueueDepths(settings.broker_url, settings.registry.metrics_broker_timeout_s)
        self.registry.register(_ReadAtScrape(broker, _ActiveJobs(db, settings.registry.metrics_jobs_count_max)))

    def instrument(self, app: FastAPI) -> None:
        """Count ``app``'s requests by route template, method and status, and time them (before it starts)."""
        instrumentator = Instrumentator(
            should_group_status_codes=False, excluded_handlers=["/metrics"], registry=self.registry
        )
        instrumentator.add(
            http_metrics.requests(
                metric_doc="HTTP requests, by route template (handler; none for no route), method and status.",
                metric_namespace="hounsfield",
                metric_subsystem="registry",
                registry=self.registry,
            ),
            http_metrics.latency(
                metric_doc="Seconds to answer an HTTP request, by route template (handler) and method.",
                should_include_status=False,
                metric_namespace="hounsfield",
                metric_subsystem="registry",
                registry=self.registry,
            ),
        )
        instrumentator.instrument(app)

    def include(self, other: CollectorRegistry) -> None:
        """Serve ``other``'s metrics too (the STOW-RS intake's, while it runs)."""
        self.registry.register(other)

    def exclude(self, other: CollectorRegistry) -> None:
        self.registry.unregister(other)
