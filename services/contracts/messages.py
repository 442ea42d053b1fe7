"""Messages passed between rooms, as typed data."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["CompletionTrigger", "StudyComplete"]

CompletionTrigger = Literal["association-release", "quiet-period", "source-count", "retrieve", "manual"]
"""Why a study was declared complete: its association was released; nothing arrived for the quiet
period; the index holds as many instances as the source PACS reports (C-FIND
NumberOfStudyRelatedInstances); a retrieve that Hounsfield started finished (a C-GET, whatever its
outcome; a C-MOVE, once what it sent is indexed and the study holds the source's count); or by hand."""


class StudyComplete(BaseModel):
    """Listener -> router: every instance of a study that will come has come."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study_instance_uid: str
    trigger: CompletionTrigger
    calling_ae: str = ""
    at: datetime | None = None
    """When the trigger fired (UTC); none: not recorded (a study completed by hand)."""
