"""Routing rules as data (``/rules``), and ``POST /rules/dry-run``: which deployments would run on a
study, and why each rule matched or not.

Reading needs any role; storing or deleting a rule needs an administrator (a rule decides which
patients' studies a model sees). Every write is audited with the rule before and after.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hounsfield.catalog import rules
from hounsfield.catalog.read_model import load_deployments
from hounsfield.catalog.schemas import RulePublic, RulePut
from hounsfield.contracts.rules import INDEXED_TAGS, Rule, SeriesFacts
from hounsfield.db.index import study_state
from hounsfield.errors import NotFound
from hounsfield.registry.deps import Admin, Reader, SessionDep
from hounsfield.router.dry_run import DeploymentVerdict, dry_run, match_tree, study_facts

__all__ = ["router"]

router = APIRouter(prefix="/rules", tags=["rules"])

RuleName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such rule."},
    409: {"description": "The rule is bound to deployments."},
}


_UID = r"^[0-9]+(\.[0-9]+)*$"


class SeriesFactsIn(BaseModel):
    """One series as the router sees it: what a study not (yet) stored would bring."""

    model_config = ConfigDict(extra="forbid")

    series_instance_uid: str = Field(pattern=_UID, max_length=64)
    instance_count: int = Field(1, ge=0, le=1_000_000)
    calling_ae: str = Field("", max_length=16)
    called_ae: str = Field("", max_length=16)
    tags: dict[str, Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, description=f"Among: {', '.join(INDEXED_TAGS)}."
    )

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
    deployments: list[str] | None = Field(None, min_length=1, max_length=100)
    """These deployments, whatever their stage (a draft before it is promoted); default the running ones."""

    @model_validator(mode="after")
    def _one_source(self) -> DryRunRequest:
        if (self.study_instance_uid is None) == (self.series is None):
            raise ValueError("give either study_instance_uid (a stored study) or series (its facts), not both")
        if self.rule is not None and self.deployments is not None:
            raise ValueError("give rule (an ad-hoc rule) or deployments (stored ones), not both")
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
    stage: str
    """Its lifecycle stage; only shadow, research and clinical deployments run."""
    would_run: bool
    """A job would be made for the series that matched (the rule matched one, and the stage runs)."""
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
        stage=verdict.stage,
        would_run=bool(verdict.series_instance_uids) and verdict.stage in ("", "shadow", "research", "clinical"),
        series=series,
    )


@router.get("", response_model=list[RulePublic])
def list_rules(session: SessionDep, _: Reader) -> list[RulePublic]:
    """Every stored routing rule, with the deployments bound to it."""
    return rules.list_rules(session)


@router.get("/{name}", response_model=RulePublic, responses=_ERRORS)
def get_rule(name: RuleName, session: SessionDep, _: Reader) -> RulePublic:
    return rules.get_rule(session, name)


@router.put("/{name}", response_model=RulePublic, responses={201: {"description": "Made."}, **_ERRORS})
def put_rule(name: RuleName, body: RulePut, response: Response, session: SessionDep, principal: Admin) -> RulePublic:
    """Make or replace a rule (201 when new). A replaced rule applies to the next study routed."""
    stored, outcome = rules.put_rule(session, principal, name, body.rule, body.description)
    if outcome == "created":
        response.status_code = status.HTTP_201_CREATED
    return stored


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_rule(name: RuleName, session: SessionDep, principal: Admin) -> None:
    """Delete a rule that no deployment is bound to."""
    rules.delete_rule(session, principal, name)


@router.post("/dry-run", response_model=DryRunAnswer, responses={404: {"description": "no such stored study"}})
def post_dry_run(body: DryRunRequest, session: SessionDep, _: Reader) -> DryRunAnswer:
    """Evaluate the deployments' rules (or ``rule``) on a study's series; nothing is completed or queued."""
    if body.deployments is not None:
        chosen = load_deployments(session, names=body.deployments, stages=None)
        missing = sorted(set(body.deployments) - {d.name for d in chosen})
        if missing:
            raise NotFound(f"no deployment named {', '.join(missing)}")
    else:
        chosen = load_deployments(session)
    if body.study_instance_uid is not None:
        if study_state(session, body.study_instance_uid) is None:
            raise NotFound("no stored study with this Study Instance UID")
        facts = study_facts(session, body.study_instance_uid)
    else:
        assert body.series is not None
        facts = [SeriesFacts(**item.model_dump()) for item in body.series]
    verdicts = dry_run(chosen, facts, body.rule)
    return DryRunAnswer(
        study_instance_uid=body.study_instance_uid,
        series_count=len(facts),
        deployments=[_answer(v) for v in verdicts],
    )
