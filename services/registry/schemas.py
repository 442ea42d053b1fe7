"""Public shapes of the registry's read-only resources."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["EventPublic", "JobPublic", "ResultPublic", "SeriesPublic", "StudyDetail", "StudyPublic"]


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class SeriesPublic(_Public):
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    calling_ae: str
    called_ae: str
    instance_count: int = 0


class StudyPublic(_Public):
    study_instance_uid: str
    accession_number: str
    study_date: str
    state: str
    completion_trigger: str | None
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None


class ResultPublic(_Public):
    id: int
    job_id: str
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    exported_to: list[str]
    summary: dict[str, Any]
    created_at: datetime
    superseded_by: str | None = None
    """The job whose results replace this one (a later series set of the same study)."""


class JobPublic(_Public):
    id: str
    study_instance_uid: str
    series_instance_uids: list[str]
    deployment: str
    model_name: str
    model_version: str
    mode: str
    queue: str
    state: str
    error: str | None
    timings: dict[str, float]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    supersedes: str | None = None
    superseded_by: str | None = None
    results: list[ResultPublic] = []


class EventPublic(_Public):
    at: datetime
    actor: str
    kind: str
    job_id: str | None
    detail: dict[str, Any]


class StudyDetail(StudyPublic):
    series: list[SeriesPublic]
    jobs: list[JobPublic]
    events: list[EventPublic]
