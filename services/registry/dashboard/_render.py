"""How the dashboard's pages are made: the templates (autoescaped), the navigation, paging, PACS links,
the security headers of every answer, and the error page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from hounsfield.access import READERS, Role
from hounsfield.config import DashboardSettings
from hounsfield.registry.dashboard.sessions import Caller, DashboardSessions

__all__ = ["NAV", "SECURITY_HEADERS", "NavEntry", "Paging", "error_page", "pacs_link", "render"]

_HERE = Path(__file__).parent
_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)
templates = Jinja2Templates(env=_environment)

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""No script at all, styles and images only from the registry, forms only to it, never framed."""
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class NavEntry:
    """One entry of the navigation: shown to ``roles`` (and administrators)."""

    label: str
    path: str
    roles: tuple[Role, ...]


NAV: list[NavEntry] = [
    NavEntry("Overview", "/dashboard", READERS),
    NavEntry("Studies", "/dashboard/studies", READERS),
    NavEntry("Jobs", "/dashboard/jobs", READERS),
    NavEntry("Results", "/dashboard/results", READERS),
    NavEntry("Models", "/dashboard/models", READERS),
    NavEntry("Feedback", "/dashboard/feedback", READERS),
    NavEntry("Retention", "/dashboard/retention", READERS),
    NavEntry("Audit log", "/dashboard/audit", ()),
]
"""The pages in the navigation, in order."""


@dataclass(frozen=True)
class Paging:
    """Which page of a list is shown, ``size`` rows at a time (bounded by ``max_page_size``)."""

    page: int
    size: int

    @classmethod
    def of(cls, settings: DashboardSettings, page: int, size: int | None) -> Paging:
        return cls(page=page, size=min(size or settings.page_size, settings.max_page_size))

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def fetch(self) -> int:
        """Rows to ask for: one more than a page, to know whether a next page exists."""
        return self.size + 1


def pacs_link(settings: DashboardSettings, study_uid: str, series_uid: str = "", sop_uid: str = "") -> str | None:
    """The PACS viewer's address of a study (and series, instance), or None without ``pacs_viewer_url``."""
    if settings.pacs_viewer_url is None:
        return None
    values = {"study_uid": study_uid, "series_uid": series_uid, "sop_uid": sop_uid}
    link = settings.pacs_viewer_url
    for name, value in values.items():
        link = link.replace("{" + name + "}", quote(value, safe=""))
    return link


def _caller(request: Request) -> Caller | None:
    return getattr(request.state, "dashboard_caller", None)


def render(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    """A page: ``template`` with ``context``, the navigation, the caller and their CSRF token."""
    caller = _caller(request)
    sessions: DashboardSessions = request.app.state.dashboard_sessions
    settings: DashboardSettings = request.app.state.settings.registry.dashboard
    nav = []
    if caller is not None:
        role = caller.principal.role
        nav = [entry for entry in NAV if role is Role.ADMIN or role in entry.roles]
    page = {
        "caller": caller.principal if caller is not None else None,
        "csrf": sessions.csrf_token(caller.binding) if caller is not None else "",
        "nav": nav,
        "path": request.url.path,
        "pacs": lambda *uids: pacs_link(settings, *uids),
        **context,
    }
    response = templates.TemplateResponse(request, template, page, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """The page of a refused request: its status and why, in words."""
    return render(request, "error.html", {"status": status, "message": message}, status=status)
