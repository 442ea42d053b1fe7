"""Radiologists' feedback on results, tied to the model version that made them.

One row per thing a radiologist said or sent about a result: a verdict (``accept``, ``reject`` with a
reason), a ``comment``, or a ``correction`` (a corrected segmentation that arrived for one of our
SEGs, with its Dice against the original per segment). The model name and version are copied from
the result's job, so that what a version earned stays with it however its deployments change.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.uid import SegmentationStorage
from sqlalchemy import Float, ForeignKey, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hounsfield.db.catalog import model_use_cases
from hounsfield.db.models import Base, Event, Instance, Job, Result, Series, utcnow

__all__ = [
    "Feedback",
    "FeedbackKind",
    "FeedbackTally",
    "add_feedback",
    "correction_candidates",
    "examined_segs",
    "feedback_rows",
    "feedback_tallies",
    "find_result",
    "study_seg_results",
]


class FeedbackKind(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    COMMENT = "comment"
    CORRECTION = "correction"


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    """A :class:`FeedbackKind`."""
    reason: Mapped[str | None] = mapped_column(String(32))
    """Why a result was rejected (one of the registry's rejection reasons)."""
    comment: Mapped[str | None] = mapped_column(Text)
    given_by: Mapped[str] = mapped_column(String(256))
    """The radiologist's principal (a token's name, a JWT's subject); for a correction, the AE that sent it."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    correction_sop_instance_uid: Mapped[str | None] = mapped_column(String(64), unique=True)
    """The corrected SEG's SOP Instance UID (corrections only); one row per corrected SEG."""
    dice: Mapped[list[Any]] = mapped_column(default=list)
    """Per segment: ``{segment_number, label, corrected_segment_number, dice}`` (corrections only)."""
    mean_dice: Mapped[float | None] = mapped_column(Float)


def find_result(session: Session, reference: str) -> Result | None:
    """The result with this id (digits) or SOP Instance UID."""
    if reference.isdigit():
        number = int(reference)
        return session.get(Result, number) if number < 2**31 else None
    return session.scalar(select(Result).where(Result.sop_instance_uid == reference))


def add_feedback(session: Session, result: Result, **fields: Any) -> Feedback:
    """Record one piece of feedback on ``result`` (its job's model and version copied in)."""
    job = result.job
    row = Feedback(result_id=result.id, job_id=job.id, model_name=job.model_name, model_version=job.model_version)
    for name, value in fields.items():
        setattr(row, name, value)
    session.add(row)
    session.flush()
    return row


def feedback_rows(
    session: Session,
    *,
    result_id: int | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    kind: FeedbackKind | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[Feedback]:
    """Feedback, newest first, narrowed to a result, a model (and version) or a kind."""
    query = select(Feedback)
    if result_id is not None:
        query = query.where(Feedback.result_id == result_id)
    if model_name is not None:
        query = query.where(Feedback.model_name == model_name)
    if model_version is not None:
        query = query.where(Feedback.model_version == model_version)
    if kind is not None:
        query = query.where(Feedback.kind == kind.value)
    return session.scalars(query.order_by(Feedback.id.desc()).limit(limit).offset(offset)).all()


@dataclass
class FeedbackTally:
    """What one model version earned under one use case (see :func:`feedback_tallies`)."""

    use_case: str
    model_name: str
    model_version: str
    accepted: int = 0
    rejected: int = 0
    comments: int = 0
    rejection_reasons: dict[str, int] = field(default_factory=dict)
    corrections: int = 0
    corrections_measured: int = 0
    dice_sum: float = 0.0


def feedback_tallies(
    session: Session, *, model_name: str | None = None, model_version: str | None = None, use_case: str | None = None
) -> list[FeedbackTally]:
    """Counts per use case, model and version, counted by the database (three grouped queries).

    Verdicts count once per result and radiologist: the latest of each (a radiologist may change their
    mind). A model filed under two use cases counts under both; one filed under none (a deployment of the
    configuration file only) under ``""``. Corrections add their mean Dice where it could be measured.
    """
    key = func.coalesce(model_use_cases.c.use_case_key, "")
    groups = (key, Feedback.model_name, Feedback.model_version)

    def grouped(*columns: Any) -> Any:
        query = select(*groups, *columns).select_from(Feedback)
        query = query.outerjoin(model_use_cases, model_use_cases.c.model_name == Feedback.model_name)
        if model_name is not None:
            query = query.where(Feedback.model_name == model_name)
        if model_version is not None:
            query = query.where(Feedback.model_version == model_version)
        if use_case is not None:
            query = query.where(model_use_cases.c.use_case_key == use_case)
        return query

    newest_first = func.row_number().over(
        partition_by=(Feedback.result_id, Feedback.given_by), order_by=Feedback.id.desc()
    )
    ranked = (
        select(Feedback.id, newest_first.label("rank"))
        .where(Feedback.kind.in_((FeedbackKind.ACCEPT.value, FeedbackKind.REJECT.value)))
        .subquery()
    )
    latest = select(ranked.c.id).where(ranked.c.rank == 1)
    tallies: dict[tuple[str, str, str], FeedbackTally] = {}

    def tally(row: Any) -> FeedbackTally:
        group = (str(row[0]), str(row[1]), str(row[2]))
        return tallies.setdefault(group, FeedbackTally(*group))

    verdicts = grouped(Feedback.kind, Feedback.reason, func.count()).where(Feedback.id.in_(latest))
    for row in session.execute(verdicts.group_by(*groups, Feedback.kind, Feedback.reason)):
        counted = tally(row)
        if row[3] == FeedbackKind.ACCEPT:
            counted.accepted += int(row[5])
        else:
            counted.rejected += int(row[5])
            reason = row[4] or "unstated"
            counted.rejection_reasons[reason] = counted.rejection_reasons.get(reason, 0) + int(row[5])
    comments = grouped(func.count()).where(Feedback.kind == FeedbackKind.COMMENT.value).group_by(*groups)
    for row in session.execute(comments):
        tally(row).comments = int(row[3])
    corrections = grouped(func.count(), func.count(Feedback.mean_dice), func.sum(Feedback.mean_dice))
    for row in session.execute(corrections.where(Feedback.kind == FeedbackKind.CORRECTION.value).group_by(*groups)):
        counted = tally(row)
        counted.corrections, counted.corrections_measured, counted.dice_sum = (
            int(row[3]),
            int(row[4]),
            float(row[5] or 0),
        )
    return sorted(tallies.values(), key=lambda t: (t.use_case, t.model_name, t.model_version))


def study_seg_results(session: Session, study_uid: str) -> Sequence[Result]:
    """Our SEG results for the study, newest first."""
    query = (
        select(Result)
        .join(Job, Job.id == Result.job_id)
        .where(Job.study_instance_uid == study_uid, Result.sop_class_uid == str(SegmentationStorage))
        .order_by(Result.id.desc())
    )
    return session.scalars(query).all()


def correction_candidates(session: Session, study_uid: str) -> list[tuple[str, str, str]]:
    """SEG instances of the study that are neither our results nor corrections recorded already:
    ``(sop_instance_uid, path, calling AE title)`` (the AE title is empty for STOW-RS)."""
    ours = select(Result.sop_instance_uid)
    recorded = select(Feedback.correction_sop_instance_uid).where(Feedback.correction_sop_instance_uid.is_not(None))
    query = (
        select(Instance.sop_instance_uid, Instance.path, Series.calling_ae)
        .join(Series, Series.series_instance_uid == Instance.series_instance_uid)
        .where(
            Series.study_instance_uid == study_uid,
            Instance.sop_class_uid == str(SegmentationStorage),
            Instance.sop_instance_uid.not_in(ours),
            Instance.sop_instance_uid.not_in(recorded),
        )
        .order_by(Instance.received_at, Instance.sop_instance_uid)
    )
    return [(uid, path, ae) for uid, path, ae in session.execute(query)]


EXAMINED_KINDS = ("correction-refused", "correction-ambiguous", "seg-not-a-correction")
"""Events that settle a SEG of a study as not (countable as) a correction."""


def examined_segs(session: Session, study_uid: str) -> set[str]:
    """The SOP Instance UIDs of the study's SEGs examined already and found not to be corrections (or
    refused, or ambiguous): read once, never again."""
    query = select(Event.detail).where(Event.study_instance_uid == study_uid, Event.kind.in_(EXAMINED_KINDS))
    return {str(detail.get("sop_instance_uid")) for detail in session.scalars(query)}
