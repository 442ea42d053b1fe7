"""Worker faults with real services: a worker killed mid-inference, Redis restarted under a backlog.

Real components: redis-server (append-only, as ``hounsfield up`` runs it), ``hounsfield worker``
processes running the example CT lesion MAP, Orthanc as the PACS, the registry's tables.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from orthanc_api_client import OrthancApiClient
from sqlalchemy import make_url, select

from hounsfield.catalog import prepare_database
from hounsfield.config import Settings, load_settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Event, Job, JobState, Result
from hounsfield.demo.orthanc import LocalOrthanc, free_port
from hounsfield.demo.stack import CT_LESION_DEPLOYMENT
from hounsfield.queues import Enqueuer
from hounsfield.router.routing import Router
from hounsfield.supervisor import LocalRedis
from tests.services.db import postgres
from tests.support import index_files, write_study

REPO = Path(__file__).resolve().parents[3]
VISIBILITY_S = 20.0


class Worker:
    """``hounsfield worker`` as a process of its own."""

    def __init__(self, config: Path, name: str) -> None:
        self.log = (config.parent / f"{name}.log").open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO), "TCP_NODELAY": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hounsfield.cli", "worker", "--config", str(config)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path, free_port())
    server.start()
    yield server
    server.stop()


def _config(tmp_path: Path, redis: LocalRedis, database_url: str | None, **sections: Any) -> Settings:
    body: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "redis_url": redis.url,
        "worker": {"visibility_timeout_s": VISIBILITY_S},
        **sections,
    }
    if database_url:
        body["database_url"] = database_url
    path = tmp_path / "hounsfield.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_settings(path)


def _route(settings: Settings, db: Database, files: list[Path]) -> Job:
    study_uid = index_files(db, files)
    (job,) = Router(settings, db, Enqueuer(settings)).on_study_complete(
        StudyComplete(study_instance_uid=study_uid, trigger="manual")
    )
    return job


def _wait(db: Database, ids: list[str], timeout: float) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as session:
            jobs = session.scalars(select(Job).where(Job.id.in_(ids))).all()
        if len(jobs) == len(ids) and all(j.state.final for j in jobs):
            return list(jobs)
        assert time.monotonic() < deadline, sorted(str(j.state) for j in jobs)
        time.sleep(0.5)


def test_a_worker_killed_mid_inference_hands_the_job_on_and_one_result_set_arrives(
    tmp_path: Path, redis: LocalRedis, default_database_url: str | None
) -> None:
    pacs = LocalOrthanc(tmp_path / "orthanc", aet="KILLPACS")
    pacs.start()
    destination = {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}}
    deployment = {**CT_LESION_DEPLOYMENT, "destinations": ["pacs"]}
    settings = _config(tmp_path, redis, default_database_url, destinations=destination, deployments=[deployment])
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    workers = [Worker(tmp_path / "hounsfield.yaml", name) for name in ("worker-a", "worker-b")]
    try:
        _, files = write_study(tmp_path / "study", seed=77, shape=(24, 64, 64))
        job = _route(settings, db, files)
        deadline = time.monotonic() + 120
        while True:  # the worker that claimed it, with its application running in a child
            with db.session() as session:
                running = session.scalars(
                    select(Event).where(Event.job_id == job.id, Event.kind == "job-running")
                ).first()
            if running is not None:
                pid = int(running.detail["worker"].rsplit(":", 1)[1])
                if _children(pid):
                    break
            assert time.monotonic() < deadline, "no worker started the job"
            time.sleep(0.05)
        (killed,) = [w for w in workers if w.process.pid == pid]
        app_children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        killed.process.wait()
        gone_by = time.monotonic() + 10
        while any(_alive(child) for child in app_children):
            assert time.monotonic() < gone_by, "the application's run outlived its worker"
            time.sleep(0.1)

        (finished,) = _wait(db, [job.id], timeout=VISIBILITY_S + 120)
        assert finished.state is JobState.DONE, finished.error
        with db.session() as session:
            runs = session.scalars(
                select(Event).where(Event.job_id == job.id, Event.kind == "job-running").order_by(Event.id)
            ).all()
            results = session.scalars(select(Result).where(Result.job_id == job.id)).all()
        assert [r.detail["worker"].endswith(f":{pid}") for r in runs] == [True, False], "the other worker took over"
        assert sorted(r.kind for r in results) == ["SEG", "SR"]
        orthanc = OrthancApiClient(pacs.url)
        stored = orthanc.studies.get_instances_ids(orthanc.studies.lookup(finished.study_instance_uid))
        assert len(stored) == 2, "exactly one result set reached the PACS"
        assert not (settings.data_dir / "jobs" / job.id).exists(), "the killed run's workspace went with the job's end"
    finally:
        for worker in workers:
            worker.stop()
        db.dispose()
        pacs.stop()


def test_a_worker_told_to_stop_ends_its_running_job_first_and_takes_no_other(
    tmp_path: Path, redis: LocalRedis, default_database_url: str | None
) -> None:
    """SIGTERM (KEDA scaling in, an upgrade, a node drain) starts Celery's warm shutdown: the worker takes no
    further job, ends the one it runs and records its end, then exits. The chart's grace period leaves time
    for the longest job (tests/deploy/test_chart.py). Here the job runs until its deployment's timeout."""
    sleeper = {**CT_LESION_DEPLOYMENT, "app": "tests.e2e.sleeping_app:SleepingApp", "timeout_s": 8, "destinations": []}
    settings = _config(tmp_path, redis, default_database_url, deployments=[sleeper])
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    worker = Worker(tmp_path / "hounsfield.yaml", "worker")
    try:
        _, files = write_study(tmp_path / "study", seed=78, shape=(8, 32, 32))
        running = _route(settings, db, files)
        deadline = time.monotonic() + 120
        while True:  # the application runs, in the worker's child
            with db.session() as session:
                started = session.scalars(
                    select(Event).where(Event.job_id == running.id, Event.kind == "job-running")
                ).first()
            if started is not None and _children(worker.process.pid):
                break
            assert time.monotonic() < deadline, "the worker did not start the job"
            time.sleep(0.05)
        _, more = write_study(tmp_path / "next", seed=79, shape=(8, 32, 32))
        waiting = _route(settings, db, more)
        worker.process.send_signal(signal.SIGTERM)
        time.sleep(2)
        assert worker.process.poll() is None, "the worker went with its job still running"
        assert worker.process.wait(timeout=60) == 0
        with db.session() as session:
            ended = session.get(Job, running.id)
            queued = session.get(Job, waiting.id)
            runs = session.scalars(select(Event).where(Event.kind == "job-running")).all()
        assert ended is not None and ended.state is JobState.TIMED_OUT, "its end was recorded before it exited"
        assert queued is not None and not queued.state.final, "the next job stays queued for another worker"
        assert [run.job_id for run in runs] == [running.id]
    finally:
        worker.stop()
        db.dispose()


