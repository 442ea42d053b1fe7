"""The retention policy as data: keep days per study (longest override wins), the marks, the plan's order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hounsfield.config import ConfigurationInvalid, Settings, SourceSettings, load_settings
from hounsfield.db import StudyState
from hounsfield.db.retention import StudyRetentionFacts
from hounsfield.retention import KeepPolicy, StoreUsage, keep_policy, plan_from_facts

NOW = datetime(2026, 12, 1, tzinfo=UTC)
MB = 1 << 20


def _facts(
    uid: str,
    *,
    state: StudyState = StudyState.ROUTED,
    ended_days_ago: float | None = 40,
    completed_days_ago: float = 41,
    callers: tuple[str, ...] = ("CT01",),
    deployments: tuple[str, ...] = (),
    rules: tuple[str, ...] = (),
    active_jobs: int = 0,
    size: int = 10 * MB,
) -> StudyRetentionFacts:
    completed = NOW - timedelta(days=completed_days_ago)
    return StudyRetentionFacts(
        study_instance_uid=uid, state=state, completed_at=completed, last_received_at=completed,
        last_job_end=None if ended_days_ago is None else NOW - timedelta(days=ended_days_ago),
        active_jobs=active_jobs, calling_aes=callers, deployments=deployments, rules=rules, instances=3, bytes=size,
    )  # fmt: skip


def _usage(*, total: int = 1000 * MB, free: int = 500 * MB, floor: int = 0, margin: int = 0) -> StoreUsage:
    return StoreUsage(total, free, floor, margin, high_water_percent=90.0, low_water_percent=80.0)


POLICY = KeepPolicy(30.0, {"CT01": 10.0, "RESEARCH": 365.0}, {"lung-ai": 90.0}, {"chest": 60.0})


def test_the_default_applies_when_no_override_does() -> None:
    assert POLICY.keep_days(_facts("1", callers=("MR01",))) == (30.0, "default")


def test_an_override_applies_even_when_shorter_than_the_default() -> None:
    assert POLICY.keep_days(_facts("1", callers=("CT01",))) == (10.0, "source:CT01")


def test_the_longest_of_the_overrides_that_apply_wins() -> None:
    study = _facts("1", callers=("CT01",), deployments=("lung-ai",), rules=("chest",))
    assert POLICY.keep_days(study) == (90.0, "deployment:lung-ai")
    assert POLICY.keep_days(_facts("2", callers=("CT01", "RESEARCH"), rules=("chest",))) == (365.0, "source:RESEARCH")
    assert POLICY.keep_days(_facts("3", callers=("CT01",), rules=("chest",))) == (60.0, "rule:chest")


def test_a_source_key_means_its_ae_title_and_a_bare_key_a_calling_ae(settings: Settings) -> None:
    sources = {"ward-ct": SourceSettings(ae_title="CTWARD")}
    configured = settings.model_copy(
        update={
            "listener": settings.listener.model_copy(update={"sources": sources}),
            "retention": settings.retention.model_copy(update={"sources": {"ward-ct": 7.0, "OTHERAE": 3.0}}),
        }
    )
    assert keep_policy(configured).sources == {"CTWARD": 7.0, "OTHERAE": 3.0}


def test_the_defaults_purge_nothing_and_bad_marks_are_refused(tmp_path: Path) -> None:
    defaults = load_settings(None, data_dir=tmp_path)
    assert defaults.retention.enabled is False
    assert defaults.retention.results_keep_days is None and defaults.retention.audit_keep_days is None
    marks = defaults.retention.model_dump(
        include={"keep_days", "high_water_percent", "low_water_percent", "floor_margin_mb", "watch_s", "interval_s"}
    )
    assert marks == {
        "keep_days": 30.0, "high_water_percent": 90.0, "low_water_percent": 80.0, "floor_margin_mb": 1024,
        "watch_s": 2.0, "interval_s": 3600.0,
    }  # fmt: skip
    assert defaults.retention.max_studies_per_run == 10000
    with pytest.raises(ConfigurationInvalid, match="low_water_percent must be below high_water_percent"):
        load_settings(None, data_dir=tmp_path, retention={"high_water_percent": 70, "low_water_percent": 80})
    with pytest.raises(ConfigurationInvalid, match="keep days must be above 0: CT01"):
        load_settings(None, data_dir=tmp_path, retention={"sources": {"CT01": 0}})


def test_below_high_water_only_expired_studies_go_oldest_first() -> None:
    facts = [
        _facts("1.2", ended_days_ago=35),
        _facts("1.1", ended_days_ago=50),
        _facts("1.3", ended_days_ago=5),  # within its keep
        _facts("1.4", ended_days_ago=None, completed_days_ago=31, state=StudyState.NO_ROUTE),  # never routed
    ]
    plan = plan_from_facts(facts, KeepPolicy(30.0, {}, {}, {}), _usage(), now=NOW, limit=100)
    assert [(c.study_instance_uid, c.reason) for c in plan.candidates] == [
        ("1.1", "expired"), ("1.2", "expired"), ("1.4", "expired"),
    ]  # fmt: skip
    assert plan.waiting == 1


def test_the_later_of_the_last_job_end_and_the_completion_counts() -> None:
    re_evaluated = _facts("1.1", ended_days_ago=40, completed_days_ago=2)  # completed again since its last job
    plan = plan_from_facts([re_evaluated], KeepPolicy(30.0, {}, {}, {}), _usage(), now=NOW, limit=100)
    assert plan.candidates == []


def test_above_high_water_the_oldest_go_first_until_the_low_water_mark() -> None:
    # 95% used of 1000 MB: 150 MB must go to reach 80%; studies of 40 MB each, none expired.
    facts = [_facts(f"1.{i}", ended_days_ago=days, size=40 * MB) for i, days in enumerate([3, 9, 1, 7, 5, 2])]
    plan = plan_from_facts(facts, KeepPolicy(30.0, {}, {}, {}), _usage(free=50 * MB), now=NOW, limit=100)
    assert [c.study_instance_uid for c in plan.candidates] == ["1.1", "1.3", "1.4", "1.0"]
    assert {c.reason for c in plan.candidates} == {"high_water"}
    assert plan.bytes >= 150 * MB and plan.waiting == 2


def test_near_the_floor_counts_as_high_water_even_below_the_percentage() -> None:
    usage = _usage(total=10_000 * MB, free=1500 * MB, floor=1024 * MB, margin=512 * MB)  # 85% used, < floor + margin
    assert usage.above_high_water
    assert usage.bytes_to_free == (1024 + 2 * 512 - 1500) * MB  # twice the margin above the floor: more than 80%
    assert not _usage(total=10_000 * MB, free=3000 * MB, floor=1024 * MB, margin=512 * MB).above_high_water


@pytest.mark.parametrize(
    ("state", "active_jobs", "held_as"),
    [
        (StudyState.RECEIVING, 0, "receiving"),
        (StudyState.COMPLETE, 0, "routing_pending"),
        (StudyState.ROUTED, 1, "job_active"),
    ],
)
def test_studies_in_use_are_never_planned_even_above_high_water(
    state: StudyState, active_jobs: int, held_as: str
) -> None:
    study = _facts("1.1", state=state, active_jobs=active_jobs, ended_days_ago=400)
    plan = plan_from_facts([study], KeepPolicy(30.0, {}, {}, {}), _usage(free=1 * MB), now=NOW, limit=100)
    assert plan.candidates == [] and plan.held == {held_as: 1}


def test_a_plan_takes_at_most_its_limit() -> None:
    facts = [_facts(f"1.{i}", ended_days_ago=40 + i, completed_days_ago=41 + i) for i in range(5)]
    plan = plan_from_facts(facts, KeepPolicy(30.0, {}, {}, {}), _usage(), now=NOW, limit=2)
    assert [c.study_instance_uid for c in plan.candidates] == ["1.4", "1.3"]
