"""API routes of the model catalog: use cases (the taxonomy), models and their versions.

Reads are open to viewers, radiologists and model developers; adding a use case needs an
administrator; filing a model or registering a version needs a model developer (administrators may
do everything). Every write appends an audit row in its own transaction.

The app provides ``app.state.db`` (a :class:`~hounsfield.db.Database`), ``app.state.settings`` (the
Device UIDs of versions are made under ``settings.uid_root``) and ``app.state.auth``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status

from hounsfield.registry import audit, catalog
from hounsfield.registry.catalog_schemas import (
    ModelCreate,
    ModelPublic,
    UseCaseCreate,
    UseCasePublic,
    UseCaseVersion,
    VersionPublic,
    VersionRegister,
)
from hounsfield.registry.deps import Admin, Developer, Limit, Offset, Reader, SessionDep, refuse
from hounsfield.registry.map_manifest import ManifestError

__all__ = ["router"]

router = APIRouter(tags=["catalog"])


_ACTIONS = {
    "created": "model_version.create",
    "published": "model_version.publish",
    "replaced": "model_version.replace",
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such use case, model or version."},
    409: {"description": "Conflicts with what is stored (the reason says what)."},
}


@router.get("/use-cases", response_model=list[UseCasePublic])
def list_use_cases(session: SessionDep, _: Reader) -> list[UseCasePublic]:
    """The use-case taxonomy: built-in use cases and those administrators added."""
    return catalog.list_use_cases(session)


@router.get("/use-cases/{key}", response_model=UseCasePublic, responses=_ERRORS)
def get_use_case(key: str, session: SessionDep, _: Reader) -> UseCasePublic:
    try:
        return catalog.get_use_case(session, key=key)
    except catalog.CatalogError as error:
        refuse(error)


@router.post("/use-cases", response_model=UseCasePublic, status_code=status.HTTP_201_CREATED, responses=_ERRORS)
def create_use_case(body: UseCaseCreate, session: SessionDep, principal: Admin) -> UseCasePublic:
    """Extend the taxonomy with a use case (administrators)."""
    try:
        created = catalog.create_use_case(session, request=body)
    except catalog.CatalogError as error:
        refuse(error)
    audit.record(session, principal, "use_case.create", "use_case", created.key, after=created.model_dump(mode="json"))
    return created


@router.get("/use-cases/{key}/versions", response_model=list[UseCaseVersion], responses=_ERRORS)
def use_case_versions(key: str, session: SessionDep, _: Reader) -> list[UseCaseVersion]:
    """Which model versions serve this use case, in which mode, and their measured latency against its objective.

    ``mode`` is null and ``deployments`` empty until deployments are recorded in the registry.
    """
    try:
        return catalog.use_case_versions(session, key=key)
    except catalog.CatalogError as error:
        refuse(error)


@router.get("/models", response_model=list[ModelPublic], responses=_ERRORS)
def list_models(
    session: SessionDep, _: Reader, use_case: str | None = None, limit: Limit = 100, offset: Offset = 0
) -> list[ModelPublic]:
    """The models, optionally only those filed under ``use_case``."""
    try:
        return catalog.list_models(session, use_case=use_case, limit=limit, offset=offset)
    except catalog.CatalogError as error:
        refuse(error)


@router.get("/models/{name}", response_model=ModelPublic, responses=_ERRORS)
def get_model(name: str, session: SessionDep, _: Reader) -> ModelPublic:
    try:
        return catalog.get_model(session, name=name)
    except catalog.CatalogError as error:
        refuse(error)


@router.post("/models", response_model=ModelPublic, status_code=status.HTTP_201_CREATED, responses=_ERRORS)
def create_model(body: ModelCreate, session: SessionDep, principal: Developer) -> ModelPublic:
    """File a model under one or more use cases (model developers)."""
    try:
        created = catalog.create_model(session, request=body, actor=principal.subject)
    except catalog.CatalogError as error:
        refuse(error)
    audit.record(session, principal, "model.create", "model", created.name, after=created.model_dump(mode="json"))
    return created


@router.post(
    "/models/{name}/versions",
    response_model=VersionPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Registered before with the same content: nothing changed."}, **_ERRORS},
)
def register_version(
    name: str, body: VersionRegister, request: Request, response: Response, session: SessionDep, principal: Developer
) -> VersionPublic:
    """Register a version from its MAP manifests (model developers); 201 when new, 200 when already there.

    A published version is immutable: the same version with other content is refused (409).
    """
    try:
        done = catalog.register_version(
            session,
            model_name=name,
            request=body,
            uid_root=request.app.state.settings.uid_root,
            actor=principal.subject,
        )
    except (catalog.CatalogError, ManifestError) as error:
        refuse(error)
    if done.outcome != "created":
        response.status_code = status.HTTP_200_OK
    if done.outcome != "unchanged":
        audit.record(
            session,
            principal,
            _ACTIONS[done.outcome],
            "model_version",
            f"{name}@{done.version.version}",
            before=done.before.model_dump(mode="json") if done.before else None,
            after=done.version.model_dump(mode="json"),
        )
    return done.version


@router.get("/models/{name}/versions", response_model=list[VersionPublic], responses=_ERRORS)
def list_versions(name: str, session: SessionDep, _: Reader) -> list[VersionPublic]:
    """A model's versions, newest (highest semver precedence) first."""
    try:
        return catalog.list_versions(session, model_name=name)
    except catalog.CatalogError as error:
        refuse(error)


@router.get("/models/{name}/versions/{version}", response_model=VersionPublic, responses=_ERRORS)
def get_version(name: str, version: str, session: SessionDep, _: Reader) -> VersionPublic:
    try:
        return catalog.get_version(session, model_name=name, version=version)
    except catalog.CatalogError as error:
        refuse(error)
