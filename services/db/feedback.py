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

from sqlalchemy import Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hounsfield.db.catalog import model_use_cases
from hounsfield.db.models import Base, Event, Instance, Job, Result, Series, utcnow

__all__ = [
    "Feedback",
    "FeedbackKind",
    "FeedbackTally",
    "add_feedback",
    "correction_candidates",
    "feedback_rows",
    "feedback_tallies",
    "find_result",
    "refused_corrections",
    "study_seg_results",
]

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


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
    """Counts per use case, model and version.

    Verdicts count once per result and radiologist: the latest of each (a radiologist may change their
    mind). A model filed under two use cases counts under both. Corrections add their mean Dice where
    it could be measured.
    """
    query = select(Feedback, model_use_cases.c.use_case_key).outerjoin(
        model_use_cases, model_use_cases.c.model_name == Feedback.model_name
    )
    if model_name is not None:
        query = query.where(Feedback.model_name == model_name)
    if model_version is not None:
        query = query.where(Feedback.model_version == model_version)
    if use_case is not None:
        query = query.where(model_use_cases.c.use_case_key == use_case)
    query = query.order_by(Feedback.id)
    tallies: dict[tuple[str, str, str], FeedbackTally] = {}
    verdicts: dict[tuple[str, str, str], dict[tuple[int, str], Feedback]] = {}
    for row, key in session.execute(query):
        group = (key or "", row.model_name, row.model_version)  # "": the model is filed under no use case
        tally = tallies.setdefault(group, FeedbackTally(*group))
        if row.kind in (FeedbackKind.ACCEPT, FeedbackKind.REJECT):
            verdicts.setdefault(group, {})[(row.result_id, row.given_by)] = row  # the latest wins (ordered by id)
        elif row.kind == FeedbackKind.COMMENT:
            tally.comments += 1
        elif row.kind == FeedbackKind.CORRECTION:
            tally.corrections += 1
            if row.mean_dice is not None:
                tally.corrections_measured += 1
                tally.dice_sum += row.mean_dice
    for group, latest in verdicts.items():
        tally = tallies[group]
        for row in latest.values():
            if row.kind == FeedbackKind.ACCEPT:
                tally.accepted += 1
            else:
                tally.rejected += 1
                reason = row.reason or "unstated"
                tally.rejection_reasons[reason] = tally.rejection_reasons.get(reason, 0) + 1
    return sorted(tallies.values(), key=lambda t: (t.use_case, t.model_name, t.model_version))


def study_seg_results(session: Session, study_uid: str) -> Sequence[Result]:
    """Our SEG results for the study, newest first."""
    query = (
        select(Result)
        .join(Job, Job.id == Result.job_id)
        .where(Job.study_instance_uid == study_uid, Result.sop_class_uid == SEG_STORAGE)
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
            Instance.sop_class_uid == SEG_STORAGE,
            Instance.sop_instance_uid.not_in(ours),
            Instance.sop_instance_uid.not_in(recorded),
        )
        .order_by(Instance.received_at, Instance.sop_instance_uid)
    )
    return [(uid, path, ae) for uid, path, ae in session.execute(query)]


def refused_corrections(session: Session, study_uid: str) -> set[str]:
    """The SOP Instance UIDs of the study's SEGs refused as corrections already (another patient's)."""
    query = select(Event.detail).where(Event.study_instance_uid == study_uid, Event.kind == "correction-refused")
    return {str(detail.get("sop_instance_uid")) for detail in session.scalars(query)}
