"""The soak's modalities against a real listener and registry: the ledger counts exactly what was stored.

Every kind of study goes through every sender (dcmtk ``storescu``, pynetdicom, STOW-RS) to ``hounsfield up``;
every acknowledged instance must be in the index, and nothing else may be counted. Refusals are real: an
instance with an invalid SOP Instance UID, an unknown calling AE title, and a listener whose disk floor is
above the free space (0xA700, with its Error Comment), which is then killed with SIGKILL and started again
while a modality keeps resending.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pynetdicom import AE
from sqlalchemy import select

from benchmarks.soak.modalities import (
    KINDS,
    MIX,
    MODALITIES,
    Ledger,
    Modality,
    ModalityThread,
    _keep_responses,
    _no_delay,
    make_study,
    send_pynetdicom,
    send_storescu,
    send_stow,
)
from hounsfield.db import Database, Instance, Series
from hounsfield.demo.orthanc import LocalOrthanc, free_port
from hounsfield.demo.stack import HounsfieldStack
from hounsfield.listener.echo import echo
from tests.e2e.conftest import running_stack
from tests.support import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="dcmtk is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
TEST_AE = "SOAK-TEST"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
A700 = 0xA700


def _sources() -> dict[str, dict[str, Any]]:
    named = {m.name: {"ae_title": m.ae_title, "networks": ["127.0.0.1/32"]} for m in MODALITIES}
    return named | {"soak-test": {"ae_title": TEST_AE, "networks": ["127.0.0.1/32"]}}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pacs: LocalOrthanc, request: pytest.FixtureRequest
) -> Iterator[HounsfieldStack]:
    """``hounsfield up`` (no deployments) whose listener takes every soak modality and the test's AE title;
    its database on PostgreSQL in make test's second pass (tests/e2e's ``running_stack``)."""
    with running_stack(tmp_path_factory, pacs, request, deployments=[], sources=_sources()) as running:
        yield running


def _database(stack: HounsfieldStack) -> Database:
    return Database(stack.config.get("database_url") or f"sqlite:///{Path(stack.config['data_dir']) / 'hounsfield.db'}")


def _indexed(db: Database, sops: set[str]) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (Study Instance UID, transfer syntax) of those of ``sops`` in the index."""
    found: dict[str, tuple[str, str]] = {}
    wanted = sorted(sops)
    with db.session() as session:
        for start in range(0, len(wanted), 500):
            rows = session.execute(
                select(Instance.sop_instance_uid, Series.study_instance_uid, Instance.transfer_syntax_uid)
                .join(Series, Series.series_instance_uid == Instance.series_instance_uid)
                .where(Instance.sop_instance_uid.in_(wanted[start : start + 500]))
            )
            found.update({sop: (study, syntax) for sop, study, syntax in rows})
    return found


def _thread(
    modality: Modality, port: int, ledger: Ledger, stop: threading.Event, workdir: Path, **options: Any
) -> ModalityThread:
    """A modality sending to the listener on ``port`` (and, given ``stow_url``, to the registry)."""
    options = {"stow_url": "", "stow_headers": {}, "retry_delay_s": 0.2, **options}
    return ModalityThread(
        modality, host="127.0.0.1", port=port, called_ae="HOUNSFIELD", workdir=workdir, ledger=ledger, stop=stop,
        **options,
    )  # fmt: skip


def test_the_hospital_is_eight_modalities_with_ct_a_large_share() -> None:
    assert len(MODALITIES) == 8
    assert len({m.name for m in MODALITIES}) == 8 and len({m.ae_title for m in MODALITIES}) == 8
    assert {m.sender for m in MODALITIES} == {"storescu", "pynetdicom", "stow"}
    assert {kind for m in MODALITIES for kind in m.kinds} == set(KINDS)
    ct_share = sum(k in ("ct", "compressed-ct") for k in MIX) / len(MIX)
    assert ct_share >= 0.4, MIX


