"""Job rows: creation with an idempotency key, claiming, state changes written as they happen."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.db.index import add_event
from services.db.models import Job, JobState, Result, utcnow

__all__ = ["claim_job", "create_job", "finish_job", "idempotency_key", "record_result", "set_job_state"]


def idempotency_key(study_uid: str, series_uids: Sequence[str], deployment: str, model_version: str) -> str:
    """The same study, series set, deployment and model version always make the same key."""
    text = "|".join([study_uid, ",".join(sorted(series_uids)), deployment, model_version])
    return hashlib.sha256(text.encode()).hexdigest()


def create_job(session: Session, **fields: Any) -> tuple[Job, bool]:
    """Insert a queued job, or return the existing one with the same key (``created`` False)."""
    key = fields["idempotency_key"]
    existing = session.scalar(select(Job).where(Job.idempotency_key == key))
    if existing is not None:
        return existing, False
    job = Job(id=str(uuid.uuid4()), state=JobState.QUEUED, **fields)
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:  # a concurrent router created it first
        return session.scalars(select(Job).where(Job.idempotency_key == key)).one(), False
    return job, True


def claim_job(session: Session, job_id: str, *, redelivered: bool) -> Job | None:
    """Move a queued job to running; None when another worker owns it or it is finished.

    A re-delivered message (its worker died) may take over a job left running.
    """
    allowed = [JobState.QUEUED] + ([JobState.RUNNING] if redelivered else [])
    statement = update(Job).where(Job.id == job_id, Job.state.in_(allowed))
    result = cast(CursorResult[Any], session.execute(statement.values(state=JobState.RUNNING, started_at=utcnow())))
    if not result.rowcount:
        return None
    return session.get(Job, job_id)


def _merge_timings(job: Job, timings: dict[str, float]) -> None:
    job.timings = {**job.timings, **{k: round(v, 3) for k, v in timings.items()}}


def set_job_state(session: Session, job_id: str, state: JobState, timings: dict[str, float]) -> None:
    job = session.get(Job, job_id)
    if job is None:
        raise KeyError(job_id)
    job.state = state
    _merge_timings(job, timings)
    add_event(session, job.study_instance_uid, "worker", f"job-{state.value}", job_id=job_id)


def finish_job(
    session: Session,
    job_id: str,
    state: JobState,
    timings: dict[str, float],
    *,
    error: str | None = None,
) -> None:
    job = session.get(Job, job_id)
    if job is None:
        raise KeyError(job_id)
    job.state, job.error, job.finished_at = state, error, utcnow()
    _merge_timings(job, timings)
    detail = {"error": error} if error else {}
    add_event(session, job.study_instance_uid, "worker", f"job-{state.value}", job_id=job_id, **detail)


def record_result(session: Session, **fields: Any) -> Result:
    """Record one produced object; a re-run of the same job updates rather than duplicates."""
    existing = session.scalar(select(Result).where(Result.sop_instance_uid == fields["sop_instance_uid"]))
    if existing is not None:
        for key, value in fields.items():
            setattr(existing, key, value)
        return existing
    result = Result(**fields)
    session.add(result)
    return result