def test_twenty_queued_studies_survive_a_redis_restart(
    tmp_path: Path, redis: LocalRedis, default_database_url: str | None
) -> None:
    deployment = {**CT_LESION_DEPLOYMENT, "destinations": []}  # results kept
    settings = _config(tmp_path, redis, default_database_url, deployments=[deployment])
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    ids = []
    for i in range(20):
        _, files = write_study(tmp_path / f"study{i}", seed=500 + i, shape=(8, 32, 32))
        ids.append(_route(settings, db, files).id)
    redis.stop()  # SIGTERM: redis-server writes its append-only file and exits
    redis.start()
    worker = Worker(tmp_path / "hounsfield.yaml", "worker")
    try:
        jobs = _wait(db, ids, timeout=600)
    finally:
        worker.stop()
        db.dispose()
    assert sorted(str(j.state) for j in jobs) == ["done"] * 20, [j.error for j in jobs if j.error]


def _database_away_mid_job(
    tmp_path: Path, redis: LocalRedis, postgres_server: str, *, away_s: float, retry_max_s: float
) -> tuple[Job, list[str], list[str]]:
    """Run one CT lesion job on a real worker; while its application runs, the database goes away until the
    worker has met it, and ``away_s`` longer. Returns the job as it ended, its events' kinds and its results' kinds."""
    with postgres.scratch_database(postgres_server) as url:
        worker_settings = {
            "visibility_timeout_s": VISIBILITY_S,
            "database_retry_s": 1.0,
            "database_retry_max_s": retry_max_s,
        }
        deployment = {**CT_LESION_DEPLOYMENT, "destinations": []}
        settings = _config(tmp_path, redis, url, worker=worker_settings, deployments=[deployment])
        db = Database(settings.sqlalchemy_url)
        prepare_database(db, settings)
        name = make_url(url).database
        assert name is not None
        worker = Worker(tmp_path / "hounsfield.yaml", "worker")
        try:
            _, files = write_study(tmp_path / "study", seed=80, shape=(24, 64, 64))
            job = _route(settings, db, files)
            deadline = time.monotonic() + 120
            while True:  # the worker has claimed the job: its application runs now (about 10 s here)
                with db.session() as session:
                    if session.scalars(
                        select(Event).where(Event.job_id == job.id, Event.kind == "job-running")
                    ).first():
                        break
                assert time.monotonic() < deadline, "the worker did not start the job"
                time.sleep(0.05)
            db.dispose()
            postgres.allow_connections(postgres_server, name, allowed=False)
            log = tmp_path / "worker.log"
            while "the database is unreachable" not in log.read_text():  # the worker met it, after inference
                assert time.monotonic() < deadline + 120, "the worker never met the database away"
                time.sleep(0.2)
            time.sleep(away_s)  # ... and it stays away a while longer
            postgres.allow_connections(postgres_server, name, allowed=True)
            (ended,) = _wait(db, [job.id], timeout=120)
            with db.session() as session:
                kinds = list(session.scalars(select(Event.kind).where(Event.job_id == job.id).order_by(Event.id)).all())
                results = sorted(session.scalars(select(Result.kind).where(Result.job_id == job.id)).all())
        finally:
            worker.stop()
            db.dispose()
        return ended, kinds, results


@pytest.mark.postgresql
def test_a_job_that_meets_a_postgresql_restart_runs_again_and_is_done(
    tmp_path: Path, redis: LocalRedis, postgres_server: str
) -> None:
    """Found by the soak: a job whose worker met PostgreSQL restarting was left running for ever. Its task
    now runs again once the database answers, takes over the job it left running, and ends it done."""
    ended, kinds, results = _database_away_mid_job(tmp_path, redis, postgres_server, away_s=3.0, retry_max_s=3600.0)
    assert ended.state is JobState.DONE, ended.error
    assert results == ["SEG", "SR"]
    assert kinds.count("job-running") == 2 and kinds.count("job-done") == 1 and "job-failed" not in kinds


@pytest.mark.postgresql
def test_a_job_whose_postgresql_stays_away_past_the_limit_fails_with_that_reason(
    tmp_path: Path, redis: LocalRedis, postgres_server: str
) -> None:
    """``worker.database_retry_max_s``: past it the job is failed with that reason (written as soon as the
    database answers again), not run again."""
    ended, kinds, results = _database_away_mid_job(tmp_path, redis, postgres_server, away_s=5.0, retry_max_s=2.0)
    assert ended.state is JobState.FAILED
    assert ended.error is not None and "worker.database_retry_max_s" in ended.error
    assert kinds.count("job-running") == 1 and results == []
