"""The model catalog: the use-case taxonomy, models filed under it, and their versions from MAPs.

Framework-free service functions over an SQLAlchemy session (the API in
:mod:`hounsfield.registry.catalog_api` is a thin adapter). Failures are :class:`CatalogError`
subclasses that say what is wrong; the API maps them to 404, 409 and 422.

Versions are immutable once published: registering the same model and version again with the same
content digest changes nothing; with another digest it is refused (:class:`Conflict`).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Literal

import yaml
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from hounsfield.db.catalog import Category, LatencyScope, Model, ModelVersion, UseCase
from hounsfield.db.deployments import ACTIVE_STAGES, Deployment, Stage
from hounsfield.db.models import Instance, Job, JobState, utcnow
from hounsfield.registry.catalog_schemas import (
    MeasuredLatency,
    ModelCreate,
    ModelPublic,
    Taxonomy,
    UseCaseCreate,
    UseCasePublic,
    UseCaseVersion,
    VersionPublic,
    VersionRegister,
    as_utc,
)
from hounsfield.registry.map_manifest import SemVer, content_digest, parse_manifests

__all__ = [
    "LATENCY_WINDOW",
    "CatalogError",
    "Conflict",
    "Invalid",
    "NotFound",
    "Registration",
    "create_model",
    "create_use_case",
    "device_uid",
    "get_model",
    "get_use_case",
    "get_version",
    "list_models",
    "list_use_cases",
    "list_versions",
    "load_taxonomy",
    "measured_latency",
    "model_public",
    "register_version",
    "seed_taxonomy",
    "use_case_versions",
]

LATENCY_WINDOW = 500
"""How many of a version's most recent finished jobs its measured latency is taken over."""

_UID_ROOT = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*\.$")


class CatalogError(Exception):
    """Something the catalog refuses, with the reason."""


class NotFound(CatalogError):
    """No such use case, model or version."""


class Conflict(CatalogError):
    """The request contradicts what is stored (a name taken, a published version with other content)."""


