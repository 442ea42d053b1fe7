"""The router's side of the broker: each job's message carries its study's correlation id (a real redis-server)."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from hounsfield.config import Settings
from hounsfield.db import Job
from hounsfield.demo.orthanc import free_port
from hounsfield.logs import study_correlation_id
from hounsfield.queues import STUDY_HEADER, Enqueuer
from hounsfield.supervisor import LocalRedis


def test_a_jobs_message_carries_its_study_correlation_id_and_never_the_uid(settings: Settings, tmp_path: Path) -> None:
    broker = LocalRedis(tmp_path, free_port())
    broker.start()
    try:
        configured = settings.model_copy(update={"redis_url": broker.url})
        uid = "1.2.826.0.1.3680043.10.1392.77.5"
        job = Job(id="job-42", study_instance_uid=uid, queue="stat")
        Enqueuer(configured)(job)
        (raw,) = redis.Redis.from_url(broker.url).lrange("stat", 0, -1)
    finally:
        broker.stop()
    message = json.loads(raw)
    assert message["headers"][STUDY_HEADER] == study_correlation_id(uid, settings.log_correlation_key)
    assert message["headers"]["task"] == "hounsfield.run_job"
    assert uid.encode() not in raw, "the broker is no place for the study's UID either"
