"""API routes of deployments: make one from a catalog version, then promote, roll back or retire it.

Reading needs any role. Making a deployment, validating it and moving it into shadow or research
needs a model developer; anything that touches clinical (promotion to clinical, rollback, retiring)
needs an administrator. Every move is kept as a transition (who, when, why) and audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status

from hounsfield.access import Role
from hounsfield.catalog import deployments
from hounsfield.catalog.schemas import DeploymentCreate, DeploymentPublic, LifecycleRequest, PromoteRequest
from hounsfield.config import Settings
from hounsfield.db.deployments import Stage
from hounsfield.registry.deps import Admin, Developer, Reader, SessionDep

__all__ = ["router"]

router = APIRouter(prefix="/deployments", tags=["deployments"])

Name = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such deployment."},
    409: {"description": "Not allowed from its stage, or a second clinical version on one rule (the reason says)."},
}


@router.get("", response_model=list[DeploymentPublic])
def list_deployments(
    session: SessionDep, _: Reader, stage: Stage | None = None, model: str | None = None
) -> list[DeploymentPublic]:
    """Every deployment (or those in ``stage``, of ``model``), with its transitions."""
    return deployments.list_deployments(session, stage=stage, model=model)


@router.get("/{name}", response_model=DeploymentPublic, responses=_ERRORS)
def get_deployment(name: Name, session: SessionDep, _: Reader) -> DeploymentPublic:
    return deployments.get_deployment(session, name)


@router.post("", response_model=DeploymentPublic, status_code=status.HTTP_201_CREATED, responses=_ERRORS)
def create_deployment(
    body: DeploymentCreate, request: Request, session: SessionDep, principal: Developer
) -> DeploymentPublic:
    """A draft deployment of a published catalog version on a stored rule; it runs once promoted."""
    settings: Settings = request.app.state.settings
    return deployments.create_deployment(session, principal, body, settings)


@router.post("/{name}/promote", response_model=DeploymentPublic, responses=_ERRORS)
def promote(
    name: Name, body: PromoteRequest, request: Request, session: SessionDep, principal: Developer
) -> DeploymentPublic:
    """One step on: draft -> validated (its checks must pass) -> shadow or research -> clinical.

    Promotion to clinical needs an administrator, and is refused while another version of the model
    is clinical on the same rule unless ``supersede`` is set (that one is then retired).
    """
    settings: Settings = request.app.state.settings
    row = deployments.get_deployment(session, name)
    target = Stage(body.to) if body.to else None
    if deployments.promotion_needs_admin(row.stage, target) and principal.role != Role.ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="promotion to clinical needs the admin role")
    return deployments.promote(
        session, principal, name, reason=body.reason, settings=settings, to=target, supersede=body.supersede
    )


@router.post("/{name}/rollback", response_model=DeploymentPublic, responses=_ERRORS)
def rollback(name: Name, body: LifecycleRequest, session: SessionDep, principal: Admin) -> DeploymentPublic:
    """Undo the last promotion; a clinical deployment goes back to shadow and the one it replaced returns."""
    return deployments.rollback(session, principal, name, reason=body.reason)


@router.post("/{name}/retire", response_model=DeploymentPublic, responses=_ERRORS)
def retire(name: Name, body: LifecycleRequest, session: SessionDep, principal: Admin) -> DeploymentPublic:
    """Stop it for good; its jobs and results stay, and jobs still queued are not sent clinically."""
    return deployments.retire(session, principal, name, reason=body.reason)
