"""Request and response shapes of routing rules and deployments (unknown request fields refused)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hounsfield.db.deployments import Stage
from hounsfield.registry.catalog_schemas import Slug, UtcDatetime, Version
from hounsfield.router.rules import Rule

__all__ = [
    "DeploymentCreate",
    "DeploymentPublic",
    "LifecycleRequest",
    "PromoteRequest",
    "RulePublic",
    "RulePut",
    "TransitionPublic",
    "ValidationCheck",
]

DeploymentName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
Reason = Annotated[str, Field(min_length=1, max_length=2000, description="Why: kept with the transition.")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    model_path: str = Field(min_length=1, max_length=4096)
    """The model file or folder as the workers see it."""
    manufacturer: str = Field("Hounsfield", min_length=1, max_length=64)
    timeout_s: float | None = Field(None, gt=0, le=86400)
    runtime: Literal["in-process", "subprocess"] = "in-process"
    """``in-process``: ``app`` imported once per worker, each job in a fork of it. ``subprocess``: the
    MAP's ``app.json`` command as its own process, for applications that must be isolated."""
    map_path: str | None = Field(None, min_length=1, max_length=4096)
    """The MAP's folder on the workers (``app.json`` and ``pkg.json``); needed by the subprocess runtime."""
    application_root: str | None = Field(None, min_length=1, max_length=4096)
    """Where the MAP's ``applicationRoot`` is on the workers (default: ``map_path``)."""
    image: str | None = Field(None, min_length=1, max_length=512, pattern=r"^[^\s]+$")
    """The MAP's container image: a version declaring a GPU or large memory runs from it as a Kubernetes
    Job when the workers run in a cluster."""

    @model_validator(mode="after")
    def _runtime_needs(self) -> DeploymentCreate:
        if self.runtime == "subprocess" and self.map_path is None:
            raise ValueError("runtime subprocess needs map_path (the folder with app.json and pkg.json)")
        if self.runtime == "in-process" and self.app is None:
            raise ValueError("runtime in-process needs app (the App SDK Application class, module:Class)")
        return self

    """Default: the version's ``app.json#timeout``, else 600 s."""
    description: str = Field("", max_length=2000)


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
