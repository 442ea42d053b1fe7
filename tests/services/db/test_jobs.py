"""Job rows (services/db/jobs.py) on SQLite and PostgreSQL: one claim wins, states are written through."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select

from hounsfield.db import Database, Event, Job, JobState, Result
from hounsfield.db.index import record_instances
from hounsfield.db.jobs import (
    claim_job,
    create_job,
    finish_job,
    idempotency_key,
    record_result,
    set_job_state,
    supersede_earlier_jobs,
    supersede_results,
)
from tests.services.db.test_index import _item


def _fields(study: str, series: list[str], version: str = "1.0.0") -> dict[str, Any]:
    return {
        "idempotency_key": idempotency_key(study, series, "ct-lesion-seg", version),
        "study_instance_uid": study,
        "series_instance_uids": series,
        "deployment": "ct-lesion-seg",
        "model_name": "CT lesion segmentation",
        "model_version": version,
        "mode": "production",
        "queue": "gpu",
    }


def _study(db: Database, study: str = "1.1", series: str = "1.1.1") -> None:
    with db.transaction() as connection:
        record_instances(connection, [_item(study, series, n) for n in range(2)])


def test_create_job_is_idempotent(db: Database) -> None:
    _study(db)
    with db.session() as session:
        job, created = create_job(session, **_fields("1.1", ["1.1.1"]))
        assert created and job.state is JobState.QUEUED
    with db.session() as session:
        again, created = create_job(session, **_fields("1.1", ["1.1.1"]))
        assert not created and again.id == job.id
        assert again.series_instance_uids == ["1.1.1"]
        assert len(session.scalars(select(Job)).all()) == 1


def test_claim_once_and_state_changes(db: Database) -> None:
    _study(db)
    with db.session() as session:
        job_id = create_job(session, **_fields("1.1", ["1.1.1"]))[0].id
    with db.session() as session:
        claimed = claim_job(session, job_id, redelivered=False)
        assert claimed is not None and claimed.state is JobState.RUNNING and claimed.started_at is not None
    with db.session() as session:
        assert claim_job(session, job_id, redelivered=False) is None  # another worker owns it
    with db.session() as session:
        assert claim_job(session, job_id, redelivered=True) is not None  # its worker died: take it over
    with db.session() as session:
        set_job_state(session, job_id, JobState.EXPORTING, {"inference": 1.23456})
    with db.session() as session:
        finish_job(session, job_id, JobState.DONE, {"export": 0.5})
    with db.session() as session:
        assert claim_job(session, job_id, redelivered=True) is None  # finished: never again
        job = session.get(Job, job_id)
        assert job is not None
        assert job.state is JobState.DONE and job.state.final and job.finished_at is not None
        assert job.timings == {"inference": 1.235, "export": 0.5}
        kinds = session.scalars(select(Event.kind).where(Event.job_id == job_id).order_by(Event.id)).all()
        assert kinds == ["job-exporting", "job-done"]
    with db.session() as session:
        assert claim_job(session, "no-such-job", redelivered=True) is None


def test_concurrent_claims_one_wins(db: Database) -> None:
    """Workers racing for one job (separate connections and transactions): exactly one gets it."""
    _study(db)
    with db.session() as session:
        job_id = create_job(session, **_fields("1.1", ["1.1.1"]))[0].id
    workers = 4
    start = threading.Barrier(workers)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait()
        with db.session() as session:
            won = claim_job(session, job_id, redelivered=False) is not None
        with lock:
            outcomes.append(won)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == [False] * (workers - 1) + [True]


def test_supersede_jobs_and_results(db: Database) -> None:
    _study(db)
    _study(db, "1.1", "1.1.2")
    with db.session() as session:
        old = create_job(session, **_fields("1.1", ["1.1.1"]))[0]
    with db.session() as session:
        assert claim_job(session, old.id, redelivered=False) is not None
        record_result(
            session,
            job_id=old.id,
            kind="seg",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
            sop_instance_uid="2.25.1",
            series_instance_uid="2.25.2",
            path="/results/1.dcm",
            summary={"lesions": 1},
        )
        finish_job(session, old.id, JobState.DONE, {})
    with db.session() as session:
        new, created = create_job(session, **_fields("1.1", ["1.1.1", "1.1.2"]))
        assert created
        superseded = supersede_earlier_jobs(session, new)
        assert [job.id for job in superseded] == [old.id]
        assert new.supersedes == old.id
    with db.session() as session:
        assert claim_job(session, new.id, redelivered=False) is not None
        finish_job(session, new.id, JobState.DONE, {})
        assert supersede_results(session, new.id) == 1
    with db.session() as session:
        result = session.scalars(select(Result)).one()
        assert result.superseded_by == new.id
        earlier = session.get(Job, old.id)
        assert earlier is not None and earlier.superseded_by == new.id and earlier.state is JobState.DONE


def test_superseded_before_it_ran(db: Database) -> None:
    _study(db)
    with db.session() as session:
        old = create_job(session, **_fields("1.1", ["1.1.1"]))[0]
    with db.session() as session:
        new = create_job(session, **_fields("1.1", ["1.1.1"], version="1.1.0"))[0]
        supersede_earlier_jobs(session, new)
    with db.session() as session:
        assert claim_job(session, old.id, redelivered=False) is None  # a worker will not run it
        earlier = session.get(Job, old.id)
        assert earlier is not None and earlier.state is JobState.SUPERSEDED and earlier.finished_at is not None


def test_overlapping_runs_the_first_to_end_the_job_wins(db: Database) -> None:
    """A message handed out again while its first worker still runs the job: two runs. Once one has ended
    the job, the other's writes leave it as it is: a done job never goes back to exporting or to failed."""
    _study(db)
    with db.session() as session:
        job_id = create_job(session, **_fields("1.1", ["1.1.1"]))[0].id
    with db.session() as session:
        assert claim_job(session, job_id, redelivered=False) is not None  # the first run
    with db.session() as session:
        assert claim_job(session, job_id, redelivered=True) is not None  # the second run takes it over
    with db.session() as session:
        assert set_job_state(session, job_id, JobState.EXPORTING, {"inference": 1.0})
        assert finish_job(session, job_id, JobState.DONE, {"export": 0.5})  # one run ends it
    with db.session() as session:
        assert not set_job_state(session, job_id, JobState.EXPORTING, {"inference": 9.0})  # the other, later
        assert not set_job_state(session, job_id, JobState.WAITING, {})
        assert not finish_job(session, job_id, JobState.FAILED, {"export": 9.0}, error="seg.dcm missing")
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.error, job.timings) == (JobState.DONE, None, {"inference": 1.0, "export": 0.5})
        kinds = session.scalars(select(Event.kind).where(Event.job_id == job_id).order_by(Event.id)).all()
        assert kinds == ["job-exporting", "job-done"]


