"""``hounsfield fetch`` against a real Orthanc as the source PACS: C-FIND, then C-MOVE or C-GET.

Orthanc knows the listener's AE title (DicomModalities), so it accepts our queries and can C-MOVE
to the running listener; its sub-associations call from Orthanc's own AE title, configured here as
a source. Orthanc cannot transcode on C-GET, and opens one C-MOVE sub-association per transfer
syntax: a study held in every transfer syntax tests both. A pynetdicom source stands for sources
that leave SOPClassesInStudy out, fail half-way, or speak TLS only.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]
from sqlalchemy import func, select

from hounsfield.config import OutboundTLSSettings, QueryRetrieveSettings, Settings, SourceSettings
from hounsfield.db import Database, Event, Instance, Job, JobState, Series, Study
from hounsfield.demo.orthanc import LocalOrthanc, free_port
from hounsfield.demo.stack import storescu
from hounsfield.listener import fetch
from hounsfield.listener.fetch import FetchFailed, run_fetch
from hounsfield.listener.server import Listener
from hounsfield.listener.storage import receive_instance
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series
from tests.pki import make_pki
from tests.services.listener.qr_source import PynetdicomSource
from tests.support import Order, write_study
from tests.transfer_syntaxes import SYNTAXES, ct_image, encode, mr_image, sc_image

REPO = Path(__file__).resolve().parents[3]
SOURCE_AE = "SRCPACS"


def _configure(settings: Settings, port: int, *, source_ae: str = SOURCE_AE, **query: Any) -> Settings:
    """The test settings with Orthanc as source ``pacs`` and the sending modality as source ``modality``.

    The quiet period is long, so that a study completes by the trigger under test and never by it.
    """
    sources = {
        "pacs": SourceSettings(
            ae_title=source_ae, query=QueryRetrieveSettings(host="127.0.0.1", port=port, timeout_s=10, **query)
        ),
        "modality": SourceSettings(ae_title="MODALITY"),
    }
    listener = settings.listener.model_copy(update={"sources": sources, "quiet_period_s": 60.0})
    return settings.model_copy(update={"listener": listener})


@pytest.fixture
def orthanc(settings: Settings, tmp_path: Path) -> Iterator[LocalOrthanc]:
    """Orthanc that knows the listener (AE HOUNSFIELD on the test's listener port)."""
    listener = ("HOUNSFIELD", "127.0.0.1", settings.listener.port)
    pacs = LocalOrthanc(tmp_path / "orthanc", aet=SOURCE_AE, modalities={"hounsfield": listener})
    pacs.start()
    yield pacs
    pacs.stop()


def _upload(pacs: LocalOrthanc, files: list[Path]) -> None:
    with httpx.Client(base_url=pacs.url, timeout=30) as client:
        for path in files:
            client.post("/instances", content=path.read_bytes()).raise_for_status()


def _study(folder: Path, seed: int, *, accession: str, patient_id: str, study_date: str = "20240115") -> list[Path]:
    """A CT series written for one patient, accession and date."""
    _, files = write_study(folder, seed, shape=(8, 32, 32), accession_number=accession, patient_id=patient_id)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyDate = study_date
        ds.save_as(path)
    return files


def _second_series(folder: Path, first: list[Path], slices: int = 8) -> list[Path]:
    """Another series of the study of ``first`` (same patient and accession)."""
    head = pydicom.dcmread(first[0], stop_before_pixels=True)
    phantom = make_phantom(99, shape_zyx=(slices, 32, 32), n_lesions=1)
    return write_dicom_series(
        phantom, folder, study_instance_uid=head.StudyInstanceUID, patient_id=head.PatientID,
        accession_number=head.AccessionNumber, series_description="Second series", uid_seed=f"b-{folder}",
    )  # fmt: skip


def _uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _count_here(db: Database, study_uid: str) -> int:
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Instance)
                .join(Series, Series.series_instance_uid == Instance.series_instance_uid)
                .where(Series.study_instance_uid == study_uid)
            )
            or 0
        )


