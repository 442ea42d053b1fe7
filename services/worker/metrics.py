"""Prometheus metrics of the worker process: jobs by stage and outcome, the validation gate, exports.

:class:`WorkerMetrics` holds them in a registry of its own; the worker serves it on
``worker.metrics_port`` (:func:`hounsfield.worker.service.run`). Labels: the model's name and version
(a handful of deployments), the stage (``queue_wait``, ``load``, ``inference``, ``validate``, ``export``:
the job's timings), the outcome, the validator, the destination's protocol and the kind of failure; never
a job id, a UID, a host or an AE title.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Histogram

from hounsfield.metrics import DURATION_BUCKETS, ProcessMetrics

__all__ = ["WorkerMetrics"]


class WorkerMetrics(ProcessMetrics):
    """The worker's counters and histograms (:attr:`registry`: another room running in the worker adds its
    metrics there)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage_seconds = Histogram(
            "hounsfield_worker_job_stage_seconds",
            "Seconds a job spent in each stage (queue_wait, load, inference, validate, export), by model and version.",
            ["model", "version", "stage"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "hounsfield_worker_jobs_finished",
            "Jobs this worker finished, by model, version and outcome (done, failed, timed_out).",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.validation_failures = Counter(
            "hounsfield_worker_validation_failures",
            "Result objects the validation gate refused, by validator (readable, highdicom, dciodvfy, pixelmed, "
            "identity).",
            ["validator"],
            registry=self.registry,
        )
        self.export_failures = Counter(
            "hounsfield_worker_export_failures",
            "Failed deliveries of results, by the destination's protocol (dimse, stow-rs) and kind (unreachable: "
            "the job waits; refused: the destination said no; gave_up: waited past wait_max_s; not_configured).",
            ["protocol", "kind"],
            registry=self.registry,
        )
        self.export_retries = Counter(
            "hounsfield_worker_export_retries",
            "Export attempts after a first one failed: within one delivery (when=delivery) or from the queue, "
            "for a waiting job (when=queued).",
            ["when"],
            registry=self.registry,
        )
        self.export_waits = Counter(
            "hounsfield_worker_export_waits",
            "Times a job was set waiting because a destination was unreachable (its export is queued again).",
            registry=self.registry,
        )

    def observe_stages(self, model: str, version: str, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.labels(model, version, stage).observe(max(0.0, seconds))
