"""Celery tasks: thin adapters around :mod:`hounsfield.worker.pipeline`.

A job whose destination is unreachable ends its run as ``waiting``; the task then queues
:data:`EXPORT_JOB_TASK` for it with a countdown that doubles each time (``worker.export_retry_first_s``
up to ``worker.export_retry_max_s``), so that the worker is free for other jobs meanwhile.

A task that meets an unreachable database (PostgreSQL restarting: :data:`~hounsfield.db.DATABASE_UNREACHABLE`)
is tried again after ``worker.database_retry_s``, as often as it takes, with ``resume``: it may take over
the job it left running or exporting (the job could not be marked failed, nor should it be: nothing was
wrong with it). Its results come out again with the same UIDs, so nothing reaches a PACS twice.
"""

from __future__ import annotations

import logging
import re
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any, NoReturn

from celery import Task, shared_task

from hounsfield.config import Settings
from hounsfield.db import DATABASE_UNREACHABLE, Database, JobState
from hounsfield.logs import LogContext, current_log_context, log_context
from hounsfield.queues import EXPORT_JOB_TASK, RUN_JOB_TASK, STUDY_HEADER
from hounsfield.store import StudyStore
from hounsfield.worker.metrics import WorkerMetrics
from hounsfield.worker.pipeline import WorkerContext, execute_job, resume_export

__all__ = ["export_job", "run_job"]

logger = logging.getLogger(__name__)


class _JobTask(Task):  # type: ignore[misc]
    """Keeps one :class:`WorkerContext` per worker process."""

    @cached_property
    def context(self) -> WorkerContext:
        settings: Settings = self.app.conf.hounsfield_settings
        in_process = self.app.conf.get("hounsfield_runtime")  # warmed by the worker process (service.run)
        metrics = self.app.conf.get("hounsfield_metrics") or WorkerMetrics()  # served by the worker process
        db, store = Database(settings.sqlalchemy_url), StudyStore(settings.data_dir)
        return WorkerContext(settings=settings, db=db, store=store, in_process=in_process, metrics=metrics)

    def retry_export_later(self, job_id: str, attempt: int) -> None:
        """Queue the next export attempt of a waiting job on the queue this task came from."""
        worker = self.context.settings.worker
        delay = min(worker.export_retry_max_s, worker.export_retry_first_s * 2 ** (attempt - 1))
        delivery: dict[str, Any] = self.request.delivery_info or {}
        queue = delivery.get("routing_key") or "routine"
        headers = {STUDY_HEADER: current_log_context().study}
        self.app.send_task(EXPORT_JOB_TASK, args=[job_id, attempt], countdown=delay, queue=queue, headers=headers)

    def retry_when_the_database_answers(self, job_id: str, exc: Exception, **kwargs: Any) -> NoReturn:
        """Raise Celery's :class:`~celery.exceptions.Retry`: this task again (with ``resume``) after
        ``worker.database_retry_s``, on the queue it came from."""
        delay = self.context.settings.worker.database_retry_s
        logger.warning(
            "job %s: the database is unreachable (%s); trying again in %.0f s", job_id, type(exc).__name__, delay
        )
        delivery: dict[str, Any] = self.request.delivery_info or {}
        queue = delivery.get("routing_key") or "routine"
        raise self.retry(kwargs={"job_id": job_id, **kwargs, "resume": True}, countdown=delay, queue=queue, exc=exc)

    def correlated(self, job_id: str) -> AbstractContextManager[LogContext]:
        """The job's log lines carry its id and its study's correlation id (the message's header)."""
        study = getattr(self.request, STUDY_HEADER, None)
        return log_context(study=study if isinstance(study, str) and _CORRELATION_ID.match(study) else None, job=job_id)


_CORRELATION_ID = re.compile(r"^[0-9a-f]{1,64}$")


@shared_task(bind=True, base=_JobTask, name=RUN_JOB_TASK, acks_late=True, max_retries=None)
def run_job(self: _JobTask, job_id: str, resume: bool = False) -> str | None:
    delivery: dict[str, Any] = self.request.delivery_info or {}
    with self.correlated(job_id):
        try:
            state = execute_job(self.context, job_id, redelivered=resume or bool(delivery.get("redelivered")))
        except DATABASE_UNREACHABLE as exc:
            self.retry_when_the_database_answers(job_id, exc)
        if state is JobState.WAITING:
            self.retry_export_later(job_id, 1)
    return state.value if state else None


@shared_task(bind=True, base=_JobTask, name=EXPORT_JOB_TASK, acks_late=True, max_retries=None)
def export_job(self: _JobTask, job_id: str, attempt: int, resume: bool = False) -> str | None:
    with self.correlated(job_id):
        try:
            state = resume_export(self.context, job_id, resumed=resume)
        except DATABASE_UNREACHABLE as exc:
            self.retry_when_the_database_answers(job_id, exc, attempt=attempt)
        if state is JobState.WAITING:
            self.retry_export_later(job_id, attempt + 1)
    return state.value if state else None
