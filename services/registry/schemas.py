"""Public shapes of the registry's read-only resources, and of a results withdrawal."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EventPublic",
    "FeedbackPublic",
    "FeedbackRequest",
    "JobPublic",
    "ResultPublic",
    "SeriesPublic",
    "StudyDetail",
    "StudyPublic",
    "WithdrawRequest",
    "WithdrawalPublic",
]


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
    correlation_id: str
    """The study's id in the log lines of every process (docs/logs.md): a keyed hash of its UID."""
    series: list[SeriesPublic]
    jobs: list[JobPublic]
    events: list[EventPublic]


class WithdrawRequest(BaseModel):
    """Take a job's results back from every PACS that has them (an IOCM rejection note each)."""

    model_config = ConfigDict(extra="forbid")

    reason: Literal["quality", "patient-safety"]
    """``quality``: Rejected for Quality Reasons (113001, DCM); ``patient-safety``: Rejected for Patient
    Safety Reasons (113037, DCM) where the destination supports it, for quality reasons elsewhere."""
    comment: str | None = Field(None, max_length=512)
    """Why, in words; no patient data."""


class RejectionNotePublic(BaseModel):
    sop_instance_uid: str | None = None
    title: str | None = None
    delivered_at: datetime | None = None
    error: str | None = None


class WithdrawalPublic(_Public):
    job_id: str
    reason: str
    comment: str | None
    requested_by: str
    created_at: datetime
    notes: dict[str, RejectionNotePublic]
    """Per destination that had received the results: its rejection note, delivered or why not yet."""


class FeedbackRequest(BaseModel):
    """A radiologist's verdict on one result (see docs/radiologists.md)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["accept", "reject", "comment"]
    reason: str | None = Field(None, max_length=32)
    """Why it is rejected (rejections only): false-positive, false-negative, boundary, measurement,
    wrong-anatomy, image-quality or other (then say what in the comment)."""
    comment: str | None = None
    """In words, no patient data; at most ``feedback.max_comment_chars`` characters."""


class SegmentDicePublic(BaseModel):
    segment_number: int | None
    label: str
    corrected_segment_number: int | None
    dice: float


class FeedbackPublic(_Public):
    id: int
    result_id: int
    job_id: str
    model_name: str
    model_version: str
    kind: str
    """accept, reject, comment, or correction (a corrected SEG that arrived)."""
    reason: str | None
    comment: str | None
    given_by: str
    created_at: datetime
    correction_sop_instance_uid: str | None = None
    dice: list[SegmentDicePublic] = []
    mean_dice: float | None = None
