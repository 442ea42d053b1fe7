"""Job rows: creation with an idempotency key, claiming, state changes written as they happen.

A study that is re-evaluated (more series arrived after it was routed) gets a new job per deployment
whose series set changed; the new job supersedes the earlier one, and once it is done the earlier
job's results are marked superseded: a new version, never a duplicate.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, exists, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from hounsfield.db.index import add_event
from hounsfield.db.models import Event, Job, JobState, Result, Study, StudyState, utcnow
from hounsfield.errors import HounsfieldError

__all__ = [
    "JobCountsUnavailable",
    "active_job_counts",
    "claim_job",
    "claim_waiting_job",
    "create_job",
    "finish_job",
    "first_event_at",
    "get_job",
    "idempotency_key",
    "job_results",
    "job_state_counts",
    "list_jobs",
    "list_results",
    "list_results_of_studies",
    "queued_jobs",
    "record_result",
    "requeue_failed_job",
    "set_job_state",
    "study_jobs",
    "supersede_earlier_jobs",
    "supersede_results",
]


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

    A re-delivered message (its worker died, or the database went away mid-job) may take over a job left
    running or exporting: it runs again from its inputs, and its results come out with the same UIDs (they
    derive from the job's key), so a PACS that already took some holds them once.
    """
    allowed = [JobState.QUEUED] + ([JobState.RUNNING, JobState.EXPORTING] if redelivered else [])
    statement = update(Job).where(Job.id == job_id, Job.state.in_(allowed))
    result = cast(CursorResult[Any], session.execute(statement.values(state=JobState.RUNNING, started_at=utcnow())))
    if not result.rowcount:
        return None
    return session.get(Job, job_id)


def claim_waiting_job(session: Session, job_id: str, *, resumed: bool = False) -> Job | None:
    """Move a job waiting for its destination to exporting; None when it is not waiting any more.

    ``resumed``: the export attempt is tried again after the database went away mid-export, and may take
    over the job it left exporting."""
    allowed = [JobState.WAITING] + ([JobState.EXPORTING] if resumed else [])
    statement = update(Job).where(Job.id == job_id, Job.state.in_(allowed))
    result = cast(CursorResult[Any], session.execute(statement.values(state=JobState.EXPORTING)))
    if not result.rowcount:
        return None
    return session.get(Job, job_id)


def _merge_timings(job: Job, timings: dict[str, float]) -> None:
    job.timings = {**job.timings, **{k: round(v, 3) for k, v in timings.items()}}


def set_job_state(session: Session, job_id: str, state: JobState, timings: dict[str, float]) -> bool:
    """Move a job that has not ended to ``state``; False (nothing written) when it has ended already.

    Two runs of one job can overlap (a message handed out again while its first worker still runs it, after
    a Redis restart or a visibility timeout): the first to end the job wins, and the other run's later
    writes leave it as it is, so a done job never goes back to exporting, waiting or failed.
    """
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise KeyError(job_id)
    if job.state.final:
        return False
    job.state = state
    _merge_timings(job, timings)
    add_event(session, job.study_instance_uid, "worker", f"job-{state.value}", job_id=job_id)
    return True


def finish_job(
    session: Session,
    job_id: str,
    state: JobState,
    timings: dict[str, float],
    *,
    error: str | None = None,
) -> bool:
    """End a job with ``state`` (and ``error``); False (nothing written) when another run ended it first."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise KeyError(job_id)
    if job.state.final:
        return False
    job.state, job.error, job.finished_at = state, error, utcnow()
    _merge_timings(job, timings)
    detail = {"error": error} if error else {}
    add_event(session, job.study_instance_uid, "worker", f"job-{state.value}", job_id=job_id, **detail)
    return True


RETRYABLE = (JobState.FAILED, JobState.TIMED_OUT)
"""The states a job may be retried from: it ended without results and nothing replaced it."""


def requeue_failed_job(session: Session, job_id: str, *, actor: str) -> Job | None:
    """Put a failed or timed-out job back to queued (its error and times cleared, a ``job-retried`` event
    naming ``actor``); None when it is in no such state, a newer job superseded it, or retention purged
    its study."""
    present = exists().where(Study.study_instance_uid == Job.study_instance_uid, Study.state != StudyState.PURGED)
    statement = update(Job).where(
        Job.id == job_id, Job.state.in_(RETRYABLE), Job.superseded_by.is_(None), present
    )  # a purged study's files are gone: its job cannot run again
    values = {"state": JobState.QUEUED, "error": None, "started_at": None, "finished_at": None}
    result = cast(CursorResult[Any], session.execute(statement.values(**values)))
    if not result.rowcount:
        return None
    job = session.get(Job, job_id)
    assert job is not None
    session.refresh(job)
    add_event(session, job.study_instance_uid, "registry", "job-retried", job_id=job_id, by=actor)
    return job


def record_result(session: Session, **fields: Any) -> Result:
    """Record one produced object; a re-run of the same job updates rather than duplicates (its results
    have the same UIDs), and so does a run that overlaps another and records the same object at once."""
    existing = session.scalar(select(Result).where(Result.sop_instance_uid == fields["sop_instance_uid"]))
    if existing is None:
        result = Result(**fields)
        try:
            with session.begin_nested():
                session.add(result)
            return result
        except IntegrityError:  # the overlapping run recorded it between the look and the insert
            existing = session.scalars(
                select(Result).where(Result.sop_instance_uid == fields["sop_instance_uid"])
            ).one()
    for key, value in fields.items():
        setattr(existing, key, value)
    return existing


def supersede_earlier_jobs(session: Session, job: Job) -> list[Job]:
    """Mark the current job(s) of ``job``'s study and deployment as superseded by ``job``.

    A superseded job that has not started is finished as ``superseded`` (a worker will not claim
    it); one that is running finishes, and its results are superseded when ``job`` is done.
    """
    earlier = session.scalars(
        select(Job)
        .where(
            Job.study_instance_uid == job.study_instance_uid,
            Job.deployment == job.deployment,
            Job.id != job.id,
            Job.superseded_by.is_(None),
        )
        .order_by(Job.created_at)
    ).all()
    for old in earlier:
        old.superseded_by = job.id
        if old.state is JobState.QUEUED:
            old.state, old.finished_at = JobState.SUPERSEDED, utcnow()
        add_event(session, job.study_instance_uid, "router", "job-superseded", job_id=old.id, by=job.id)
    if earlier:
        job.supersedes = earlier[-1].id
    return list(earlier)


def supersede_results(session: Session, job_id: str) -> int:
    """``job_id`` is done: mark older results of its study and deployment superseded by it.

    Also marks the job's own results superseded when a newer job of the same study and deployment
    finished first. Returns how many results were marked.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise KeyError(job_id)
    same = (Job.study_instance_uid == job.study_instance_uid, Job.deployment == job.deployment, Job.id != job.id)
    older = select(Job.id).where(*same, Job.created_at < job.created_at)
    marked = 0
    for result in session.scalars(select(Result).where(Result.job_id.in_(older), Result.superseded_by.is_(None))).all():
        result.superseded_by = job.id
        marked += 1
    newer = session.scalar(
        select(Job.id)
        .where(*same, Job.created_at > job.created_at, Job.state == JobState.DONE)
        .order_by(Job.created_at.desc())
        .limit(1)
    )
    if newer is not None:
        for result in job.results:
            if result.superseded_by is None:
                result.superseded_by = newer
                marked += 1
    if marked:
        add_event(session, job.study_instance_uid, "worker", "results-superseded", job_id=job.id, results=marked)
    return marked


