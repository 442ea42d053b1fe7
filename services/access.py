"""Who acts, and the trail of what they changed: principals and roles, API tokens, the audit log.

Every write in Hounsfield (through the registry's API, the ``hounsfield`` command, or the
configuration file) is made by a :class:`Principal` and appends one :class:`~hounsfield.db.access.AuditEntry`
with :func:`record`, inside the write's own transaction: a change and its audit row are committed
together or not at all. Rows are only ever inserted.

Roles are not a ladder: a radiologist gives feedback, a model developer registers models, a sender
(a PACS pushing over STOW-RS) only stores instances, a viewer only reads; administrators may do
everything. API tokens are random, prefixed ``hf_``, shown once; only their SHA-256 is stored.

There is no default secret: :func:`ensure_sign_in_possible` refuses (:class:`SignInImpossible`) while
nobody could sign in, outside development mode. The registry's HTTP face (bearer credentials, OIDC
JWTs) is :mod:`hounsfield.registry.auth`; this module is what it and the CLI share.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hounsfield.config import Settings
from hounsfield.db import Database, utcnow
from hounsfield.db.access import ApiToken, AuditEntry, active_token_count, token_by_digest, token_by_name
from hounsfield.errors import Conflict, HounsfieldError

__all__ = [
    "BOOTSTRAP_TOKEN_NAME",
    "CONFIG_PRINCIPAL",
    "DEV_TOKEN_FILE",
    "READERS",
    "STARTUP_PRINCIPAL",
    "TOKEN_PREFIX",
    "Principal",
    "Role",
    "SignInImpossible",
    "authenticate_token",
    "authenticate_token_digest",
    "create_token",
    "ensure_sign_in_possible",
    "record",
    "revoke_token",
    "token_digest",
]

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "hf_"
DEV_TOKEN_FILE = "registry-admin-token"
BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"
_MIN_BOOTSTRAP_LENGTH = len(TOKEN_PREFIX) + 32


class Role(enum.StrEnum):
    VIEWER = "viewer"
    RADIOLOGIST = "radiologist"
    MODEL_DEVELOPER = "model-developer"
    ADMIN = "admin"
    SENDER = "sender"
    """A system that stores instances (STOW-RS) and does nothing else."""


READERS = (Role.VIEWER, Role.RADIOLOGIST, Role.MODEL_DEVELOPER)
"""The people who may read studies, jobs and results (administrators always may)."""


@dataclass(frozen=True)
class Principal:
    """Who acts: a token's name, a JWT's subject, ``cli:<user>`` or ``config``; one role; how they came."""

    subject: str
    role: Role
    via: Literal["token", "oidc", "cli"]


CONFIG_PRINCIPAL = Principal("config", Role.ADMIN, "cli")
"""Who changes what the YAML configuration declares (in transitions and the audit log)."""
STARTUP_PRINCIPAL = Principal("registry start-up", Role.ADMIN, "cli")
"""Who makes the first admin token when nobody could sign in (bootstrap or development mode)."""


class SignInImpossible(HounsfieldError, RuntimeError):
    """The registry refuses to start: nobody could sign in, or the OIDC provider's keys cannot be loaded."""


