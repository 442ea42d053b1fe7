"""The model catalog's tables: use cases (the radiology AI taxonomy), models and their versions.

Importing this module registers the tables on ``Base.metadata``, so ``Database.create_schema``
creates them. Deployments, lifecycle and routing rules live elsewhere; they refer to
``model_versions.id``.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hounsfield.db.models import Base, utcnow

__all__ = [
    "CapacityTier",
    "Category",
    "LatencyScope",
    "Model",
    "ModelVersion",
    "RegulatoryStatus",
    "UseCase",
    "Workload",
    "model_use_cases",
]


class Category(enum.StrEnum):
    """Top level of the taxonomy (MONAI deployment report)."""

    QUALITY_ASSURANCE = "quality-assurance"
    AI_DIAGNOSTICS = "ai-diagnostics"
    RESEARCH_DEVELOPMENT = "research-development"


class Workload(enum.StrEnum):
    """How a use case's computation is started and how its result comes back."""

    SYNCHRONOUS = "synchronous"
    """Start sync, result sync."""
    ASYNC_RESULT = "async-result"
    """Start sync, result by callback."""
    ASYNCHRONOUS = "asynchronous"
    """Enqueued."""
    BATCH = "batch"
    """A parent job fanning out child jobs."""
    STREAMING = "streaming"


class CapacityTier(enum.StrEnum):
    """Which compute a use case draws on: reserved (QA), shared (emergency + scheduled), on-demand (research)."""

    RESERVED = "reserved"
    SHARED = "shared"
    ON_DEMAND = "on-demand"


class LatencyScope(enum.StrEnum):
    """What a latency objective is measured over."""

    STUDY = "study"
    INSTANCE = "instance"
    """Per slice (e.g. metadata QA: < 500 ms per slice)."""


class RegulatoryStatus(enum.StrEnum):
    RESEARCH_ONLY = "research-only"
    CE_MARKED = "ce-marked"
    FDA_CLEARED = "fda-cleared"
    OTHER = "other"


def _enum(cls: type[enum.StrEnum]) -> Enum:
    # Stored as the value (a string column with a CHECK), not the member name: readable in SQL.
    return Enum(cls, native_enum=False, values_callable=lambda members: [m.value for m in members], length=32)


model_use_cases = Table(
    "model_use_cases",
    Base.metadata,
    Column("model_name", ForeignKey("models.name", ondelete="CASCADE"), primary_key=True),
    Column("use_case_key", ForeignKey("use_cases.key"), primary_key=True, index=True),
)
"""Which use cases a model is filed under (at least one, enforced by the catalog)."""


class UseCase(Base):
    """A clinical use case of the taxonomy; built-in rows come from ``services/catalog/taxonomy.yaml``."""

    __tablename__ = "use_cases"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    category: Mapped[Category] = mapped_column(_enum(Category))
    workload: Mapped[Workload] = mapped_column(_enum(Workload))
    latency_objective_s: Mapped[float | None] = mapped_column(Float)
    """None where the guideline states a throughput or reliability objective rather than a latency."""
    latency_per: Mapped[LatencyScope] = mapped_column(_enum(LatencyScope), default=LatencyScope.STUDY)
    objective: Mapped[str] = mapped_column(Text, default="")
    """The objective as the guideline words it (throughput and failure rates included)."""
    capacity_tier: Mapped[CapacityTier] = mapped_column(_enum(CapacityTier))
    consumer: Mapped[str] = mapped_column(Text, default="")
    typical_output: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    """Shipped with Hounsfield (seeded) rather than added by an administrator."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    models: Mapped[list[Model]] = relationship(
        secondary=model_use_cases, back_populates="use_cases", order_by="Model.name"
    )


class Model(Base):
    """An AI model as the hospital governs it; what runs is one of its versions."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    intended_use: Mapped[str] = mapped_column(Text)
    modality: Mapped[str] = mapped_column(String(16))
    """DICOM Modality (0008,0060) of the studies it reads, e.g. CT."""
    body_part: Mapped[str] = mapped_column(String(64), default="")
    """DICOM Body Part Examined (0018,0015) terms, e.g. HEAD."""
    regulatory_status: Mapped[RegulatoryStatus] = mapped_column(_enum(RegulatoryStatus))
    owner: Mapped[str] = mapped_column(String(256))
    documentation_urls: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    use_cases: Mapped[list[UseCase]] = relationship(
        secondary=model_use_cases, back_populates="models", order_by="UseCase.key"
    )
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.id", cascade="all, delete-orphan"
    )


class ModelVersion(Base):
    """One version of a model, registered from a MONAI Application Package; immutable once published."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_name", "version", name="uq_model_versions_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    """A semantic version (semver.org 2.0.0)."""
    published: Mapped[bool] = mapped_column(Boolean, default=True)
    published_at: Mapped[datetime | None]
    map_manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """``{"app": app.json, "pkg": pkg.json}`` as registered (the content digest covers them)."""
    content_digest: Mapped[str] = mapped_column(String(71))
    """``sha256:<hex>`` over the canonical manifests and the model files' digest."""
    models_digest: Mapped[str | None] = mapped_column(String(71))
    """``sha256:<hex>`` over the files under the MAP's model root, when the caller gave it."""
    device_uid: Mapped[str] = mapped_column(String(64), unique=True)
    """The DICOM Device UID of this version, written into every result's Contributing Equipment."""
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    resources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timeout_s: Mapped[int | None] = mapped_column(Integer)
    """``app.json#timeout``; None when the MAP sets none (0)."""
    image: Mapped[str | None] = mapped_column(String(512))
    """The MAP's OCI image pinned by digest (``name@sha256:<hex>``), when it was registered with one."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    model: Mapped[Model] = relationship(back_populates="versions")
