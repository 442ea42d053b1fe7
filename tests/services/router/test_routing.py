"""Routing studies that completed together (``Router.route_many``, the router's thread), with a real
database: one transaction for them all, a savepoint for each; the jobs sent once committed; corrections
looked for once no study waits; a busy database tried again at once; the queue latency measured."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from hounsfield.catalog import prepare_database
from hounsfield.config import Settings
from hounsfield.contracts import CompletionTrigger, StudyComplete
from hounsfield.db import Database, Event, Job, Study, StudyState, database_unreachable, utcnow
from hounsfield.queues import Enqueuer, queue_depths
from hounsfield.router import routing
from hounsfield.router.metrics import RoutingMetrics
from hounsfield.router.routing import Router, RouterThread
from hounsfield.supervisor import LocalRedis
from tests.support import Order, index_series, wait_for

ROOT = "1.2.826.0.1.3680043.10.1392.88"
LATENCY = "hounsfield_router_queue_latency_seconds"


def _prepared(settings: Settings) -> Database:
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)  # the configuration's CT deployment (>= 8 CT instances), on queue routine
    return db


@pytest.fixture
def on_both(settings: Settings, database_url: str) -> Iterator[tuple[Settings, Database]]:
    """Settings and their prepared database, once on SQLite and once on PostgreSQL."""
    settings = settings.model_copy(update={"database_url": database_url})
    db = _prepared(settings)
    yield settings, db
    db.dispose()


@pytest.fixture
def prepared(settings: Settings) -> Iterator[tuple[Settings, Database]]:
    """Settings and their prepared database (this run's backend)."""
    db = _prepared(settings)
    yield settings, db
    db.dispose()


def _studies(db: Database, *numbers: int) -> list[str]:
    """Studies of one CT series of 8 instances each, indexed (receiving): each one the deployment takes."""
    uids = [f"{ROOT}.{n}" for n in numbers]
    for uid in uids:
        index_series(db, uid, f"{uid}.1", 8)
    return uids


def _complete(study_uid: str, trigger: CompletionTrigger = "manual", **fields: Any) -> StudyComplete:
    return StudyComplete(study_instance_uid=study_uid, trigger=trigger, **fields)


class Broker:
    """An enqueue callable: keeps each job sent, and whether the worker's side of the database (another
    engine) could read the job's row at that moment."""

    def __init__(self, db: Database) -> None:
        self.sent: list[Job] = []
        self.committed: list[bool] = []
        self._worker = Database(db.url)

    def __call__(self, job: Job) -> None:
        with self._worker.session() as session:
            self.committed.append(session.get(Job, job.id) is not None)
        self.sent.append(job)

    def close(self) -> None:
        self._worker.dispose()


def _study(db: Database, study_uid: str) -> tuple[StudyState, int, int]:
    """A study's state, its job rows and its events."""
    with db.session() as session:
        study = session.get(Study, study_uid)
        assert study is not None
        jobs = session.scalar(select(func.count()).select_from(Job).where(Job.study_instance_uid == study_uid))
        events = session.scalar(select(func.count()).select_from(Event).where(Event.study_instance_uid == study_uid))
        return study.state, jobs or 0, events or 0


def _busy(tmp_path: Path) -> OperationalError:
    """A real SQLite 'database is locked' (another process holds the file), as SQLAlchemy raises it."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool, connect_args={"timeout": 0})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT * FROM t"))
    except OperationalError as exc:
        assert database_unreachable(exc)
        return exc
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    raise AssertionError("the locked file was read")


def test_studies_routed_together_are_committed_at_once_and_a_failing_study_is_left_alone(
    on_both: tuple[Settings, Database], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings, db = on_both
    first, broken, last = _studies(db, 1, 2, 3)
    facts = routing.study_facts

    def failing_for_one(session: Any, study_uid: str) -> Any:
        if study_uid == broken:
            raise ValueError("a header nobody expected")
        return facts(session, study_uid)

    monkeypatch.setattr(routing, "study_facts", failing_for_one)
    commits: list[object] = []
    event.listen(db.engine, "commit", commits.append)
    broker = Broker(db)
    try:
        with caplog.at_level(logging.ERROR, logger=routing.__name__):
            routed = Router(settings, db, broker).route_many([_complete(first), _complete(broken), _complete(last)])
        assert [e.study_instance_uid for e in routed] == [first, last]
        assert len(commits) == 1, "one transaction for every study"
        assert [job.study_instance_uid for job in broker.sent] == [first, last]
        assert broker.committed == [True, True], "each job sent once its row was committed"
        assert _study(db, first)[:2] == _study(db, last)[:2] == (StudyState.ROUTED, 1)
        assert _study(db, broken) == (StudyState.RECEIVING, 0, 0), "its savepoint rolled back whole"
        assert any("routing failed for a study" in r.getMessage() for r in caplog.records)

        monkeypatch.undo()  # what failed is fixed: the study is routed when it completes again
        (again,) = Router(settings, db, broker).route_many([_complete(broken)])
        assert again.study_instance_uid == broken
        assert [job.study_instance_uid for job in broker.sent] == [first, last, broken]
        assert _study(db, broken)[:2] == (StudyState.ROUTED, 1)
    finally:
        broker.close()


def test_an_unreachable_database_while_routing_together_commits_nothing_and_sends_nothing(
    on_both: tuple[Settings, Database], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings, db = on_both
    studies = _studies(db, 11, 12, 13)
    busy = _busy(tmp_path)
    create_job = routing.create_job

    def busy_at_the_second(session: Any, **fields: Any) -> Any:
        if fields["study_instance_uid"] == studies[1]:  # the first study's savepoint is released by then
            raise busy
        return create_job(session, **fields)

    monkeypatch.setattr(routing, "create_job", busy_at_the_second)
    broker = Broker(db)
    router = Router(settings, db, broker)
    try:
        with pytest.raises(OperationalError) as raised:
            router.route_many([_complete(uid) for uid in studies])
        assert raised.value is busy
        assert broker.sent == []
        assert [_study(db, uid) for uid in studies] == [(StudyState.RECEIVING, 0, 0)] * 3, "nothing committed"

        monkeypatch.undo()  # the database answers again: every study is routed, once
        assert [e.study_instance_uid for e in router.route_many([_complete(uid) for uid in studies])] == studies
        assert [job.study_instance_uid for job in broker.sent] == studies
        assert [_study(db, uid)[:2] for uid in studies] == [(StudyState.ROUTED, 1)] * 3
    finally:
        broker.close()


def test_a_listener_commit_between_the_routings_read_and_write_does_not_fail_it_on_sqlite(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the write lock taken first, the routing's first write would find its snapshot stale (busy)."""
    settings = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'race.db'}"})
    db = _prepared(settings)
    listener = Database(settings.sqlalchemy_url)  # another process's connection to the same file
    (study,) = _studies(db, 21)
    state = routing.study_state
    indexing: list[threading.Thread] = []

    def listener_commits_meanwhile(session: Any, study_uid: str) -> Any:
        read = state(session, study_uid)
        if not indexing:  # the listener indexes an instance of another study now
            indexing.append(threading.Thread(target=index_series, args=(listener, f"{ROOT}.22", f"{ROOT}.22.1", 1)))
            indexing[0].start()
            indexing[0].join(timeout=0.5)
        return read

    monkeypatch.setattr(routing, "study_state", listener_commits_meanwhile)
    broker = Broker(db)
    try:
        routed = Router(settings, db, broker).route_many([_complete(study)])
        indexing[0].join(timeout=30)
        assert [e.study_instance_uid for e in routed] == [study]
        assert [job.study_instance_uid for job in broker.sent] == [study]
        assert _study(db, f"{ROOT}.22")[0] is StudyState.RECEIVING, "the listener's commit landed after"
    finally:
        broker.close()
        listener.dispose()
        db.dispose()