def test_fetch_by_accession_moves_the_study_to_the_listener_and_completes_it(
    settings: Settings, orthanc: LocalOrthanc, tmp_path: Path
) -> None:
    configured = _configure(settings, orthanc.dicom_port, count_completeness=False)
    files = _study(tmp_path / "a", 11, accession="RQ0001", patient_id="PAT-A")
    other = _study(tmp_path / "b", 12, accession="RQ0002", patient_id="PAT-A")
    _upload(orthanc, files + other)
    queued: list[Job] = []
    listener = Listener(configured, queued.append)
    listener.start()
    try:
        report = run_fetch(configured, "pacs", accession_number="RQ0001", enqueue=queued.append)
    finally:
        listener.stop()
    assert report.ok and report.method == "c-move" and report.matched == 1
    (study,) = report.studies
    assert study.study_instance_uid == _uid(files)
    assert study.outcome == "retrieved" and study.on_source == len(files)
    assert (study.here_before, study.here_after, study.retrieved) == (0, len(files), len(files))
    assert study.completion_trigger == "retrieve" and study.state == "routed"
    assert _count_here(listener.db, _uid(files)) == len(files)
    assert _count_here(listener.db, _uid(other)) == 0, "only the matching study is retrieved"
    stored = sorted(p.name for p in (configured.data_dir / "studies").rglob("*.dcm"))
    assert stored == sorted(f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in files)
    assert [job.study_instance_uid for job in queued] == [_uid(files)]


def test_fetch_by_patient_and_by_date_range(settings: Settings, orthanc: LocalOrthanc, tmp_path: Path) -> None:
    configured = _configure(settings, orthanc.dicom_port, retrieve="c-get")
    january = _study(tmp_path / "j", 21, accession="RQ0021", patient_id="PAT-B", study_date="20240110")
    march = _study(tmp_path / "m", 22, accession="RQ0022", patient_id="PAT-B", study_date="20240305")
    stranger = _study(tmp_path / "s", 23, accession="RQ0023", patient_id="PAT-C", study_date="20240112")
    _upload(orthanc, january + march + stranger)

    by_patient = run_fetch(configured, "pacs", patient_id="PAT-B", dry_run=True)
    assert by_patient.ok and by_patient.dry_run
    assert sorted(s.study_instance_uid for s in by_patient.studies) == sorted([_uid(january), _uid(march)])
    assert {s.outcome for s in by_patient.studies} == {"would-retrieve"}
    assert all(s.here_after == 0 and s.series_to_retrieve == 1 for s in by_patient.studies)

    queued: list[Job] = []
    by_date = run_fetch(configured, "pacs", study_date="20240101-20240131", enqueue=queued.append)
    assert by_date.ok
    assert sorted(s.study_instance_uid for s in by_date.studies) == sorted([_uid(january), _uid(stranger)])
    assert {s.outcome for s in by_date.studies} == {"retrieved"}
    assert {s.completion_trigger for s in by_date.studies} == {"retrieve"}
    db = Database(configured.sqlalchemy_url)
    try:
        assert _count_here(db, _uid(january)) == len(january)
        assert _count_here(db, _uid(stranger)) == len(stranger)
        assert _count_here(db, _uid(march)) == 0, "March is outside the range"
        with db.session() as session:
            study = session.get(Study, _uid(january))
            assert study is not None and study.completion_trigger == "retrieve" and study.state.value == "routed"
            kinds = session.scalars(
                select(Event.kind).where(Event.study_instance_uid == _uid(january)).order_by(Event.id)
            ).all()
        assert kinds == ["study-complete", "job-queued"]
    finally:
        db.dispose()
    assert sorted(job.study_instance_uid for job in queued) == sorted([_uid(january), _uid(stranger)])

    again = run_fetch(configured, "pacs", study_date="20240110", enqueue=queued.append)
    assert [s.outcome for s in again.studies] == ["complete-here"], "nothing is retrieved twice"
    assert len(queued) == 2


