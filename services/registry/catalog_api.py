"""API routes of the model catalog: use cases (the taxonomy), models and their versions.

Reads are open to viewers, radiologists and model developers; adding a use case needs an
administrator; filing a model, registering a version or setting a version's drift reference window
needs a model developer (administrators may do everything). Every write is audited by the catalog (or
the drift room) in its own transaction; refusals are answered by the app's handler (404, 409, 422).

The app provides ``app.state.db`` (a :class:`~hounsfield.db.Database`), ``app.state.settings`` (the
Device UIDs of versions are made under ``settings.uid_root``) and ``app.state.auth``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status

from hounsfield.catalog import latency, models, taxonomy
from hounsfield.catalog.schemas import (
    ModelCreate,
    ModelPublic,
    UseCaseCreate,
    UseCasePublic,
    UseCaseVersion,
    VersionPublic,
    VersionRegister,
)
from hounsfield.drift import DriftStatus, ReferenceWindow, drift_status, set_reference_window
from hounsfield.registry.deps import Admin, Developer, Limit, Offset, Reader, SessionDep

__all__ = ["router"]

router = APIRouter(tags=["catalog"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such use case, model or version."},
    409: {"description": "Conflicts with what is stored (the reason says what)."},
}


@router.get("/use-cases", response_model=list[UseCasePublic])
def list_use_cases(session: SessionDep, _: Reader) -> list[UseCasePublic]:
    """The use-case taxonomy: built-in use cases and those administrators added."""
    return taxonomy.list_use_cases(session)


@router.get("/use-cases/{key}", response_model=UseCasePublic, responses=_ERRORS)
def get_use_case(key: str, session: SessionDep, _: Reader) -> UseCasePublic:
    return taxonomy.get_use_case(session, key=key)


@router.post("/use-cases", response_model=UseCasePublic, status_code=status.HTTP_201_CREATED, responses=_ERRORS)
def create_use_case(body: UseCaseCreate, session: SessionDep, principal: Admin) -> UseCasePublic:
    """Extend the taxonomy with a use case (administrators)."""
    return taxonomy.create_use_case(session, principal, body)


@router.get("/use-cases/{key}/versions", response_model=list[UseCaseVersion], responses=_ERRORS)
def use_case_versions(key: str, session: SessionDep, _: Reader) -> list[UseCaseVersion]:
    """Which model versions serve this use case, in which mode, and their measured latency against its objective.

    ``mode`` is null and ``deployments`` empty until deployments are recorded in the registry.
    """
    return latency.use_case_versions(session, key=key)


@router.get("/models", response_model=list[ModelPublic], responses=_ERRORS)
def list_models(
    session: SessionDep, _: Reader, use_case: str | None = None, limit: Limit = 100, offset: Offset = 0
) -> list[ModelPublic]:
    """The models, optionally only those filed under ``use_case``."""
    return models.list_models(session, use_case=use_case, limit=limit, offset=offset)


@router.get("/models/{name}", response_model=ModelPublic, responses=_ERRORS)
def get_model(name: str, session: SessionDep, _: Reader) -> ModelPublic:
    return models.get_model(session, name=name)


@router.post("/models", response_model=ModelPublic, status_code=status.HTTP_201_CREATED, responses=_ERRORS)
def create_model(body: ModelCreate, session: SessionDep, principal: Developer) -> ModelPublic:
    """File a model under one or more use cases (model developers)."""
    return models.create_model(session, principal, body)


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
    uid_root = request.app.state.settings.uid_root
    done = models.register_version(session, principal, model_name=name, request=body, uid_root=uid_root)
    if done.outcome != "created":
        response.status_code = status.HTTP_200_OK
    return done.version


@router.get("/models/{name}/versions", response_model=list[VersionPublic], responses=_ERRORS)
def list_versions(name: str, session: SessionDep, _: Reader) -> list[VersionPublic]:
    """A model's versions, newest (highest semver precedence) first."""
    return models.list_versions(session, model_name=name)


@router.get("/models/{name}/versions/{version}", response_model=VersionPublic, responses=_ERRORS)
def get_version(name: str, version: str, session: SessionDep, _: Reader) -> VersionPublic:
    return models.get_version(session, model_name=name, version=version)


@router.get("/models/{name}/versions/{version}/drift", response_model=DriftStatus, responses=_ERRORS)
def get_version_drift(name: str, version: str, request: Request, session: SessionDep, _: Reader) -> DriftStatus:
    """The version's input drift (ok, drifting or not_enough_data) with each feature's score (docs/drift.md)."""
    return drift_status(session, request.app.state.settings, model_name=name, model_version=version)


@router.put("/models/{name}/versions/{version}/drift/reference", response_model=DriftStatus, responses=_ERRORS)
def put_drift_reference(
    name: str, version: str, body: ReferenceWindow, request: Request, session: SessionDep, principal: Developer
) -> DriftStatus:
    """Compare the version's recent jobs with those profiled between ``start`` and ``end`` (model developers;
    both null: with its first jobs again); audited. Answers the drift compared again."""
    settings = request.app.state.settings
    return set_reference_window(session, principal, settings, model_name=name, model_version=version, window=body)
