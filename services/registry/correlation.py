"""Correlation ids of the registry's log lines: each request's id, and the study or job its path names.

:class:`RequestCorrelation` is ASGI middleware in front of everything (the gate included): every line
logged while a request is served carries ``request`` (the caller's ``X-Request-ID`` when it is a short
token of letters, digits, ``.``, ``_`` and ``-``, else one made here; answered in ``X-Request-ID``),
and, for ``/studies/{uid}`` (``/dicomweb/studies/{uid}`` too) and ``/jobs/{id}``, ``study`` (the UID's
correlation id, never the UID) or ``job``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hounsfield.logs import log_context

__all__ = ["REQUEST_ID_HEADER", "RequestCorrelation"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_STUDY_PATH = re.compile(r"^(?:/dicomweb)?/studies/([0-9]+(?:\.[0-9]+)*)(?:/|$)")
_JOB_PATH = re.compile(r"^/jobs/([0-9A-Za-z-]{1,64})(?:/|$)")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers") or []:
        if name == REQUEST_ID_HEADER.encode():
            given = value.decode("latin-1")
            if _REQUEST_ID.match(given):
                return given
            break
    return uuid.uuid4().hex[:16]


class RequestCorrelation:
    """ASGI middleware: the request's correlation ids for every line logged while it is served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        path: str = scope["path"]
        study = _STUDY_PATH.match(path)
        job = _JOB_PATH.match(path)

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER.encode()]
                message["headers"] = [*headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        with log_context(
            request=request_id,
            study_uid=study.group(1) if study and len(study.group(1)) <= 64 else None,
            job=job.group(1) if job else None,
        ):
            await self.app(scope, receive, answer)
