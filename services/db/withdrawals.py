"""Withdrawn results: a job's SEG and SR taken back (IHE IOCM), and where the rejection note went.

One row per withdrawn job. ``notes`` keeps, per destination that had received the results, the
rejection note made for it (its SOP Instance UID and document title) and whether it was delivered
(``delivered_at``) or why not yet (``error``): a later attempt sends only what is missing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hounsfield.db.models import Base, utcnow

__all__ = ["Withdrawal", "is_withdrawn", "record_withdrawal", "save_notes", "withdrawal_of"]


class Withdrawal(Base):
    __tablename__ = "withdrawals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    """``quality`` (113001, DCM) or ``patient-safety`` (113037, DCM)."""
    comment: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    notes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Destination name -> ``{sop_instance_uid, title, path, delivered_at, error}``."""


def withdrawal_of(session: Session, job_id: str) -> Withdrawal | None:
    """The job's withdrawal, if its results were withdrawn."""
    return session.scalar(select(Withdrawal).where(Withdrawal.job_id == job_id))


def is_withdrawn(session: Session, job_id: str) -> bool:
    return session.scalar(select(Withdrawal.id).where(Withdrawal.job_id == job_id)) is not None


def record_withdrawal(
    session: Session, *, job_id: str, reason: str, comment: str | None, requested_by: str
) -> Withdrawal:
    """Record that a job's results are withdrawn (no note made yet)."""
    withdrawal = Withdrawal(job_id=job_id, reason=reason, comment=comment, requested_by=requested_by, notes={})
    session.add(withdrawal)
    session.flush()
    return withdrawal


def save_notes(session: Session, job_id: str, notes: dict[str, Any]) -> None:
    """Store the job's rejection notes, per destination, as they stand."""
    withdrawal = withdrawal_of(session, job_id)
    if withdrawal is None:
        raise KeyError(job_id)
    withdrawal.notes = dict(notes)
