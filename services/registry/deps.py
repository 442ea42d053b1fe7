"""What the registry's routes share: a session per request, callers by role, paging."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Query, Request

from hounsfield.access import READERS, Principal, Role
from hounsfield.db import Job, Session
from hounsfield.queues import Enqueuer
from hounsfield.registry.auth import require

__all__ = ["Admin", "Developer", "Limit", "Offset", "Radiologist", "Reader", "SessionDep", "enqueuer"]


def _session(request: Request) -> Iterator[Session]:
    """The app's database (``app.state.db``), one transaction per request: committed unless it raises."""
    with request.app.state.db.session() as session:
        yield session


def enqueuer(request: Request) -> Callable[[Job], None]:
    """What puts a job on its queue: the app's ``enqueue`` (tests give their own), else the Celery enqueuer,
    made on first use."""
    state = request.app.state
    if state.enqueue is None:
        state.enqueue = Enqueuer(state.settings)
    enqueue: Callable[[Job], None] = state.enqueue
    return enqueue


SessionDep = Annotated[Session, Depends(_session)]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]  # a database integer, whatever is asked

Reader = Annotated[Principal, Depends(require(*READERS))]
"""Any role that may read (viewer, radiologist, model developer; administrators always may)."""
Developer = Annotated[Principal, Depends(require(Role.MODEL_DEVELOPER))]
Radiologist = Annotated[Principal, Depends(require(Role.RADIOLOGIST))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
