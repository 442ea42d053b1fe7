"""The registry's metrics: the queues' depths read from a real redis-server and the unfinished jobs read
from the database at scrape time, and the API's requests by route template, method and status."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from hounsfield.access import Role
from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Job, JobState
from hounsfield.db.jobs import set_job_state
from hounsfield.queues import RUN_JOB_TASK, make_celery
from hounsfield.registry.app import create_app
from hounsfield.router.routing import Router
from hounsfield.supervisor import LocalRedis
from tests.support import bearer, index_series

STUDY = "1.2.826.0.1.3680043.10.1392.31"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(client: TestClient) -> Samples:
    text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _client(settings: Settings, tokens: dict[Role, str], **registry: object) -> TestClient:
    tuned = settings.model_copy(update={"registry": settings.registry.model_copy(update=registry)})
    return TestClient(create_app(tuned), headers=bearer(tokens[Role.VIEWER]))


def test_queue_depths_are_read_from_redis_at_each_scrape(
    settings: Settings, tokens: dict[Role, str], redis_server: LocalRedis
) -> None:
    settings = settings.model_copy(update={"redis_url": redis_server.url})
    client = _client(settings, tokens)
    assert _samples(client)[("hounsfield_queue_depth", (("queue", "stat"),))] == 0
    celery = make_celery(settings)
    sent = {"stat": 2, "routine": 3, "batch": 1}
    for queue, count in sent.items():
        for i in range(count):
            celery.send_task(RUN_JOB_TASK, args=[f"{queue}-{i}"], queue=queue)
    celery.send_task(RUN_JOB_TASK, args=["urgent"], queue="stat", priority=9)  # kombu keeps it under its own key
    samples = _samples(client)
    assert {q: samples[("hounsfield_queue_depth", (("queue", q),))] for q in sent} == {
        "stat": 3,
        "routine": 3,
        "batch": 1,
    }
    assert samples[("hounsfield_registry_source_up", (("source", "broker"),))] == 1

    redis_server.stop()
    samples = _samples(client)
    assert samples[("hounsfield_registry_source_up", (("source", "broker"),))] == 0
    assert not [key for key in samples if key[0] == "hounsfield_queue_depth"], "no depth is made up"
    assert samples[("hounsfield_registry_source_up", (("source", "database"),))] == 1


def test_unfinished_jobs_are_counted_by_state_up_to_the_cap(settings: Settings, tokens: dict[Role, str]) -> None:
    db = Database(settings.sqlalchemy_url)
    client = _client(settings, tokens, metrics_jobs_count_max=2)  # migrates the database
    queued: list[Job] = []
    router = Router(settings, db, queued.append)
    for i in range(5):
        index_series(db, f"{STUDY}.{i}", f"{STUDY}.{i}.1", 8)
        router.on_study_complete(StudyComplete(study_instance_uid=f"{STUDY}.{i}", trigger="manual"))
    with db.session() as session:
        set_job_state(session, queued[0].id, JobState.RUNNING, {})
        set_job_state(session, queued[1].id, JobState.DONE, {})
    samples = _samples(client)
    jobs = {state: samples[("hounsfield_jobs", (("state", state),))] for state in ("queued", "running", "waiting")}
    assert jobs == {"queued": 2, "running": 1, "waiting": 0}, "three queued, counted up to the cap of 2"
    assert not [key for key in samples if key == ("hounsfield_jobs", (("state", "done"),))], "finished: not counted"
    with db.session() as session:
        set_job_state(session, queued[2].id, JobState.WAITING, {})
    samples = _samples(client)
    assert samples[("hounsfield_jobs", (("state", "queued"),))] == 2
    assert samples[("hounsfield_jobs", (("state", "waiting"),))] == 1
    db.dispose()


def test_requests_are_counted_by_route_template_method_and_status(settings: Settings, tokens: dict[Role, str]) -> None:
    client = _client(settings, tokens)
    client.get("/health")
    client.get("/jobs/no-such-job")
    client.get("/jobs/another-missing-job")
    client.get("/jobs", headers={"Authorization": "Bearer wrong"})
    samples = _samples(client)
    requests = "hounsfield_registry_http_requests_total"
    assert samples[(requests, (("handler", "/health"), ("method", "GET"), ("status", "200")))] == 1
    assert samples[(requests, (("handler", "/jobs/{job_id}"), ("method", "GET"), ("status", "404")))] == 2
    assert samples[(requests, (("handler", "/jobs"), ("method", "GET"), ("status", "401")))] == 1
    assert not [key for key in samples if "no-such-job" in str(key)], "paths never become labels"
    latency = "hounsfield_registry_http_request_duration_seconds_count"
    assert samples[(latency, (("handler", "/jobs/{job_id}"), ("method", "GET")))] == 2
    assert not [key for key in samples if ("handler", "/metrics") in key[1]], "scrapes are not counted"
