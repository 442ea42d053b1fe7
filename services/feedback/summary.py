"""What each model version earned from radiologists, per use case."""

from __future__ import annotations

from pydantic import BaseModel

from hounsfield.db import Database
from hounsfield.db.feedback import feedback_tallies

__all__ = ["FeedbackSummary", "summarise"]


class FeedbackSummary(BaseModel):
    """One model version under one use case.

    ``agreement_rate`` is accepted / (accepted + rejected), counting the latest verdict of each
    radiologist on each result (None before any verdict). ``mean_correction_dice`` is the mean of the
    corrections' Dice (each the mean over its segments), over the corrections that could be measured.
    """

    use_case: str
    model_name: str
    model_version: str
    accepted: int
    rejected: int
    agreement_rate: float | None
    rejection_reasons: dict[str, int]
    comments: int
    corrections: int
    corrections_measured: int
    mean_correction_dice: float | None


def summarise(
    db: Database, *, model_name: str | None = None, model_version: str | None = None, use_case: str | None = None
) -> list[FeedbackSummary]:
    """Per use case, model and version (narrowed by any of them), sorted by use case, model, version."""
    with db.session() as session:
        tallies = feedback_tallies(session, model_name=model_name, model_version=model_version, use_case=use_case)
    summaries = []
    for t in tallies:
        verdicts = t.accepted + t.rejected
        summaries.append(
            FeedbackSummary(
                use_case=t.use_case,
                model_name=t.model_name,
                model_version=t.model_version,
                accepted=t.accepted,
                rejected=t.rejected,
                agreement_rate=round(t.accepted / verdicts, 4) if verdicts else None,
                rejection_reasons=dict(sorted(t.rejection_reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
                comments=t.comments,
                corrections=t.corrections,
                corrections_measured=t.corrections_measured,
                mean_correction_dice=round(t.dice_sum / t.corrections_measured, 4) if t.corrections_measured else None,
            )
        )
    return summaries
