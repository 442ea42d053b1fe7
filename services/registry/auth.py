"""Who is calling the registry API, and whether their role allows what they ask (the HTTP face of
:mod:`hounsfield.access`).

Two kinds of bearer credentials are accepted:

* **API tokens** made by an administrator (``hounsfield tokens create`` or ``POST /tokens``): random,
  prefixed ``hf_``, shown once; only their SHA-256 is stored. Each has one role.
* **JWTs from an OpenID Connect provider** (``registry.oidc``): signature checked against the
  provider's keys (a JWKS file or URL), ``iss``, ``aud`` and ``exp`` required; roles come from a
  claim, mapped to Hounsfield's roles.

:func:`require` makes the FastAPI dependency for a route: 401 without a valid credential, 403 for a
role the route is not open to (administrators may do everything).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hounsfield.access import TOKEN_PREFIX, Principal, Role, SignInImpossible, authenticate_token
from hounsfield.config import OIDCSettings
from hounsfield.db import Database

__all__ = ["Authenticator", "require"]


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
            raise SignInImpossible(f"registry.oidc: the provider's keys cannot be loaded ({exc})") from exc
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
            principal = authenticate_token(session, token)
        if principal is None:
            raise _unauthorized("unknown or revoked API token")
        return principal

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
        principal = getattr(request.state, "principal", None)  # the gate's (hounsfield.registry.gate)
        if principal is None:
            authenticator: Authenticator = request.app.state.auth
            principal = authenticator.authenticate(credentials.credentials)
        if principal.role not in allowed:
            raise HTTPException(403, detail=f"the {principal.role.value} role may not do this (needs one of: {names})")
        request.state.principal = principal
        return principal

    return dependency