def test_partial_push_then_fetch_retrieves_only_the_missing_series(
    settings: Settings, orthanc: LocalOrthanc, tmp_path: Path
) -> None:
    configured = _configure(settings, orthanc.dicom_port, count_completeness=False)
    first = _study(tmp_path / "a", 31, accession="RQ0031", patient_id="PAT-D")
    study_uid = _uid(first)
    second = _second_series(tmp_path / "b", first)
    _upload(orthanc, first + second)
    queued: list[Job] = []
    listener = Listener(configured, queued.append)
    listener.start()
    try:
        storescu(first, host="127.0.0.1", port=configured.listener.port, called_ae="HOUNSFIELD", calling_ae="MODALITY")
        report = run_fetch(configured, "pacs", study_instance_uid=study_uid, enqueue=queued.append)
    finally:
        listener.stop()
    (study,) = report.studies
    assert report.ok and study.outcome == "retrieved"
    assert study.series_on_source == 2 and study.series_to_retrieve == 1
    assert (study.here_before, study.retrieved, study.here_after) == (len(first), len(second), len(first + second))
    assert study.completion_trigger == "retrieve", "the C-MOVE's release completed nothing; its end did"
    with listener.db.session() as session:
        jobs = session.scalars(select(Job).order_by(Job.created_at)).all()
        events = select(Event.kind).where(Event.study_instance_uid == study_uid).order_by(Event.id)
        kinds = session.scalars(events).all()
    assert [len(job.series_instance_uids) for job in jobs] == [1, 2]
    assert jobs[0].superseded_by == jobs[1].id and jobs[1].supersedes == jobs[0].id
    assert jobs[0].state is JobState.SUPERSEDED, "the first job had not run: it never will"
    assert "re-evaluated" in kinds


def test_a_move_nobody_receives_fails_with_a_reason(settings: Settings, orthanc: LocalOrthanc, tmp_path: Path) -> None:
    files = _study(tmp_path / "a", 41, accession="RQ0041", patient_id="PAT-E")
    _upload(orthanc, files)
    unknown = _configure(settings, orthanc.dicom_port, move_destination="NOBODY")
    listener_down = _configure(settings, orthanc.dicom_port)  # Orthanc knows HOUNSFIELD; nothing listens there
    for configured, destination in ((unknown, "NOBODY"), (listener_down, "HOUNSFIELD")):
        report = run_fetch(configured, "pacs", accession_number="RQ0041", wait_s=0)
        (study,) = report.studies
        assert not report.ok and study.outcome == "failed"
        assert f"move destination {destination!r}" in study.reason and "is the listener running" in study.reason
        assert study.here_after == 0 and study.retrieved == 0


def test_unknown_source_and_bad_keys_are_refused(settings: Settings) -> None:
    configured = _configure(settings, free_port())
    with pytest.raises(FetchFailed, match="no source named 'nope'") as unknown:
        run_fetch(configured, "nope", accession_number="X")
    assert unknown.value.exit_code == 2
    with pytest.raises(FetchFailed, match="wildcards") as wildcard:
        run_fetch(configured, "pacs", accession_number="RQ*")
    assert wildcard.value.exit_code == 2
    with pytest.raises(FetchFailed, match="ends before it starts"):
        run_fetch(configured, "pacs", study_date="20240301-20240101")
    with pytest.raises(FetchFailed, match="has no query settings"):
        run_fetch(configured, "modality", accession_number="X")


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")} | {
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "hounsfield.cli", "fetch", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, check=False, env=env, cwd=REPO,
    )  # fmt: skip


