"""A version's recent inputs against its reference: no alarm on the same distribution or too few jobs, a
shift of scanner, slice thickness or intensity detected once (event, metric), cleared once, and an
explicit reference window honoured (audited). SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select

from hounsfield.access import Principal, Role
from hounsfield.db import Database, Event, utcnow
from hounsfield.db.access import AuditEntry
from hounsfield.drift import DriftCollector, ReferenceWindow, evaluate, set_reference_window
from hounsfield.errors import Invalid, NotFound
from tests.services.drift.profiled import ProfiledJobs

DEVELOPER = Principal("dev", Role.MODEL_DEVELOPER, "api")

SHIFTS = {
    "scanner": {"scanner": ("Other / CT-9",)},
    "slice_thickness_mm": {"slice_thickness_mm": (5.0,)},
    "intensity_mean": {"intensity_mean": -350.0},
}


def _events(jobs: ProfiledJobs) -> list[tuple[str, str | None, dict]]:
    with jobs.db.session() as session:
        rows = session.scalars(select(Event).where(Event.actor == "drift").order_by(Event.id)).all()
        return [(e.kind, e.job_id, e.detail) for e in rows]


def _metrics(jobs: ProfiledJobs) -> dict[tuple[str, ...], float]:
    registry = CollectorRegistry()
    registry.register(DriftCollector(jobs.settings, jobs.db))
    samples = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = sample.labels
            feature = [labels["feature"]] if "feature" in labels else []
            samples[(sample.name, labels["model"], labels["version"], *feature)] = sample.value
    assert b"hounsfield_drift_drifting" in generate_latest(registry)
    return samples


def test_the_same_distribution_with_noise_raises_no_alarm(jobs: ProfiledJobs) -> None:
    statuses = jobs.run(40 + 60)  # the reference, then two recent windows' worth
    assert {s.status for s in statuses[: 40 + 14]} == {"not_enough_data"}
    assert {s.status for s in statuses[40 + 15 :]} == {"ok"}
    final = statuses[-1]
    assert (final.reference, final.reference_jobs, final.window_jobs) == ("first_jobs", 40, 30)
    assert all(f.status == "ok" and f.score is not None for f in final.features)
    assert _events(jobs) == []
    metrics = _metrics(jobs)
    assert metrics[("hounsfield_drift_drifting", "ct-lesion-seg", "1.0.0")] == 0
    assert metrics[("hounsfield_drift_score", "ct-lesion-seg", "1.0.0", "intensity_mean")] < 0.3


@pytest.mark.parametrize("feature", list(SHIFTS))
def test_a_shift_is_detected_once_and_cleared_once(jobs: ProfiledJobs, feature: str) -> None:
    jobs.run(40)
    shifted = jobs.run(30, **SHIFTS[feature])
    assert shifted[-1].status == "drifting"
    drifting = {f.feature for f in shifted[-1].features if f.status == "drifting"}
    assert feature in drifting
    jobs.run(10, **SHIFTS[feature])  # still drifting: no second event
    events = _events(jobs)
    assert [kind for kind, _, _ in events] == ["drift_detected"]
    _, job_id, detail = events[0]
    tipping = next(i for i, s in enumerate(shifted) if s.status == "drifting")
    assert job_id == f"job-ct-lesion-seg-1.0.0-{40 + tipping + 1}"  # on the path of the job that tipped it
    assert detail["model_name"] == "ct-lesion-seg" and detail["model_version"] == "1.0.0"
    assert feature in detail["scores"] and detail["scores"][feature] >= jobs.settings.drift.scanner_threshold
    metrics = _metrics(jobs)
    assert metrics[("hounsfield_drift_drifting", "ct-lesion-seg", "1.0.0")] == 1
    assert metrics[("hounsfield_drift_score", "ct-lesion-seg", "1.0.0", feature)] >= 0.2

    back = jobs.run(30)  # the inputs come back: the window is the reference's distribution again
    assert back[-1].status == "ok"
    jobs.run(5)
    assert [kind for kind, _, _ in _events(jobs)] == ["drift_detected", "drift_cleared"]
    assert _metrics(jobs)[("hounsfield_drift_drifting", "ct-lesion-seg", "1.0.0")] == 0


def test_too_few_jobs_give_not_enough_data_and_no_alarm(jobs: ProfiledJobs) -> None:
    statuses = jobs.run(25) + jobs.run(14, scanner=("Other / CT-9",), slice_thickness_mm=(5.0,), intensity_mean=0.0)
    # the reference fills up to 40 first: the shifted jobs belong to it, and the recent window stays empty
    assert {s.status for s in statuses} == {"not_enough_data"}
    assert all(f.score is None and f.status == "not_enough_data" for f in statuses[-1].features)
    jobs.run(1)
    more = jobs.run(14, scanner=("Other / CT-9",), slice_thickness_mm=(5.0,), intensity_mean=0.0)
    assert more[-1].window_jobs == 14 and more[-1].status == "not_enough_data"  # 14 < min_window_jobs (15)
    assert _events(jobs) == []
    metrics = _metrics(jobs)
    assert metrics[("hounsfield_drift_drifting", "ct-lesion-seg", "1.0.0")] == 0
    assert not [key for key in metrics if key[0] == "hounsfield_drift_score"]


def test_an_explicit_reference_window_is_honoured(jobs: ProfiledJobs) -> None:
    jobs.run(40)  # the version's first jobs: one scanner mix
    start = utcnow()
    jobs.run(40, scanner=("Other / CT-9",))  # a new scanner from here on
    end = utcnow()
    statuses = jobs.run(30, scanner=("Other / CT-9",))
    assert statuses[-1].status == "drifting"  # against the first jobs
    assert [kind for kind, _, _ in _events(jobs)] == ["drift_detected"]

    with jobs.db.session() as session:
        with pytest.raises(Invalid, match="end after it starts"):
            set_reference_window(session, DEVELOPER, jobs.settings, model_name="ct-lesion-seg",
                                 model_version="1.0.0", window=ReferenceWindow(start=end, end=start))  # fmt: skip
        with pytest.raises(NotFound):
            set_reference_window(session, DEVELOPER, jobs.settings, model_name="ct-lesion-seg",
                                 model_version="9.9.9", window=ReferenceWindow(start=start, end=end))  # fmt: skip
    with jobs.db.session() as session:
        status = set_reference_window(
            session, DEVELOPER, jobs.settings, model_name="ct-lesion-seg", model_version="1.0.0",
            window=ReferenceWindow(start=start, end=end),
        )  # fmt: skip
    assert (status.status, status.reference, status.reference_jobs, status.window_jobs) == ("ok", "window", 40, 30)
    scanner = status.features[0]
    assert scanner.feature == "scanner" and scanner.score == 0.0  # the window's jobs: all the new scanner
    assert [kind for kind, _, _ in _events(jobs)] == ["drift_detected", "drift_cleared"]
    with jobs.db.session() as session:
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "model_version.drift_reference")).one()
        assert (audit.actor, audit.entity_id) == ("dev", "ct-lesion-seg@1.0.0")
        assert audit.before == {"start": None, "end": None} and audit.after["start"] == start.isoformat()
        assert evaluate(session, jobs.settings.drift, "ct-lesion-seg", "1.0.0").status == "ok"

    later = jobs.run(1)  # a job after the window: compared with the window's jobs
    assert later[-1].reference == "window" and later[-1].status == "ok"

    with jobs.db.session() as session:  # back to the first jobs: drifting again, recorded once
        cleared = set_reference_window(
            session, DEVELOPER, jobs.settings, model_name="ct-lesion-seg", model_version="1.0.0",
            window=ReferenceWindow(),
        )  # fmt: skip
    assert (cleared.reference, cleared.status) == ("first_jobs", "drifting")
    assert [kind for kind, _, _ in _events(jobs)] == ["drift_detected", "drift_cleared", "drift_detected"]


def test_a_window_without_jobs_is_not_enough_data(jobs: ProfiledJobs) -> None:
    jobs.run(40)
    with jobs.db.session() as session:
        future = utcnow() + timedelta(days=1)
        status = set_reference_window(
            session, DEVELOPER, jobs.settings, model_name="ct-lesion-seg", model_version="1.0.0",
            window=ReferenceWindow(start=future, end=future + timedelta(days=7)),
        )  # fmt: skip
    assert (status.status, status.reference_jobs) == ("not_enough_data", 0)
    assert _events(jobs) == []


def test_metrics_cover_the_most_recently_profiled_versions_only(jobs: ProfiledJobs) -> None:
    jobs.run(3)
    newer = ProfiledJobs(jobs.settings, jobs.db, version="1.1.0")
    newer.run(2)
    both = _metrics(jobs)
    assert {key[2] for key in both if key[0] == "hounsfield_drift_drifting"} == {"1.0.0", "1.1.0"}
    jobs.settings = jobs.settings.model_copy(
        update={"drift": jobs.settings.drift.model_copy(update={"max_metric_versions": 1})}
    )
    assert {key[2] for key in _metrics(jobs) if key[0] == "hounsfield_drift_drifting"} == {"1.1.0"}


def test_a_scrape_while_the_database_is_down_gives_no_drift_and_no_error(jobs: ProfiledJobs) -> None:
    jobs.run(3)
    down = Database("postgresql+psycopg://nobody:x@127.0.0.1:1/none?connect_timeout=2")
    registry = CollectorRegistry()
    registry.register(DriftCollector(jobs.settings, down))
    assert b"hounsfield_drift" not in generate_latest(registry), "the scrape's other metrics still go out"
    down.dispose()
