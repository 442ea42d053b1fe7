"""Prometheus metrics of completeness and routing: when studies were declared complete, and the jobs made.

They live in the registry of the process the router runs in (the listener's, or the registry's for
STOW-RS): :class:`~hounsfield.listener.metrics.ListenerMetrics` builds them. Labels: the completion
trigger and the queue, both from short fixed lists.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from hounsfield.metrics import DURATION_BUCKETS

__all__ = ["RoutingMetrics"]


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

    def study_completed(self, trigger: str, first: datetime, last: datetime, completed: datetime) -> None:
        self.studies_completed.labels(trigger).inc()
        since_first = max(0.0, (completed - first).total_seconds())
        since_last = max(0.0, (completed - last).total_seconds())
        self.completeness.labels(trigger, "first_instance").observe(since_first)
        self.completeness.labels(trigger, "last_instance").observe(since_last)
