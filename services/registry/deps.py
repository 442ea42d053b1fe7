"""What the registry's routes share: a session per request, callers by role, paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request

from hounsfield.access import READERS, Principal, Role
from hounsfield.db import Session
from hounsfield.registry.auth import require

__all__ = ["Admin", "Developer", "Limit", "Offset", "Radiologist", "Reader", "SessionDep"]


def _session(request: Request) -> Iterator[Session]:
    """The app's database (``app.state.db``), one transaction per request: committed unless it raises."""
    with request.app.state.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]  # a database integer, whatever is asked

Reader = Annotated[Principal, Depends(require(*READERS))]
"""Any role that may read (viewer, radiologist, model developer; administrators always may)."""
Developer = Annotated[Principal, Depends(require(Role.MODEL_DEVELOPER))]
Radiologist = Annotated[Principal, Depends(require(Role.RADIOLOGIST))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