def record(
    session: Session,
    principal: Principal,
    action: str,
    entity: str,
    entity_id: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Append one audit row (``action`` such as ``model.create``; ``before``/``after`` JSON-able, no secrets)."""
    session.add(
        AuditEntry(
            actor=principal.subject,
            actor_role=principal.role.value,
            via=principal.via,
            action=action,
            entity=entity,
            entity_id=entity_id,
            before=before,
            after=after,
        )
    )


def token_digest(token: str) -> str:
    """The SHA-256 an API token is stored as (what a dashboard session keeps instead of the token)."""
    return hashlib.sha256(token.encode()).hexdigest()


_digest = token_digest


def create_token(
    session: Session,
    principal: Principal,
    name: str,
    role: Role,
    *,
    token: str | None = None,
    note: dict[str, Any] | None = None,
) -> tuple[ApiToken, str]:
    """Make an API token (audited); returns its row and the token, stored only as a hash: show it once.

    ``token``: one made elsewhere (a bootstrap Secret) instead of a random one; ``note`` goes into the
    audit row. A name (or token) taken already is a :class:`~hounsfield.errors.Conflict`.
    """
    token = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
    taken = Conflict(f"a token named {name!r} exists already")
    if token_by_name(session, name) is not None:
        raise taken
    row = ApiToken(name=name, role=role.value, token_sha256=_digest(token), created_by=principal.subject)
    session.add(row)
    try:  # no savepoint: on SQLite a savepoint opening the transaction would commit the row on its own
        session.flush()
    except IntegrityError:  # made at the same moment by another caller (or the same token): the session is done
        raise taken from None
    record(
        session,
        principal,
        "token.create",
        "api_token",
        str(row.id),
        after={"name": name, "role": role.value, **(note or {})},
    )
    return row, token


def revoke_token(session: Session, principal: Principal, token_id: int) -> bool:
    """Revoke a token at once (kept for the audit trail, audited); False when there is no such active token."""
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    record(session, principal, "token.revoke", "api_token", str(token_id), after={"revoked": True})
    return True


def authenticate_token(session: Session, token: str) -> Principal | None:
    """The principal an API token stands for (its use is noted); None when it is unknown or revoked."""
    return authenticate_token_digest(session, _digest(token))


def authenticate_token_digest(session: Session, digest: str) -> Principal | None:
    """The principal of the API token whose SHA-256 is ``digest`` (its use is noted); None when it is
    unknown or revoked."""
    row = token_by_digest(session, digest)
    if row is None or row.revoked_at is not None:
        return None
    row.last_used_at = utcnow()
    return Principal(row.name, Role(row.role), "token")


def _import_bootstrap_token(db: Database, variable: str) -> None:
    """Store the admin token held by ``$variable`` (its hash) as ``bootstrap-admin``."""
    token = os.environ.get(variable, "").strip()
    if not token.startswith(TOKEN_PREFIX) or len(token) < _MIN_BOOTSTRAP_LENGTH:
        shown = "is not set" if not token else f"must hold {TOKEN_PREFIX!r} and at least 32 more characters"
        raise SignInImpossible(f"registry.bootstrap_admin_token_env: the environment variable {variable} {shown}")
    try:
        with db.session() as session:
            if token_by_digest(session, _digest(token)) is not None:
                raise SignInImpossible(
                    f"the admin token in ${variable} was revoked: put a new one in its place, "
                    "or create an admin token with `hounsfield tokens create NAME --role admin`"
                )
            create_token(
                session, STARTUP_PRINCIPAL, BOOTSTRAP_TOKEN_NAME, Role.ADMIN, token=token, note={"bootstrap": variable}
            )
    except (Conflict, IntegrityError):
        return  # another replica starting at the same moment stored it first
    logger.warning("nobody could sign in: the admin token in $%s was stored as %r", variable, BOOTSTRAP_TOKEN_NAME)


def ensure_sign_in_possible(settings: Settings, db: Database, *, oidc_configured: bool) -> Path | None:
    """Refuse to start (:class:`SignInImpossible`) when nobody could sign in, outside development mode.

    With ``registry.bootstrap_admin_token_env`` the token it names is stored as ``bootstrap-admin``. In
    development mode with no way to sign in, an admin token is made and written to
    ``data_dir/registry-admin-token`` (0600); returns that file's path (None when nothing was made).
    """
    if oidc_configured:
        return None
    with db.session() as session:
        if active_token_count(session):
            return None
    if settings.registry.bootstrap_admin_token_env:
        _import_bootstrap_token(db, settings.registry.bootstrap_admin_token_env)
        return None
    if not settings.registry.development:
        raise SignInImpossible(
            "nobody could sign in to the registry: create an admin API token first "
            "(`hounsfield tokens create NAME --role admin`), or configure registry.oidc "
            "(registry.development: true makes one for a demo installation)"
        )
    with db.session() as session:
        _, token = create_token(session, STARTUP_PRINCIPAL, "development-admin", Role.ADMIN, note={"development": True})
    path = settings.data_dir / DEV_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    logger.warning("development mode: an admin API token was written to %s", path)
    return path
