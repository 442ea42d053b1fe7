"""API routes of radiologists' feedback: a verdict on a result, the feedback given, and what each model
version earned per use case.

Giving a verdict needs a radiologist (or an administrator); reading feedback, any reading role. Reads
are logged without their content (:mod:`hounsfield.registry.read_log`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from hounsfield.access import READERS
from hounsfield.db.feedback import FeedbackKind, feedback_rows, find_result
from hounsfield.errors import NotFound
from hounsfield.feedback import REJECTION_REASONS, FeedbackSummary, give_feedback, summarise
from hounsfield.registry.auth import require
from hounsfield.registry.deps import Limit, Offset, Radiologist, SessionDep
from hounsfield.registry.read_log import log_read
from hounsfield.registry.schemas import FeedbackPublic, FeedbackRequest

__all__ = ["router"]

router = APIRouter(tags=["feedback"])
_readers = [Depends(require(*READERS))]


@router.post(
    "/results/{reference}/feedback",
    response_model=FeedbackPublic,
    status_code=201,
    responses={404: {"description": "no such result"}, 422: {"description": "a reason or comment missing or wrong"}},
)
def post_feedback(reference: str, request: FeedbackRequest, caller: Radiologist, http: Request) -> FeedbackPublic:
    """Accept, reject (with a reason) or comment on a result, named by its id or SOP Instance UID.

    Every verdict is kept and audited; the summary counts each radiologist's latest per result.
    """
    row = give_feedback(
        http.app.state.settings,
        http.app.state.db,
        reference,
        verdict=request.verdict,
        reason=request.reason,
        comment=request.comment,
        principal=caller,
    )
    return FeedbackPublic.model_validate(row)


@router.get("/results/{reference}/feedback", response_model=list[FeedbackPublic], dependencies=_readers)
def get_result_feedback(
    reference: str, session: SessionDep, http: Request, limit: Limit = 100, offset: Offset = 0
) -> list[FeedbackPublic]:
    """The feedback on one result (verdicts, comments, corrections), newest first."""
    result = find_result(session, reference)
    if result is None:
        raise NotFound("no result with this id or SOP Instance UID")
    rows = feedback_rows(session, result_id=result.id, limit=limit, offset=offset)
    found = [FeedbackPublic.model_validate(f) for f in rows]
    log_read(http, len(found))
    return found


@router.get("/feedback", response_model=list[FeedbackPublic], dependencies=_readers)
def list_feedback(
    session: SessionDep,
    http: Request,
    model: str | None = None,
    version: str | None = None,
    kind: FeedbackKind | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[FeedbackPublic]:
    """Feedback, newest first, narrowed to a model (and version) or a kind (``reject`` lists the
    rejections with their reasons and comments)."""
    rows = feedback_rows(session, model_name=model, model_version=version, kind=kind, limit=limit, offset=offset)
    found = [FeedbackPublic.model_validate(f) for f in rows]
    log_read(http, len(found))
    return found


@router.get("/feedback/summary", response_model=list[FeedbackSummary], dependencies=_readers)
def feedback_summary(
    http: Request, model: str | None = None, version: str | None = None, use_case: str | None = None
) -> list[FeedbackSummary]:
    """Per use case, model and version: agreement rate, rejections by reason, mean Dice of corrections."""
    found = summarise(http.app.state.db, model_name=model, model_version=version, use_case=use_case)
    log_read(http, len(found))
    return found


@router.get("/feedback/reasons", dependencies=_readers)
def rejection_reasons() -> dict[str, str]:
    """The reasons a rejection may give, with what each means."""
    return dict(REJECTION_REASONS)
