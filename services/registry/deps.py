"""What the registry's routes share: a database session per request, and paging parameters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

__all__ = ["Limit", "Offset", "SessionDep"]


def _session(request: Request) -> Iterator[Session]:
    """The app's database (``app.state.db``), one transaction per request: committed unless it raises."""
    with request.app.state.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]  # a database integer, whatever is asked
