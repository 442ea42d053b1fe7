"""When a study is complete: by the source's count (Orthanc as the source PACS), and again when more arrives.

Re-evaluation: series that arrive after a study was routed complete it again; a deployment whose
series set grew gets a new job that supersedes the earlier one, and a resend makes no new job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from hounsfield.catalog import prepare_database
from hounsfield.config import QueryRetrieveSettings, Settings, SourceSettings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Event, Job, JobState, Result, Study, StudyState
from hounsfield.db.jobs import record_result, supersede_results
from hounsfield.demo.orthanc import LocalOrthanc, free_port
from hounsfield.demo.stack import storescu
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.server import Listener
from hounsfield.router.routing import Router
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series
from tests.support import wait_for, write_study

SOURCE_AE = "SRCPACS"


def _with_source(settings: Settings, *, query_port: int, quiet_period_s: float) -> Settings:
    """The sending modality (AE MODALITY) is a source whose PACS (Orthanc) can be queried."""
    source = SourceSettings(
        ae_title="MODALITY",
        query=QueryRetrieveSettings(host="127.0.0.1", port=query_port, ae_title=SOURCE_AE, timeout_s=5),
    )
    listener = settings.listener.model_copy(update={"sources": {"modality": source}, "quiet_period_s": quiet_period_s})
    return settings.model_copy(update={"listener": listener})


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[LocalOrthanc]:
    """Orthanc that answers C-FIND from the listener's AE title."""
    pacs = LocalOrthanc(tmp_path / "orthanc", aet=SOURCE_AE, modalities={"hounsfield": ("HOUNSFIELD", "127.0.0.1", 1)})
    pacs.start()
    yield pacs
    pacs.stop()


def _state(db: Database, study_uid: str) -> tuple[StudyState | None, str | None]:
    with db.session() as session:
        study = session.get(Study, study_uid)
        return (study.state, study.completion_trigger) if study else (None, None)


def _events(db: Database, study_uid: str) -> list[tuple[str, dict]]:
    with db.session() as session:
        rows = session.scalars(select(Event).where(Event.study_instance_uid == study_uid).order_by(Event.id)).all()
        return [(e.kind, e.detail) for e in rows]


def test_source_count_completes_the_study_before_release_and_quiet_period(
    settings: Settings, orthanc: LocalOrthanc, tmp_path: Path
) -> None:
    configured = _with_source(settings, query_port=orthanc.dicom_port, quiet_period_s=120)
    study_uid, files = write_study(tmp_path / "ct", seed=71, shape=(12, 32, 32))
    with httpx.Client(base_url=orthanc.url, timeout=30) as client:
        for path in files:
            client.post("/instances", content=path.read_bytes()).raise_for_status()
    queued: list[Job] = []
    listener = Listener(configured, queued.append)
    listener.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", configured.listener.port, ae_title="HOUNSFIELD")
        assert assoc.is_established
        for path in files[:6]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
        time.sleep(1.0)  # several count checks: 6 of the source's 12 are here, so not complete
        assert _state(listener.db, study_uid) == (StudyState.RECEIVING, None)
        for path in files[6:]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
        last_sent = time.monotonic()
        wait_for(lambda: _state(listener.db, study_uid)[0] is StudyState.ROUTED, timeout=5)
        latency = time.monotonic() - last_sent
        assert assoc.is_established, "complete while the association is still open"
        assert _state(listener.db, study_uid) == (StudyState.ROUTED, "source-count")
        assoc.release()
        time.sleep(0.5)  # the release must not complete (or route) the study a second time
        events = _events(listener.db, study_uid)
    finally:
        listener.stop()
    assert latency < 3.0
    assert events == [
        ("study-complete", {"trigger": "source-count"}),
        ("job-queued", {"deployment": "ct-lesion-seg"}),
    ]
    assert len(queued) == 1


def test_an_unreachable_source_leaves_completion_to_the_association_release(settings: Settings, tmp_path: Path) -> None:
    configured = _with_source(settings, query_port=free_port(), quiet_period_s=120)
    study_uid, files = write_study(tmp_path / "ct", seed=72, shape=(8, 32, 32))
    queued: list[Job] = []
    listener = Listener(configured, queued.append)
    listener.start()
    try:
        storescu(files, host="127.0.0.1", port=configured.listener.port, called_ae="HOUNSFIELD", calling_ae="MODALITY")
        wait_for(lambda: len(queued) == 1, timeout=5)
        assert _state(listener.db, study_uid) == (StudyState.ROUTED, "association-release")
    finally:
        listener.stop()


