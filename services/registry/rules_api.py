"""``POST /rules/dry-run``: which deployments would run on a study, and why each rule matched or not."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.config import Settings
from services.db import Study
from services.registry.auth import READERS, require
from services.registry.deps import SessionDep
from services.router.dry_run import DeploymentVerdict, dry_run, match_tree, study_facts
from services.router.rules import INDEXED_TAGS, Rule, SeriesFacts

__all__ = ["router"]

router = APIRouter(prefix="/rules", tags=["rules"], dependencies=[Depends(require(*READERS))])

_UID = r"^[0-9]+(\.[0-9]+)*$"


class SeriesFactsIn(BaseModel):
    """One series as the router sees it: what a study not (yet) stored would bring."""

    model_config = ConfigDict(extra="forbid")

    series_instance_uid: str = Field(pattern=_UID, max_length=64)
    instance_count: int = Field(1, ge=0, le=1_000_000)
    calling_ae: str = Field("", max_length=16)
    called_ae: str = Field("", max_length=16)
    tags: dict[str, str] = Field(default_factory=dict, description=f"Among: {', '.join(INDEXED_TAGS)}.")

    @field_validator("tags")
    @classmethod
    def _indexed(cls, tags: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(tags) - set(INDEXED_TAGS))
        if unknown:
            raise ValueError(f"not indexed, so no rule can see them: {', '.join(unknown)}")
        return tags


class DryRunRequest(BaseModel):
    """A stored study, or the series of one; optionally a rule to try instead of the deployments."""

    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str | None = Field(None, pattern=_UID, max_length=64)
    series: list[SeriesFactsIn] | None = Field(None, min_length=1, max_length=1000)
    rule: Rule | None = None
    """Evaluated instead of every deployment's rule (nothing is saved)."""

    @model_validator(mode="after")
    def _one_source(self) -> DryRunRequest:
        if (self.study_instance_uid is None) == (self.series is None):
            raise ValueError("give either study_instance_uid (a stored study) or series (its facts), not both")
        return self


class Verdict(BaseModel):
    matched: bool
    reason: str
    children: list[Verdict] = Field(default_factory=list)


class SeriesVerdict(BaseModel):
    series_instance_uid: str
    matched: bool
    explanation: Verdict


class DeploymentDryRun(BaseModel):
    deployment: str
    model: str
    mode: str
    would_run: bool
    """A job would be made for the series that matched."""
    series: list[SeriesVerdict]


class DryRunAnswer(BaseModel):
    study_instance_uid: str | None
    series_count: int
    deployments: list[DeploymentDryRun]


def _answer(verdict: DeploymentVerdict) -> DeploymentDryRun:
    series = [
        SeriesVerdict(series_instance_uid=uid, matched=m.matched, explanation=Verdict.model_validate(match_tree(m)))
        for uid, m in verdict.verdicts.items()
    ]
    return DeploymentDryRun(
        deployment=verdict.deployment,
        model=verdict.model,
        mode=verdict.mode,
        would_run=bool(verdict.series_instance_uids),
        series=series,
    )


@router.post("/dry-run", response_model=DryRunAnswer, responses={404: {"description": "no such stored study"}})
def post_dry_run(body: DryRunRequest, request: Request, session: SessionDep) -> DryRunAnswer:
    """Evaluate the deployments' rules (or ``rule``) on a study's series; nothing is completed or queued."""
    settings: Settings = request.app.state.settings
    if body.study_instance_uid is not None:
        if session.get(Study, body.study_instance_uid) is None:
            raise HTTPException(404, detail="no stored study with this Study Instance UID")
        facts = study_facts(session, body.study_instance_uid)
    else:
        assert body.series is not None
        facts = [SeriesFacts(**item.model_dump()) for item in body.series]
    verdicts = dry_run(settings.deployments, facts, body.rule)
    return DryRunAnswer(
        study_instance_uid=body.study_instance_uid,
        series_count=len(facts),
        deployments=[_answer(v) for v in verdicts],
    )