# -- reads ----------------------------------------------------------------------------------------


def get_job(session: Session, job_id: str) -> Job | None:
    """One job with its results."""
    return session.scalar(select(Job).options(selectinload(Job.results)).where(Job.id == job_id))


def list_jobs(
    session: Session, *, state: JobState | None = None, study_uid: str | None = None, limit: int = 100, offset: int = 0
) -> Sequence[Job]:
    """Jobs with their results, newest first."""
    query = select(Job).options(selectinload(Job.results)).order_by(Job.created_at.desc()).limit(limit).offset(offset)
    if state is not None:
        query = query.where(Job.state == state)
    if study_uid is not None:
        query = query.where(Job.study_instance_uid == study_uid)
    return session.scalars(query).all()


def study_jobs(session: Session, study_uid: str) -> Sequence[Job]:
    """A study's jobs with their results, oldest first."""
    query = select(Job).options(selectinload(Job.results)).where(Job.study_instance_uid == study_uid)
    return session.scalars(query.order_by(Job.created_at)).all()


def queued_jobs(session: Session) -> Sequence[Job]:
    """Jobs no worker has claimed yet."""
    return session.scalars(select(Job).where(Job.state == JobState.QUEUED)).all()


def job_results(session: Session, job_id: str, *, kind: str | None = None) -> Sequence[Result]:
    """A job's results (of one ``kind``: SEG, SR, SC, PR, KO), in the order they were recorded."""
    query = select(Result).where(Result.job_id == job_id)
    if kind is not None:
        query = query.where(Result.kind == kind)
    return session.scalars(query.order_by(Result.id)).all()


def list_results(session: Session, *, job_id: str | None = None, limit: int = 100, offset: int = 0) -> Sequence[Result]:
    """Results, newest first."""
    query = select(Result).order_by(Result.id.desc()).limit(limit).offset(offset)
    if job_id is not None:
        query = query.where(Result.job_id == job_id)
    return session.scalars(query).all()


def list_results_of_studies(session: Session, *, limit: int = 100, offset: int = 0) -> list[tuple[Result, str]]:
    """Results, newest first, each with the Study Instance UID of its job's study."""
    query = (
        select(Result, Job.study_instance_uid)
        .join(Job, Job.id == Result.job_id)
        .order_by(Result.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [(result, str(study_uid)) for result, study_uid in session.execute(query).all()]


def job_state_counts(session: Session) -> dict[JobState, int]:
    """How many jobs are in each state (states without jobs are left out)."""
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {JobState(state): int(count) for state, count in rows}


def first_event_at(session: Session, job_id: str, kind: str) -> datetime | None:
    """When the job's first event of ``kind`` (e.g. ``export-waiting``) happened; None when none did."""
    query = select(Event.at).where(Event.job_id == job_id, Event.kind == kind).order_by(Event.id).limit(1)
    return session.scalar(query)


class JobCountsUnavailable(HounsfieldError):
    """The database did not answer the count of unfinished jobs (the message names the error's type)."""


def active_job_counts(session: Session, *, cap: int) -> dict[JobState, int]:
    """Jobs in each state not final (queued, running, exporting, waiting), each count stopping at ``cap``.

    One query per state on the state's index, each reading at most ``cap`` index entries: a metrics scrape
    costs the same however many jobs the table holds (finished jobs are never counted here). Raises
    :class:`JobCountsUnavailable` when the database cannot answer.
    """
    counts = {}
    try:
        for state in JobState:
            if state.final:
                continue
            capped = select(Job.id).where(Job.state == state).limit(cap).subquery()
            counts[state] = int(session.scalar(select(func.count()).select_from(capped)) or 0)
    except SQLAlchemyError as exc:
        raise JobCountsUnavailable(type(exc).__name__) from exc
    return counts
