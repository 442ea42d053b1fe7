"""What the router would do with a study, and why, without doing it (``POST /rules/dry-run``).

The same evaluation as :class:`~hounsfield.router.routing.Router` (each deployment's typed rule on
each series of the study), with every matcher's verdict kept as a tree, and nothing written: no
completion, no job, no event. Facts come from a stored study's index rows or are given directly
(a study's tags, before it was ever sent); an ad-hoc rule may stand in for the deployments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hounsfield.catalog.read_model import DeploymentSpec
from hounsfield.contracts.rules import Match, Rule, SeriesFacts
from hounsfield.db import Session
from hounsfield.db.index import series_facts_rows

__all__ = ["DeploymentVerdict", "dry_run", "match_tree", "study_facts"]


def study_facts(session: Session, study_uid: str) -> list[SeriesFacts]:
    """The routing facts of a stored study's series (empty when the study is unknown)."""
    return [
        SeriesFacts(
            series_instance_uid=series.series_instance_uid,
            instance_count=count,
            calling_ae=series.calling_ae,
            called_ae=series.called_ae,
            tags=series.tags,
        )
        for series, count in series_facts_rows(session, study_uid)
    ]


def match_tree(match: Match) -> dict[str, Any]:
    """A verdict as JSON: whether it matched, why, and its children's verdicts."""
    return {"matched": match.matched, "reason": match.reason, "children": [match_tree(c) for c in match.children]}


@dataclass(frozen=True)
class DeploymentVerdict:
    """One deployment (or the ad-hoc rule) against every series."""

    deployment: str
    model: str
    stage: str
    """The deployment's stage (only shadow, research and clinical ones run); empty for an ad-hoc rule."""
    verdicts: dict[str, Match]
    """Per series: the rule's verdict."""

    @property
    def series_instance_uids(self) -> list[str]:
        """The series it would take (what a job would get)."""
        return [uid for uid, match in self.verdicts.items() if match.matched]


def dry_run(
    deployments: Sequence[DeploymentSpec], facts: Sequence[SeriesFacts], rule: Rule | None = None
) -> list[DeploymentVerdict]:
    """Every deployment's verdict on ``facts`` (or only ``rule``'s, as deployment ``(ad hoc)``)."""
    if rule is not None:
        return [DeploymentVerdict("(ad hoc)", "", "", {f.series_instance_uid: rule.evaluate(f) for f in facts})]
    verdicts = []
    for deployment in deployments:
        model = f"{deployment.model_name} {deployment.model_version}"
        per_series = {f.series_instance_uid: deployment.rule.evaluate(f) for f in facts}
        verdicts.append(DeploymentVerdict(deployment.name, model, deployment.stage.value, per_series))
    return verdicts
