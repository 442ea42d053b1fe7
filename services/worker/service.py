"""The worker process: a Celery worker that keeps the deployed applications warm."""

from __future__ import annotations

import logging
import os

import celery.apps.worker as celery_worker_program
from celery.signals import worker_ready

from hounsfield.catalog.read_model import load_deployments
from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.queues import make_celery
from hounsfield.worker.metrics import WorkerMetrics
from hounsfield.worker.runtimes import InProcessRuntime

__all__ = ["run"]

logger = logging.getLogger(__name__)


def _say_through_logging(msg: str, f: object = None) -> None:
    """Celery's signal handlers write their words (``worker: Warm shutdown``) straight to the standard streams'
    file descriptors; here they become records, so that every line of the worker is one of its log lines."""
    logger.info("celery: %s", msg.strip())


def run(settings: Settings) -> None:
    """Serve jobs until stopped (solo pool: one job at a time per process, the app kept warm)."""
    celery_worker_program.safe_say = _say_through_logging  # type: ignore[attr-defined]  # see the function
    db = Database(settings.sqlalchemy_url)
    db.create_schema()
    with db.session() as session:  # the registry's deployments (the configuration's are written there too)
        deployed = load_deployments(session)
    db.dispose()
    references = {d.app for d in deployed if d.runtime == "in-process"}
    references |= {d.app for d in settings.deployments if d.app and d.runtime == "in-process"}
    app = make_celery(settings, longest_timeout_s=max((d.timeout_s for d in deployed), default=None))
    runtime = InProcessRuntime(max_jobs=settings.worker.app_max_jobs)
    app.conf.hounsfield_runtime = runtime  # the tasks' context runs its jobs
    metrics = WorkerMetrics()
    app.conf.hounsfield_metrics = metrics  # the tasks' context counts into it
    if settings.worker.metrics_port is not None:
        metrics.serve(settings.worker.metrics_host, settings.worker.metrics_port)
        logger.info("metrics on %s:%d/metrics", settings.worker.metrics_host, settings.worker.metrics_port)
    for reference in sorted(references):
        logger.info("warming application %s", reference)
        runtime.warm(reference)
    ready_file = settings.worker.ready_file
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)  # a file left by an earlier run says nothing about this one
        worker_ready.connect(lambda **_: ready_file.write_text(f"{os.getpid()}\n"), weak=False)
    try:
        app.worker_main(
            [
                "--quiet",  # no banner on stdout: every line of the worker is a log record
                "worker",
                "--pool=solo",
                f"--queues={','.join(settings.worker.queues)}",
                f"--loglevel={settings.log_level}",
                "--without-gossip",
                "--without-mingle",
                f"--hostname=hounsfield-worker-{os.getpid()}@%h",  # several workers on one host
            ]
        )
    finally:  # the application processes leave with the worker, each after its current run
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
        metrics.stop()
        runtime.close()
