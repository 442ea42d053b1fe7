"""Who is calling the registry API, and whether their role allows what they ask (the HTTP face of
:mod:`hounsfield.access`).

Two kinds of bearer credentials are accepted:

* **API tokens** made by an administrator (``hounsfield tokens create`` or ``POST /tokens``): random,
  prefixed ``hf_``, shown once; only their SHA-256 is stored. Each has one role.
* **JWTs from an OpenID Connect provider** (``registry.oidc``): signature checked against the
  provider's keys (a JWKS file or URL), ``iss``, ``aud`` and ``exp`` required, times taken within
  ``leeway_s`` of this host's clock; roles come from a claim, mapped to Hounsfield's roles.

The provider's keys are read at start; a ``jwks_url`` must be https (plain http only to a loopback
host), else the registry refuses to start. A JWT signed with a key id the registry does not know (the
provider rotated its keys) makes it fetch them again from the URL, at most once per
``jwks_refresh_min_s`` however many such tokens arrive; a key id still unknown then is refused (401).

:func:`require` makes the FastAPI dependency for a route: 401 without a valid credential, 403 for a
role the route is not open to (administrators may do everything).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hounsfield.access import TOKEN_PREFIX, Principal, Role, SignInImpossible, authenticate_token
from hounsfield.config import OIDCSettings, is_loopback_host
from hounsfield.db import Database

__all__ = ["Authenticator", "require"]

logger = logging.getLogger(__name__)

_FETCH_TIMEOUT_S = 10.0
"""How long one fetch of the provider's keys may take (at start, and on an unknown key id)."""


class _KeyRing:
    """The provider's keys as last loaded: by key id, and the one key to use for a JWT without a ``kid``
    (only when the provider publishes exactly one). Replaced whole, never changed, so readers need no lock."""

    def __init__(self, keys: list[jwt.PyJWK]) -> None:
        self.by_id: dict[str, Any] = {key.key_id: key.key for key in keys if key.key_id}
        self.default: Any = keys[0].key if len(keys) == 1 else None


class Authenticator:
    """Turns a bearer credential into a :class:`Principal`, or refuses it with 401/403.

    Raises :class:`~hounsfield.access.SignInImpossible` when the OIDC provider's keys cannot be loaded,
    or their ``jwks_url`` is neither https nor on a loopback host. ``clock`` (monotonic seconds) paces
    the fetches of a ``jwks_url`` (tests give their own).
    """

    def __init__(
        self, db: Database, oidc: OIDCSettings | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._db = db
        self._oidc = oidc
        self._clock = clock
        self._ring = _KeyRing([])
        self._refreshing = threading.Lock()
        self._fetched_at = 0.0
        if oidc is not None:
            self._load_keys(oidc)

    def _load_keys(self, oidc: OIDCSettings) -> None:
        if oidc.jwks_url is not None:
            _require_https(oidc.jwks_url)
        self._fetched_at = self._clock()
        try:
            self._ring = _KeyRing(_provider_keys(oidc))
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise SignInImpossible(f"registry.oidc: the provider's keys cannot be loaded ({exc})") from exc

    def _refresh_keys(self, oidc: OIDCSettings) -> None:
        """Fetch the keys from ``jwks_url`` again, unless they were fetched less than ``jwks_refresh_min_s``
        ago (by another request too: one fetch at a time, the others wait for it and use its keys).

        A fetch that fails keeps the keys already loaded (and counts: it is not tried again sooner).
        """
        with self._refreshing:  # held through the fetch, which _FETCH_TIMEOUT_S bounds
            now = self._clock()
            if now - self._fetched_at < oidc.jwks_refresh_min_s:
                return
            self._fetched_at = now
            try:
                self._ring = _KeyRing(_provider_keys(oidc))
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                logger.warning(
                    "registry.oidc: the provider's keys cannot be fetched again, kept those loaded (%s)", exc
                )
                return
            logger.info("registry.oidc: fetched the provider's keys again (a JWT named a key id not known)")

    def _key(self, kid: object, oidc: OIDCSettings) -> Any:
        """The key to check a JWT with ``kid`` against (``None``: the provider does not publish it)."""
        if not kid:
            return self._ring.default
        key = self._ring.by_id.get(str(kid))
        if key is None and oidc.jwks_url is not None:
            self._refresh_keys(oidc)
            key = self._ring.by_id.get(str(kid))
        return key

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
            key = self._key(jwt.get_unverified_header(token).get("kid"), oidc)
            if key is None:
                raise _unauthorized("the JWT is signed with a key the provider does not publish")
            claims = jwt.decode(
                token,
                key,
                algorithms=list(oidc.algorithms),
                audience=oidc.audience,
                issuer=oidc.issuer,
                leeway=oidc.leeway_s,
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


def _provider_keys(oidc: OIDCSettings) -> list[jwt.PyJWK]:
    """The keys of the provider's JWKS document (the file, or fetched from the URL)."""
    if oidc.jwks_file is not None:
        document = json.loads(oidc.jwks_file.read_text(encoding="utf-8"))
    else:
        assert oidc.jwks_url is not None
        document = jwt.PyJWKClient(oidc.jwks_url, cache_jwk_set=False, timeout=_FETCH_TIMEOUT_S).fetch_data()
    return jwt.PyJWKSet.from_dict(document).keys


def _require_https(url: str) -> None:
    """Refuse (:class:`~hounsfield.access.SignInImpossible`) a key URL anyone on the path could answer:
    https is required, plain http is taken only to a loopback host (127.0.0.0/8, ::1, ``localhost``)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme == "https" and host:
        return
    if scheme == "http" and is_loopback_host(host):
        return
    given = f"{scheme}://{host}" if scheme else "a URL without a scheme"  # no path, no user or password
    raise SignInImpossible(
        "registry.oidc.jwks_url must use https (plain http is taken only to a loopback host: 127.0.0.0/8, "
        f"::1, localhost), not {given}: anyone on the path could hand the registry keys of their own"
    )


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
