"""The index and job tables. This package is the only place that knows SQL."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "Event", "Instance", "Job", "JobState", "Result", "Series", "Study", "StudyState", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class StudyState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    ROUTED = "routed"
    NO_ROUTE = "no_route"
    PURGED = "purged"
    """Its instance files and rows were removed by retention; the study row, series and events stay."""


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    EXPORTING = "exporting"
    WAITING = "waiting"
    """Results made and kept; a destination is unreachable and the export is retried from the queue."""
    DONE = "done"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    """Its application ran past the deployment's timeout and was stopped."""
    SUPERSEDED = "superseded"
    """Replaced by a newer job for the same study and deployment before it ran; it never will."""

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.TIMED_OUT, JobState.SUPERSEDED)


class Study(Base):
    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    state: Mapped[StudyState] = mapped_column(Enum(StudyState, native_enum=False), default=StudyState.RECEIVING)
    completion_trigger: Mapped[str | None] = mapped_column(String(32))
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.series_number")


class Series(Base):
    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_instance_uid"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(ForeignKey("series.series_instance_uid"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_jobs_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_instance_uid"), index=True)
    series_instance_uids: Mapped[list[Any]] = mapped_column(default=list)
    deployment: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(16))
    state: Mapped[JobState] = mapped_column(Enum(JobState, native_enum=False), default=JobState.QUEUED, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Seconds per stage: completeness, queue_wait, load, inference, validate, export."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    supersedes: Mapped[str | None] = mapped_column(String(36))
    """The job of the same study and deployment that this one replaces (the study was re-evaluated)."""
    superseded_by: Mapped[str | None] = mapped_column(String(36), index=True)
    """The newer job that replaces this one; its results are superseded once that job is done."""
    results: Mapped[list[Result]] = relationship(back_populates="job", order_by="Result.id")


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("sop_instance_uid", name="uq_results_sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    exported_to: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    superseded_by: Mapped[str | None] = mapped_column(String(36))
    """The job whose results replace this one (a new version, with new SOP Instance UIDs)."""
    job: Mapped[Job] = relationship(back_populates="results")


class Event(Base):
    """The path of every study: one row per thing that happened to it, in order."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str | None] = mapped_column(String(36))
    actor: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
