"""The web dashboard the registry serves at ``/dashboard``: server-rendered pages (Jinja2, autoescaped),
one stylesheet, no script. Sign-in with an API token (a session cookie) or a bearer credential from a
proxy in front (OIDC); every page needs the role its API route needs; every form a CSRF token.
docs/dashboard.md describes it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.errors import NotFound, Refused
from hounsfield.registry.dashboard import actions, pages
from hounsfield.registry.dashboard._render import SECURITY_HEADERS, error_page
from hounsfield.registry.dashboard.sessions import DashboardKeyMissing, DashboardSessions
from hounsfield.registry.gate import DASHBOARD_PREFIX

__all__ = ["DashboardKeyMissing", "install"]

Handler = Callable[[Request, Exception], Response | Awaitable[Response]]


def _on_dashboard(request: Request) -> bool:
    path = request.url.path
    return path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/")


def _refusal_text(exc: Exception) -> tuple[int, str]:
    """The status and words of a refusal on a dashboard page (never the input that was refused)."""
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    if isinstance(exc, RequestValidationError):
        places = sorted({".".join(str(p) for p in error.get("loc", ())) for error in exc.errors()})
        return 422, "this address or form holds a value that is not allowed here: " + ", ".join(places)
    if isinstance(exc, NotFound):
        return 404, str(exc)
    return 409, str(exc)


def _html_on_dashboard(app: FastAPI, kind: type[Exception] | int, fallback: Handler) -> None:
    """Answer ``kind`` with the error page on dashboard paths, with ``fallback`` (the API's answer) elsewhere."""

    async def handler(request: Request, exc: Exception) -> Response:
        if _on_dashboard(request):
            status, message = _refusal_text(exc)
            return error_page(request, status, message)
        answer = fallback(request, exc)
        return await answer if isinstance(answer, Awaitable) else answer

    app.add_exception_handler(kind, handler)


def install(app: FastAPI, settings: Settings, db: Database) -> None:
    """Serve the dashboard from ``app`` (after the API's exception handlers were added).

    Raises :class:`DashboardKeyMissing` when ``registry.dashboard.session_key_env`` names no usable key.
    """
    app.state.dashboard_sessions = DashboardSessions(db, settings.registry.dashboard)
    app.include_router(pages.router)
    app.include_router(actions.router)
    static = StaticFiles(directory=Path(__file__).parent / "static")
    app.mount(DASHBOARD_PREFIX + "/static", static, name="dashboard-static")
    _html_on_dashboard(app, HTTPException, http_exception_handler)  # type: ignore[arg-type]
    for kind in (RequestValidationError, Refused):
        _html_on_dashboard(app, kind, app.exception_handlers[kind])

    app.add_middleware(_SecurityHeaders)  # outside the gate: its redirects and refusals get them too


class _SecurityHeaders:
    """ASGI middleware: every answer on a dashboard path carries :data:`SECURITY_HEADERS` (the gate's
    redirects and refusals, the stylesheet); other paths pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)
