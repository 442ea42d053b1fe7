"""Purging the study store against the database: what goes, what never goes, races, events and counters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from hounsfield.access import Principal, Role
from hounsfield.db import Event, Instance, Job, JobState, StudyState, utcnow
from hounsfield.db.access import list_audit
from hounsfield.db.index import study_events
from hounsfield.db.jobs import requeue_failed_job
from hounsfield.listener.metrics import ListenerMetrics
from hounsfield.retention import Purger, StoreNotMounted, plan_purge
from hounsfield.retention import purge as purge_module
from hounsfield.store import StudyStore
from tests.services.retention.conftest import Rig


def _purger(rig: Rig, **kwargs: object) -> Purger:
    return Purger(rig.settings, rig.db, rig.store, **kwargs)  # type: ignore[arg-type]


def _rows(rig: Rig, uid: str) -> int:
    with rig.db.session() as session:
        return int(
            session.scalar(select(func.count()).select_from(Instance).where(Instance.sop_instance_uid.like(f"{uid}.%")))
            or 0
        )


def test_an_expired_study_is_purged_files_rows_and_folders_and_its_row_kept(rig: Rig) -> None:
    old, recent = rig.study(days_ago=40), rig.study(days_ago=5)
    report = _purger(rig).purge()
    assert report.studies == {"expired": 1} and report.instances == 3
    assert not any(path.exists() for path in old.files) and not (rig.store.studies / old.uid).exists()
    assert _rows(rig, old.uid) == 0 and rig.state(old.uid) is StudyState.PURGED
    assert all(path.exists() for path in recent.files) and rig.state(recent.uid) is StudyState.ROUTED
    assert _purger(rig).purge().studies == {}, "a purged study is not purged again"


def test_a_study_never_routed_goes_its_keep_after_completion(rig: Rig) -> None:
    no_route = rig.study(state=StudyState.NO_ROUTE, jobs=(), days_ago=31)
    assert _purger(rig).purge().studies == {"expired": 1}
    assert rig.state(no_route.uid) is StudyState.PURGED


@pytest.mark.parametrize(
    ("state", "jobs"),
    [
        (StudyState.RECEIVING, ()),
        (StudyState.COMPLETE, ()),
        (StudyState.ROUTED, (JobState.DONE, JobState.QUEUED)),
        (StudyState.ROUTED, (JobState.RUNNING,)),
        (StudyState.ROUTED, (JobState.EXPORTING,)),
        (StudyState.ROUTED, (JobState.WAITING,)),
    ],
    ids=["receiving", "complete", "job-queued", "job-running", "job-exporting", "job-waiting"],
)
def test_a_study_in_use_is_never_purged_even_above_high_water(
    rig: Rig, state: StudyState, jobs: tuple[JobState, ...]
) -> None:
    pressed = rig.settings.retention.model_copy(update={"high_water_percent": 0.001, "low_water_percent": 0.0005})
    rig.settings = rig.settings.model_copy(update={"retention": pressed})
    busy = rig.study(state=state, jobs=jobs, days_ago=400)
    plan = plan_purge(rig.settings, rig.db, rig.store.root)
    assert plan.usage.above_high_water and plan.candidates == []
    assert _purger(rig).purge().studies == {}
    assert all(path.exists() for path in busy.files) and _rows(rig, busy.uid) == 3 and rig.state(busy.uid) is state


def test_the_claim_refuses_a_study_that_became_busy_after_it_was_planned(rig: Rig) -> None:
    study = rig.study(days_ago=40)
    plan = plan_purge(rig.settings, rig.db, rig.store.root)
    assert [c.study_instance_uid for c in plan.candidates] == [study.uid]
    with rig.db.session() as session:  # a job queued after the plan (the study re-evaluated)
        from hounsfield.db import Job

        job = session.scalars(select(Job).where(Job.study_instance_uid == study.uid)).one()
        job.state = JobState.QUEUED
    report = _purger(rig).purge(plan)
    assert report.studies == {} and report.skipped == 1
    assert all(path.exists() for path in study.files) and _rows(rig, study.uid) == 3


def test_a_new_instance_after_the_plan_makes_the_study_start_over_and_nothing_is_removed(rig: Rig) -> None:
    study = rig.study(days_ago=40)
    plan = plan_purge(rig.settings, rig.db, rig.store.root)
    new = rig.instance(study.uid, f"{study.uid}.2", f"{study.uid}.2.0", size=100, calling_ae="CT01")
    report = _purger(rig).purge(plan)
    assert report.studies == {} and report.skipped == 1
    assert rig.state(study.uid) is StudyState.RECEIVING
    assert all(path.exists() for path in [*study.files, new]) and _rows(rig, study.uid) == 4


def test_an_instance_indexed_again_during_the_purge_keeps_its_file(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bytes resent to another process, found already stored and indexed between the claim and
    the removal of the files: that file is put back, the others go, the study starts over."""
    study = rig.study(days_ago=40)
    real = purge_module.indexed_paths

    def arrival_then_look(session, paths):  # type: ignore[no-untyped-def]
        uid = study.uid
        rig.instance(uid, f"{uid}.1", f"{uid}.1.0", size=4096, calling_ae="CT01")  # finds the file: a duplicate
        return real(session, paths)

    monkeypatch.setattr(purge_module, "indexed_paths", arrival_then_look)
    report = _purger(rig).purge()
    assert report.studies == {"expired": 1}
    assert study.files[0].exists(), "the file indexed again was put back"
    assert not study.files[1].exists() and not study.files[2].exists()
    assert rig.state(study.uid) is StudyState.RECEIVING and _rows(rig, study.uid) == 1
    assert not list(rig.store.studies.rglob(".incoming-*"))


