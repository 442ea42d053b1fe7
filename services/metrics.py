"""Serving a process's Prometheus registry, and the conventions every room's metrics keep.

Each process (listener, worker, registry) has one :class:`~prometheus_client.CollectorRegistry` of its
own, never the library's global one: tests build several processes' worth in one interpreter, and a
process exposes only what it measures. A room that measures something adds its metric to the registry
of the process it runs in (``ListenerMetrics.registry``, ``WorkerMetrics.registry``,
``RegistryMetrics.registry``).

Labels are few and fixed (a transport, an outcome, a queue, a model's name and version, a stage, a
refusal's kind), never UIDs, AE titles, host names or anything from a patient's data, so that the series
stay bounded and no PHI leaves through a scrape.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["DURATION_BUCKETS", "MetricsEndpoint", "ProcessMetrics"]

DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Seconds, for what takes seconds to an hour: a job's stages, a study's completeness."""


class MetricsEndpoint:
    """``/metrics`` of one registry on ``host:port``, in a background thread, until :meth:`stop`."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: tuple[WSGIServer, threading.Thread] | None = start_http_server(port, addr=host, registry=registry)

    def stop(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None


class ProcessMetrics:
    """A process's own :attr:`registry`, which :meth:`serve` exposes until :meth:`stop`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._endpoint: MetricsEndpoint | None = None

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` on ``host:port`` in a background thread."""
        self._endpoint = MetricsEndpoint(self.registry, host, port)

    def stop(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None
