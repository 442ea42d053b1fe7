"""What the router and the worker read of the catalog: the deployments that run, as :class:`DeploymentSpec`.

A spec is one row of each of deployment, rule, version and model joined, with the rule compiled
(compiled rules are cached by their definition, so reading the running deployments for every study
costs one query and no parsing). The router reads the running ones afresh for every study; the
worker reads its job's deployment when it runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hounsfield.catalog.rules import compiled_rule
from hounsfield.contracts.rules import Rule
from hounsfield.db.catalog import Model, ModelVersion
from hounsfield.db.deployments import ACTIVE_STAGES, Deployment, RoutingRule, Stage

__all__ = ["DeploymentSpec", "get_spec", "load_deployments"]


@dataclass(frozen=True)
class DeploymentSpec:
    """A deployment as the router evaluates it and the worker runs it."""

    name: str
    model_name: str
    model_version: str
    display_name: str
    """How results name the model (the catalog's display name when the version is registered)."""
    device_uid: str | None
    """The catalog version's Device UID (Contributing Equipment); None for an unregistered model."""
    stage: Stage
    rule_name: str
    rule: Rule
    destinations: tuple[str, ...]
    queue: str
    app: str
    model_path: Path
    manufacturer: str
    timeout_s: float
    runtime: str = "in-process"
    map_path: Path | None = None
    application_root: Path | None = None
    image: str | None = None
    """The deployment's image, else its catalog version's (pinned by digest); None when neither names one."""
    network: bool = False
    """Whether the container runtime gives the application a network."""
    map_manifest: dict[str, Any] | None = None
    """The catalog version's ``{"app": ..., "pkg": ...}`` (None for an unregistered model)."""

    @property
    def mode(self) -> str:
        """``shadow``, ``research`` or ``clinical`` (a stage that does not run reads as shadow)."""
        return self.stage.value if self.stage in ACTIVE_STAGES else Stage.SHADOW.value

    @property
    def runs(self) -> bool:
        return self.stage in ACTIVE_STAGES


def _spec(row: Deployment, rule: RoutingRule, version: ModelVersion | None, model: Model | None) -> DeploymentSpec:
    return DeploymentSpec(
        name=row.name,
        model_name=row.model_name,
        model_version=row.model_version,
        display_name=model.display_name if model is not None else row.model_name,
        device_uid=version.device_uid if version is not None else None,
        stage=row.stage,
        rule_name=row.rule_name,
        rule=compiled_rule(rule.definition),
        destinations=tuple(row.destinations),
        queue=row.queue,
        app=row.app,
        model_path=Path(row.model_path),
        manufacturer=row.manufacturer,
        timeout_s=row.timeout_s,
        runtime=row.runtime,
        map_path=Path(row.map_path) if row.map_path else None,
        application_root=Path(row.application_root) if row.application_root else None,
        image=row.image or (version.image if version is not None else None),
        network=row.network,
        map_manifest=version.map_manifest if version is not None else None,
    )


def load_deployments(
    session: Session, *, names: Iterable[str] | None = None, stages: Sequence[Stage] | None = ACTIVE_STAGES
) -> list[DeploymentSpec]:
    """Deployments by name order: the running ones by default, or ``names`` (any stage unless ``stages``)."""
    statement = (
        select(Deployment, RoutingRule, ModelVersion, Model)
        .join(RoutingRule, RoutingRule.name == Deployment.rule_name)
        .outerjoin(ModelVersion, ModelVersion.id == Deployment.model_version_id)
        .outerjoin(Model, Model.name == ModelVersion.model_name)
        .order_by(Deployment.name)
    )
    if names is not None:
        statement = statement.where(Deployment.name.in_(list(names)))
    if stages is not None:
        statement = statement.where(Deployment.stage.in_(list(stages)))
    return [_spec(*row) for row in session.execute(statement).all()]


def get_spec(session: Session, name: str) -> DeploymentSpec | None:
    """One deployment, whatever its stage; None when there is none by that name."""
    found = load_deployments(session, names=[name], stages=None)
    return found[0] if found else None