def test_two_purgers_at_once_purge_each_study_once(rig: Rig) -> None:
    studies = [rig.study(days_ago=40) for _ in range(3)]
    first, second = _purger(rig), _purger(rig)
    plan_one, plan_two = first.plan(), second.plan()
    one, two = first.purge(plan_one), second.purge(plan_two)
    assert one.studies == {"expired": 3} and two.studies == {} and two.skipped == 3
    with rig.db.session() as session:
        purged = session.scalar(select(func.count()).select_from(Event).where(Event.kind == "purged"))
    assert purged == len(studies)


def test_a_guard_that_holds_the_study_keeps_it(rig: Rig) -> None:
    study = rig.study(days_ago=40)

    @contextmanager
    def journal_holds(uid: str) -> Iterator[bool]:
        yield uid != study.uid

    assert _purger(rig, guard=journal_holds).purge().skipped == 1
    assert all(path.exists() for path in study.files) and rig.state(study.uid) is StudyState.ROUTED


def test_above_high_water_the_oldest_go_first(rig: Rig) -> None:
    pressed = rig.settings.retention.model_copy(
        update={"high_water_percent": 0.001, "low_water_percent": 0.0005, "max_studies_per_run": 2}
    )
    rig.settings = rig.settings.model_copy(update={"retention": pressed})
    ages = [3, 9, 1, 7]
    studies = [rig.study(days_ago=days) for days in ages]  # none expired (30 days)
    report = _purger(rig).purge()
    assert report.studies == {"high_water": 2}
    gone = {s.uid for s in studies if rig.state(s.uid) is StudyState.PURGED}
    assert gone == {studies[1].uid, studies[3].uid}, "the two oldest (9 and 7 days)"


def test_each_purge_is_an_event_without_patient_data_and_counted(rig: Rig) -> None:
    metrics = ListenerMetrics(rig.store)
    study = rig.study(days_ago=40, size=5000)
    _purger(rig, on_purged=metrics.retention_purged, on_failure=metrics.retention_failed).purge()
    with rig.db.session() as session:
        (event,) = [e for e in study_events(session, study.uid) if e.kind == "purged"]
        session.expunge(event)
    assert event.actor == "retention"
    assert event.detail["reason"] == "expired" and event.detail["instances"] == 3 and event.detail["bytes"] == 15000
    assert event.detail["keep_days"] == 30.0 and event.detail["keep_set_by"] == "default"
    assert "PAT-SECRET" not in repr(event.detail)
    sample = metrics.registry.get_sample_value
    assert sample("hounsfield_retention_purged_studies_total", {"reason": "expired"}) == 1
    assert sample("hounsfield_retention_purged_bytes_total", {"reason": "expired"}) == 15000


def test_each_run_that_purged_and_each_run_an_operator_asked_for_is_in_the_audit_log(rig: Rig) -> None:
    rig.study(days_ago=40, size=5000)
    _purger(rig).run_policies()
    _purger(rig).run_policies()  # the listener's next run finds nothing: no row
    operator = Principal("cli:ops", Role.ADMIN, "cli")
    _purger(rig, principal=operator).run_policies()  # an operator's run is audited even when it finds nothing
    with rig.db.session() as session:
        rows = [(a.actor, a.action, a.entity, a.after) for a in reversed(list_audit(session, limit=10))]
    rows = [row for row in rows if row[1] == "store.purge"]
    assert [row[:3] for row in rows] == [("retention", "store.purge", "store"), ("cli:ops", "store.purge", "store")]
    assert rows[0][3]["studies"] == {"expired": 1} and rows[0][3]["bytes"] == {"expired": 15000}
    assert rows[1][3]["studies"] == {} and rows[1][3]["failures"] == 0


