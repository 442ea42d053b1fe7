"""The index writes (services/db/index.py) on SQLite and PostgreSQL: idempotent, revisions repoint."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import event, func, select

from hounsfield.db import Database, Instance, Series, Study, StudyState
from hounsfield.db.index import (
    IndexedInstance,
    complete_study,
    record_instance,
    record_instances,
    series_facts_rows,
    series_instance_counts,
    study_instance_count,
)


def _item(study: str, series: str, number: int, *, sha: str = "a" * 64, revision: int = 0) -> IndexedInstance:
    return IndexedInstance(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=f"{series}.{number}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id="",
        accession_number="",
        study_date="20260101",
        modality="CT",
        series_number=1,
        series_description="",
        instance_number=number,
        calling_ae="MODALITY",
        called_ae="HOUNSFIELD",
        tags={"BodyPartExamined": "CHEST"},
        path=f"/store/{series}/{number}.dcm",
        size=1000 + number,
        sha256=sha,
        revision=revision,
    )


def _counts(db: Database) -> tuple[int, int, int]:
    with db.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Study)) or 0,
            session.scalar(select(func.count()).select_from(Series)) or 0,
            session.scalar(select(func.count()).select_from(Instance)) or 0,
        )


def test_record_instances_is_idempotent(db: Database) -> None:
    items = [_item("1.1", "1.1.1", n) for n in range(5)] + [_item("1.1", "1.1.2", n) for n in range(3)]
    with db.transaction() as connection:
        record_instances(connection, items)
    with db.transaction() as connection:
        record_instances(connection, items)  # a replayed journal batch
    assert _counts(db) == (1, 2, 8)
    with db.session() as session:
        assert series_instance_counts(session, "1.1") == {"1.1.1": 5, "1.1.2": 3}
        assert study_instance_count(session, "1.1") == 8
        series = session.get(Series, "1.1.1")
        assert series is not None and series.tags == {"BodyPartExamined": "CHEST"}
        assert {i.revision for i in session.scalars(select(Instance))} == {0}


def test_record_instance_session_and_connection_agree(db: Database) -> None:
    first = _item("2.1", "2.1.1", 1)
    with db.session() as session:
        record_instance(session, first)
        record_instance(session, first)
    with db.transaction() as connection:
        record_instance(connection, first)
        record_instance(connection, _item("2.1", "2.1.1", 2))
    assert _counts(db) == (1, 1, 2)


def test_revision_repoints_the_instance(db: Database) -> None:
    original = _item("3.1", "3.1.1", 1)
    with db.transaction() as connection:
        record_instances(connection, [original])
    changed = replace(original, sha256="b" * 64, path="/store/3.1.1/1.r1.dcm", size=2222, revision=1)
    with db.transaction() as connection:
        record_instances(connection, [changed])
    with db.session() as session:
        row = session.get(Instance, original.sop_instance_uid)
        assert row is not None
        assert (row.sha256, row.path, row.size, row.revision) == ("b" * 64, "/store/3.1.1/1.r1.dcm", 2222, 1)
    # The same bytes again (a duplicate of the revision) change nothing; the old bytes' row is not restored
    # by a stale copy with the revision number of the first (the last applied wins, in order).
    with db.transaction() as connection:
        record_instances(connection, [changed])
    with db.session() as session:
        row = session.get(Instance, original.sop_instance_uid)
        assert row is not None and (row.sha256, row.revision) == ("b" * 64, 1)
    assert _counts(db) == (1, 1, 1)


def test_last_copy_in_a_batch_wins(db: Database) -> None:
    first = _item("4.1", "4.1.1", 1)
    second = replace(first, sha256="c" * 64, revision=1, path="/store/4.1.1/1.r1.dcm")
    with db.transaction() as connection:
        record_instances(connection, [first, second])
    with db.session() as session:
        row = session.get(Instance, first.sop_instance_uid)
        assert row is not None and (row.sha256, row.revision) == ("c" * 64, 1)


def test_complete_study_once_and_reopen(db: Database) -> None:
    with db.transaction() as connection:
        record_instances(connection, [_item("5.1", "5.1.1", n) for n in range(3)])
    with db.session() as session:
        assert complete_study(session, "5.1", "quiet-period") is True
    with db.session() as session:
        assert complete_study(session, "5.1", "quiet-period") is False  # already handled
        assert complete_study(session, "9.9.9", "quiet-period") is False  # unknown study
        study = session.get(Study, "5.1")
        assert study is not None
        assert (study.state, study.completion_trigger) == (StudyState.COMPLETE, "quiet-period")
        assert study.completed_at is not None
        first_received = study.first_received_at
    with db.transaction() as connection:  # a late instance reopens the study
        record_instances(connection, [_item("5.1", "5.1.1", 3)])
    with db.session() as session:
        study = session.get(Study, "5.1")
        assert study is not None and study.state is StudyState.RECEIVING
        assert study.first_received_at == first_received
        assert study.last_received_at >= first_received
        assert complete_study(session, "5.1", "instance-count") is True


def test_series_facts_count_each_series_of_the_study_and_read_only_its_own_instances(db: Database) -> None:
    items = [
        *(replace(_item("6.1", "6.1.2", n), series_number=2) for n in range(3)),
        *(_item("6.1", "6.1.1", n) for n in range(5)),
        *(_item("7.1", "7.1.1", n) for n in range(7)),
    ]
    with db.transaction() as connection:
        record_instances(connection, items)
    sent: list[tuple[str, object]] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: sent.append((args[2], args[3])))
    with db.session() as session:
        first = [(series.series_instance_uid, n) for series, n in series_facts_rows(session, "6.1")]
        statement, parameters = sent[-1]
        other = [(series.series_instance_uid, n) for series, n in series_facts_rows(session, "7.1")]
        assert series_facts_rows(session, "8.1") == []
        plan = []
        if db.engine.dialect.name == "sqlite":  # the plan of a few rows on PostgreSQL is a scan whatever
            explained = session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = [row[3] for row in explained]
    assert first == [("6.1.1", 5), ("6.1.2", 3)], "in series number order"
    assert other == [("7.1.1", 7)]
    if db.engine.dialect.name == "sqlite":
        assert any(step.startswith("SEARCH instances USING") for step in plan), plan
        assert not any(step.startswith("SCAN instances") for step in plan), f"every instance read: {plan}"
