"""The registry's door: a caller is identified from the headers before any body is read, and a body
other than STOW-RS's is bounded (``registry.max_request_body_mb``) before it is parsed.

The app is driven as an ASGI application here, so that the test sees exactly how much of a body it
asked for.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hounsfield.access import Role
from hounsfield.config import Settings
from hounsfield.registry.app import create_app

MiB = 2**20


def _call(
    app: Any, method: str, path: str, *, headers: dict[str, str], chunks: int, chunk: int = MiB
) -> tuple[int, Any, int]:
    """Send a request whose body is ``chunks`` chunks of ``chunk`` bytes; (status, answer, bytes the app read)."""
    read = 0
    sent = 0
    answer: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal read, sent
        if sent >= chunks:
            await asyncio.sleep(3600)  # a client that sends nothing more
        sent += 1
        read += chunk
        return {"type": "http.request", "body": b"{" + b" " * (chunk - 1), "more_body": sent < chunks}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] = answer.get("body", b"") + message.get("body", b"")

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8470),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
    return answer["status"], json.loads(answer["body"]), read


@pytest.fixture
def app(settings: Settings, tokens: dict[Role, str]) -> Any:
    return create_app(
        settings.model_copy(update={"registry": settings.registry.model_copy(update={"stow_enabled": False})})
    )


def test_a_body_without_a_credential_is_never_read(app: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer hf_not-a-token"}, {"Authorization": "Basic eDp5"}):
        status, answer, read = _call(
            app, "POST", "/models", headers={"Content-Length": str(50 * MiB), **headers}, chunks=50
        )
        assert status == 401 and read == 0, (headers, status, answer)


def test_a_large_body_is_refused_before_it_is_parsed(app: Any, tokens: dict[Role, str]) -> None:
    bearer = {"Authorization": f"Bearer {tokens[Role.ADMIN]}"}
    status, answer, read = _call(app, "POST", "/models", headers={"Content-Length": str(50 * MiB), **bearer}, chunks=50)
    assert (status, read) == (413, 0), "a declared length above the limit is answered at once"
    assert "registry.max_request_body_mb" in answer["detail"]
    status, answer, read = _call(app, "POST", "/rules/dry-run", headers=bearer, chunks=50)  # no declared length
    assert status == 413
    assert read <= 3 * MiB, f"read {read / MiB:.0f} MiB of a body refused above 2 MiB"


def test_a_body_within_the_limit_reaches_its_route(app: Any, tokens: dict[Role, str]) -> None:
    bearer = {"Authorization": f"Bearer {tokens[Role.VIEWER]}", "Content-Type": "application/json"}
    status, answer, _ = _call(app, "POST", "/rules/dry-run", headers=bearer, chunks=1, chunk=4096)
    assert status == 422, answer  # the route parsed it: "{" and blanks are no JSON document
