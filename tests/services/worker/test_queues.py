"""Priority queues with a real redis-server and a real ``hounsfield worker``.

A stat job queued behind a backlog of batch jobs is taken next; a backlog of stat jobs does not
starve batch jobs (the worker takes its queues in turn). The jobs' series have no files, so each
fails at pre-flight at once: what is measured is the order in which the worker claimed them
(``started_at``), which is what the queues decide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from hounsfield.catalog import prepare_database
from hounsfield.config import Settings, load_settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Job
from hounsfield.demo.orthanc import free_port
from hounsfield.queues import Enqueuer, queue_depths
from hounsfield.router.routing import Router, RouterThread
from hounsfield.supervisor import LocalRedis
from tests.support import index_series, wait_for

REPO = Path(__file__).resolve().parents[3]
ROOT = "1.2.826.0.1.3680043.10.1392.77"


def _deployment(name: str, queue: str, pattern: str) -> dict[str, object]:
    return {
        "name": name,
        "app": "tests.e2e.raising_app:RaisingApp",
        "model_path": str(REPO / "operators" / "ct_lesion_seg" / "models" / "model.ts"),
        "model_name": name,
        "model_version": "1.0.0",
        "queue": queue,
        "rule": {"kind": "series_description", "regex": pattern},
    }


@pytest.fixture
def config(tmp_path: Path, default_database_url: str | None, redis_server: LocalRedis) -> Path:
    path = tmp_path / "hounsfield.yaml"
    body: dict[str, object] = {
        "data_dir": str(tmp_path / "data"),
        "redis_url": redis_server.url,
        "worker": {"ready_file": str(tmp_path / "worker-ready"), "metrics_port": free_port()},
        "deployments": [_deployment("urgent", "stat", "^STAT"), _deployment("cohort", "batch", "^BATCH")],
    }
    if default_database_url:
        body["database_url"] = default_database_url
    path.write_text(yaml.safe_dump(body))
    return path


def _queue(settings: Settings, db: Database, router: Router, kind: str, index: int) -> str:
    study = f"{ROOT}.{index}"
    index_series(db, study, f"{study}.1", 2, description=f"{kind} {index}", folder=settings.data_dir / "absent")
    (job,) = router.on_study_complete(StudyComplete(study_instance_uid=study, trigger="manual"))
    return job.id


def _worker_metrics(settings: Settings) -> Callable[..., float]:
    text = httpx.get(f"http://127.0.0.1:{settings.worker.metrics_port}/metrics", timeout=10).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return lambda name, **labels: samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _claim_order(db: Database, ids: list[str], timeout: float = 180.0) -> list[str]:
    """The job ids in the order the worker claimed them, once every one is finished."""
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as session:
            jobs = session.scalars(select(Job).where(Job.id.in_(ids))).all()
        if len(jobs) == len(ids) and all(j.state.final for j in jobs):
            return [j.id for j in sorted(jobs, key=lambda j: (j.started_at, j.id))]
        assert time.monotonic() < deadline, [j.state for j in jobs]
        time.sleep(0.2)


def test_stat_jumps_a_batch_backlog_and_batch_is_not_starved(config: Path) -> None:
    settings = load_settings(config)
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    router = Router(settings, db, Enqueuer(settings))
    backlog = [_queue(settings, db, router, "BATCH", i) for i in range(12)]
    urgent = _queue(settings, db, router, "STAT", 100)

    log = (config.parent / "worker.log").open("wb")
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # a caller's path kept
    env = {**os.environ, "PYTHONPATH": pythonpath, "TCP_NODELAY": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "hounsfield.cli", "worker", "--config", str(config)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ready = Path(settings.worker.ready_file or "")
    try:
        wait_for(ready.exists, timeout=60)  # the chart's readiness probe: the worker consumes
        assert ready.read_text().strip() == str(worker.pid)
        order = _claim_order(db, [*backlog, urgent])
        assert order.index(urgent) <= 1, f"the stat job was claimed {order.index(urgent) + 1}th of 13"
        served = _worker_metrics(settings)  # the worker's own /metrics counted the jobs its tasks ran
        for model, count in (("urgent", 1), ("cohort", 12)):
            labels = {"model": model, "version": "1.0.0"}
            assert served("hounsfield_worker_jobs_finished_total", outcome="failed", **labels) == count
            assert served("hounsfield_worker_job_stage_seconds_count", stage="queue_wait", **labels) == count

        # Now a stat backlog and a batch backlog together: the worker takes its queues in turn. The jobs
        # are made first and published back to back (milliseconds), so that both backlogs are there.
        made: list[Job] = []
        holding = Router(settings, db, made.append)
        stats = [_queue(settings, db, holding, "STAT", 200 + i) for i in range(8)]
        batches = [_queue(settings, db, holding, "BATCH", 300 + i) for i in range(8)]
        publish = Enqueuer(settings)
        for job in made:
            publish(job)
        order = _claim_order(db, stats + batches)
        last_stat = max(order.index(job) for job in stats)
        before = sum(order.index(job) < last_stat for job in batches)
        assert before >= 3, f"only {before} batch job(s) ran before the stat backlog was done: batch starves"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        db.dispose()
    assert not ready.exists(), "a stopped worker is not ready"
    with db.session() as session:
        failed = session.scalars(select(Job.error).where(Job.id == urgent)).one()
    assert failed is not None and "not readable DICOM" in failed  # each job ran (and failed at pre-flight)


def test_a_job_routed_while_redis_is_down_is_queued_once_it_is_back(config: Path, redis_server: LocalRedis) -> None:
    """The router commits the job, Redis refuses the message (stopped): the job is kept and sent again
    by the router's thread when Redis is back, once, with nobody restarting the listener."""
    settings = load_settings(config)
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    router = Router(settings, db, Enqueuer(settings))
    thread = RouterThread(router, resend_every_s=0.5)
    thread.start()
    redis_server.stop()
    try:
        study = f"{ROOT}.900"
        index_series(db, study, f"{study}.1", 2, description="STAT 900", folder=settings.data_dir / "absent")
        thread.submit(StudyComplete(study_instance_uid=study, trigger="manual"))
        wait_for(lambda: router.unsent == 1, timeout=30)  # committed, not on Redis
        with db.session() as session:
            (job,) = session.scalars(select(Job).where(Job.study_instance_uid == study)).all()
            assert job.state.value == "queued"
        redis_server.start()
        wait_for(lambda: router.unsent == 0, timeout=30)
        depths = queue_depths(redis.Redis.from_url(settings.broker_url))
        assert depths == {"stat": 1, "routine": 0, "batch": 0}, "sent again once, on its own queue"
    finally:
        thread.stop()
