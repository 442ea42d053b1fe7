"""Dashboard sessions: who is signed in, from a signed cookie or a bearer credential, and CSRF tokens.

A sign-in with an API token leaves a cookie that holds the token's SHA-256 (never the token), a random
nonce and an expiry, signed with HMAC-SHA256 under the dashboard's key. On every request the signature
and the expiry are checked and the token is looked up again by its digest, so a revoked token signs its
user out at once. A request with an ``Authorization: Bearer`` header (an oauth2-proxy in front passing the
user's JWT, or an API token) is authenticated exactly as the API does it, and needs no cookie.

CSRF tokens are an HMAC of what binds them: the cookie's nonce (a new one at every sign-in), or, for a
bearer caller, the credential's subject and role. A form posted without the token of its caller is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from hounsfield.access import (
    Principal,
    SignInImpossible,
    authenticate_token,
    authenticate_token_digest,
    token_digest,
)
from hounsfield.config import DashboardSettings
from hounsfield.db import Database

__all__ = ["COOKIE", "SIGN_IN_COOKIE", "Caller", "DashboardKeyMissing", "DashboardSessions"]

logger = logging.getLogger(__name__)

COOKIE = "hf_dashboard"
"""The session cookie."""
SIGN_IN_COOKIE = "hf_dashboard_sign_in"
"""A random value set with the sign-in form, to which the form's CSRF token is bound."""
_MIN_KEY_CHARS = 32


class DashboardKeyMissing(SignInImpossible):
    """``registry.dashboard.session_key_env`` names a variable that is unset or shorter than 32 characters."""


@dataclass(frozen=True)
class Caller:
    """Who is using the dashboard, and what their CSRF tokens are bound to."""

    principal: Principal
    binding: str


class DashboardSessions:
    """Issues and reads session cookies, and makes and checks CSRF tokens (see the module's docstring).

    ``clock`` (seconds since the epoch) lets tests move time on.
    """

    def __init__(self, db: Database, settings: DashboardSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self.max_age_s = settings.session_max_age_s
        self._clock = clock
        if settings.session_key_env is None:
            self._key = secrets.token_bytes(32)
            return
        value = os.environ.get(settings.session_key_env, "")
        if len(value) < _MIN_KEY_CHARS:
            shown = "is not set" if not value else f"holds fewer than {_MIN_KEY_CHARS} characters"
            raise DashboardKeyMissing(
                f"registry.dashboard.session_key_env: the environment variable {settings.session_key_env} {shown}"
            )
        self._key = value.encode()

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def sign_in(self, token: str) -> tuple[str, Principal] | None:
        """The cookie value of a new session for an API token, and its principal; None for a token that is
        unknown or revoked."""
        with self._db.session() as session:
            principal = authenticate_token(session, token)
        if principal is None:
            return None
        expires = int(self._clock()) + self.max_age_s
        payload = f"{token_digest(token)}.{secrets.token_urlsafe(16)}.{expires}"
        return f"{payload}.{self._sign('session|' + payload)}", principal

    def read(self, cookie: str) -> Caller | None:
        """The caller of a session cookie; None when it is forged, expired or its token was revoked."""
        payload, _, signature = cookie.rpartition(".")
        if not payload or not hmac.compare_digest(signature, self._sign("session|" + payload)):
            return None
        digest, nonce, expires = [*payload.split("."), "", "", ""][:3]
        if not expires.isdigit() or int(expires) <= self._clock():
            return None
        with self._db.session() as session:
            principal = authenticate_token_digest(session, digest)
        return None if principal is None else Caller(principal, "session|" + nonce)

    def from_cookie_header(self, header: str) -> Caller | None:
        """The caller of the session cookie in a ``Cookie`` header; None without a valid one."""
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value:
                return self.read(value)
        return None

    @staticmethod
    def bearer_caller(principal: Principal) -> Caller:
        """A caller who sent a bearer credential (its CSRF tokens are bound to its subject and role)."""
        return Caller(principal, f"bearer|{principal.via}|{principal.role.value}|{principal.subject}")

    def csrf_token(self, binding: str) -> str:
        """The CSRF token of forms shown to whoever ``binding`` stands for."""
        return self._sign("csrf|" + binding)

    def csrf_valid(self, binding: str, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(binding), token)
