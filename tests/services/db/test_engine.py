"""The engine: a database error names the statement, never the values bound to it (patient data)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from hounsfield.db import Database, Study


def test_a_database_error_carries_no_bound_values(database_url: str) -> None:
    db = Database(database_url)
    db.create_schema()
    try:
        with db.session() as session:
            session.add(Study(study_instance_uid="1.2.3", patient_id="PAT-0451-SECRET", accession_number="ACC-77"))
        with pytest.raises(IntegrityError) as raised, db.session() as session:
            session.add(Study(study_instance_uid="1.2.3", patient_id="PAT-0451-SECRET", accession_number="ACC-77"))
    finally:
        db.dispose()
    message = str(raised.value)
    assert "INSERT INTO studies" in message, message
    assert "PAT-0451-SECRET" not in message and "ACC-77" not in message, message
