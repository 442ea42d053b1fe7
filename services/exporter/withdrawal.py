"""Withdraw a job's results: record it, and send each PACS that has them an IOCM rejection note.

:func:`withdraw_job` records the withdrawal (who, why, when; an event on the study's path and an audit
row in the same transaction), then, for each destination that received the
results, makes the rejection note its title calls for (113037 where the destination supports
*Rejected for Patient Safety Reasons*, 113001 otherwise), checks it at the validation gate and
delivers it. Each note's fate is recorded as it happens; a destination that could not be reached
keeps its note and its error, and calling again sends only the notes still missing. Results of a
withdrawn job are never exported again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pydicom

from hounsfield.access import Principal, record
from hounsfield.config import Settings
from hounsfield.db import Database, Job, utcnow
from hounsfield.db.index import add_event
from hounsfield.db.jobs import job_results
from hounsfield.db.withdrawals import Withdrawal, record_withdrawal, save_notes, withdrawal_of
from hounsfield.errors import Conflict, NotFound
from hounsfield.exporter.delivery import ExportFailed, deliver
from hounsfield.exporter.rejection import REJECTION_TITLES, Reason, build_rejection_note, note_uids
from hounsfield.exporter.validation import GateRejected, validate_object, validators

__all__ = ["WithdrawalRefused", "withdraw_job"]

logger = logging.getLogger(__name__)


class WithdrawalRefused(Conflict):
    """The job has no results to withdraw, or was withdrawn for another reason."""


def withdraw_job(
    settings: Settings,
    db: Database,
    job_id: str,
    *,
    reason: Reason,
    principal: Principal,
    comment: str | None = None,
) -> Withdrawal:
    """Withdraw the job's results (see the module's docstring); returns the withdrawal, notes included.

    Raises :class:`~hounsfield.errors.NotFound` for no such job and :class:`WithdrawalRefused` for a job
    without results or one withdrawn for another reason.
    """
    requested_by = principal.subject
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        results = job_results(session, job_id)
        if not results:
            raise WithdrawalRefused(f"job {job_id} has no results to withdraw")
        withdrawal = withdrawal_of(session, job_id)
        if withdrawal is None:
            withdrawal = record_withdrawal(
                session, job_id=job_id, reason=reason, comment=comment, requested_by=requested_by
            )
            add_event(session, job.study_instance_uid, "registry", "results-withdrawn", job_id=job_id, reason=reason)
            after = {"job_id": job_id, "reason": reason, "comment": comment}
            record(session, principal, "results.withdraw", "job", job_id, after=after)
        elif withdrawal.reason != reason:
            raise WithdrawalRefused(f"job {job_id} was withdrawn already, for {withdrawal.reason} reasons")
        study_uid, job_key = job.study_instance_uid, job.idempotency_key
        paths = [Path(r.path) for r in results]
        received = sorted({name for r in results for name in r.exported_to})
        notes: dict[str, Any] = dict(withdrawal.notes)
    description = f"AI results withdrawn ({reason}) by {requested_by}" + (f": {comment}" if comment else "")
    withdrawn: list[pydicom.Dataset] | None = None
    for name in received:
        if (notes.get(name) or {}).get("delivered_at"):
            continue
        destination = settings.destinations.get(name)
        if destination is None:
            notes[name] = {"error": f"destination {name!r} is no longer configured", "delivered_at": None}
            _save(db, job_id, study_uid, name, notes)
            continue
        title_reason: Reason = reason if destination.patient_safety_rejection else "quality"
        title = REJECTION_TITLES[title_reason]
        _, sop_uid = note_uids(settings.uid_root, job_key, title)
        path = paths[0].parent / f"ko-{sop_uid}.dcm"
        note = {"sop_instance_uid": sop_uid, "title": f'({title.value}, {title.scheme_designator}, "{title.meaning}")'}
        try:
            if not path.exists():
                withdrawn = withdrawn or [pydicom.dcmread(p) for p in paths]
                build_rejection_note(
                    withdrawn, reason=title_reason, uid_root=settings.uid_root, job_key=job_key, description=description
                ).save_as(path, enforce_file_format=True)
            validate_object(path, **validators(settings))
            deliver([path], destination, calling_ae=settings.listener.ae_title)
        except (GateRejected, ExportFailed, OSError) as exc:  # OSError: the results' files are gone
            logger.warning("job %s: rejection note for %s not delivered: %s", job_id, name, exc)
            notes[name] = {**note, "delivered_at": None, "error": str(exc)}
        else:
            notes[name] = {**note, "delivered_at": utcnow().isoformat(), "error": None}
        _save(db, job_id, study_uid, name, notes)
    with db.session() as session:
        saved = withdrawal_of(session, job_id)
        assert saved is not None
        session.expunge(saved)
    return saved


def _save(db: Database, job_id: str, study_uid: str, name: str, notes: dict[str, Any]) -> None:
    """Record one destination's note as it happened (an event on the study's path as well)."""
    outcome = notes[name]
    with db.session() as session:
        save_notes(session, job_id, notes)
        kind = "rejection-note-delivered" if outcome.get("delivered_at") else "rejection-note-failed"
        add_event(session, study_uid, "registry", kind, job_id=job_id, destination=name, error=outcome.get("error"))
