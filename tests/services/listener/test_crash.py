"""kill -9 in the middle of four studies: what was acknowledged survives, nothing half-done looks done.

The listener runs as its own process (``hounsfield listener``). Four senders (pynetdicom SCUs, one
thread each) send their own study of 60 instances and note every SOP Instance UID that got Success,
with the exact bytes they sent. The listener is killed with SIGKILL while they send, then started
again on the same data folder; start-up recovery runs before it serves. Then:

* every acknowledged instance is on disk, byte for byte, and indexed;
* no temporary file is left, every index row points at a whole file, every instance file is indexed;
* no study was completed by the crash: all four are still ``receiving`` after the restart. A sender
  that retries after the outage completes its study on release; the others are completed by the
  quiet period, counted from the restart.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from sqlalchemy import select

from hounsfield.db import Database, Instance, Study, StudyState
from hounsfield.demo.orthanc import free_port
from tests.services.listener.dicom_wire import ListenerProcess, check_acknowledged, dataset_part

SENDERS = 4
INSTANCES = 60
QUIET_PERIOD_S = 6.0


@dataclass
class Sender:
    """One modality: its study on disk, and what the listener acknowledged of it."""

    name: str
    study_uid: str
    files: list[Path]
    acknowledged: dict[str, bytes] = field(default_factory=dict)
    failed: bool = False

    def send(self, port: int, *, pace_s: float = 0.0) -> None:
        ae = AE(ae_title=self.name)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="HOUNSFIELD")
        if not assoc.is_established:
            self.failed = True
            return
        for path in self.files:
            try:
                # An association the listener's death already aborted refuses to send (RuntimeError).
                status = assoc.send_c_store(path)
            except RuntimeError:
                status = Dataset()
            if "Status" not in status or status.Status != 0x0000:
                self.failed = True  # the listener is gone: the rest was never promised
                break
            data = path.read_bytes()
            self.acknowledged[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = dataset_part(data)
            time.sleep(pace_s)
        if assoc.is_established:
            assoc.release()


def _write_study(folder: Path, index: int) -> tuple[str, list[Path]]:
    folder.mkdir(parents=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(index)
    files = []
    for number in range(1, INSTANCES + 1):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = f"CRASH{index}", "CT", 1, number
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = rng.integers(0, 4096, (64, 64), dtype=np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        path = folder / f"{number:03d}.dcm"
        path.write_bytes(buffer.getvalue())
        files.append(path)
    return study_uid, files


def _states(db: Database) -> dict[str, tuple[StudyState, str | None]]:
    with db.session() as session:
        return {s.study_instance_uid: (s.state, s.completion_trigger) for s in session.scalars(select(Study))}


def _assert_store_and_index_agree(listener: ListenerProcess, db: Database) -> None:
    studies = listener.data_dir / "studies"
    assert not list(studies.rglob(".incoming-*")), "a temporary file survived the restart"
    with db.session() as session:
        rows = {row.sop_instance_uid: (row.path, row.size, row.sha256) for row in session.scalars(select(Instance))}
    for path, size, sha256 in rows.values():
        data = Path(path).read_bytes()  # FileNotFoundError: an index row points at nothing
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha256, "an index row points at a bad file"
    on_disk = {p.name.removesuffix(".dcm") for p in studies.rglob("*.dcm")}
    assert on_disk == set(rows), "instance files and index rows differ"


def test_kill_minus_nine_mid_study_loses_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_database_url: str | None
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the SCU sends the files' bytes as they are
    senders = [Sender(f"MODALITY{i}", *_write_study(tmp_path / f"study{i}", i)) for i in range(SENDERS)]
    listener = ListenerProcess(
        tmp_path / "listener",
        free_port(),
        listener={"quiet_period_s": QUIET_PERIOD_S},
        database_url=default_database_url,
    )
    listener.start()
    db: Database | None = None
    try:
        threads = [threading.Thread(target=s.send, args=(listener.port,), kwargs={"pace_s": 0.01}) for s in senders]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while min(len(s.acknowledged) for s in senders) < 8:
            assert time.monotonic() < deadline, "the senders did not get going"
            assert all(t.is_alive() for t in threads), "a sender finished or failed before the kill"
            time.sleep(0.01)
        listener.kill()
        for thread in threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), "a sender hung on a dead listener"
        assert all(s.failed and 0 < len(s.acknowledged) < INSTANCES for s in senders), "not killed mid-study"

        db = Database(listener.sqlalchemy_url)
        crashed = _states(db)  # what the applier had indexed when it died (the journal holds the rest)
        assert all(state is StudyState.RECEIVING for state, _ in crashed.values()), crashed

        listener.start()  # the journal is replayed and recovery runs before it serves again
        restarted = _states(db)
        assert set(restarted) == {s.study_uid for s in senders}
        assert all(state is StudyState.RECEIVING for state, _ in restarted.values()), "completed by the crash"
        for sender in senders:
            for sop_uid, sent in sender.acknowledged.items():
                check_acknowledged(db, listener.data_dir, sop_uid, sent)
        _assert_store_and_index_agree(listener, db)

        # The first modality retries its whole study; the others never come back.
        retry = senders[0]
        retry.acknowledged.clear()
        retry.failed = False
        retry.send(listener.port)
        assert not retry.failed and len(retry.acknowledged) == INSTANCES

        deadline = time.monotonic() + QUIET_PERIOD_S + 30
        while any(state is StudyState.RECEIVING for state, _ in _states(db).values()):
            assert time.monotonic() < deadline, f"studies left receiving after the quiet period: {_states(db)}"
            time.sleep(0.2)
        final = _states(db)
        assert final[retry.study_uid] == (StudyState.NO_ROUTE, "association-release")
        assert all(final[s.study_uid] == (StudyState.NO_ROUTE, "quiet-period") for s in senders[1:]), final
        for sender in senders:
            for sop_uid, sent in sender.acknowledged.items():
                check_acknowledged(db, listener.data_dir, sop_uid, sent)
        _assert_store_and_index_agree(listener, db)
        with db.session() as session:
            retried = session.scalars(select(Instance.sop_instance_uid).where(Instance.path.contains(retry.study_uid)))
            assert len(retried.all()) == INSTANCES
    finally:
        if db is not None:
            db.dispose()
        listener.stop()