def _series_b(folder: Path, first: list[Path]) -> list[Path]:
    head = pydicom.dcmread(first[0], stop_before_pixels=True)
    phantom = make_phantom(7, shape_zyx=(8, 32, 32), n_lesions=1)
    return write_dicom_series(
        phantom, folder, study_instance_uid=head.StudyInstanceUID, patient_id=head.PatientID,
        accession_number=head.AccessionNumber, series_description="Series B", uid_seed="series-b",
    )  # fmt: skip


def test_series_after_routing_reevaluate_and_supersede_never_duplicate(settings: Settings, tmp_path: Path) -> None:
    study_uid, series_a = write_study(tmp_path / "a", seed=73, shape=(8, 32, 32))
    series_b = _series_b(tmp_path / "b", series_a)
    queued: list[Job] = []
    listener = Listener(settings, queued.append)
    listener.start()

    def send(files: list[Path]) -> None:
        storescu(files, host="127.0.0.1", port=settings.listener.port, called_ae="HOUNSFIELD", calling_ae="MODALITY")

    def completions() -> int:
        return sum(kind in ("study-complete", "re-evaluated") for kind, _ in _events(listener.db, study_uid))

    try:
        send(series_a)
        wait_for(lambda: len(queued) == 1)
        send(series_b)
        wait_for(lambda: len(queued) == 2)
        send(series_b)  # the same series again: re-evaluated, same series set, same job
        wait_for(lambda: completions() == 3)
        wait_for(lambda: _state(listener.db, study_uid)[0] is StudyState.ROUTED)
        with listener.db.session() as session:
            jobs = session.scalars(select(Job).order_by(Job.created_at)).all()
        events = _events(listener.db, study_uid)
    finally:
        listener.stop()
    first, second = jobs
    assert len(first.series_instance_uids) == 1 and len(second.series_instance_uids) == 2
    assert set(first.series_instance_uids) < set(second.series_instance_uids)
    assert first.superseded_by == second.id and second.supersedes == first.id and second.superseded_by is None
    assert first.state is JobState.SUPERSEDED and second.state is JobState.QUEUED
    assert [job.id for job in queued] == [first.id, second.id], "a resend queues nothing"
    assert [(kind, detail.get("trigger")) for kind, detail in events] == [
        ("study-complete", "association-release"),
        ("job-queued", None),
        ("re-evaluated", "association-release"),
        ("job-queued", None),
        ("job-superseded", None),
        ("re-evaluated", "association-release"),
        ("job-exists", None),
    ]
    assert events[4][1]["by"] == second.id
    assert events[2][1]["previous_trigger"] == "association-release"
    assert _state_of(settings, study_uid) == (StudyState.ROUTED, "association-release")


def _state_of(settings: Settings, study_uid: str) -> tuple[StudyState | None, str | None]:
    db = Database(settings.sqlalchemy_url)
    try:
        return _state(db, study_uid)
    finally:
        db.dispose()


def _result(session, job_id: str, n: int) -> None:  # type: ignore[no-untyped-def]
    record_result(
        session, job_id=job_id, kind="SEG", sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
        sop_instance_uid=f"2.25.{n}", series_instance_uid=f"2.25.{n}0", path=f"/results/{n}.dcm",
    )  # fmt: skip