def test_study_plans_are_deterministic_and_distinct(tmp_path: Path) -> None:
    plans = {kind: make_study(kind, tmp_path / kind, 7) for kind in KINDS}
    again = make_study("ct", tmp_path / "again", 7)
    assert again.sop_instance_uids == plans["ct"].sop_instance_uids
    assert len({p.study_instance_uid for p in plans.values()}) == len(KINDS)
    assert len({uid for p in plans.values() for uid in p.sop_instance_uids}) == sum(
        len(p.files) for p in plans.values()
    )
    counts = {kind: len(plan.files) for kind, plan in plans.items()}
    assert counts == {"ct": 12, "compressed-ct": 12, "mr": 10, "cr": 1, "multiframe": 1}
    assert {kind for kind, plan in plans.items() if plan.routable} == {"ct", "compressed-ct"}
    for kind, plan in plans.items():
        for path, sop in zip(plan.files, plan.sop_instance_uids, strict=True):
            ds = pydicom.dcmread(path)
            assert str(ds.SOPInstanceUID) == sop and str(ds.StudyInstanceUID) == plan.study_instance_uid
            assert (str(ds.PatientID), str(ds.PatientName)) == ("SOAK-P7", "SOAK^P7")
            assert ds.StudyDate == time.strftime("%Y%m%d") and ds.AccessionNumber
            assert ds.pixel_array.size > 0, kind  # the pixels decode (RLE included)
        syntax = str(pydicom.dcmread(plan.files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
        assert (syntax == RLE_LOSSLESS) == (kind == "compressed-ct"), kind
    multiframe = pydicom.dcmread(plans["multiframe"].files[0])
    assert int(multiframe.NumberOfFrames) == 24
    assert pydicom.dcmread(plans["cr"].files[0]).SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"


def test_every_kind_through_every_sender_is_acknowledged_and_indexed(stack: HounsfieldStack, tmp_path: Path) -> None:
    ledger, stop = Ledger(), threading.Event()
    senders = [
        Modality(f"all-{sender}", ae, sender, KINDS)
        for sender, ae in (("storescu", "SOAK-CT1"), ("pynetdicom", "SOAK-CT3"), ("stow", "SOAK-STOW"))
    ]
    stow = {"stow_url": f"{stack.api}/dicomweb/studies", "stow_headers": stack.api_headers}
    threads = [
        _thread(modality, stack.listener_port, ledger, stop, tmp_path, seed=n, study_interval_s=0.1, **stow)
        for n, modality in enumerate(senders)
    ]
    for thread in threads:
        thread.start()

    def every_kind_sent() -> bool:
        with ledger.lock:
            done = [(r.modality, r.kind) for r in ledger.studies.values() if r.completed_at is not None]
        return all((m.name, kind) in done for m in senders for kind in KINDS)

    try:
        wait_for(every_kind_sent, timeout=40)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)

    # Every study made was finished (stop lets the current one finish), and only what was planned was acked.
    studies = dict(ledger.studies)
    planned = {sop: uid for uid, record in studies.items() for sop in record.sop_instance_uids}
    assert all(record.completed_at is not None for record in studies.values())
    assert set(ledger.acknowledged) == set(planned)
    assert all(ledger.acknowledged[sop][0] == study for sop, study in planned.items())
    assert ledger.acked_count() == sum(record.n_instances for record in studies.values())
    assert not ledger.refusals and not ledger.interruptions
    assert all(thread.studies_completed == thread.studies_made >= len(KINDS) for thread in threads)
    assert not [path for m in senders for path in (tmp_path / m.name).rglob("*.dcm")]  # deleted once acknowledged

    # Every acknowledged instance is in the index, under its own study; compressed CT stored as sent.
    db = _database(stack)
    try:
        wait_for(lambda: len(_indexed(db, set(planned))) == len(planned), timeout=15)
        indexed = _indexed(db, set(planned))
    finally:
        db.engine.dispose()
    assert {sop: study for sop, (study, _) in indexed.items()} == planned
    compressed = {sop for uid, r in studies.items() if r.kind == "compressed-ct" for sop in r.sop_instance_uids}
    assert compressed and all(indexed[sop][1] == RLE_LOSSLESS for sop in compressed)

    snapshot = ledger.snapshot()
    assert snapshot["acknowledged"] == len(planned) and snapshot["studies_complete"] == len(studies)
    assert snapshot["by_modality"]["all-stow"]["acknowledged"] == sum(
        r.n_instances for r in studies.values() if r.modality == "all-stow"
    )


def _with_invalid_uid(plan_file: Path, folder: Path) -> tuple[Path, str]:
    """A copy of ``plan_file`` whose SOP Instance UID (data set and file meta) is not a valid UID."""
    ds = pydicom.dcmread(plan_file)
    path = folder / "invalid-uid.dcm"
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pydicom warns, and writes it as asked
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID("1.2.3.4a")
        ds.save_as(path)
    return path, "1.2.3.4a"


def test_storescu_refusal_is_parsed_per_file_and_never_acknowledged(stack: HounsfieldStack, tmp_path: Path) -> None:
    plan = make_study("ct", tmp_path / "ct", 901)
    bad, bad_uid = _with_invalid_uid(plan.files[0], tmp_path)
    files = [plan.files[1], bad, plan.files[2]]
    uids = [plan.sop_instance_uids[1], bad_uid, plan.sop_instance_uids[2]]
    target = {"calling_ae": TEST_AE, "called_ae": "HOUNSFIELD", "host": "127.0.0.1", "port": stack.listener_port}

    outcome = send_storescu(files, uids, **target)
    assert outcome.acknowledged == [uids[0], uids[2]]  # the files around the refused one are sent (-nh) and stored
    assert outcome.interruption is None
    ((protocol, status, reason, sop),) = outcome.refusals
    assert (protocol, status, sop) == ("dicom", 0xA900, bad_uid)
    assert reason == "SOPInstanceUID is not a valid UID"  # the listener's Error Comment

    # The same through pynetdicom and STOW-RS (which reads the file meta first: 0xC210).
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pynetdicom reads the file with pydicom
        outcome = send_pynetdicom(files, uids, **target)
    assert outcome.acknowledged == [uids[0], uids[2]] and outcome.interruption is None
    assert [r[:2] + r[3:] for r in outcome.refusals] == [("dicom", 0xA900, bad_uid)] and outcome.refusals[0][2]
    outcome = send_stow(files, uids, url=f"{stack.api}/dicomweb/studies", headers=stack.api_headers)
    assert outcome.acknowledged == [uids[0], uids[2]] and outcome.interruption is None
    ((protocol, status, reason, _),) = outcome.refusals
    assert (protocol, status) == ("http", 0xC210) and "file meta" in reason
    outcome = send_stow(files, uids, url=f"{stack.api}/dicomweb/studies", headers={})
    assert not outcome.acknowledged and outcome.refusals[0][:2] == ("http", 401) and outcome.refusals[0][2]

    # An unknown calling AE title: the association is rejected (reason 3), nothing is acknowledged.
    unknown = {**target, "calling_ae": "NOT-A-SOURCE"}
    outcome = send_storescu(files, uids, **unknown)
    assert not outcome.acknowledged and outcome.interruption is None
    assert outcome.refusals == [
        ("dicom-association", 3, "Rejected Permanent, Source: Service User; Calling AE Title Not Recognized", None)
    ]
    outcome = send_pynetdicom(files, uids, **unknown)
    assert not outcome.acknowledged
    # pynetdicom may see a fast A-ASSOCIATE-RJ as an abort (its threads race the closed socket).
    assert [r[:2] for r in outcome.refusals] == [("dicom-association", 3)] or outcome.interruption

    # Nobody listening: an interruption, not a refusal.
    for send in (send_storescu, send_pynetdicom):
        outcome = send(files, uids, **{**target, "port": free_port()})
        assert not outcome.acknowledged and not outcome.refusals and outcome.interruption


class _Listener:
    """``hounsfield listener`` alone (no registry, no worker), so that this test may kill it."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, min_free_disk_mb: int) -> None:
        config = {
            "data_dir": str(self.folder / "data"),
            "log_level": "WARNING",
            "listener": {
                "host": "127.0.0.1", "port": self.port, "quiet_period_s": 3600.0,
                "min_free_disk_mb": min_free_disk_mb, "sources": _sources(),
            },
        }  # fmt: skip
        path = self.folder / f"hounsfield-{min_free_disk_mb}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
        with (self.folder / "listener.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hounsfield.cli", "listener", "--config", str(path)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        process = self.process
        wait_for(
            lambda: (
                process.poll() is not None
                or echo("127.0.0.1", self.port, called_ae="HOUNSFIELD", calling_ae=TEST_AE, timeout_s=2).ok
            ),
            timeout=60,
        )
        assert process.poll() is None, (self.folder / "listener.log").read_text()[-2000:]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def test_disk_floor_refusals_and_a_killed_listener_then_every_instance_is_acknowledged_once_stored(
    tmp_path: Path,
) -> None:
    listener = _Listener(tmp_path / "listener", free_port())
    (tmp_path / "listener").mkdir()
    ledger, stop = Ledger(), threading.Event()
    modalities = [replace(MODALITIES[0], kinds=("ct",)), replace(MODALITIES[6], kinds=("cr",))]  # storescu, pynetdicom
    work = tmp_path / "work"
    threads = [_thread(m, listener.port, ledger, stop, work, seed=3, study_interval_s=60) for m in modalities]
    try:
        # The floor above the disk's free space: every instance refused, 0xA700 with the listener's words.
        listener.start(min_free_disk_mb=1 << 40)
        for thread in threads:
            thread.start()
        wait_for(lambda: {r.modality for r in list(ledger.refusals)} == {m.name for m in modalities}, timeout=20)
        listener.kill()
        refused = list(ledger.refusals)
        assert ledger.acked_count() == 0
        assert all(r.protocol == "dicom" and r.status == A700 for r in refused), refused[:3]
        assert all(r.reason.startswith("the study store cannot take it: free disk space") for r in refused)

        # Down: connections refused, recorded as interruptions; still nothing acknowledged.
        wait_for(lambda: {i.modality for i in list(ledger.interruptions)} == {m.name for m in modalities}, 20)
        assert ledger.acked_count() == 0

        # Back with room: the queues drain, each study exactly once.
        listener.start(min_free_disk_mb=0)
        stop.set()  # each thread finishes its current study, then ends
        for thread in threads:
            thread.join(timeout=40)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        stop.set()
        for thread in threads:
            thread.abandon.set()
        listener.stop()

    studies = dict(ledger.studies)
    assert sorted(r.kind for r in studies.values()) == ["cr", "ct"]
    assert all(r.completed_at is not None and r.first_sent_at is not None for r in studies.values())
    planned = {sop: uid for uid, record in studies.items() for sop in record.sop_instance_uids}
    assert {sop: study for sop, (study, _) in ledger.acknowledged.items()} == planned
    db = Database(f"sqlite:///{tmp_path / 'listener' / 'data' / 'hounsfield.db'}")
    try:
        assert {sop: study for sop, (study, _) in _indexed(db, set(planned)).items()} == planned
    finally:
        db.engine.dispose()


def test_pynetdicom_gets_every_response_its_reactor_takes(tmp_path: Path) -> None:
    """pynetdicom 3.0.4's reactor thread can take a C-STORE response off the queue just before the waiting
    ``send_c_store`` does (the soak's pynetdicom sender then hung until the listener's timeout; seen in CI).
    Against a quick peer (dcmtk's storescp) with the CPUs busy, it took one in most associations of 150
    sends; the sender puts such a response back for the waiting send, and every send is answered."""
    port = free_port()
    scp = subprocess.Popen(
        ["/usr/bin/storescp", "--ignore", "-od", str(tmp_path), str(port)], env={**os.environ, "TCP_NODELAY": "1"}
    )
    stop = threading.Event()

    def spin() -> None:  # widens the reactor's window, as a busy CI machine does
        while not stop.is_set():
            sum(range(1000))

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
    for spinner in spinners:
        spinner.start()
    try:
        wait_for(lambda: echo("127.0.0.1", port, called_ae="ANY-SCP", calling_ae="SOAK-TEST").ok, timeout=10)
        ds = pydicom.Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = "1.2.840.10008.5.1.4.1.1.7", pydicom.uid.generate_uid(), "X"
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ae = AE(ae_title="SOAK-TEST")
        ae.dimse_timeout = 3  # a taken response: None after 3 s, not after the listener's timeout
        ae.add_requested_context(ds.SOPClassUID, pydicom.uid.ExplicitVRLittleEndian)
        unanswered = 0
        for _ in range(4):
            assoc = ae.associate("127.0.0.1", port)
            assert assoc.is_established
            _no_delay(assoc)
            _keep_responses(assoc)
            for _ in range(150):
                status = assoc.send_c_store(ds)
                if status is None or "Status" not in status:
                    unanswered += 1
                    break
            if assoc.is_established:
                assoc.release()
        assert unanswered == 0
    finally:
        stop.set()
        scp.terminate()
        scp.wait(timeout=10)
