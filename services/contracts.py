"""Messages passed between rooms, as typed data."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["CompletionTrigger", "StudyComplete"]

CompletionTrigger = Literal["association-release", "quiet-period", "manual"]


class StudyComplete(BaseModel):
    """Listener -> router: every instance of a study that will come has come."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study_instance_uid: str
    trigger: CompletionTrigger
    calling_ae: str = ""
