"""Prometheus metrics of completeness and routing: when studies were declared complete, and the jobs made.

They live in the registry of the process the router runs in (the listener's, or the registry's for
STOW-RS): :class:`~hounsfield.listener.metrics.ListenerMetrics` builds them. Labels: the completion
trigger and the queue, both from short fixed lists.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from hounsfield.metrics import DURATION_BUCKETS

__all__ = ["QUEUE_LATENCY_BUCKETS", "RoutingMetrics"]

QUEUE_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds, for what should take milliseconds: a completed study's jobs reaching the broker."""


class RoutingMetrics:
    """Studies completed (by trigger), how long completeness took, and the jobs routed per queue."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.studies_completed = Counter(
            "hounsfield_studies_completed",
            "Studies declared complete, by trigger (association-release, quiet-period, source-count, retrieve). "
            "A re-evaluated study counts again.",
            ["trigger"],
            registry=registry,
        )
        self.completeness = Histogram(
            "hounsfield_study_completeness_seconds",
            "Seconds from a study's first (since=first_instance) or last (since=last_instance) instance received "
            "to the study being declared complete, by trigger.",
            ["trigger", "since"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.jobs_created = Counter(
            "hounsfield_router_jobs_created",
            "Job rows the router created, by queue (an unchanged series set finds its existing job: not counted).",
            ["queue"],
            registry=registry,
        )
        self.jobs_enqueued = Counter(
            "hounsfield_router_jobs_enqueued",
            "Jobs put on their queue on the broker, by queue.",
            ["queue"],
            registry=registry,
        )
        self.queue_latency = Histogram(
            "hounsfield_router_queue_latency_seconds",
            "Seconds from a study being complete and indexed (its completion trigger, or its last instance "
            "indexed when that came later) to its new job's message taken by the broker, by queue and "
            "completion trigger.",
            ["queue", "trigger"],
            buckets=QUEUE_LATENCY_BUCKETS,
            registry=registry,
        )

    def job_queued(
        self, queue: str, trigger: str, last_indexed: datetime, completed: datetime | None, now: datetime
    ) -> None:
        """A new job's message was taken by the broker ``now``; its study's last instance was indexed at
        ``last_indexed`` and its completion trigger fired at ``completed`` (a database's naive time is UTC)."""
        if last_indexed.tzinfo is None:
            last_indexed = last_indexed.replace(tzinfo=UTC)
        ready = last_indexed if completed is None else max(last_indexed, completed)
        self.queue_latency.labels(queue, trigger).observe(max(0.0, (now - ready).total_seconds()))

    def study_completed(self, trigger: str, first: datetime, last: datetime, completed: datetime) -> None:
        self.studies_completed.labels(trigger).inc()
        since_first = max(0.0, (completed - first).total_seconds())
        since_last = max(0.0, (completed - last).total_seconds())
        self.completeness.labels(trigger, "first_instance").observe(since_first)
        self.completeness.labels(trigger, "last_instance").observe(since_last)