def _write_config(path: Path, settings: Settings) -> Path:
    data = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_reports_an_unreachable_source_without_a_traceback(settings: Settings, tmp_path: Path) -> None:
    configured = _configure(settings, free_port())
    proc = _cli(_write_config(tmp_path / "h.yaml", configured), "--source", "pacs", "--accession", "RQ0051")
    assert proc.returncode == 1
    assert "fetch failed" in proc.stderr and "is not reachable" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_dry_run_prints_json(settings: Settings, orthanc: LocalOrthanc, tmp_path: Path) -> None:
    configured = _configure(settings, orthanc.dicom_port)
    files = _study(tmp_path / "a", 61, accession="RQ0061", patient_id="PAT-F")
    _upload(orthanc, files)
    config = _write_config(tmp_path / "h.yaml", configured)
    proc = _cli(config, "--source", "pacs", "--accession", "RQ0061", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["matched"] == 1 and report["dry_run"]
    (study,) = report["studies"]
    assert study["study_instance_uid"] == _uid(files) and study["outcome"] == "would-retrieve"
    assert study["on_source"] == len(files) and study["here_after"] == 0
    table = _cli(config, "--source", "pacs", "--study-date", "20240115", "--dry-run")
    assert table.returncode == 0 and "would-retrieve" in table.stdout and "RQ0061" in table.stdout
    bad = _cli(config, "--source", "pacs", "--study-date", "2024-01-15")
    assert bad.returncode == 2 and "YYYYMMDD" in bad.stderr


def test_each_instance_a_c_get_brings_is_synced_before_its_answer(
    settings: Settings, orthanc: LocalOrthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fetch is the storage SCP of its C-GET: it answers each C-STORE of the source only once the
    instance's file and folder were fsynced."""
    configured = _configure(settings, orthanc.dicom_port, retrieve="c-get")
    files = _study(tmp_path / "g", 31, accession="RQ0031", patient_id="PAT-G")
    _upload(orthanc, files)
    recorded = Order()
    recorded.record_fsyncs(monkeypatch)

    def answering(*args: Any, **kwargs: Any) -> Any:
        received = receive_instance(*args, **kwargs)  # what the C-STORE response is made of
        if received.ok:
            recorded.add("answered", received.sop_instance_uid)
        return received

    monkeypatch.setattr(fetch, "receive_instance", answering)
    report = run_fetch(configured, "pacs", accession_number="RQ0031", enqueue=lambda job: None)
    assert report.ok and [s.outcome for s in report.studies] == ["retrieved"]
    assert len([e for e in recorded.events if e[0] == "answered"]) == len(files)
    recorded.assert_files_synced_before("answered", configured.data_dir / "studies")


def _study_in_every_syntax(folder: Path, *, accession: str, patient_id: str) -> list[Path]:
    """One study with an instance in each transfer syntax Orthanc 1.10 knows (HTJ2K came later): a CT
    series of ten instances, an SC (JPEG baseline takes 8 bits) and an MR (JPEG extended takes 12)."""
    study_uid, ct_series = generate_uid(), generate_uid()
    files = []
    for index, syntax in enumerate(s for s in SYNTAXES if s.dcmtk_can_send):
        factory = {8: sc_image, 12: mr_image}.get(syntax.bits or 0, ct_image)
        ds = factory(700 + index)
        if factory is ct_image:
            ds.SeriesInstanceUID, ds.InstanceNumber = ct_series, index + 1
        ds.StudyInstanceUID, ds.PatientID, ds.AccessionNumber = study_uid, patient_id, accession
        files.append(encode(ds, syntax, folder))
    return files


def _held(paths: list[Path]) -> dict[str, tuple[str, bytes]]:
    """Each instance's transfer syntax and Pixel Data bytes as stored, by SOP Instance UID."""
    held = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        held[str(ds.SOPInstanceUID)] = (str(ds.file_meta.TransferSyntaxUID), bytes(ds.PixelData))
    return held


def _event_kinds(db: Database, study_uid: str) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(Event.kind).where(Event.study_instance_uid == study_uid).order_by(Event.id)))


def test_c_get_brings_a_study_held_in_every_transfer_syntax_as_it_is_held(
    settings: Settings, orthanc: LocalOrthanc, tmp_path: Path
) -> None:
    """Orthanc cannot transcode on C-GET: each instance comes only on a context of the syntax it holds."""
    configured = _configure(settings, orthanc.dicom_port, retrieve="c-get")
    files = _study_in_every_syntax(tmp_path / "ts", accession="RQ0071", patient_id="PAT-TS")
    _upload(orthanc, files)
    queued: list[Job] = []
    report = run_fetch(configured, "pacs", accession_number="RQ0071", enqueue=queued.append)
    (study,) = report.studies
    assert report.ok, study.reason
    assert (study.retrieved, study.failed, study.here_after) == (len(files), 0, len(files))
    stored = _held(sorted((configured.data_dir / "studies").rglob("*.dcm")))
    assert stored == _held(files), "every instance is stored in the syntax the source holds it in"
    assert study.completion_trigger == "retrieve" and study.state == "routed"
    assert [len(job.series_instance_uids) for job in queued] == [1], "the CT series, once"


