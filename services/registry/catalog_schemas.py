"""Request and response shapes of the model catalog: use cases, models, versions.

Requests refuse unknown fields (``extra="forbid"``) so that a typo is a 422, not a silently ignored
setting. Responses are built from the ORM rows by :mod:`hounsfield.registry.catalog`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, field_validator

from hounsfield.db.catalog import CapacityTier, Category, LatencyScope, RegulatoryStatus, Workload
from hounsfield.registry.map_manifest import SemVer

__all__ = [
    "Digest",
    "MeasuredLatency",
    "ModelCreate",
    "ModelPublic",
    "Slug",
    "Taxonomy",
    "TaxonomyCategory",
    "UseCaseCreate",
    "UseCasePublic",
    "UseCaseVersion",
    "UtcDatetime",
    "Version",
    "VersionPublic",
    "VersionRegister",
    "as_utc",
]

Slug = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9]+(?:[-_.][a-z0-9]+)*$")]
"""Lower-case letters and digits, words joined by ``-``, ``_`` or ``.``: safe in a URL path."""


def _semver(value: str) -> str:
    return str(SemVer.parse(value))


Version = Annotated[str, Field(max_length=64), AfterValidator(_semver)]
"""A semantic version, semver.org 2.0.0 (``1.2.0``, ``2.0.0-rc.1``, ``1.0.0+build.5``)."""


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime."""
    # SQLite hands back naive datetimes (stored as UTC); answer with the zone either way.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
"""A point in time, always answered in UTC with its zone."""

Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold NUL: refuse it here (422) rather than fail in the database.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UseCaseCreate(_Request):
    """A use case of the taxonomy: shipped in ``taxonomy.yaml`` or added by an administrator."""

    key: Slug
    name: str = Field(min_length=1, max_length=128)
    category: Category
    workload: Workload
    latency_objective_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    """None where the objective is throughput or reliability rather than latency."""
    latency_per: LatencyScope = LatencyScope.STUDY
    objective: str = Field("", max_length=500)
    capacity_tier: CapacityTier
    consumer: str = Field("", max_length=500)
    typical_output: str = Field("", max_length=500)
    description: str = Field("", max_length=4000)


class UseCasePublic(_Public):
    key: str
    name: str
    category: Category
    workload: Workload
    latency_objective_s: float | None
    latency_per: LatencyScope
    objective: str
    capacity_tier: CapacityTier
    consumer: str
    typical_output: str
    description: str
    builtin: bool
    created_at: UtcDatetime


class TaxonomyCategory(_Request):
    key: Category
    name: str


class Taxonomy(_Request):
    """The shape of ``services/registry/taxonomy.yaml``."""

    categories: list[TaxonomyCategory]
    use_cases: list[UseCaseCreate]


class ModelCreate(_Request):
    """A model as the hospital governs it. It is filed under at least one use case."""

    name: Slug
    display_name: str = Field(min_length=1, max_length=256)
    description: str = Field("", max_length=8000)
    intended_use: str = Field(min_length=1, max_length=8000)
    use_cases: list[Slug] = Field(min_length=1, max_length=32)
    """Keys of the use cases the model serves (``GET /use-cases``)."""
    modality: str = Field(pattern=r"^[A-Z0-9 _]{1,16}$")
    """DICOM Modality (0008,0060), e.g. ``CT``."""
    body_part: str = Field("", max_length=64)
    """DICOM Body Part Examined (0018,0015), e.g. ``HEAD``."""
    regulatory_status: RegulatoryStatus
    owner: str = Field(min_length=1, max_length=256)
    documentation_urls: list[HttpUrl] = Field(default_factory=list, max_length=32)


class ModelPublic(BaseModel):
    name: str
    display_name: str
    description: str
    intended_use: str
    use_cases: list[str]
    modality: str
    body_part: str
    regulatory_status: RegulatoryStatus
    owner: str
    documentation_urls: list[str]
    created_at: UtcDatetime
    created_by: str
    versions: list[str]
    """Its versions, newest (highest semver precedence) first."""


class VersionRegister(_Request):
    """A model version from a MAP's manifests (``etc/holoscan/app.json`` and ``pkg.json``, either form)."""

    version: Version
    app: dict[str, Any]
    pkg: dict[str, Any]
    models_digest: Digest | None = None
    """``sha256:<hex>`` over the files under the MAP's model root, as ``load_map`` computes it."""
    content_digest: Digest | None = None
    """When given, checked against the digest the registry computes from the manifests and ``models_digest``."""
    published: bool = True
    """A published version is immutable; an unpublished draft may be registered again with other content."""


class VersionPublic(_Public):
    id: int
    model_name: str
    version: str
    published: bool
    published_at: UtcDatetime | None
    content_digest: str
    models_digest: str | None
    device_uid: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    resources: dict[str, Any]
    timeout_s: int | None
    map_manifest: dict[str, Any]
    created_at: UtcDatetime
    created_by: str


class MeasuredLatency(BaseModel):
    """How a version's finished jobs compare with the use case's latency objective."""

    done_jobs: int
    """Finished jobs of this version taken into account (the most recent ones, up to a window)."""
    median_run_s: float | None
    """Median of started -> finished."""
    median_turnaround_s: float | None
    """Median of study complete -> result: the completeness wait, queueing and the run."""
    median_latency_s: float | None
    """The turnaround in the objective's terms: per study, or per instance where the objective is per slice."""
    latency_objective_s: float | None
    latency_per: LatencyScope
    within_objective: bool | None
    """None when there is no objective or no finished job (``reason`` says which)."""
    reason: str | None = None


class UseCaseVersion(BaseModel):
    """A model version that serves a use case, how it is deployed, and how fast it has been."""

    model_name: str
    version: str
    published: bool
    device_uid: str
    deployments: list[dict[str, Any]]
    """Its deployments that are not retired: ``name``, ``stage``, ``rule``."""
    mode: str | None
    """The most clinical stage it runs in (``clinical`` > ``research`` > ``shadow``); None when it runs nowhere."""
    latency: MeasuredLatency
