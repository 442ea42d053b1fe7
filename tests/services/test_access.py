"""Who acts and the trail of what they changed: tokens and their audit rows are written together."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from hounsfield.access import Principal, Role, authenticate_token, create_token, revoke_token
from hounsfield.db import Database
from hounsfield.db.access import ApiToken, AuditEntry
from hounsfield.errors import Conflict

ADMIN = Principal("cli:ops", Role.ADMIN, "cli")


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    database.create_schema()
    yield database  # type: ignore[misc]
    database.dispose()


def _rows(db: Database) -> tuple[list[str], list[tuple[str, str]]]:
    with db.session() as session:
        tokens = list(session.scalars(select(ApiToken.name).order_by(ApiToken.id)))
        audit = [(e.action, e.actor) for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    return tokens, audit


def test_a_token_and_its_audit_row_are_one_write(db: Database) -> None:
    with db.session() as session:
        _, token = create_token(session, ADMIN, "pacs-main", Role.SENDER)
    assert _rows(db) == (["pacs-main"], [("token.create", "cli:ops")])
    with db.session() as session:
        principal = authenticate_token(session, token)
    assert principal == Principal("pacs-main", Role.SENDER, "token")

    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned), db.session() as session:
        create_token(session, ADMIN, "modality", Role.VIEWER)
        raise Abandoned  # the caller's transaction fails after the token was made: neither row stays
    assert _rows(db) == (["pacs-main"], [("token.create", "cli:ops")])


def test_a_taken_name_is_a_conflict_and_leaves_nothing(db: Database) -> None:
    with db.session() as session:
        create_token(session, ADMIN, "pacs-main", Role.SENDER)
    with pytest.raises(Conflict, match="a token named 'pacs-main' exists already"), db.session() as session:
        create_token(session, ADMIN, "pacs-main", Role.ADMIN)
    assert _rows(db) == (["pacs-main"], [("token.create", "cli:ops")])


def test_revoking_is_audited_and_refuses_the_token_at_once(db: Database) -> None:
    with db.session() as session:
        row, token = create_token(session, ADMIN, "pacs-main", Role.SENDER)
    with db.session() as session:
        assert revoke_token(session, ADMIN, row.id)
        assert not revoke_token(session, ADMIN, row.id), "revoked already"
    with db.session() as session:
        assert authenticate_token(session, token) is None
    assert _rows(db)[1] == [("token.create", "cli:ops"), ("token.revoke", "cli:ops")]
