"""Routing rules and deployments as data, with every lifecycle transition kept.

A deployment binds a model version to one routing rule, destinations and a queue. Its ``stage`` is
its place in the lifecycle (``draft -> validated -> shadow | research -> clinical -> retired``); the
router runs the deployments in ``shadow``, ``research`` and ``clinical``. At most one clinical
deployment of a model may sit on one rule: a partial unique index refuses a second one, whoever
writes it. ``deployment_transitions`` keeps who moved which deployment, when, why, and from where.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hounsfield.db.models import Base, utcnow

__all__ = ["ACTIVE_STAGES", "Deployment", "DeploymentTransition", "RoutingRule", "Stage"]


class Stage(enum.StrEnum):
    """Where a deployment is in its lifecycle."""

    DRAFT = "draft"
    """Made, not checked; never runs."""
    VALIDATED = "validated"
    """Its checks passed (rule, destinations, version, runtime); never runs."""
    SHADOW = "shadow"
    """Runs; results are kept and never sent to a clinical destination."""
    RESEARCH = "research"
    """Runs; results marked not for diagnostic use."""
    CLINICAL = "clinical"
    """Runs; results go to clinical destinations."""
    RETIRED = "retired"
    """Stopped for good (a rollback may bring back a clinical deployment it replaced)."""


ACTIVE_STAGES: tuple[Stage, ...] = (Stage.SHADOW, Stage.RESEARCH, Stage.CLINICAL)
"""The stages the router runs."""


def _stage_enum() -> Enum:
    return Enum(Stage, native_enum=False, values_callable=lambda members: [m.value for m in members], length=16)


class RoutingRule(Base):
    """A named, typed routing rule (:data:`hounsfield.contracts.rules.Rule` as JSON)."""

    __tablename__ = "routing_rules"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    definition: Mapped[dict[str, Any]] = mapped_column()
    source: Mapped[str] = mapped_column(String(16), default="api")
    """``api`` (made through the API or CLI) or ``config`` (declared in the YAML configuration)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128), default="")


class Deployment(Base):
    """One model version bound to a rule, destinations, a queue and a lifecycle stage."""

    __tablename__ = "deployments"
    __table_args__ = (
        Index(
            "uq_deployments_one_clinical_per_model_and_rule",
            "model_name",
            "rule_name",
            unique=True,
            sqlite_where=text("stage = 'clinical'"),
            postgresql_where=text("stage = 'clinical'"),
        ),
    )

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), index=True)
    """The catalog version it runs; None for a configuration-declared deployment of an unregistered model."""
    rule_name: Mapped[str] = mapped_column(ForeignKey("routing_rules.name"), index=True)
    destinations: Mapped[list[Any]] = mapped_column(default=list)
    queue: Mapped[str] = mapped_column(String(16), default="routine")
    app: Mapped[str] = mapped_column(String(256))
    """The App SDK Application class the worker runs, ``package.module:ClassName``."""
    model_path: Mapped[str] = mapped_column(Text)
    manufacturer: Mapped[str] = mapped_column(String(64), default="Hounsfield")
    timeout_s: Mapped[float] = mapped_column(default=600.0)
    runtime: Mapped[str] = mapped_column(String(16), default="in-process")
    """``in-process`` (``app`` in a fork of the warm worker) or ``subprocess`` (the MAP's command)."""
    map_path: Mapped[str | None] = mapped_column(Text)
    """The MAP's folder on the workers (``app.json``, ``pkg.json``): the subprocess runtime runs it."""
    application_root: Mapped[str | None] = mapped_column(Text)
    image: Mapped[str | None] = mapped_column(String(512))
    network: Mapped[bool] = mapped_column(default=False)
    """Whether the container runtime gives the application a network."""
    """The MAP's container image: a MAP declaring a GPU or large memory runs from it as a Kubernetes Job."""
    stage: Mapped[Stage] = mapped_column(_stage_enum(), default=Stage.DRAFT, index=True)
    stage_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    stage_changed_by: Mapped[str] = mapped_column(String(128), default="")
    source: Mapped[str] = mapped_column(String(16), default="api")
    """``api`` or ``config``: a configuration-declared one follows its YAML definition at every start."""
    declared_mode: Mapped[str | None] = mapped_column(String(16))
    """The YAML ``mode`` last applied (config deployments): a changed mode is applied, an unchanged one not."""
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    transitions: Mapped[list[DeploymentTransition]] = relationship(
        back_populates="deployment", order_by="DeploymentTransition.id", cascade="all, delete-orphan"
    )


class DeploymentTransition(Base):
    """One lifecycle step of a deployment: from, to, who, when, why (append-only)."""

    __tablename__ = "deployment_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_name: Mapped[str] = mapped_column(ForeignKey("deployments.name"), index=True)
    from_stage: Mapped[Stage | None] = mapped_column(_stage_enum())
    """None for the deployment's creation."""
    to_stage: Mapped[Stage] = mapped_column(_stage_enum())
    action: Mapped[str] = mapped_column(String(32))
    """create, validate, promote, rollback, retire, restore (brought back by a rollback), superseded, config."""
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """E.g. the validation checks, or which deployment superseded or restored this one."""
    at: Mapped[datetime] = mapped_column(default=utcnow)
    deployment: Mapped[Deployment] = relationship(back_populates="transitions")
