"""Models as the hospital governs them, filed under use cases, and their versions registered from MAPs.

Framework-free service functions over an SQLAlchemy session: the registry's API and the CLI are thin
adapters. Every write is audited in its own transaction. Refusals are :class:`~hounsfield.errors.NotFound`,
:class:`~hounsfield.errors.Conflict` and :class:`~hounsfield.errors.Invalid` (a manifest that does not
follow the MAP spec is :class:`~hounsfield.catalog.manifests.ManifestInvalid`).

Versions are immutable once published: registering the same model and version again with the same
content digest and image changes nothing; with another digest or another image (or none where there was
one, or one where there was none) it is refused (:class:`~hounsfield.errors.Conflict`).

The image (the MAP's OCI image pinned by digest, ``name@sha256:<hex>``) is kept beside the content
digest, not inside it: the content digest identifies the algorithm (both manifests and the model
files), can be computed from an application folder before any image exists, and derives the Device
UID; the image digest identifies one build of it, which changes with every rebuild (base image,
timestamps) of the same content, and whose layers carry the manifests themselves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from hounsfield.access import Principal, record
from hounsfield.catalog.manifests import SemVer, content_digest, parse_manifests
from hounsfield.catalog.schemas import ModelCreate, ModelPublic, VersionPublic, VersionRegister
from hounsfield.catalog.taxonomy import use_case_row
from hounsfield.db.catalog import Model, ModelVersion, UseCase
from hounsfield.db.models import utcnow
from hounsfield.errors import Conflict, Invalid, NotFound

__all__ = [
    "Registration",
    "create_model",
    "device_uid",
    "get_model",
    "get_version",
    "list_models",
    "list_versions",
    "model_public",
    "model_row",
    "newest_first",
    "register_version",
]

_UID_ROOT = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*\.$")
_ACTIONS = {
    "created": "model_version.create",
    "published": "model_version.publish",
    "replaced": "model_version.replace",
}


def newest_first(versions: Sequence[ModelVersion]) -> list[ModelVersion]:
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
        versions=[v.version for v in newest_first(row.versions)],
    )


def model_row(session: Session, name: str) -> Model:
    """The model ``name`` with its use cases and versions; :class:`NotFound` when there is none."""
    row = session.get(Model, name, options=[selectinload(Model.use_cases), selectinload(Model.versions)])
    if row is None:
        raise NotFound(f"no model {name!r}")
    return row


def get_model(session: Session, *, name: str) -> ModelPublic:
    return model_public(model_row(session, name))


def list_models(
    session: Session, *, use_case: str | None = None, limit: int = 100, offset: int = 0
) -> list[ModelPublic]:
    query = select(Model).options(selectinload(Model.use_cases), selectinload(Model.versions)).order_by(Model.name)
    if use_case is not None:
        use_case_row(session, use_case)
        query = query.where(Model.use_cases.any(UseCase.key == use_case))
    return [model_public(row) for row in session.scalars(query.limit(limit).offset(offset))]


def create_model(session: Session, principal: Principal, request: ModelCreate) -> ModelPublic:
    """File a new model under its use cases (every one must exist; audited); its name must be new."""
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
        created_by=principal.subject,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"model {request.name!r} exists already") from None
    created = model_public(row)
    record(session, principal, "model.create", "model", created.name, after=created.model_dump(mode="json"))
    return created


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
    session: Session, principal: Principal, *, model_name: str, request: VersionRegister, uid_root: str
) -> Registration:
    """Register (or re-register) a version of ``model_name`` from its MAP manifests; audited unless unchanged.

    Raises :class:`~hounsfield.catalog.manifests.ManifestInvalid` for manifests that do not follow
    the MAP spec, :class:`Invalid` for a content digest that does not match them, :class:`NotFound`
    for an unknown model and :class:`Conflict` for a published version registered with other content
    or another image.
    """
    registration = _register(session, principal, model_name=model_name, request=request, uid_root=uid_root)
    if registration.outcome != "unchanged":
        record(
            session,
            principal,
            _ACTIONS[registration.outcome],
            "model_version",
            f"{model_name}@{registration.version.version}",
            before=registration.before.model_dump(mode="json") if registration.before else None,
            after=registration.version.model_dump(mode="json"),
        )
    return registration


def _register(
    session: Session, principal: Principal, *, model_name: str, request: VersionRegister, uid_root: str
) -> Registration:
    model = model_row(session, model_name)
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
        "image": request.image,
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
            created_by=principal.subject,
            **content,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict(f"version {request.version} of model {model.name!r} was registered concurrently") from None
        return Registration(VersionPublic.model_validate(row), "created", None)
    before = VersionPublic.model_validate(existing)
    if existing.content_digest == digest and existing.image == request.image:
        if request.published and not existing.published:
            existing.published, existing.published_at = True, now
            session.flush()
            return Registration(VersionPublic.model_validate(existing), "published", before)
        return Registration(before, "unchanged", before)
    if existing.published and existing.content_digest != digest:
        raise Conflict(
            f"version {request.version} of model {model.name!r} is published with content {existing.content_digest}; "
            f"a published version is immutable: register this content ({digest}) as a new version"
        )
    if existing.published:
        raise Conflict(
            f"version {request.version} of model {model.name!r} is published with image {existing.image or '(none)'}; "
            f"a published version is immutable: register the image {request.image or '(none)'} as a new version"
        )
    for key, value in content.items():
        setattr(existing, key, value)
    existing.published = request.published
    existing.published_at = now if request.published else None
    session.flush()
    return Registration(VersionPublic.model_validate(existing), "replaced", before)


def list_versions(session: Session, *, model_name: str) -> list[VersionPublic]:
    """The versions of a model, newest (highest semver precedence) first."""
    model = model_row(session, model_name)
    return [VersionPublic.model_validate(v) for v in newest_first(model.versions)]


def get_version(session: Session, *, model_name: str, version: str) -> VersionPublic:
    model = model_row(session, model_name)
    for row in model.versions:
        if row.version == version:
            return VersionPublic.model_validate(row)
    raise NotFound(f"model {model_name!r} has no version {version!r}")