class Invalid(CatalogError):
    """A field of the request is invalid in a way only the catalog can tell (e.g. an unknown use case)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


# -- taxonomy -------------------------------------------------------------------------------------


def load_taxonomy(text: str | None = None) -> Taxonomy:
    """The taxonomy shipped in ``services/registry/taxonomy.yaml`` (or ``text``), validated."""
    if text is None:
        text = resources.files("hounsfield.registry").joinpath("taxonomy.yaml").read_text(encoding="utf-8")
    taxonomy = Taxonomy.model_validate(yaml.safe_load(text))
    declared = {c.key for c in taxonomy.categories}
    if declared != set(Category):
        raise ValueError(f"taxonomy categories must be exactly {sorted(Category)}; found {sorted(declared)}")
    keys = [u.key for u in taxonomy.use_cases]
    if len(keys) != len(set(keys)):
        raise ValueError("taxonomy: a use-case key appears twice")
    return taxonomy


def seed_taxonomy(session: Session, taxonomy: Taxonomy | None = None) -> int:
    """Add the built-in use cases that are missing; returns how many were added.

    Idempotent: a use case already in the table is left as it is (an administrator may have changed
    it), and use cases administrators added are never touched.
    """
    taxonomy = taxonomy or load_taxonomy()
    existing = set(session.scalars(select(UseCase.key)))
    added = 0
    for use_case in taxonomy.use_cases:
        if use_case.key not in existing:
            session.add(UseCase(**use_case.model_dump(), builtin=True))
            added += 1
    session.flush()
    return added


def list_use_cases(session: Session) -> list[UseCasePublic]:
    rows = session.scalars(select(UseCase).order_by(UseCase.category, UseCase.key))
    return [UseCasePublic.model_validate(row) for row in rows]


def _use_case(session: Session, key: str) -> UseCase:
    row = session.get(UseCase, key)
    if row is None:
        raise NotFound(f"no use case {key!r} (GET /use-cases lists them)")
    return row


def get_use_case(session: Session, *, key: str) -> UseCasePublic:
    return UseCasePublic.model_validate(_use_case(session, key))


def create_use_case(session: Session, *, request: UseCaseCreate) -> UseCasePublic:
    """Add a use case (administrators extend the taxonomy); its key must be new."""
    if session.get(UseCase, request.key) is not None:
        raise Conflict(f"use case {request.key!r} exists already")
    row = UseCase(**request.model_dump(), builtin=False)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"use case {request.key!r} exists already") from None
    return UseCasePublic.model_validate(row)


# -- models -------------------------------------------------------------------------------------


def _newest_first(versions: Sequence[ModelVersion]) -> list[ModelVersion]:
    # Equal precedence (versions that differ only in build metadata): the later registration first.
    return sorted(versions, key=lambda v: (SemVer.parse(v.version), v.id), reverse=True)


def model_public(row: Model) -> ModelPublic:
    return ModelPublic(
        name=row.name,
        display_name=row.display_name,
        description=row.description,
        intended_use=row.intended_use,
        use_cases=[u.key for u in row.use_cases],
        modality=row.modality,
        body_part=row.body_part,
        regulatory_status=row.regulatory_status,
        owner=row.owner,
        documentation_urls=list(row.documentation_urls),
        created_at=row.created_at,
        created_by=row.created_by,
        versions=[v.version for v in _newest_first(row.versions)],
    )


def _model(session: Session, name: str) -> Model:
    row = session.get(Model, name, options=[selectinload(Model.use_cases), selectinload(Model.versions)])
    if row is None:
        raise NotFound(f"no model {name!r}")
    return row


def get_model(session: Session, *, name: str) -> ModelPublic:
    return model_public(_model(session, name))


def list_models(
    session: Session, *, use_case: str | None = None, limit: int = 100, offset: int = 0
) -> list[ModelPublic]:
    query = select(Model).options(selectinload(Model.use_cases), selectinload(Model.versions)).order_by(Model.name)
    if use_case is not None:
        _use_case(session, use_case)
        query = query.where(Model.use_cases.any(UseCase.key == use_case))
    return [model_public(row) for row in session.scalars(query.limit(limit).offset(offset))]


def create_model(session: Session, *, request: ModelCreate, actor: str) -> ModelPublic:
    """File a new model under its use cases (every one must exist); its name must be new."""
    if session.get(Model, request.name) is not None:
        raise Conflict(f"model {request.name!r} exists already")
    keys = list(dict.fromkeys(request.use_cases))
    use_cases = session.scalars(select(UseCase).where(UseCase.key.in_(keys))).all()
    unknown = sorted(set(keys) - {u.key for u in use_cases})
    if unknown:
        raise Invalid("use_cases", f"unknown use case(s): {', '.join(unknown)} (GET /use-cases lists them)")
    row = Model(
        **request.model_dump(exclude={"use_cases", "documentation_urls"}),
        documentation_urls=[str(url) for url in request.documentation_urls],
        use_cases=sorted(use_cases, key=lambda u: u.key),
        created_by=actor,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"model {request.name!r} exists already") from None
    return model_public(row)


# -- versions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """What registering a version did: ``created``, ``unchanged`` (same content), ``published`` (a draft
    with the same content is now published) or ``replaced`` (a draft got new content)."""

    version: VersionPublic
    outcome: Literal["created", "unchanged", "published", "replaced"]
    before: VersionPublic | None


def device_uid(uid_root: str, model_name: str, version: str, digest: str) -> str:
    """The Device UID of a model version: under ``uid_root``, derived from the model, version and content."""
    if _UID_ROOT.match(uid_root) is None or len(uid_root) > 40:
        raise ValueError(f"UID root {uid_root!r} must be dot-separated numbers ending in '.', at most 40 characters")
    return str(generate_uid(prefix=uid_root, entropy_srcs=[uid_root, model_name, version, digest]))


def register_version(
    session: Session, *, model_name: str, request: VersionRegister, uid_root: str, actor: str
) -> Registration:
    """Register (or re-register) a version of ``model_name`` from its MAP manifests.

    Raises :class:`~hounsfield.registry.map_manifest.ManifestError` for manifests that do not follow
    the MAP spec, :class:`Invalid` for a content digest that does not match them, :class:`NotFound`
    for an unknown model and :class:`Conflict` for a published version registered with other content.
    """
    model = _model(session, model_name)
    manifests = parse_manifests(request.app, request.pkg)
    try:
        digest = content_digest(request.app, request.pkg, request.models_digest)
    except ValueError as error:  # NaN or Infinity somewhere in a manifest: not JSON
        raise Invalid("app", f"the manifests are not plain JSON ({error})") from None
    if request.content_digest is not None and request.content_digest != digest:
        raise Invalid(
            "content_digest",
            f"does not match the manifests and models_digest (the registry computes {digest})",
        )
    content: dict[str, Any] = {
        "map_manifest": {"app": request.app, "pkg": request.pkg},
        "content_digest": digest,
        "models_digest": request.models_digest,
        "device_uid": device_uid(uid_root, model.name, request.version, digest),
        "inputs": manifests.inputs(),
        "outputs": manifests.outputs(),
        "resources": manifests.pkg.resources.summary(),
        "timeout_s": manifests.timeout_s,
    }
    now = utcnow()
    existing = session.scalars(
        select(ModelVersion).where(ModelVersion.model_name == model.name, ModelVersion.version == request.version)
    ).first()
    if existing is None:
        row = ModelVersion(
            model_name=model.name,
            version=request.version,
            published=request.published,
            published_at=now if request.published else None,
            created_by=actor,
            **content,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict(f"version {request.version} of model {model.name!r} was registered concurrently") from None
        return Registration(VersionPublic.model_validate(row), "created", None)
    before = VersionPublic.model_validate(existing)
    if existing.content_digest == digest:
        if request.published and not existing.published:
            existing.published, existing.published_at = True, now
            session.flush()
            return Registration(VersionPublic.model_validate(existing), "published", before)
        return Registration(before, "unchanged", before)
    if existing.published:
        raise Conflict(
            f"version {request.version} of model {model.name!r} is published with content {existing.content_digest}; "
            f"a published version is immutable: register this content ({digest}) as a new version"
        )
    for key, value in content.items():
        setattr(existing, key, value)
    existing.published = request.published
    existing.published_at = now if request.published else None
    session.flush()
    return Registration(VersionPublic.model_validate(existing), "replaced", before)


def list_versions(session: Session, *, model_name: str) -> list[VersionPublic]:
    """The versions of a model, newest (highest semver precedence) first."""
    model = _model(session, model_name)
    return [VersionPublic.model_validate(v) for v in _newest_first(model.versions)]


def get_version(session: Session, *, model_name: str, version: str) -> VersionPublic:
    model = _model(session, model_name)
    for row in model.versions:
        if row.version == version:
            return VersionPublic.model_validate(row)
    raise NotFound(f"model {model_name!r} has no version {version!r}")


# -- use case -> versions -----------------------------------------------------------------------


def _seconds(later: datetime, earlier: datetime) -> float:
    # SQLite gives naive datetimes (UTC), rows made in this session aware ones: compare both as UTC.
    return (as_utc(later) - as_utc(earlier)).total_seconds()


def _instances(session: Session, series: list[Any]) -> int:
    if not series:
        return 0
    count = session.scalar(select(func.count()).select_from(Instance).where(Instance.series_instance_uid.in_(series)))
    return int(count or 0)


def measured_latency(session: Session, *, use_case: UseCase, model: Model, version: str) -> MeasuredLatency:
    """The latency of a version's most recent finished jobs against ``use_case``'s objective.

    Jobs record the model by the name their deployment gives it; deployments from the settings file
    use the display name, so both the catalog name and the display name are matched. Turnaround is
    taken from the study's completion (the completeness wait in the job's timings) to the result.
    """
    jobs = session.scalars(
        select(Job)
        .where(
            Job.model_name.in_({model.name, model.display_name}),
            Job.model_version == version,
            Job.state == JobState.DONE,
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(LATENCY_WINDOW)
    ).all()
    runs, turnarounds, latencies = [], [], []
    for job in jobs:
        assert job.started_at is not None and job.finished_at is not None
        runs.append(_seconds(job.finished_at, job.started_at))
        turnaround = _seconds(job.finished_at, job.created_at) + float(job.timings.get("completeness", 0.0))
        turnarounds.append(turnaround)
        if use_case.latency_per == LatencyScope.INSTANCE:
            count = _instances(session, job.series_instance_uids)
            if count:
                latencies.append(turnaround / count)
        else:
            latencies.append(turnaround)
    median_latency = statistics.median(latencies) if latencies else None
    objective = use_case.latency_objective_s
    reason = None
    within: bool | None = None
    if objective is None:
        reason = f"the use case states no latency objective ({use_case.objective or 'none'})"
    elif not jobs:
        reason = "no finished job of this version yet"
    elif median_latency is None:
        reason = "the finished jobs' series have no indexed instances to take a per-instance latency over"
    else:
        within = median_latency <= objective
    return MeasuredLatency(
        done_jobs=len(jobs),
        median_run_s=statistics.median(runs) if runs else None,
        median_turnaround_s=statistics.median(turnarounds) if turnarounds else None,
        median_latency_s=median_latency,
        latency_objective_s=objective,
        latency_per=use_case.latency_per,
        within_objective=within,
        reason=reason,
    )


def use_case_versions(session: Session, *, key: str) -> list[UseCaseVersion]:
    """Which model versions serve the use case ``key``, how they are deployed, how fast they have been.

    A version's deployments are those bound to it in the catalog, and configuration-declared ones
    that name the model (by name or display name) and the version.
    """
    use_case = _use_case(session, key)
    found = []
    for model in use_case.models:
        for row in _newest_first(model.versions):
            bound = session.scalars(
                select(Deployment)
                .where(
                    (Deployment.model_version_id == row.id)
                    | (
                        Deployment.model_version_id.is_(None)
                        & Deployment.model_name.in_({model.name, model.display_name})
                        & (Deployment.model_version == row.version)
                    ),
                    Deployment.stage != Stage.RETIRED,
                )
                .order_by(Deployment.name)
            ).all()
            running = [d.stage for d in bound if d.stage in ACTIVE_STAGES]
            mode = next((s.value for s in (Stage.CLINICAL, Stage.RESEARCH, Stage.SHADOW) if s in running), None)
            found.append(
                UseCaseVersion(
                    model_name=model.name,
                    version=row.version,
                    published=row.published,
                    device_uid=row.device_uid,
                    deployments=[{"name": d.name, "stage": d.stage.value, "rule": d.rule_name} for d in bound],
                    mode=mode,
                    latency=measured_latency(session, use_case=use_case, model=model, version=row.version),
                )
            )
    return found
