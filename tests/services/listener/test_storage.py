"""The transport-neutral receiver on its own: what it refuses, and that a refusal stores nothing."""

from __future__ import annotations

import dataclasses
import logging
import zlib
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode

from hounsfield.db import Database
from hounsfield.dicom_status import Status
from hounsfield.listener import storage
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.storage import Origin, StoreContext, receive_instance
from hounsfield.logs import Throttle
from hounsfield.store import StudyStore
from tests.support import bare_ct, with_raw_value


@pytest.fixture
def context(tmp_path: Path) -> StoreContext:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    tracker = CompletenessTracker(lambda event: None, complete_on_release=True, quiet_period_s=60)
    return StoreContext(StudyStore(tmp_path / "store"), db, tracker)


@pytest.mark.parametrize(
    ("encoded_implicit", "announced", "found"),
    [(True, ExplicitVRLittleEndian, "implicit"), (False, ImplicitVRLittleEndian, "explicit")],
)
def test_dataset_encoded_otherwise_than_its_syntax_is_refused(
    context: StoreContext, encoded_implicit: bool, announced: str, found: str
) -> None:
    data = bytes(encode(bare_ct(), encoded_implicit, True))
    received = receive_instance(context, data, announced, Origin("test", "MODALITY", "HOUNSFIELD"))
    assert received.status == Status.CANNOT_UNDERSTAND
    assert received.reason == f"the dataset is encoded with {found} VR, not as its transfer syntax says"
    assert not list(context.store.root.rglob("*.dcm")), "nothing stored under a syntax that lies"


def test_dataset_in_its_own_syntax_is_stored(context: StoreContext) -> None:
    ds = bare_ct()
    for implicit, syntax in ((True, ImplicitVRLittleEndian), (False, ExplicitVRLittleEndian)):
        ds.SOPInstanceUID = generate_uid()
        received = receive_instance(
            context, bytes(encode(ds, implicit, True)), syntax, Origin("test", "MODALITY", "HOUNSFIELD")
        )
        assert received.ok, received.reason
    assert len(list(context.store.root.rglob("*.dcm"))) == 2


def test_a_flood_of_refusals_logs_a_few_lines(
    context: StoreContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(storage, "_REFUSALS_LOG", Throttle(burst=20, interval_s=60.0))
    with caplog.at_level(logging.WARNING, logger="hounsfield.listener.storage"):
        for _ in range(500):
            received = receive_instance(context, b"\x08\x00", ExplicitVRLittleEndian, Origin("t", "MOD", "HF"))
            assert received.status == Status.CANNOT_UNDERSTAND
    assert len(caplog.records) == 20, "500 refusals, 20 lines a minute"


def test_deflated_datasets_are_inflated_no_further_than_the_setting(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    tracker = CompletenessTracker(lambda event: None, complete_on_release=True, quiet_period_s=60)
    small = StoreContext(StudyStore(tmp_path / "store"), db, tracker, max_inflated=1 << 20)
    ds = bare_ct()
    ds.add_new(0x00091010, "OB", b"\x00" * (4 << 20))  # 4 MiB of zeros: a 4 KiB deflate stream
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = deflater.compress(bytes(encode(ds, False, True))) + deflater.flush()
    received = receive_instance(small, data, DeflatedExplicitVRLittleEndian, Origin("t", "MOD", "HF"))
    assert received.status == Status.CANNOT_UNDERSTAND
    assert "inflates to more than 1 MiB (listener.max_inflated_mb)" in received.reason
    assert not list(small.store.root.rglob("*.dcm"))
    roomy = dataclasses.replace(small, max_inflated=8 << 20)
    assert receive_instance(roomy, data, DeflatedExplicitVRLittleEndian, Origin("t", "MOD", "HF")).ok


@pytest.mark.parametrize(
    "raw",
    [b"1.2.826.0.1.3680043.8.498.12345" + tail for tail in (b"\n", b"\x00\x00", b" x", b"\t", b"  ")]
    + [b" 1.2.826.0.1.3680043.8.498.12345"],
)
def test_a_uid_with_garbage_is_refused_not_cleaned_up(context: StoreContext, raw: bytes) -> None:
    """The file used to be named after the UID with its garbage trimmed, while the file kept the raw value."""
    data = bytes(encode(bare_ct(), False, True))
    received = receive_instance(
        context, with_raw_value(data, b"\x08\x00\x18\x00UI", raw), ExplicitVRLittleEndian, Origin("t", "MOD", "HF")
    )
    assert received.status == Status.DATASET_MISMATCH
    assert received.reason == "SOPInstanceUID is not a valid UID"
    assert not list(context.store.root.rglob("*.dcm"))
    padded = b"1.2.826.0.1.3680043.8.498.12345\x00"  # one pad byte, as the standard writes it
    sent = with_raw_value(data, b"\x08\x00\x18\x00UI", padded)
    assert receive_instance(context, sent, ExplicitVRLittleEndian, Origin("t", "MOD", "HF")).ok
