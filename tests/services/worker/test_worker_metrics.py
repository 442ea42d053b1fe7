"""The worker's metrics, as the pipeline counts them while it runs real jobs.

Real components: the example CT application in the worker's warm process, the validation gate
(highdicom, dciodvfy, PixelMed) and a C-STORE export to a port where nothing listens.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from hounsfield.config import Settings
from hounsfield.db import JobState
from hounsfield.demo.orthanc import free_port
from hounsfield.worker.pipeline import execute_job, resume_export
from tests.support import routed_job

MODEL = {"model": "CT lesion segmentation", "version": "1.0.0"}


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_job_whose_destination_is_down_times_its_stages_and_counts_the_wait_then_the_give_up(
    tmp_path: Path, settings: Settings
) -> None:
    closed = {"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port(), "retries": 1, "retry_backoff_s": 0.1,
              "wait_max_s": 1.0}  # fmt: skip
    settings = settings.model_copy(update={"destinations": settings.model_validate({"destinations": {"pacs": closed}})
                                           .destinations})  # fmt: skip
    context, job = routed_job(tmp_path, settings, 11)
    registry = context.metrics.registry
    assert execute_job(context, job.id) is JobState.WAITING
    for stage in ("queue_wait", "load", "inference", "validate"):
        assert _value(registry, "hounsfield_worker_job_stage_seconds_count", **MODEL, stage=stage) == 1, stage
    assert _value(registry, "hounsfield_worker_job_stage_seconds_sum", **MODEL, stage="inference") > 0
    unreachable = {"protocol": "dimse", "kind": "unreachable"}
    assert _value(registry, "hounsfield_worker_export_failures_total", **unreachable) == 1
    assert _value(registry, "hounsfield_worker_export_retries_total", when="delivery") == 1, "retries: 1"
    assert _value(registry, "hounsfield_worker_export_waits_total") == 1
    assert _value(registry, "hounsfield_worker_jobs_finished_total", **MODEL, outcome="failed") == 0, "it waits"

    time.sleep(1.1)  # past the destination's wait_max_s: the next attempt gives up
    assert resume_export(context, job.id) is JobState.FAILED
    assert _value(registry, "hounsfield_worker_export_retries_total", when="queued") == 1
    assert _value(registry, "hounsfield_worker_export_failures_total", **unreachable) == 2
    assert _value(registry, "hounsfield_worker_export_failures_total", protocol="dimse", kind="gave_up") == 1
    assert _value(registry, "hounsfield_worker_jobs_finished_total", **MODEL, outcome="failed") == 1
    assert _value(registry, "hounsfield_worker_validation_failures_total", validator="readable") == 0
    context.db.dispose()


def test_a_result_the_gate_cannot_read_counts_a_validation_failure(tmp_path: Path, settings: Settings) -> None:
    app = "tests.services.worker.unreadable_app:UnreadableResultApp"
    context, job = routed_job(tmp_path, settings, 12, app=app, destinations=[])
    assert execute_job(context, job.id) is JobState.FAILED
    registry = context.metrics.registry
    assert _value(registry, "hounsfield_worker_validation_failures_total", validator="readable") == 1
    assert _value(registry, "hounsfield_worker_jobs_finished_total", **MODEL, outcome="failed") == 1
    assert _value(registry, "hounsfield_worker_job_stage_seconds_count", **MODEL, stage="inference") == 1
    context.db.dispose()


def test_a_destination_missing_from_the_configuration_is_an_export_failure_of_its_own_kind(
    tmp_path: Path, settings: Settings
) -> None:
    settings = settings.model_copy(update={"destinations": {}})  # its deployment names "pacs", which is not there
    context, job = routed_job(tmp_path, settings, 13)
    assert execute_job(context, job.id) is JobState.FAILED
    registry = context.metrics.registry
    assert _value(registry, "hounsfield_worker_export_failures_total", protocol="none", kind="not_configured") == 1
    assert _value(registry, "hounsfield_worker_jobs_finished_total", **MODEL, outcome="failed") == 1
    assert _value(registry, "hounsfield_worker_job_stage_seconds_count", **MODEL, stage="validate") == 1