def test_a_c_get_that_fails_half_way_completes_and_routes_what_came(settings: Settings, tmp_path: Path) -> None:
    """The fetch's own arrivals reach its completeness tracker: a retrieve that ends, however it ends,
    completes what it delivered; nothing is left receiving. The source does not say which SOP classes
    the study holds, so they are asked per series and only they are proposed."""
    study_uid, files = write_study(
        tmp_path / "ct", seed=81, shape=(10, 32, 32), accession_number="RQ0081", patient_id="PAT-H"
    )
    source = PynetdicomSource(files, sop_classes_in_study=False, stop_after=8)
    source.start()
    try:
        configured = _configure(settings, source.port, source_ae=source.ae_title, retrieve="c-get")
        queued: list[Job] = []
        report = run_fetch(configured, "pacs", accession_number="RQ0081", enqueue=queued.append)
    finally:
        source.stop()
    (study,) = report.studies
    assert not report.ok and study.outcome == "failed" and "0xA702" in study.reason
    assert (study.retrieved, study.failed, study.here_after) == (8, 2, 8)
    assert study.state == "routed" and study.completion_trigger == "retrieve"
    assert [job.study_instance_uid for job in queued] == [study_uid]
    db = Database(configured.sqlalchemy_url)
    try:
        assert _event_kinds(db, study_uid) == ["study-complete", "job-queued"]
    finally:
        db.dispose()
    (contexts,) = source.proposed
    assert {str(c.abstract_syntax) for c in contexts} == {StudyRootQueryRetrieveInformationModelGet, CTImageStorage}
    storage = [c for c in contexts if c.abstract_syntax == CTImageStorage]
    assert len(storage) > 10 and all(len(c.transfer_syntax) == 1 for c in storage), "one per transfer syntax"
    assert len({c.transfer_syntax[0] for c in storage}) == len(storage)


@pytest.mark.parametrize("count_completeness", [False, True], ids=["no-source-count", "source-count"])
def test_a_c_move_over_one_association_per_transfer_syntax_completes_the_study_once(
    settings: Settings, orthanc: LocalOrthanc, tmp_path: Path, count_completeness: bool
) -> None:
    """Orthanc opens one C-MOVE sub-association per transfer syntax: no release completes the study;
    the end of the C-MOVE with every instance indexed does (or the source's count, reached then)."""
    configured = _configure(settings, orthanc.dicom_port, count_completeness=count_completeness)
    files = _study_in_every_syntax(tmp_path / "ts", accession="RQ0091", patient_id="PAT-MV")
    study_uid = _uid(files)
    _upload(orthanc, files)
    queued: list[Job] = []
    listener = Listener(configured, queued.append)
    listener.start()
    try:
        report = run_fetch(configured, "pacs", accession_number="RQ0091", enqueue=queued.append)
        kinds = _event_kinds(listener.db, study_uid)
    finally:
        listener.stop()
    (study,) = report.studies
    assert report.ok, study.reason
    assert (study.retrieved, study.here_after) == (len(files), len(files))
    assert study.completion_trigger in ({"retrieve", "source-count"} if count_completeness else {"retrieve"})
    assert kinds == ["study-complete", "job-queued"], "completed once, with every instance here"
    assert [len(job.series_instance_uids) for job in queued] == [1]


def test_fetch_over_dicom_tls(settings: Settings, tmp_path: Path) -> None:
    """C-FIND and C-GET to a source that takes TLS only, with a client certificate."""
    pki = make_pki(tmp_path / "pki")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    server.load_verify_locations(pki.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    study_uid, files = write_study(tmp_path / "ct", seed=82, shape=(8, 32, 32), accession_number="RQ0082")
    source = PynetdicomSource(files, ssl_context=server)
    source.start()
    tls = OutboundTLSSettings(ca_bundle=pki.ca, certificate=pki.client_cert, private_key=pki.client_key)
    try:
        configured = _configure(settings, source.port, source_ae=source.ae_title, retrieve="c-get", tls=tls)
        report = run_fetch(configured, "pacs", accession_number="RQ0082", enqueue=lambda job: None)
        plain = _configure(settings, source.port, source_ae=source.ae_title, retrieve="c-get")
        with pytest.raises(FetchFailed, match=r"aborted the association request|is not reachable"):
            run_fetch(plain, "pacs", accession_number="RQ0082")
    finally:
        source.stop()
    (study,) = report.studies
    assert report.ok and study.study_instance_uid == study_uid
    assert (study.retrieved, study.here_after) == (len(files), len(files))
