"""The use-case taxonomy: the radiology AI use cases of the MONAI deployment guidelines, and those
administrators add.

The built-in use cases ship as data (``services/catalog/taxonomy.yaml``) and are seeded at start;
rows administrators added or edited are kept.
"""

from __future__ import annotations

from importlib import resources

import yaml
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hounsfield.access import Principal, record
from hounsfield.catalog.schemas import Taxonomy, UseCaseCreate, UseCasePublic
from hounsfield.db.catalog import Category, UseCase
from hounsfield.errors import Conflict, NotFound

__all__ = ["create_use_case", "get_use_case", "list_use_cases", "load_taxonomy", "seed_taxonomy", "use_case_row"]


def load_taxonomy(text: str | None = None) -> Taxonomy:
    """The taxonomy shipped in ``services/catalog/taxonomy.yaml`` (or ``text``), validated."""
    if text is None:
        text = resources.files("hounsfield.catalog").joinpath("taxonomy.yaml").read_text(encoding="utf-8")
    taxonomy = Taxonomy.model_validate(yaml.safe_load(text))
    declared = {c.key for c in taxonomy.categories}
    if declared != set(Category):
        raise ValueError(f"taxonomy categories must be exactly {sorted(Category)}; found {sorted(declared)}")
    keys = [u.key for u in taxonomy.use_cases]
    if len(keys) != len(set(keys)):
        raise ValueError("taxonomy: a use-case key appears twice")
    return taxonomy


def seed_taxonomy(session: Session, taxonomy: Taxonomy | None = None) -> int:
    """Add the built-in use cases that are missing; returns how many were added.

    Idempotent: a use case already in the table is left as it is (an administrator may have changed
    it), and use cases administrators added are never touched.
    """
    taxonomy = taxonomy or load_taxonomy()
    existing = set(session.scalars(select(UseCase.key)))
    added = 0
    for use_case in taxonomy.use_cases:
        if use_case.key not in existing:
            session.add(UseCase(**use_case.model_dump(), builtin=True))
            added += 1
    session.flush()
    return added


def list_use_cases(session: Session) -> list[UseCasePublic]:
    rows = session.scalars(select(UseCase).order_by(UseCase.category, UseCase.key))
    return [UseCasePublic.model_validate(row) for row in rows]


def use_case_row(session: Session, key: str) -> UseCase:
    """The use case ``key``; :class:`NotFound` when there is none."""
    row = session.get(UseCase, key)
    if row is None:
        raise NotFound(f"no use case {key!r} (GET /use-cases lists them)")
    return row


def get_use_case(session: Session, *, key: str) -> UseCasePublic:
    return UseCasePublic.model_validate(use_case_row(session, key))


def create_use_case(session: Session, principal: Principal, request: UseCaseCreate) -> UseCasePublic:
    """Add a use case (administrators extend the taxonomy; audited); its key must be new."""
    if session.get(UseCase, request.key) is not None:
        raise Conflict(f"use case {request.key!r} exists already")
    row = UseCase(**request.model_dump(), builtin=False)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"use case {request.key!r} exists already") from None
    created = UseCasePublic.model_validate(row)
    record(session, principal, "use_case.create", "use_case", created.key, after=created.model_dump(mode="json"))
    return created
