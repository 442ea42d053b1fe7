"""A radiologist's verdict on one result: accept, reject (with a reason), or a comment.

Every verdict is kept (a radiologist may change their mind: the summary counts the latest of each
radiologist per result), audited with who gave it, and written on the study's path.
"""

from __future__ import annotations

from typing import Literal

from hounsfield.access import Principal, record
from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.db.feedback import Feedback, FeedbackKind, add_feedback, find_result
from hounsfield.db.index import add_event
from hounsfield.errors import Invalid, NotFound

__all__ = ["REJECTION_REASONS", "Verdict", "give_feedback"]

Verdict = Literal["accept", "reject", "comment"]

REJECTION_REASONS: dict[str, str] = {
    "false-positive": "marks something that is not there",
    "false-negative": "misses a finding",
    "boundary": "a finding's outline or extent is wrong",
    "measurement": "a measurement is wrong",
    "wrong-anatomy": "the finding is placed in the wrong organ or region",
    "image-quality": "the images were not fit for the model (artefact, protocol, coverage)",
    "other": "anything else (say what in the comment)",
}
"""Why a result may be rejected: the reasons the summary counts, with what each means."""


def give_feedback(
    settings: Settings,
    db: Database,
    reference: str,
    *,
    verdict: Verdict,
    principal: Principal,
    reason: str | None = None,
    comment: str | None = None,
) -> Feedback:
    """Record ``principal``'s verdict on the result ``reference`` (its id or SOP Instance UID).

    A rejection needs a reason of :data:`REJECTION_REASONS` (``other`` also a comment); a comment needs
    its text; a reason on anything but a rejection is refused. Raises :class:`~hounsfield.errors.NotFound`
    and :class:`~hounsfield.errors.Invalid`.
    """
    comment = comment.strip() if comment else None
    limit = settings.feedback.max_comment_chars
    if comment is not None and len(comment) > limit:
        raise Invalid("comment", f"at most {limit} characters (feedback.max_comment_chars), not {len(comment)}")
    if verdict == "reject":
        if reason not in REJECTION_REASONS:
            raise Invalid("reason", f"a rejection needs a reason, one of: {', '.join(REJECTION_REASONS)}")
        if reason == "other" and not comment:
            raise Invalid("comment", "a rejection for an 'other' reason needs a comment saying what")
    elif reason is not None:
        raise Invalid(
            "reason", f"only a rejection has a reason (this is {'an' if verdict == 'accept' else 'a'} {verdict})"
        )
    if verdict == "comment" and not comment:
        raise Invalid("comment", "a comment needs its text")
    with db.session() as session:
        result = find_result(session, reference)
        if result is None:
            raise NotFound("no result with this id or SOP Instance UID")
        row = add_feedback(
            session,
            result,
            kind=FeedbackKind(verdict).value,
            reason=reason,
            comment=comment,
            given_by=principal.subject,
        )
        after = {"result_id": result.id, "verdict": verdict, "reason": reason, "comment": comment}
        after |= {"model_name": row.model_name, "model_version": row.model_version}
        record(session, principal, f"result.{verdict}", "result", str(result.id), after=after)
        study_uid = result.job.study_instance_uid
        add_event(
            session,
            study_uid,
            "registry",
            "feedback",
            job_id=row.job_id,
            result_id=result.id,
            verdict=verdict,
            reason=reason,
        )  # the comment stays in the feedback row and the audit log
        session.flush()
        session.expunge(row)
    return row