def test_two_runs_recording_the_same_result_at_once_make_one_row(db: Database) -> None:
    """The overlapping run records the same object (same UID) between the other's look and its insert:
    it updates that row instead of failing the job on the unique constraint."""
    _study(db)
    with db.session() as session:
        job_id = create_job(session, **_fields("1.1", ["1.1.1"]))[0].id
    fields: dict[str, Any] = {
        "job_id": job_id,
        "kind": "SR",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.22",
        "sop_instance_uid": "2.25.77",
        "series_instance_uid": "2.25.78",
        "summary": {},
    }
    inserted, errors = threading.Event(), []

    def second_run() -> None:
        inserted.wait(timeout=30)
        try:
            with db.session() as session:
                record_result(session, **fields, path="/results/b.dcm")
        except Exception as exc:  # pragma: no cover - what the test must not see
            errors.append(exc)

    thread = threading.Thread(target=second_run)
    thread.start()
    with db.session() as session:  # the first run has inserted, not committed, when the second one looks
        record_result(session, **fields, path="/results/a.dcm")
        session.flush()
        inserted.set()
        thread.join(timeout=2)  # the second run is blocked on the row (PostgreSQL) or the file (SQLite)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    with db.session() as session:
        (row,) = session.scalars(select(Result).where(Result.sop_instance_uid == "2.25.77")).all()
        assert row.path == "/results/b.dcm"
