"""The catalog's shapes: use cases, models and versions, routing rules, deployments and their lifecycle.

Requests refuse unknown fields (``extra="forbid"``) so that a typo is refused with the field's name
instead of a silently ignored setting. Responses are built from the ORM rows by the catalog's
service functions; the registry answers with them as they are, and the CLI prints them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from hounsfield.catalog.manifests import SemVer
from hounsfield.contracts.rules import Rule
from hounsfield.db.catalog import CapacityTier, Category, LatencyScope, RegulatoryStatus, Workload
from hounsfield.db.deployments import Stage

__all__ = [
    "DeploymentCreate",
    "DeploymentPublic",
    "Digest",
    "ImageReference",
    "LifecycleRequest",
    "MeasuredLatency",
    "ModelCreate",
    "ModelPublic",
    "PromoteRequest",
    "RulePublic",
    "RulePut",
    "Slug",
    "Taxonomy",
    "TaxonomyCategory",
    "TransitionPublic",
    "UseCaseCreate",
    "UseCasePublic",
    "UseCaseVersion",
    "UtcDatetime",
    "ValidationCheck",
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

# The OCI distribution reference grammar (distribution/reference): an optional registry host[:port],
# lower-case path components, an optional tag, and the digest that pins it.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PINNED_IMAGE = re.compile(
    rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[\w][\w.-]{0,127})?@sha256:[0-9a-f]{64}$"
)


def _pinned_image(value: str) -> str:
    if _PINNED_IMAGE.match(value) is None:
        raise ValueError(
            f"{value!r} is not an OCI image reference pinned by digest: name@sha256:<64 hex digits>, "
            "e.g. registry.example.org/maps/ct-lesion-seg@sha256:... (`podman image inspect` gives the digest)"
        )
    return value


ImageReference = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_pinned_image)]
"""An OCI image reference pinned by its digest, ``[registry/]repository[:tag]@sha256:<64 hex>``."""


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
    """The shape of ``services/catalog/taxonomy.yaml``."""

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
    image: ImageReference | None = None
    """The MAP's container image, pinned by digest (``name@sha256:<hex>``), as ``hounsfield map publish``
    gives it. Part of what a published version keeps, but not of its content digest."""


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
    image: str | None
    """The MAP's image pinned by digest; deployments that name no image of their own run this one."""
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


# -- routing rules and deployments ------------------------------------------------------------------

DeploymentName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
Reason = Annotated[str, Field(min_length=1, max_length=2000, description="Why: kept with the transition.")]


class RulePut(_Request):
    """A routing rule to store under the path's name (made, or replaced)."""

    rule: Rule
    description: str = Field("", max_length=2000)


class RulePublic(BaseModel):
    name: str
    description: str
    rule: dict[str, Any]
    """The typed rule as stored (``kind`` discriminates each matcher)."""
    source: Literal["api", "config"]
    deployments: list[str]
    """Deployments bound to it, retired ones included."""
    created_at: UtcDatetime
    created_by: str
    updated_at: UtcDatetime
    updated_by: str


class DeploymentCreate(_Request):
    """A catalog model version bound to a stored rule, destinations and a queue; it starts as a draft."""

    name: DeploymentName
    model: Slug
    """The catalog model's name."""
    version: Version
    """A published version of that model."""
    rule: str = Field(min_length=1, max_length=64)
    """A stored routing rule's name (``PUT /rules/{name}``)."""
    destinations: list[str] = Field(default_factory=list, max_length=32)
    """Configured destinations (``destinations:`` in the configuration) its results go to."""
    queue: Literal["stat", "routine", "batch"] | None = None
    """Default: from the model's use cases, the most urgent (synchronous, async-result and streaming
    workloads -> stat; asynchronous -> routine; batch -> batch)."""
    app: str | None = Field(None, max_length=256, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """The App SDK Application class the in-process runtime runs, ``package.module:ClassName``."""
    model_path: str = Field("/opt/holoscan/models", min_length=1, max_length=4096)
    """The model file or folder as the workers see it (a container's models are in its image)."""
    manufacturer: str = Field("Hounsfield", min_length=1, max_length=64)
    timeout_s: float | None = Field(None, gt=0, le=86400)
    """Default: the version's ``app.json#timeout``, else 600 s."""
    runtime: Literal["in-process", "subprocess", "container"] = "in-process"
    """``in-process``: ``app`` imported once per worker, each job in a fork of it. ``subprocess``: the
    MAP's ``app.json`` command as its own process, for applications that must be isolated. ``container``:
    the MAP's ``image`` run by the workers with podman or docker."""
    map_path: str | None = Field(None, min_length=1, max_length=4096)
    """The MAP's folder on the workers (``app.json`` and ``pkg.json``); needed by the subprocess runtime."""
    application_root: str | None = Field(None, min_length=1, max_length=4096)
    """Where the MAP's ``applicationRoot`` is on the workers (default: ``map_path``)."""
    image: str | None = Field(None, min_length=1, max_length=512, pattern=r"^[^\s]+$")
    """The MAP's container image: run by the container runtime; a version declaring a GPU or large memory
    runs from it as a Kubernetes Job when the workers run in a cluster."""
    network: bool = False
    """Whether the container runtime gives the application a network (none otherwise)."""
    description: str = Field("", max_length=2000)

    @model_validator(mode="after")
    def _runtime_needs(self) -> DeploymentCreate:
        if self.runtime != "container" and "model_path" not in self.model_fields_set:
            raise ValueError(f"runtime {self.runtime} needs model_path (the model file or folder on the workers)")
        if self.runtime == "subprocess" and self.map_path is None:
            raise ValueError("runtime subprocess needs map_path (the folder with app.json and pkg.json)")
        if self.runtime == "in-process" and self.app is None:
            raise ValueError("runtime in-process needs app (the App SDK Application class, module:Class)")
        return self


class LifecycleRequest(_Request):
    reason: Reason


class PromoteRequest(_Request):
    reason: Reason
    to: Literal["validated", "shadow", "research", "clinical"] | None = None
    """The stage to move to; default the next one (draft -> validated -> shadow -> clinical; research -> shadow)."""
    supersede: bool = False
    """Promoting to clinical while another version of the model is clinical on the same rule: retire
    that one in the same step (a later rollback brings it back). Without it the promotion is refused."""


class ValidationCheck(BaseModel):
    check: str
    ok: bool
    detail: str


class TransitionPublic(BaseModel):
    from_stage: Stage | None
    to_stage: Stage
    action: str
    actor: str
    reason: str
    details: dict[str, Any]
    at: UtcDatetime


class DeploymentPublic(BaseModel):
    name: str
    model: str
    version: str
    catalog_version: bool
    """Bound to a registered catalog version (False: a configuration-declared, unregistered model)."""
    device_uid: str | None
    rule: str
    destinations: list[str]
    queue: str
    app: str
    model_path: str
    manufacturer: str
    timeout_s: float
    runtime: str
    map_path: str | None
    application_root: str | None
    image: str | None
    network: bool
    stage: Stage
    runs: bool
    """The router runs it (shadow, research or clinical)."""
    source: Literal["api", "config"]
    description: str
    created_at: UtcDatetime
    created_by: str
    stage_changed_at: UtcDatetime
    stage_changed_by: str
    transitions: list[TransitionPublic]
