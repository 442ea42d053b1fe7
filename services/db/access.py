"""Who may use the registry API (hashed API tokens) and what they changed (the audit log): tables and queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hounsfield.db.models import Base, utcnow

__all__ = [
    "ApiToken",
    "AuditEntry",
    "active_token_count",
    "list_audit",
    "list_tokens",
    "token_by_digest",
    "token_by_name",
]


class ApiToken(Base):
    """An API token: only its SHA-256 is stored; the token itself is shown once, when it is made."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """One write through the API or the CLI: who, what, and the entity before and after.

    Rows are only ever inserted; nothing in Hounsfield updates or deletes them.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_entity", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    actor_role: Mapped[str] = mapped_column(String(32))
    via: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(128))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


def token_by_digest(session: Session, sha256: str) -> ApiToken | None:
    """The token (active or revoked) whose SHA-256 is ``sha256``."""
    return session.scalars(select(ApiToken).where(ApiToken.token_sha256 == sha256)).first()


def token_by_name(session: Session, name: str) -> ApiToken | None:
    return session.scalars(select(ApiToken).where(ApiToken.name == name)).first()


def active_token_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).where(ApiToken.revoked_at.is_(None))) or 0)


def list_tokens(session: Session) -> Sequence[ApiToken]:
    """Every token, revoked ones included, in the order they were made."""
    return session.scalars(select(ApiToken).order_by(ApiToken.id)).all()


def list_audit(
    session: Session,
    *,
    entity: str | None = None,
    entity_id: str | None = None,
    actor: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[AuditEntry]:
    """The audit trail, newest first, optionally of one entity or actor."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc())
    if entity is not None:
        query = query.where(AuditEntry.entity == entity)
    if entity_id is not None:
        query = query.where(AuditEntry.entity_id == entity_id)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    return session.scalars(query.limit(limit).offset(offset)).all()