def test_results_of_a_superseded_job_are_marked_once_the_new_job_is_done(settings: Settings, tmp_path: Path) -> None:
    from hounsfield.db.index import IndexedInstance, record_instance

    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)  # the configuration's deployment, as the listener writes it
    queued: list[Job] = []
    router = Router(settings, db, queued.append)
    study_uid, series_a = write_study(tmp_path / "a", seed=74, shape=(8, 32, 32))
    series_b = _series_b(tmp_path / "b", series_a)

    def index(files: list[Path]) -> None:
        with db.session() as session:
            for path in files:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                record_instance(
                    session,
                    IndexedInstance(
                        study_instance_uid=ds.StudyInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                        sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                        transfer_syntax_uid=ExplicitVRLittleEndian, patient_id="", accession_number="",
                        study_date="", modality="CT", series_number=1, series_description="", instance_number=None,
                        calling_ae="MODALITY", called_ae="HOUNSFIELD", tags={"Modality": "CT"}, path=str(path),
                        size=path.stat().st_size, sha256="0" * 64, revision=0,
                    ),
                )  # fmt: skip

    try:
        index(series_a)
        (first,) = router.on_study_complete(StudyComplete(study_instance_uid=study_uid, trigger="manual"))
        with db.session() as session:  # the first job ran and produced results
            session.get(Job, first.id).state = JobState.DONE  # type: ignore[union-attr]
            _result(session, first.id, 1)
            _result(session, first.id, 2)
        index(series_b)
        (second,) = router.on_study_complete(StudyComplete(study_instance_uid=study_uid, trigger="quiet-period"))
        with db.session() as session:
            assert session.get(Job, first.id).superseded_by == second.id  # type: ignore[union-attr]
            assert session.get(Job, first.id).state is JobState.DONE, "a finished job keeps its state"  # type: ignore[union-attr]
            assert all(r.superseded_by is None for r in session.scalars(select(Result)).all()), "not before done"
            _result(session, second.id, 3)
            assert supersede_results(session, second.id) == 2
        with db.session() as session:
            marked = {r.sop_instance_uid: r.superseded_by for r in session.scalars(select(Result)).all()}
            assert supersede_results(session, second.id) == 0, "marking is idempotent"
            study = session.get(Study, study_uid)
            assert study is not None and study.completion_trigger == "quiet-period"
    finally:
        db.dispose()
    assert marked == {"2.25.1": second.id, "2.25.2": second.id, "2.25.3": None}


def test_a_c_move_release_completes_nothing_and_the_end_of_a_c_get_completes_what_it_brought() -> None:
    """A C-MOVE may go on over other associations (one per transfer syntax): its release leaves the study
    to the quiet period (or the source's count, or the fetch); a C-GET's end completes its studies."""
    completed: list[StudyComplete] = []
    tracker = CompletenessTracker(completed.append, complete_on_release=True, quiet_period_s=0.5)
    tracker.start()
    try:
        tracker.instance_received("move-1", "1.2.3", "PACS")
        tracker.association_released("move-1", "PACS", moved=True)
        tracker.instance_received("get-1", "1.2.4", "PACS")
        assert tracker.retrieve_finished("get-1", "PACS") == ["1.2.4"]
        assert [(e.study_instance_uid, e.trigger) for e in completed] == [("1.2.4", "retrieve")]
        wait_for(lambda: len(completed) == 2, timeout=5)
        assert (completed[1].study_instance_uid, completed[1].trigger) == ("1.2.3", "quiet-period")
        tracker.instance_received("plain", "1.2.5", "MODALITY")
        tracker.association_released("plain", "MODALITY")
        assert (completed[2].study_instance_uid, completed[2].trigger) == ("1.2.5", "association-release")
    finally:
        tracker.stop()


def test_completing_threads_carry_the_study_they_complete_and_never_the_one_before() -> None:
    """The quiet-period timer and an association's release each complete one study after another: the
    router's callback (and any line it logs) sees each study's own correlation id, and none after."""
    from hounsfield.logs import current_log_context, log_context, study_correlation_id

    seen: list[tuple[str, str | None]] = []
    done = threading.Event()

    def on_complete(event: StudyComplete) -> None:
        seen.append((event.study_instance_uid, current_log_context().study))
        if len(seen) == 4:
            done.set()

    tracker = CompletenessTracker(on_complete, complete_on_release=True, quiet_period_s=0.2)
    tracker.start()
    try:
        with log_context(study_uid="1.2.3.99"):  # the receiving thread's own study: not the timer's
            tracker.instance_received("a", "1.2.3.1", "CT")
            tracker.instance_received("a", "1.2.3.2", "CT")
            tracker.association_aborted("a")  # left to the quiet period (the timer's thread)
            tracker.instance_received("b", "1.2.3.3", "CT")
            tracker.instance_received("b", "1.2.3.4", "CT")
            tracker.association_released("b", "CT")  # completed here, one after the other
            after_release = current_log_context().study
        assert done.wait(10), seen
    finally:
        tracker.stop()
    assert after_release == study_correlation_id("1.2.3.99"), "the caller's own context comes back"
    assert sorted(seen) == [(uid, study_correlation_id(uid)) for uid in ("1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4")]
