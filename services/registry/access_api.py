"""API routes of access: who am I, API tokens (administrators), and the audit trail (administrators)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from hounsfield.access import Principal, Role, create_token, revoke_token
from hounsfield.db import Database
from hounsfield.db.access import list_audit as audit_entries
from hounsfield.db.access import list_tokens as token_rows
from hounsfield.errors import NotFound
from hounsfield.registry.auth import require
from hounsfield.registry.deps import Admin, Limit, Offset, SessionDep

__all__ = ["router"]

router = APIRouter(tags=["access"])

Anyone = Annotated[Principal, Depends(require(*Role))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WhoAmI(BaseModel):
    subject: str
    role: Role
    via: str


class TokenRequest(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Who or what will use it.")
    role: Role


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="Shown only now: the registry keeps only its hash.")


class AuditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    actor_role: str
    via: str
    action: str
    entity: str
    entity_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@router.get("/whoami", response_model=WhoAmI)
def whoami(principal: Anyone) -> WhoAmI:
    """The caller as the registry sees them."""
    return WhoAmI(subject=principal.subject, role=principal.role, via=principal.via)


@router.post("/tokens", response_model=TokenCreated, status_code=201, responses={409: {"description": "name taken"}})
def post_token(body: TokenRequest, principal: Admin, request: Request) -> TokenCreated:
    """Make an API token; the response is the only time the token is shown."""
    db: Database = request.app.state.db
    with db.session() as session:  # committed before the token is shown (a name taken: 409)
        row, token = create_token(session, principal, body.name, body.role)
        public = TokenPublic.model_validate(row)
    return TokenCreated(**public.model_dump(), token=token)


@router.get("/tokens", response_model=list[TokenPublic])
def list_tokens(principal: Admin, session: SessionDep) -> list[TokenPublic]:
    """Every API token, revoked ones included (never the tokens themselves)."""
    return [TokenPublic.model_validate(row) for row in token_rows(session)]


@router.delete("/tokens/{token_id}", status_code=204, responses={404: {"description": "no such active token"}})
def delete_token(token_id: int, principal: Admin, session: SessionDep) -> Response:
    """Revoke a token at once; the row stays, for the audit trail."""
    if not revoke_token(session, principal, token_id):
        raise NotFound("no active token with this id")
    return Response(status_code=204)


@router.get("/audit", response_model=list[AuditPublic])
def list_audit(
    principal: Admin,
    session: SessionDep,
    entity: str | None = None,
    entity_id: str | None = None,
    actor: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AuditPublic]:
    """The audit trail, newest first."""
    found = audit_entries(session, entity=entity, entity_id=entity_id, actor=actor, limit=limit, offset=offset)
    return [AuditPublic.model_validate(row) for row in found]
