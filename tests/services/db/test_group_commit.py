"""Group commit of index rows: the same rows as the SQLAlchemy path, batched, errors kept per row."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from hounsfield.db import Database, Instance, Series, Study, StudyState
from hounsfield.db.group_commit import GroupCommit, IndexConflict, _Entry
from hounsfield.db.index import IndexedInstance, record_instance


def _item(study: str, series: str, sop: str, sha: str = "a" * 64, revision: int = 0) -> IndexedInstance:
    return IndexedInstance(
        study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", patient_id="P1", accession_number="A1", study_date="20240101",
        modality="CT", series_number=3, series_description="axial", instance_number=int(sop.rsplit(".", 1)[1]),
        calling_ae="CT01", called_ae="HOUNSFIELD", tags={"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY"},
        path=f"/store/{sop}.dcm", size=1234, sha256=sha, revision=revision,
    )  # fmt: skip


def _db(tmp_path: Path, name: str) -> Database:
    db = Database(f"sqlite:///{tmp_path / name}", synchronous="NORMAL")
    db.create_schema()
    return db


def _rows(db: Database) -> dict[str, list[tuple]]:
    with db.engine.connect() as connection:
        return {
            table: [tuple(row) for row in connection.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in ("studies", "series", "instances")
        }


def _without_times(rows: dict[str, list[tuple]], db: Database) -> dict[str, list[tuple]]:
    """Rows with timestamps replaced by a marker once they parse as SQLAlchemy wrote them."""
    with db.session() as session:
        for study in session.scalars(select(Study)):
            assert study.first_received_at is not None and study.last_received_at is not None
        for instance in session.scalars(select(Instance)):
            assert instance.received_at is not None
    return {
        table: [tuple("T" if isinstance(v, str) and v[:2] == "20" and ":" in v else v for v in row) for row in values]
        for table, values in rows.items()
    }


def test_batched_rows_equal_the_sqlalchemy_rows(tmp_path: Path) -> None:
    items = [_item("1.2.3", "1.2.3.4", f"1.2.3.4.{n}") for n in range(1, 6)]
    items += [_item("1.2.9", "1.2.9.4", "1.2.9.4.1"), replace(items[0], sha256="b" * 64, revision=1, path="/r1.dcm")]
    reference, batched = _db(tmp_path, "ref.db"), _db(tmp_path, "batch.db")
    for item in items:
        with reference.session() as session:
            record_instance(session, item)
    commit = GroupCommit(batched)
    for item in items:
        commit.record(item)
    assert _without_times(_rows(batched), batched) == _without_times(_rows(reference), reference)
    with batched.session() as session:
        instance = session.get(Instance, "1.2.3.4.1")
        assert instance is not None and instance.revision == 1 and instance.path == "/r1.dcm"
        series = session.get(Series, "1.2.3.4")
        assert series is not None and series.tags == items[0].tags


def test_a_new_instance_reopens_a_completed_study(tmp_path: Path) -> None:
    db = _db(tmp_path, "reopen.db")
    commit = GroupCommit(db)
    commit.record(_item("1.2.3", "1.2.3.4", "1.2.3.4.1"))
    with db.session() as session:
        session.execute(update(Study).values(state=StudyState.ROUTED, completion_trigger="association-release"))
    commit.record(_item("1.2.3", "1.2.3.4", "1.2.3.4.2"))
    with db.session() as session:
        study = session.get(Study, "1.2.3")
        assert study is not None and study.state is StudyState.RECEIVING


def test_concurrent_callers_all_return_committed(tmp_path: Path) -> None:
    db = _db(tmp_path, "many.db")
    commit = GroupCommit(db)
    errors: list[BaseException] = []

    def send(k: int) -> None:
        try:
            for n in range(1, 41):
                commit.record(_item(f"1.2.{k}", f"1.2.{k}.4", f"1.2.{k}.4.{n}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with db.session() as session:
        assert len(session.scalars(select(Instance)).all()) == 320
        assert len(session.scalars(select(Series)).all()) == 8


def test_a_bad_row_fails_alone(tmp_path: Path) -> None:
    db = _db(tmp_path, "bad.db")
    commit = GroupCommit(db)
    bad = replace(_item("1.2.3", "1.2.3.4", "1.2.3.4.1"), sop_class_uid=None)  # type: ignore[arg-type]
    good = _item("1.2.5", "1.2.5.4", "1.2.5.4.1")
    entries = [_Entry(bad), _Entry(good)]
    commit._commit(entries)  # one transaction fails, then each row is committed on its own
    assert isinstance(entries[0].error, IndexConflict) and not entries[0].done
    assert entries[1].done and entries[1].error is None
    with pytest.raises(IndexConflict):
        commit.record(bad)
    with db.session() as session:
        assert session.get(Instance, "1.2.5.4.1") is not None
        assert session.get(Instance, "1.2.3.4.1") is None
