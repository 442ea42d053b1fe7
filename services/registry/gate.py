"""The registry's door: who is calling, and how much they may send, settled before a body is read.

FastAPI reads and parses a route's body before it resolves the route's dependencies, so without a gate
anyone who can reach the port could make the registry read and parse any amount before the bearer
check answers 401. :class:`RequestGate` is ASGI middleware in front of every route:

1. every path but the open ones (``/health``, ``/metrics``, the OpenAPI document and its pages) needs a
   bearer credential, checked from the headers alone: 401 (or 403) before a byte of the body is read;
2. a body other than STOW-RS's (which streams to disk and has its own limit, ``registry.max_stow_body_mb``)
   may be at most ``registry.max_request_body_mb``: a larger declared ``Content-Length`` is answered 413
   at once, and a body sent without one is read only up to the limit, then answered 413.

The principal found is left in the request's state; the routes' role checks
(:func:`~hounsfield.registry.auth.require`) use it instead of asking the database again.

The dashboard's paths (``/dashboard``, when ``app.state.dashboard_sessions`` is set) take a bearer
credential as well, or else its session cookie (checked by the sessions object, the token looked up
again); without either, a page (GET) is redirected to the sign-in form and anything else answered 401,
again before the body is read. The sign-in form and the static files are open.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from hounsfield.db import DATABASE_UNREACHABLE, database_unreachable

__all__ = [
    "DASHBOARD_OPEN_PATHS",
    "DASHBOARD_PREFIX",
    "DATABASE_RETRY_AFTER_S",
    "DATABASE_UNREACHABLE_DETAIL",
    "OPEN_PATHS",
    "RequestGate",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
"""Paths anyone may call (no body is read on any of them)."""
STOW_PREFIX = "/dicomweb/"
DATABASE_RETRY_AFTER_S = 5
"""What a 503 for an unreachable database asks the client to wait (``Retry-After``)."""
DATABASE_UNREACHABLE_DETAIL = "the database is not reachable; try again shortly"
DASHBOARD_PREFIX = "/dashboard"
DASHBOARD_OPEN_PATHS = frozenset({"/dashboard/sign-in"})
"""Dashboard paths anyone may call (besides ``/dashboard/static/``): the sign-in form and its post."""
_DASHBOARD_STATIC = "/dashboard/static/"


async def _answer(send: Send, status: int, detail: object, headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
            return None
    return None


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestGate:
    """ASGI middleware: authenticate from the headers, then bound the body (see the module's docstring)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        sessions = getattr(scope["app"].state, "dashboard_sessions", None)
        if sessions is not None and (path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/")):
            if not await self._dashboard_caller(scope, send, sessions):
                return
        elif path not in OPEN_PATHS:
            credential = _bearer(scope)
            if credential is None:
                detail = "this needs a bearer credential (an API token or a JWT)"
                await _answer(send, 401, detail, {"WWW-Authenticate": "Bearer"})
                return
            try:
                principal = await run_in_threadpool(scope["app"].state.auth.authenticate, credential)
            except HTTPException as exc:
                await _answer(send, exc.status_code, exc.detail, exc.headers)
                return
            except DATABASE_UNREACHABLE as exc:  # the token is looked up in the database: it cannot be told now
                if not database_unreachable(exc):
                    raise
                await _answer(send, 503, DATABASE_UNREACHABLE_DETAIL, {"Retry-After": str(DATABASE_RETRY_AFTER_S)})
                return
            scope.setdefault("state", {})["principal"] = principal
        if path.startswith(STOW_PREFIX) or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        await self._bounded(scope, receive, send)

    async def _dashboard_caller(self, scope: Scope, send: Send, sessions: Any) -> bool:
        """Leave the dashboard's caller (and principal) in the state; False when the request was answered."""
        path: str = scope["path"]
        state = scope.setdefault("state", {})
        credential = _bearer(scope)
        if credential is not None:
            try:
                principal = await run_in_threadpool(scope["app"].state.auth.authenticate, credential)
            except HTTPException as exc:
                await _answer(send, exc.status_code, exc.detail, exc.headers)
                return False
            except DATABASE_UNREACHABLE as exc:
                if not database_unreachable(exc):
                    raise
                await _answer(send, 503, DATABASE_UNREACHABLE_DETAIL, {"Retry-After": str(DATABASE_RETRY_AFTER_S)})
                return False
            state["principal"] = principal
            state["dashboard_caller"] = sessions.bearer_caller(principal)
            return True
        cookies = _header(scope, b"cookie")
        caller = await run_in_threadpool(sessions.from_cookie_header, cookies) if cookies else None
        if caller is not None:
            state["principal"] = caller.principal
            state["dashboard_caller"] = caller
            return True
        if path in DASHBOARD_OPEN_PATHS or path.startswith(_DASHBOARD_STATIC):
            return True
        if scope["method"] in ("GET", "HEAD"):
            headers = [(b"location", b"/dashboard/sign-in"), (b"content-length", b"0"), (b"cache-control", b"no-store")]
            await send({"type": "http.response.start", "status": 303, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return False
        await _answer(send, 401, "sign in to the dashboard first (or send a bearer credential)")
        return False

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body up to the limit (413 beyond it), then hand it to the app in one message."""
        limit = self.max_body_bytes
        too_large = f"the request body exceeds {limit // 2**20} MiB (registry.max_request_body_mb)"
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _answer(send, 413, too_large)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # what follows the body: a disconnect
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
