"""The listener's Prometheus metrics, read over HTTP as a scraper would."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hounsfield.config import Settings
from hounsfield.db import Job, Study
from hounsfield.demo.orthanc import free_port
from hounsfield.demo.stack import StackFailed, storescu
from hounsfield.listener.server import Listener
from tests.support import wait_for, write_study


def _serve(settings: Settings, **listener: object) -> Listener:
    update = {"metrics_port": free_port(), **listener}
    tuned = settings.model_copy(update={"listener": settings.listener.model_copy(update=update)})
    running = Listener(tuned, [].append)
    running.start()
    return running


@pytest.fixture
def serve(settings: Settings) -> Iterator[list[Listener]]:
    started: list[Listener] = []
    yield started
    for running in started:
        running.stop()


def _samples(listener: Listener) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = listener.settings.listener.metrics_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_stored_duplicate_and_rejected_are_counted(serve: list[Listener], settings: Settings, tmp_path: Path) -> None:
    sources = {"ct": {"ae_title": "CT01"}}
    listener = _serve(settings, open_mode=False, sources=settings.listener.model_validate({"sources": sources}).sources)
    serve.append(listener)
    _, files = write_study(tmp_path / "ct", seed=5)
    port = listener.settings.listener.port
    storescu(files[:3], host="127.0.0.1", port=port, called_ae="HOUNSFIELD", calling_ae="CT01")
    storescu(files[:1], host="127.0.0.1", port=port, called_ae="HOUNSFIELD", calling_ae="CT01")
    with pytest.raises(StackFailed):
        storescu(files[:1], host="127.0.0.1", port=port, called_ae="HOUNSFIELD", calling_ae="STRANGER")
    listener.flush()
    samples = _samples(listener)
    assert samples[("hounsfield_listener_instances_total", (("outcome", "stored"), ("transport", "dimse")))] == 3
    assert samples[("hounsfield_listener_instances_total", (("outcome", "duplicate"), ("transport", "dimse")))] == 1
    written = sum(path.stat().st_size for path in (listener.settings.data_dir / "studies").rglob("*.dcm"))
    assert samples[("hounsfield_listener_stored_bytes_total", (("transport", "dimse"),))] == written
    assert samples[("hounsfield_listener_associations_total", (("outcome", "accepted"), ("transport", "dimse")))] == 2
    assert samples[("hounsfield_listener_associations_total", (("outcome", "rejected"), ("transport", "dimse")))] == 1
    assert samples[("hounsfield_store_free_bytes", ())] > 0
    assert samples[("hounsfield_listener_journal_backlog_instances", ())] == 0, "everything was applied"
    assert samples[("hounsfield_listener_journal_backlog_bytes", ())] == 0


def test_disk_floor_refusals_show_in_the_metrics(serve: list[Listener], settings: Settings, tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    listener = _serve(settings, min_free_disk_mb=free_mb + 1024)  # the floor is above what is free
    serve.append(listener)
    _, files = write_study(tmp_path / "ct", seed=6)
    with pytest.raises(StackFailed):  # storescu reports the 0xA700 status as a failure and halts
        storescu(files[:2], host="127.0.0.1", port=listener.settings.listener.port, called_ae="HOUNSFIELD",
                 calling_ae="CT01")  # fmt: skip
    samples = _samples(listener)
    refused = ("hounsfield_listener_instances_total", (("outcome", "out_of_resources"), ("transport", "dimse")))
    assert samples[refused] == 1, "storescu halts after the first refusal"
    assert samples[("hounsfield_store_free_floor_bytes", ())] == (free_mb + 1024) * 2**20
    assert samples[("hounsfield_store_free_bytes", ())] < samples[("hounsfield_store_free_floor_bytes", ())]
    assert not list((listener.settings.data_dir / "studies").rglob("*.dcm")), "nothing written below the floor"


def test_completeness_and_routing_are_measured_by_trigger_and_queue(
    serve: list[Listener], settings: Settings, tmp_path: Path
) -> None:
    queued: list[Job] = []
    # Two associations, not completing on release: the quiet period (1 s) completes the study after the second.
    update = {"metrics_port": free_port(), "complete_on_release": False}
    tuned = settings.model_copy(update={"listener": settings.listener.model_copy(update=update)})
    listener = Listener(tuned, queued.append)
    listener.start()
    serve.append(listener)
    study_uid, files = write_study(tmp_path / "ct", seed=7)
    port = tuned.listener.port
    storescu(files[:2], host="127.0.0.1", port=port, called_ae="HOUNSFIELD", calling_ae="CT01")
    time.sleep(0.3)
    storescu(files[2:], host="127.0.0.1", port=port, called_ae="HOUNSFIELD", calling_ae="CT01")
    wait_for(lambda: queued, timeout=30)  # complete after the quiet period, then routed to the CT deployment
    samples = _samples(listener)
    trigger = ("trigger", "quiet-period")
    assert samples[("hounsfield_studies_completed_total", (trigger,))] == 1
    histogram = "hounsfield_study_completeness_seconds"
    for since in ("first_instance", "last_instance"):
        assert samples[(f"{histogram}_count", (("since", since), trigger))] == 1, since
        assert samples[(f"{histogram}_bucket", (("le", "+Inf"), ("since", since), trigger))] == 1
    since_first = samples[(f"{histogram}_sum", (("since", "first_instance"), trigger))]
    since_last = samples[(f"{histogram}_sum", (("since", "last_instance"), trigger))]
    with listener.db.session() as session:
        study = session.get(Study, study_uid)
        assert study is not None and study.completed_at is not None
        spread = (study.last_received_at - study.first_received_at).total_seconds()
        assert since_last == pytest.approx((study.completed_at - study.last_received_at).total_seconds())
    assert since_last >= 1.0, "the quiet period passed after the last instance"
    assert spread >= 0.3 and since_first - since_last == pytest.approx(spread), "from the first instance, and the last"
    assert samples[("hounsfield_router_jobs_created_total", (("queue", queued[0].queue),))] == 1
    assert samples[("hounsfield_router_jobs_enqueued_total", (("queue", queued[0].queue),))] == 1
    latency = "hounsfield_router_queue_latency_seconds"
    labels = (("queue", queued[0].queue), trigger)
    assert samples[(f"{latency}_count", labels)] == 1
    # From the study being complete (the quiet period's trigger, 1 s after its last instance) to the
    # broker: routing alone, the quiet period not counted.
    assert 0 < samples[(f"{latency}_sum", labels)] < since_last
