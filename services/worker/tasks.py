"""Celery tasks: thin adapters around :mod:`services.worker.pipeline`."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from celery import Task, shared_task

from services.config import Settings
from services.db import Database
from services.store import StudyStore
from services.worker.celery_app import RUN_JOB_TASK
from services.worker.pipeline import WorkerContext, execute_job

__all__ = ["run_job"]


class _JobTask(Task):  # type: ignore[misc]
    """Keeps one :class:`WorkerContext` per worker process."""

    @cached_property
    def context(self) -> WorkerContext:
        settings: Settings = self.app.conf.hounsfield_settings
        return WorkerContext(
            settings=settings, db=Database(settings.sqlalchemy_url), store=StudyStore(settings.data_dir)
        )


@shared_task(bind=True, base=_JobTask, name=RUN_JOB_TASK, acks_late=True)
def run_job(self: _JobTask, job_id: str) -> str | None:
    delivery: dict[str, Any] = self.request.delivery_info or {}
    state = execute_job(self.context, job_id, redelivered=bool(delivery.get("redelivered")))
    return state.value if state else None
