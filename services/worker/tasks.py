"""Celery tasks: thin adapters around :mod:`hounsfield.worker.pipeline`.

A job whose destination is unreachable ends its run as ``waiting``; the task then queues
:data:`EXPORT_JOB_TASK` for it with a countdown that doubles each time (``worker.export_retry_first_s``
up to ``worker.export_retry_max_s``), so that the worker is free for other jobs meanwhile.

A task that meets an unreachable database (PostgreSQL restarting: :func:`~hounsfield.db.database_unreachable`)
is tried again after ``worker.database_retry_s``, with ``resume``: it may take over the job it left running
or exporting (the job could not be marked failed, nor should it be: nothing was wrong with it). Its results
come out again with the same UIDs: a PACS that keys instances by SOP Instance UID holds them once. After
``worker.database_retry_max_s`` of it the job is failed with that reason, as soon as the database takes that
write.
"""

from __future__ import annotations

import logging
import re
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any, NoReturn

from celery import Task, shared_task

from hounsfield.config import Settings
from hounsfield.db import DATABASE_UNREACHABLE, Database, JobState, database_unreachable
from hounsfield.db.jobs import finish_job
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

    def retry_when_the_database_answers(self, job_id: str, exc: Exception, *args: Any) -> NoReturn:
        """Raise Celery's :class:`~celery.exceptions.Retry`: this task again (``args`` after the job id, with
        ``resume``) after ``worker.database_retry_s``, on the queue it came from."""
        delay = self.context.settings.worker.database_retry_s
        logger.warning(
            "job %s: the database is unreachable (%s); trying again in %.0f s", job_id, type(exc).__name__, delay
        )
        delivery: dict[str, Any] = self.request.delivery_info or {}
        queue = delivery.get("routing_key") or "routine"
        raise self.retry(args=[job_id, *args], kwargs={"resume": True}, countdown=delay, queue=queue, exc=exc)

    def gave_up_on_the_database(self, job_id: str) -> bool:
        """Whether this task has been tried again for an unreachable database for ``worker.database_retry_max_s``
        in all; then the job is failed with that reason (an operator may retry it) and is not run again. The
        write itself may meet the database away: it raises, and the task is tried again as before."""
        worker = self.context.settings.worker
        if self.request.retries * worker.database_retry_s < worker.database_retry_max_s:
            return False
        reason = f"the database was unreachable for {worker.database_retry_max_s:.0f} s (worker.database_retry_max_s)"
        with self.context.db.session() as session:
            failed = finish_job(session, job_id, JobState.FAILED, {}, error=reason)
        if failed:  # not when another run of the job ended it meanwhile
            logger.error("job %s failed: the database was unreachable for too long", job_id)
        return True

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
            if resume and self.gave_up_on_the_database(job_id):
                return JobState.FAILED.value
            state = execute_job(self.context, job_id, redelivered=resume or bool(delivery.get("redelivered")))
        except DATABASE_UNREACHABLE as exc:
            if not database_unreachable(exc):
                raise  # recorded as the job's failure already
            self.retry_when_the_database_answers(job_id, exc)
        if state is JobState.WAITING:
            self.retry_export_later(job_id, 1)
    return state.value if state else None


@shared_task(bind=True, base=_JobTask, name=EXPORT_JOB_TASK, acks_late=True, max_retries=None)
def export_job(self: _JobTask, job_id: str, attempt: int, resume: bool = False) -> str | None:
    delivery: dict[str, Any] = self.request.delivery_info or {}
    with self.correlated(job_id):
        try:  # a redelivered message (its worker killed mid-export) may take over the job it left exporting
            if resume and self.gave_up_on_the_database(job_id):
                return JobState.FAILED.value
            state = resume_export(self.context, job_id, resumed=resume or bool(delivery.get("redelivered")))
        except DATABASE_UNREACHABLE as exc:
            if not database_unreachable(exc):
                raise  # recorded as the job's failure already
            self.retry_when_the_database_answers(job_id, exc, attempt)
        if state is JobState.WAITING:
            self.retry_export_later(job_id, attempt + 1)
    return state.value if state else None
