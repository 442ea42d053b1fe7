"""The dashboard's role checks: the same roles as the API's routes (administrators may do everything)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Form, HTTPException, Request

from hounsfield.access import READERS, Role
from hounsfield.registry.dashboard.sessions import Caller, DashboardSessions

__all__ = ["AdminCaller", "CsrfToken", "DeveloperCaller", "ReaderCaller", "caller_with", "check_csrf"]


def caller_with(*roles: Role) -> Callable[[Request], Caller]:
    """The dependency of a page or action open to ``roles`` and administrators: 401 without a caller (the
    gate redirects pages to the sign-in form before this), 403 for another role."""
    allowed = frozenset(roles) | {Role.ADMIN}
    names = ", ".join(sorted(role.value for role in allowed))

    def dependency(request: Request) -> Caller:
        caller: Caller | None = getattr(request.state, "dashboard_caller", None)
        if caller is None:
            raise HTTPException(401, detail="sign in first")
        if caller.principal.role not in allowed:
            role = caller.principal.role.value
            raise HTTPException(403, detail=f"the {role} role may not see or do this (needs one of: {names})")
        return caller

    return dependency


ReaderCaller = Annotated[Caller, Depends(caller_with(*READERS))]
DeveloperCaller = Annotated[Caller, Depends(caller_with(Role.MODEL_DEVELOPER))]
AdminCaller = Annotated[Caller, Depends(caller_with(Role.ADMIN))]
CsrfToken = Annotated[str, Form(max_length=128)]


def check_csrf(request: Request, caller: Caller, token: str) -> None:
    """403 unless ``token`` is the CSRF token of ``caller``'s session."""
    sessions: DashboardSessions = request.app.state.dashboard_sessions
    if not sessions.csrf_valid(caller.binding, token):
        why = "the form's CSRF token does not belong to this session: reload the page and try again"
        raise HTTPException(403, detail=why)