def _recording_corrections(monkeypatch: pytest.MonkeyPatch, order: Order) -> None:
    monkeypatch.setattr(
        routing, "recognise_corrections", lambda _s, _db, study_uid: order.add("corrections", study_uid)
    )


def _recording_batches(monkeypatch: pytest.MonkeyPatch, router: Router) -> list[list[str]]:
    batches: list[list[str]] = []
    route_many = router.route_many

    def recording(events: list[StudyComplete]) -> list[StudyComplete]:
        batches.append([e.study_instance_uid for e in events])
        return route_many(events)

    monkeypatch.setattr(router, "route_many", recording)
    return batches


def test_the_router_thread_routes_waiting_studies_together_and_then_looks_for_their_corrections(
    prepared: tuple[Settings, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, db = prepared
    studies = _studies(db, 31, 32, 33)
    order = Order()
    _recording_corrections(monkeypatch, order)
    router = Router(settings, db, lambda job: order.add("sent", job.study_instance_uid))
    batches = _recording_batches(monkeypatch, router)
    thread = RouterThread(router, resend_every_s=30)
    for uid in studies:  # they completed together, before the thread took any
        thread.submit(_complete(uid))
    thread.start()
    try:
        wait_for(lambda: sum(kind == "corrections" for kind, _ in order.events) == 3)
    finally:
        thread.stop()
    assert batches == [studies], "one transaction"
    assert order.events == [("sent", uid) for uid in studies] + [("corrections", uid) for uid in studies]


def test_a_study_completing_while_others_are_routed_is_routed_before_their_corrections_are_looked_for(
    prepared: tuple[Settings, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, db = prepared
    first, second = _studies(db, 41, 42)
    order = Order()
    _recording_corrections(monkeypatch, order)

    def send(job: Job) -> None:
        order.add("sent", job.study_instance_uid)
        if job.study_instance_uid == first:  # the second study completes while the first is being sent
            thread.submit(_complete(second))

    router = Router(settings, db, send)
    batches = _recording_batches(monkeypatch, router)
    thread = RouterThread(router, resend_every_s=30)
    thread.start()
    thread.submit(_complete(first))
    try:
        wait_for(lambda: sum(kind == "corrections" for kind, _ in order.events) == 2)
    finally:
        thread.stop()
    assert batches == [[first], [second]]
    assert order.events == [("sent", first), ("sent", second), ("corrections", first), ("corrections", second)]


def _busy_for(monkeypatch: pytest.MonkeyPatch, busy: OperationalError, times: int) -> list[float]:
    """``create_job`` meets a busy database ``times`` times, then works; returns when each try came."""
    tries: list[float] = []
    create_job = routing.create_job

    def flaky(session: Any, **fields: Any) -> Any:
        tries.append(time.monotonic())
        if len(tries) <= times:
            raise busy
        return create_job(session, **fields)

    monkeypatch.setattr(routing, "create_job", flaky)
    return tries


def _route_on_thread(
    prepared: tuple[Settings, Database],
    study: str,
    *,
    resend_every_s: float,
    timeout: float,
    metrics: RoutingMetrics | None = None,
) -> list[Job]:
    """Route ``study`` on a router thread of its own; the jobs it sent, once it sent one."""
    sent: list[Job] = []
    settings, db = prepared
    thread = RouterThread(Router(settings, db, sent.append, metrics=metrics), resend_every_s=resend_every_s)
    thread.start()
    thread.submit(_complete(study))
    try:
        wait_for(lambda: sent, timeout=timeout)
    finally:
        thread.stop()
    return sent


def test_a_busy_database_is_tried_again_at_once_a_few_times(
    prepared: tuple[Settings, Database], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, db = prepared
    (study,) = _studies(db, 51)
    tries = _busy_for(monkeypatch, _busy(tmp_path), times=3)
    registry = CollectorRegistry()
    submitted = time.monotonic()
    sent = _route_on_thread(prepared, study, resend_every_s=30, timeout=10, metrics=RoutingMetrics(registry))
    assert len(tries) == 4 and tries[-1] - submitted < 5
    assert [job.study_instance_uid for job in sent] == [study]
    assert _study(db, study)[:2] == (StudyState.ROUTED, 1)
    # Counted after the commit: the tries rolled back counted nothing.
    assert registry.get_sample_value("hounsfield_studies_completed_total", {"trigger": "manual"}) == 1
    assert registry.get_sample_value("hounsfield_router_jobs_created_total", {"queue": "routine"}) == 1
    assert registry.get_sample_value(f"{LATENCY}_count", {"queue": "routine", "trigger": "manual"}) == 1


def test_a_database_busy_beyond_the_quick_tries_is_routed_after_the_wait(
    prepared: tuple[Settings, Database], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, db = prepared
    (study,) = _studies(db, 52)
    tries = _busy_for(monkeypatch, _busy(tmp_path), times=4)
    sent = _route_on_thread(prepared, study, resend_every_s=1.0, timeout=15)
    assert len(tries) == 5
    assert tries[3] - tries[0] < 0.9, "the quick tries"
    assert tries[4] - tries[3] >= 1.0, "then the wait of resend_every_s"
    assert [job.study_instance_uid for job in sent] == [study]


def test_queue_latency_counts_from_the_later_of_the_completion_trigger_and_the_last_instance_indexed(
    prepared: tuple[Settings, Database],
) -> None:
    settings, db = prepared
    late_trigger, no_trigger, late_instance = _studies(db, 61, 62, 63)
    now = utcnow()
    last = {late_trigger: now - timedelta(seconds=10), no_trigger: now - timedelta(seconds=10)}
    last[late_instance] = now - timedelta(seconds=2)
    with db.session() as session:
        for uid, at in last.items():
            session.get(Study, uid).last_received_at = at  # type: ignore[union-attr]
    registry = CollectorRegistry()
    router = Router(settings, db, lambda job: None, metrics=RoutingMetrics(registry))
    events = [
        _complete(late_trigger, "quiet-period", at=now - timedelta(seconds=2)),
        _complete(no_trigger, "manual"),
        _complete(late_instance, "source-count", at=now - timedelta(seconds=10)),
    ]
    assert len(router.route_many(events)) == 3

    def observed(trigger: str) -> tuple[float | None, float | None]:
        labels = {"queue": "routine", "trigger": trigger}
        count = registry.get_sample_value(f"{LATENCY}_count", labels)
        return count, registry.get_sample_value(f"{LATENCY}_sum", labels)

    count, seconds = observed("quiet-period")
    assert count == 1 and seconds is not None and 2 <= seconds < 5, "from the trigger, later than the last instance"
    count, seconds = observed("manual")
    assert count == 1 and seconds is not None and 10 <= seconds < 13, "no trigger time: from the last instance"
    count, seconds = observed("source-count")
    assert count == 1 and seconds is not None and 2 <= seconds < 5, "from the last instance, later than the trigger"


def test_no_queue_latency_is_observed_for_a_job_the_broker_did_not_take(
    prepared: tuple[Settings, Database],
) -> None:
    settings, db = prepared
    (study,) = _studies(db, 64)

    def away(job: Job) -> None:
        raise ConnectionError("the broker is away")

    registry = CollectorRegistry()
    router = Router(settings, db, away, metrics=RoutingMetrics(registry))
    router.route_many([_complete(study, at=utcnow())])
    assert router.unsent == 1
    assert registry.get_sample_value(f"{LATENCY}_count", {"queue": "routine", "trigger": "manual"}) in (None, 0.0)
    assert registry.get_sample_value("hounsfield_router_jobs_created_total", {"queue": "routine"}) == 1


def test_warming_the_router_up_connects_to_the_broker_and_declares_its_queues(
    prepared: tuple[Settings, Database], redis_server: LocalRedis
) -> None:
    settings, db = prepared
    settings = settings.model_copy(update={"redis_url": redis_server.url})
    broker = redis.Redis.from_url(settings.broker_url)
    assert broker.smembers("_kombu.binding.routine") == set()
    router = Router(settings, db, Enqueuer(settings))
    router.warm_up()
    bound = {member.rsplit(b"\x06\x16", 1)[-1] for member in broker.smembers("_kombu.binding.routine")}
    assert bound == {b"stat", b"routine", b"batch"}
    (study,) = _studies(db, 71)
    router.route_many([_complete(study)])
    assert queue_depths(broker) == {"stat": 0, "routine": 1, "batch": 0}, "sent to its own queue only"
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        Router(settings, db, Enqueuer(settings)).warm_up()


def test_a_study_whose_announcement_fails_does_not_keep_the_others_jobs_from_the_broker(
    prepared: tuple[Settings, Database], caplog: pytest.LogCaptureFixture
) -> None:
    settings, db = prepared
    first, second = _studies(db, 72, 73)
    sent: list[Job] = []

    def enqueue(job: Job) -> None:
        if job.study_instance_uid == first:
            raise RuntimeError("a bug in the first study's announcement")  # not the broker's refusal
        sent.append(job)

    router = Router(settings, db, enqueue)
    router._send = lambda job: (enqueue(job), True)[1]  # type: ignore[method-assign]  # a failure _send does not catch
    with caplog.at_level(logging.ERROR):
        assert len(router.route_many([_complete(first), _complete(second)])) == 2
    assert [job.study_instance_uid for job in sent] == [second]
    assert "announcing a routed study failed" in caplog.text
    assert _study(db, first)[:2] == (StudyState.ROUTED, 1), "its job stays queued in the database"
