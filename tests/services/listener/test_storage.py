"""The transport-neutral receiver on its own: what it refuses, and that a refusal stores nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode

from hounsfield.db import Database
from hounsfield.dicom_status import Status
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.storage import Origin, StoreContext, receive_instance
from hounsfield.store import StudyStore
from tests.support import bare_ct


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
