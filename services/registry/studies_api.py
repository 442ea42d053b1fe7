"""API routes of what arrived and what was made: studies (with their path), jobs, results, withdrawals.

Reading needs any reading role; withdrawing a job's results needs a radiologist or an administrator;
retrying a failed job needs an administrator.
Every read answered is logged, without patient data (:mod:`hounsfield.registry.read_log`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from hounsfield.access import READERS
from hounsfield.config import Settings
from hounsfield.db import JobState, Session, Study, StudyState
from hounsfield.db.index import list_studies as study_rows
from hounsfield.db.index import series_facts_rows, study_events
from hounsfield.db.jobs import get_job as job_row
from hounsfield.db.jobs import list_jobs as job_rows
from hounsfield.db.jobs import list_results as result_rows
from hounsfield.db.jobs import study_jobs
from hounsfield.errors import NotFound
from hounsfield.exporter.withdrawal import withdraw_job
from hounsfield.logs import study_correlation_id
from hounsfield.queues import retry_job
from hounsfield.registry.auth import require
from hounsfield.registry.deps import Admin, Limit, Offset, Radiologist, SessionDep, enqueuer
from hounsfield.registry.read_log import log_read
from hounsfield.registry.schemas import (
    EventPublic,
    JobPublic,
    ResultPublic,
    SeriesPublic,
    StudyDetail,
    StudyPublic,
    WithdrawalPublic,
    WithdrawRequest,
)

__all__ = ["jobs", "results", "studies", "study_detail"]

_readers = [Depends(require(*READERS))]
studies = APIRouter(prefix="/studies", tags=["studies"], dependencies=_readers)
jobs = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=_readers)
results = APIRouter(prefix="/results", tags=["results"], dependencies=_readers)


@studies.get("", response_model=list[StudyPublic])
def list_studies(
    session: SessionDep, http: Request, state: StudyState | None = None, limit: Limit = 100, offset: Offset = 0
) -> list[StudyPublic]:
    found = [StudyPublic.model_validate(s) for s in study_rows(session, state=state, limit=limit, offset=offset)]
    log_read(http, len(found))
    return found


def study_detail(session: Session, settings: Settings, study_uid: str) -> StudyDetail:
    """A study with its series, jobs, events and log correlation id (the dashboard shows the same);
    NotFound when unknown."""
    study = session.get(Study, study_uid)
    if study is None:
        raise NotFound("no study with this Study Instance UID")
    series = [
        SeriesPublic.model_validate(s).model_copy(update={"instance_count": n})
        for s, n in series_facts_rows(session, study_uid)
    ]
    return StudyDetail(
        **StudyPublic.model_validate(study).model_dump(),
        correlation_id=study_correlation_id(study_uid, settings.log_correlation_key),
        series=series,
        jobs=[JobPublic.model_validate(j) for j in study_jobs(session, study_uid)],
        events=[EventPublic.model_validate(e) for e in study_events(session, study_uid)],
    )


@studies.get("/{study_uid}", response_model=StudyDetail)
def get_study(study_uid: str, session: SessionDep, http: Request) -> StudyDetail:
    detail = study_detail(session, http.app.state.settings, study_uid)
    log_read(http, 1)
    return detail


@jobs.get("", response_model=list[JobPublic])
def list_jobs(
    session: SessionDep,
    http: Request,
    state: JobState | None = None,
    study_uid: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[JobPublic]:
    found = [
        JobPublic.model_validate(j)
        for j in job_rows(session, state=state, study_uid=study_uid, limit=limit, offset=offset)
    ]
    log_read(http, len(found))
    return found


@jobs.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, http: Request) -> JobPublic:
    job = job_row(session, job_id)
    if job is None:
        raise NotFound("no job with this id")
    found = JobPublic.model_validate(job)
    log_read(http, 1)
    return found


@jobs.post(
    "/{job_id}/withdraw",
    response_model=WithdrawalPublic,
    responses={404: {"description": "no such job"}, 409: {"description": "no results, or withdrawn for other reasons"}},
)
def withdraw_job_results(job_id: str, request: WithdrawRequest, caller: Radiologist, http: Request) -> WithdrawalPublic:
    """Withdraw the job's results: each PACS that received them gets an IOCM rejection note (KOS).

    Answers with each destination's note: delivered, or the reason it is not yet (call again to
    send what is missing). Radiologists and administrators may withdraw.
    """
    made = withdraw_job(
        http.app.state.settings,
        http.app.state.db,
        job_id,
        reason=request.reason,
        comment=request.comment,
        principal=caller,
    )
    return WithdrawalPublic.model_validate(made)


@jobs.post(
    "/{job_id}/retry",
    response_model=JobPublic,
    responses={404: {"description": "no such job"}, 409: {"description": "it did not fail, or was superseded"}},
)
def retry_failed_job(job_id: str, caller: Admin, http: Request) -> JobPublic:
    """Run a failed or timed-out job again (administrators): queued afresh, audited as ``job.retry``."""
    job = retry_job(http.app.state.db, job_id, principal=caller, enqueue=enqueuer(http))
    return JobPublic.model_validate(job)


@results.get("", response_model=list[ResultPublic])
def list_results(
    session: SessionDep, http: Request, job_id: str | None = None, limit: Limit = 100, offset: Offset = 0
) -> list[ResultPublic]:
    found = [ResultPublic.model_validate(r) for r in result_rows(session, job_id=job_id, limit=limit, offset=offset)]
    log_read(http, len(found))
    return found
