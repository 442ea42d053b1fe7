"""The dashboard's forms (POST): sign-in and sign-out, and the actions the API allows the same roles:
retry a failed job, promote and roll back a deployment. Each action calls the service function its API
route calls, so it is checked and audited exactly as there. Every form carries a CSRF token bound to
the caller's session (:mod:`hounsfield.registry.dashboard.sessions`)."""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from hounsfield.access import Role
from hounsfield.catalog import deployments
from hounsfield.db.deployments import Stage
from hounsfield.queues import retry_job
from hounsfield.registry.dashboard._callers import AdminCaller, CsrfToken, DeveloperCaller, check_csrf
from hounsfield.registry.dashboard._render import SECURITY_HEADERS, render
from hounsfield.registry.dashboard.pages import DeploymentName, JobId
from hounsfield.registry.dashboard.sessions import COOKIE, SIGN_IN_COOKIE, DashboardSessions
from hounsfield.registry.deps import SessionDep, enqueuer

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dashboard", include_in_schema=False)

Reason = Annotated[str, Form(min_length=1, max_length=2000)]
_SIGN_IN_MAX_AGE_S = 600


def _sessions(request: Request) -> DashboardSessions:
    sessions: DashboardSessions = request.app.state.dashboard_sessions
    return sessions


def _secure(request: Request) -> bool:
    """Cookies are Secure when the dashboard is served over TLS (here, or at a proxy that says so)."""
    return request.url.scheme == "https"


def _after(path: str) -> RedirectResponse:
    response = RedirectResponse(path, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request) -> HTMLResponse:
    """The sign-in form; its CSRF token is bound to a random value in a short-lived cookie."""
    nonce = secrets.token_urlsafe(16)
    csrf = _sessions(request).csrf_token("sign-in|" + nonce)
    response = render(request, "sign_in.html", {"sign_in_csrf": csrf, "refused": None})
    response.set_cookie(
        SIGN_IN_COOKIE, nonce, max_age=_SIGN_IN_MAX_AGE_S, path="/dashboard", httponly=True,
        samesite="strict", secure=_secure(request),
    )  # fmt: skip
    return response


@router.post("/sign-in", response_class=HTMLResponse)
def sign_in(request: Request, token: Annotated[str, Form(max_length=512)], csrf: CsrfToken) -> Response:
    """Take an API token; a valid one gets a session cookie (HttpOnly, SameSite=Strict, Secure over TLS,
    signed, expiring after ``registry.dashboard.session_max_age_s``)."""
    sessions = _sessions(request)
    nonce = request.cookies.get(SIGN_IN_COOKIE, "")
    if not nonce or not sessions.csrf_valid("sign-in|" + nonce, csrf):
        raise HTTPException(403, detail="the sign-in form has expired or came from elsewhere: open it again")
    made = sessions.sign_in(token.strip())
    if made is None:
        logger.warning("dashboard sign-in refused: unknown or revoked API token")
        fresh = secrets.token_urlsafe(16)
        context = {"sign_in_csrf": sessions.csrf_token("sign-in|" + fresh), "refused": "unknown or revoked API token"}
        response: Response = render(request, "sign_in.html", context, status=401)
        response.set_cookie(
            SIGN_IN_COOKIE, fresh, max_age=_SIGN_IN_MAX_AGE_S, path="/dashboard", httponly=True,
            samesite="strict", secure=_secure(request),
        )  # fmt: skip
        return response
    cookie, principal = made
    logger.info("dashboard sign-in by %s (%s)", principal.subject, principal.role.value)
    response = _after("/dashboard")
    response.set_cookie(
        COOKIE, cookie, max_age=sessions.max_age_s, path="/dashboard", httponly=True, samesite="strict",
        secure=_secure(request),
    )  # fmt: skip
    response.delete_cookie(SIGN_IN_COOKIE, path="/dashboard")
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf: CsrfToken) -> Response:
    """End the session (its cookie is cleared); a bearer caller has no session to end."""
    caller = getattr(request.state, "dashboard_caller", None)
    if caller is None:
        raise HTTPException(401, detail="sign in first")
    check_csrf(request, caller, csrf)
    response = _after("/dashboard/sign-in")
    response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict", secure=_secure(request))
    return response


@router.post("/jobs/{job_id}/retry")
def retry(request: Request, job_id: JobId, caller: AdminCaller, csrf: CsrfToken) -> Response:
    """Run a failed job again (administrators, as ``POST /jobs/{job_id}/retry``)."""
    check_csrf(request, caller, csrf)
    retry_job(request.app.state.db, job_id, principal=caller.principal, enqueue=enqueuer(request))
    return _after(f"/dashboard/jobs/{job_id}")


@router.post("/deployments/{name}/promote")
def promote(
    request: Request,
    name: DeploymentName,
    session: SessionDep,
    caller: DeveloperCaller,
    csrf: CsrfToken,
    reason: Reason,
    to: Annotated[Stage, Form()],
    supersede: Annotated[Literal["", "yes"], Form()] = "",
) -> Response:
    """One step on (model developers; to clinical, administrators), as ``POST /deployments/{name}/promote``."""
    check_csrf(request, caller, csrf)
    row = deployments.get_deployment(session, name)
    if deployments.promotion_needs_admin(row.stage, to) and caller.principal.role != Role.ADMIN:
        raise HTTPException(403, detail="promotion to clinical needs the admin role")
    deployments.promote(
        session, caller.principal, name, reason=reason, settings=request.app.state.settings, to=to,
        supersede=supersede == "yes",
    )  # fmt: skip
    return _after(f"/dashboard/deployments/{name}")


@router.post("/deployments/{name}/rollback")
def rollback(
    request: Request, name: DeploymentName, session: SessionDep, caller: AdminCaller, csrf: CsrfToken, reason: Reason
) -> Response:
    """Undo the last promotion (administrators), as ``POST /deployments/{name}/rollback``."""
    check_csrf(request, caller, csrf)
    deployments.rollback(session, caller.principal, name, reason=reason)
    return _after(f"/dashboard/deployments/{name}")
