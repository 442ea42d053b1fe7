"""What the registry's routes share: a session per request, callers by role, paging, refusals."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, NoReturn

from fastapi import Depends, HTTPException, Query, Request, status
from sqlalchemy.orm import Session

from hounsfield.registry.auth import READERS, Principal, Role, require
from hounsfield.registry.catalog import CatalogError, Invalid, NotFound
from hounsfield.registry.map_manifest import ManifestError

__all__ = ["Admin", "Developer", "Limit", "Offset", "Radiologist", "Reader", "SessionDep", "refuse"]


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


def refuse(error: CatalogError | ManifestError) -> NoReturn:
    """Translate a refusal to its HTTP answer: 422 in FastAPI's validation shape (a bad manifest or
    field), 404 (no such thing), or 409 (conflicts with what is stored; a failed validation's checks
    come along)."""
    if isinstance(error, ManifestError):
        detail: object = [
            {
                "loc": ["body", issue.file.removesuffix(".json"), *[p for p in issue.field.split(".") if p]],
                "msg": f"{issue.file}: {issue.reason}",
                "type": "map_manifest",
            }
            for issue in error.issues
        ]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)
    if isinstance(error, Invalid):
        detail = [{"loc": ["body", error.field], "msg": error.reason, "type": "value_error"}]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)
    if isinstance(error, NotFound):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error))
    checks = getattr(error, "checks", None)  # lifecycle.ValidationFailed: which checks failed, and why
    if checks is not None:
        detail = {"message": str(error), "checks": [c.model_dump() for c in checks]}
        raise HTTPException(status.HTTP_409_CONFLICT, detail=detail)
    raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error))
