"""Who is calling the registry API, and whether their role allows what they ask.

Two kinds of bearer credentials are accepted:

* **API tokens** made by an administrator (``hounsfield tokens create`` or ``POST /tokens``): random,
  prefixed ``hf_``, shown once; only their SHA-256 is stored. Each has one role.
* **JWTs from an OpenID Connect provider** (``registry.oidc``): signature checked against the
  provider's keys (a JWKS file or URL), ``iss``, ``aud`` and ``exp`` required; roles come from a
  claim, mapped to Hounsfield's roles.

Roles are not a ladder: a radiologist gives feedback, a model developer registers models, a sender
(a PACS pushing over STOW-RS) only stores instances, a viewer only reads. Administrators may do
everything. :func:`require` makes the FastAPI dependency for a route.

There is no default secret. Outside development mode the registry refuses to start while nobody
could sign in (no API token and no OIDC provider); in development mode it makes an admin token and
writes it to a file only its owner can read.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hounsfield.config import OIDCSettings, Settings
from hounsfield.db import Database, utcnow
from hounsfield.db.access import ApiToken

__all__ = [
    "READERS",
    "AuthSetupError",
    "Authenticator",
    "Principal",
    "Role",
    "create_token",
    "ensure_sign_in_possible",
    "require",
    "revoke_token",
]

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "hf_"
DEV_TOKEN_FILE = "registry-admin-token"


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
    """An authenticated caller: a token's name or a JWT's subject, and one role."""

    subject: str
    role: Role
    via: Literal["token", "oidc", "cli"]


class AuthSetupError(RuntimeError):
    """The registry cannot start: nobody could sign in, or the OIDC keys cannot be loaded."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, name: str, role: Role, created_by: str, token: str | None = None
) -> tuple[ApiToken, str]:
    """Make an API token in ``session``; returns its row and the token (stored only as a hash: show it once).

    ``token``: a token made elsewhere (a bootstrap Secret) instead of a random one.
    """
    token = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role.value, token_sha256=_digest(token), created_by=created_by)
    session.add(row)
    session.flush()
    return row, token


def revoke_token(session: Session, token_id: int) -> bool:
    """Revoke a token (kept for the audit trail); False when there is no such active token."""
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


class Authenticator:
    """Turns a bearer credential into a :class:`Principal`, or refuses it with 401/403."""

    def __init__(self, db: Database, oidc: OIDCSettings | None = None) -> None:
        self._db = db
        self._oidc = oidc
        self._keys: dict[str, Any] = {}
        self._default_key: Any = None
        if oidc is not None:
            self._load_keys(oidc)

    def _load_keys(self, oidc: OIDCSettings) -> None:
        try:
            if oidc.jwks_file is not None:
                document = json.loads(oidc.jwks_file.read_text(encoding="utf-8"))
            else:
                assert oidc.jwks_url is not None
                document = jwt.PyJWKClient(oidc.jwks_url, cache_keys=False).fetch_data()
            keys = jwt.PyJWKSet.from_dict(document).keys
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise AuthSetupError(f"registry.oidc: the provider's keys cannot be loaded ({exc})") from exc
        self._keys = {key.key_id: key.key for key in keys if key.key_id}
        self._default_key = keys[0].key if len(keys) == 1 else None

    @property
    def oidc_configured(self) -> bool:
        return self._oidc is not None

    def authenticate(self, credential: str) -> Principal:
        if credential.startswith(TOKEN_PREFIX):
            return self._api_token(credential)
        if self._oidc is not None and credential.count(".") == 2:
            return self._jwt(credential, self._oidc)
        raise _unauthorized("the bearer credential is neither an API token nor a JWT this registry accepts")

    def _api_token(self, token: str) -> Principal:
        with self._db.session() as session:
            row = session.scalars(select(ApiToken).where(ApiToken.token_sha256 == _digest(token))).first()
            if row is None or row.revoked_at is not None:
                raise _unauthorized("unknown or revoked API token")
            row.last_used_at = utcnow()
            return Principal(row.name, Role(row.role), "token")

    def _jwt(self, token: str, oidc: OIDCSettings) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if kid else self._default_key
            if key is None:
                raise _unauthorized("the JWT is signed with a key the provider does not publish")
            claims = jwt.decode(
                token,
                key,
                algorithms=list(oidc.algorithms),
                audience=oidc.audience,
                issuer=oidc.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the JWT has expired") from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"the JWT is not valid here: {exc}") from None
        granted = claims.get(oidc.role_claim, [])
        names = [granted] if isinstance(granted, str) else list(granted) if isinstance(granted, list) else []
        roles = [Role(oidc.roles[name]) for name in names if isinstance(name, str) and name in oidc.roles]
        if not roles:
            raise HTTPException(403, detail=f"the JWT's {oidc.role_claim!r} claim maps to no Hounsfield role")
        role = Role.ADMIN if Role.ADMIN in roles else roles[0]
        return Principal(str(claims["sub"]), role, "oidc")


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, detail=reason, headers={"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False, description="An API token (hf_...) or a JWT from the configured provider.")


def require(*roles: Role) -> Callable[..., Principal]:
    """The dependency for a route open to ``roles`` (and to administrators)."""
    allowed = frozenset(roles) | {Role.ADMIN}
    names = ", ".join(sorted(role.value for role in allowed))

    def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        if credentials is None:
            raise _unauthorized("this needs a bearer credential (an API token or a JWT)")
        authenticator: Authenticator = request.app.state.auth
        principal = authenticator.authenticate(credentials.credentials)
        if principal.role not in allowed:
            raise HTTPException(403, detail=f"the {principal.role.value} role may not do this (needs one of: {names})")
        request.state.principal = principal
        return principal

    return dependency


def _active_tokens(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).where(ApiToken.revoked_at.is_(None))) or 0)


BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"
_MIN_BOOTSTRAP_LENGTH = len(TOKEN_PREFIX) + 32


def _import_bootstrap_token(db: Database, variable: str) -> None:
    """Store the admin token held by ``$variable`` (its hash) as ``bootstrap-admin``."""
    token = os.environ.get(variable, "").strip()
    if not token.startswith(TOKEN_PREFIX) or len(token) < _MIN_BOOTSTRAP_LENGTH:
        shown = "is not set" if not token else f"must hold {TOKEN_PREFIX!r} and at least 32 more characters"
        raise AuthSetupError(f"registry.bootstrap_admin_token_env: the environment variable {variable} {shown}")
    from hounsfield.registry.audit import record  # audit needs Principal from here

    try:
        with db.session() as session:
            if session.scalar(select(ApiToken.id).where(ApiToken.token_sha256 == _digest(token))) is not None:
                raise AuthSetupError(
                    f"the admin token in ${variable} was revoked: put a new one in its place, "
                    "or create an admin token with `hounsfield tokens create NAME --role admin`"
                )
            row, _ = create_token(session, BOOTSTRAP_TOKEN_NAME, Role.ADMIN, "registry start-up", token=token)
            record(
                session, Principal("registry start-up", Role.ADMIN, "cli"), "token.create", "api_token", str(row.id),
                after={"name": row.name, "role": row.role, "bootstrap": variable},
            )  # fmt: skip
    except IntegrityError:
        return  # another replica starting at the same moment stored it first
    logger.warning("nobody could sign in: the admin token in $%s was stored as %r", variable, BOOTSTRAP_TOKEN_NAME)


def ensure_sign_in_possible(settings: Settings, db: Database, authenticator: Authenticator) -> Path | None:
    """Refuse to start (:class:`AuthSetupError`) when nobody could sign in, outside development mode.

    In development mode with no way to sign in, make an admin token and write it to
    ``data_dir/registry-admin-token`` (0600); returns that file's path (None when nothing was made).
    """
    if authenticator.oidc_configured or _active_tokens(db):
        return None
    if settings.registry.bootstrap_admin_token_env:
        _import_bootstrap_token(db, settings.registry.bootstrap_admin_token_env)
        return None
    if not settings.registry.development:
        raise AuthSetupError(
            "nobody could sign in to the registry: create an admin API token first "
            "(`hounsfield tokens create NAME --role admin`), or configure registry.oidc "
            "(registry.development: true makes one for a demo installation)"
        )
    from hounsfield.registry.audit import record  # audit needs Principal from here

    with db.session() as session:
        row, token = create_token(session, "development-admin", Role.ADMIN, "registry start-up")
        record(
            session, Principal("registry start-up", Role.ADMIN, "cli"), "token.create", "api_token", str(row.id),
            after={"name": row.name, "role": row.role, "development": True},
        )  # fmt: skip
    path = settings.data_dir / DEV_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    logger.warning("development mode: an admin API token was written to %s", path)
    return path
