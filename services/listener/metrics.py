"""Prometheus metrics of the listener: what arrived, what was refused and why, and the store's disk.

Labels are few and fixed (transport, outcome, refusal kind), never UIDs or AE titles, so the
series stay bounded and carry no patient data. Each listener (and the registry, for STOW-RS)
has its own :class:`~prometheus_client.CollectorRegistry`; :meth:`ListenerMetrics.serve` exposes it
on ``/metrics``. The router runs in the same process: its metrics (completeness, jobs routed per queue)
are :attr:`ListenerMetrics.routing`, in the same registry.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from hounsfield.metrics import ProcessMetrics
from hounsfield.router.metrics import RoutingMetrics
from hounsfield.store import StudyStore

__all__ = ["ListenerMetrics"]


class ListenerMetrics(ProcessMetrics):
    """The listener's counters and gauges, in a registry of their own (:attr:`registry`: another room running
    in the listener's process, or in the registry's STOW-RS intake, adds its metrics there)."""

    def __init__(self, store: StudyStore) -> None:
        super().__init__()
        self.instances = Counter(
            "hounsfield_listener_instances",
            "Instances received, by transport and outcome (stored, duplicate, or the refusal's kind).",
            ["transport", "outcome"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "hounsfield_listener_stored_bytes",
            "Bytes of instance files written to the study store.",
            ["transport"],
            registry=self.registry,
        )
        self.associations = Counter(
            "hounsfield_listener_associations",
            "Association requests, by transport and outcome (accepted, rejected, or dropped: a connection "
            "closed at once because of the limits on connections waiting to associate).",
            ["transport", "outcome"],
            registry=self.registry,
        )
        self.tls_handshake_failures = Counter(
            "hounsfield_listener_tls_handshake_failures",
            "Failed TLS handshakes on the DICOM TLS port, by reason (certificate, protocol, timeout, connection).",
            ["reason"],
            registry=self.registry,
        )
        self.retention_purged_studies = Counter(
            "hounsfield_retention_purged_studies",
            "Studies whose instance files retention removed, by reason (expired, high_water).",
            ["reason"],
            registry=self.registry,
        )
        self.retention_purged_bytes = Counter(
            "hounsfield_retention_purged_bytes",
            "Bytes of instance files retention removed, by reason (expired, high_water).",
            ["reason"],
            registry=self.registry,
        )
        self.retention_failures = Counter(
            "hounsfield_retention_failures",
            "Retention runs or removals that failed, by kind (files: a study's files, results, run: a whole pass).",
            ["kind"],
            registry=self.registry,
        )
        free = Gauge("hounsfield_store_free_bytes", "Free bytes on the study store's disk.", registry=self.registry)
        free.set_function(lambda: _free_bytes(store))
        floor = Gauge(
            "hounsfield_store_free_floor_bytes",
            "Below this much free disk, instances are refused with 0xA700 (out of resources).",
            registry=self.registry,
        )
        floor.set(store.min_free_bytes)
        self.routing = RoutingMetrics(self.registry)

    def retention_purged(self, reason: str, size: int) -> None:
        """Count one study purged by retention, and its bytes."""
        self.retention_purged_studies.labels(reason).inc()
        self.retention_purged_bytes.labels(reason).inc(size)

    def retention_failed(self, kind: str) -> None:
        self.retention_failures.labels(kind).inc()

    def watch_journal(self, backlog: Callable[[], tuple[int, int]]) -> None:
        """Gauges of what the ingest journal holds that is not yet in the store's files and index.

        ``backlog`` gives (instances, bytes) waiting for the applier.
        """
        waiting = Gauge(
            "hounsfield_listener_journal_backlog_instances",
            "Acknowledged instances, durable in the ingest journal, not yet written to the store and index.",
            registry=self.registry,
        )
        waiting.set_function(lambda: float(backlog()[0]))
        waiting_bytes = Gauge(
            "hounsfield_listener_journal_backlog_bytes",
            "Bytes of those instances.",
            registry=self.registry,
        )
        waiting_bytes.set_function(lambda: float(backlog()[1]))


def _free_bytes(store: StudyStore) -> float:
    try:
        return float(shutil.disk_usage(store.root if store.root.exists() else store.root.parent).free)
    except OSError:
        return float("nan")