def test_a_source_override_keeps_its_studies_longer(rig: Rig) -> None:
    longer = rig.settings.retention.model_copy(update={"sources": {"RESEARCH": 365.0}})
    rig.settings = rig.settings.model_copy(update={"retention": longer})
    kept, gone = rig.study(days_ago=40, calling_ae="RESEARCH"), rig.study(days_ago=40)
    plan = plan_purge(rig.settings, rig.db, rig.store.root)
    assert [c.study_instance_uid for c in plan.candidates] == [gone.uid]
    _purger(rig).purge(plan)
    assert rig.state(kept.uid) is StudyState.ROUTED and rig.state(gone.uid) is StudyState.PURGED


def test_results_and_audit_are_kept_forever_by_default_and_by_their_own_keep_when_set(rig: Rig) -> None:
    study = rig.study(days_ago=40)
    with rig.db.session() as session:
        from hounsfield.db import Job

        job_id = session.scalars(select(Job.id).where(Job.study_instance_uid == study.uid)).one()
    results = rig.store.root / "results" / job_id
    results.mkdir(parents=True)
    (results / "seg.dcm").write_bytes(b"x")
    report = _purger(rig).run_policies()
    assert results.exists() and report.results_removed == 0 and report.events_deleted == 0
    rig.settings = rig.settings.model_copy(
        update={"retention": rig.settings.retention.model_copy(update={"results_keep_days": 30.0})}
    )
    assert _purger(rig).run_policies().results_removed == 1 and not results.exists()
    rig.settings = rig.settings.model_copy(
        update={"retention": rig.settings.retention.model_copy(update={"audit_keep_days": 1.0})}
    )
    with rig.db.session() as session:
        old = session.scalars(select(Event).where(Event.study_instance_uid == study.uid)).first()
        assert old is not None
        old.at = utcnow() - timedelta(days=2)
    assert _purger(rig).run_policies().events_deleted == 1


def test_files_that_cannot_be_removed_are_a_counted_failure_and_the_rest_goes_on(rig: Rig) -> None:
    metrics = ListenerMetrics(rig.store)
    broken, fine = rig.study(days_ago=41), rig.study(days_ago=40)
    broken.files[0].unlink()
    broken.files[0].mkdir()  # not a file: cannot be unlinked
    (broken.files[0] / "x").write_bytes(b"x")
    report = _purger(rig, on_purged=metrics.retention_purged, on_failure=metrics.retention_failed).purge()
    assert report.failures == 1 and report.studies == {"expired": 1}
    assert metrics.registry.get_sample_value("hounsfield_retention_failures_total", {"kind": "files"}) == 1
    assert not any(path.exists() for path in fine.files)


def test_a_purge_leaves_another_studys_instance_that_reused_a_series_uid(rig: Rig) -> None:
    """A broken sender reuses study A's Series Instance UID in study B: B's instance is indexed under A's
    series row, but its file is in B's folder; purging A takes only what lies in A's folder."""
    old = rig.study(days_ago=40)
    other = "1.2.826.0.1.3680043.10.1392.98.1"
    stray = rig.instance(other, f"{old.uid}.1", f"{other}.1.1", size=4096, calling_ae="CT02")
    report = _purger(rig).purge()
    assert report.studies == {"expired": 1} and report.instances == 3
    assert not any(path.exists() for path in old.files)
    assert stray.exists() and _rows(rig, other) == 1


def test_nothing_is_purged_where_the_store_is_not_mounted(rig: Rig) -> None:
    study = rig.study(days_ago=40)
    missing = Purger(rig.settings, rig.db, StudyStore(rig.store.root.parent / "not-mounted"))
    with pytest.raises(StoreNotMounted):
        missing.purge()
    assert rig.state(study.uid) is StudyState.ROUTED and _rows(rig, study.uid) == 3


def test_a_purge_for_the_high_water_mark_alone_is_audited(rig: Rig) -> None:
    rig.study(days_ago=40)
    _purger(rig).purge()  # what the listener runs between its intervals when the store passes high water
    with rig.db.session() as session:
        (row,) = [a for a in list_audit(session, limit=10) if a.action == "store.purge"]
        assert row.actor == "retention" and row.after is not None and row.after["studies"] == {"expired": 1}


def test_a_purged_studys_failed_job_is_not_retried(rig: Rig) -> None:
    study = rig.study(days_ago=40, jobs=(JobState.FAILED,))
    _purger(rig).purge()
    assert rig.state(study.uid) is StudyState.PURGED
    with rig.db.session() as session:
        job_id = session.scalars(select(Job.id).where(Job.study_instance_uid == study.uid)).one()
        assert requeue_failed_job(session, job_id, actor="ops") is None
