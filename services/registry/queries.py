"""Read queries behind the registry's routes (keyword-only, no SQL in the routes)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from hounsfield.db import Event, Job, JobState, Result, Study, StudyState
from hounsfield.db.index import series_facts_rows
from hounsfield.registry.schemas import EventPublic, JobPublic, SeriesPublic, StudyDetail, StudyPublic

__all__ = ["get_job", "get_study", "list_jobs", "list_results", "list_studies"]


def list_studies(session: Session, *, state: StudyState | None, limit: int, offset: int) -> Sequence[Study]:
    query = select(Study).order_by(Study.last_received_at.desc()).limit(limit).offset(offset)
    if state is not None:
        query = query.where(Study.state == state)
    return session.scalars(query).all()


def get_study(session: Session, *, study_uid: str) -> StudyDetail | None:
    study = session.get(Study, study_uid)
    if study is None:
        return None
    series = [
        SeriesPublic.model_validate(s).model_copy(update={"instance_count": n})
        for s, n in series_facts_rows(session, study_uid)
    ]
    jobs = session.scalars(
        select(Job)
        .options(selectinload(Job.results))
        .where(Job.study_instance_uid == study_uid)
        .order_by(Job.created_at)
    ).all()
    events = session.scalars(select(Event).where(Event.study_instance_uid == study_uid).order_by(Event.id)).all()
    return StudyDetail(
        **StudyPublic.model_validate(study).model_dump(),
        series=series,
        jobs=[JobPublic.model_validate(j) for j in jobs],
        events=[EventPublic.model_validate(e) for e in events],
    )


def list_jobs(
    session: Session, *, state: JobState | None, study_uid: str | None, limit: int, offset: int
) -> Sequence[Job]:
    query = select(Job).options(selectinload(Job.results)).order_by(Job.created_at.desc()).limit(limit).offset(offset)
    if state is not None:
        query = query.where(Job.state == state)
    if study_uid is not None:
        query = query.where(Job.study_instance_uid == study_uid)
    return session.scalars(query).all()


def get_job(session: Session, *, job_id: str) -> Job | None:
    return session.scalar(select(Job).options(selectinload(Job.results)).where(Job.id == job_id))


def list_results(session: Session, *, job_id: str | None, limit: int, offset: int) -> Sequence[Result]:
    query = select(Result).order_by(Result.id.desc()).limit(limit).offset(offset)
    if job_id is not None:
        query = query.where(Result.job_id == job_id)
    return session.scalars(query).all()
