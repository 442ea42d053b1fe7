"""The listener's purger and the ingest journal: a study with acknowledged instances not yet applied is
never purged, and nothing is placed while a study's files go."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dsutils import encode

from hounsfield.config import load_settings
from hounsfield.db import Instance, Study, StudyState, utcnow
from hounsfield.dicom_status import Status
from hounsfield.listener.storage import receive_instance
from hounsfield.retention import Purger
from tests.services.listener.test_ingest import ORIGIN, _dataset, _rig


def test_an_instance_acknowledged_but_not_applied_holds_its_study_from_the_purge(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    settings = load_settings(
        None,
        data_dir=tmp_path / "store",
        listener={"min_free_disk_mb": 0},
        retention={"enabled": True, "high_water_percent": 100, "floor_margin_mb": 0},
    )
    try:
        ds, data = _dataset()
        assert receive_instance(rig.context, data, ExplicitVRLittleEndian, ORIGIN).status == Status.SUCCESS
        assert rig.journaled.drain(10)
        long_ago = utcnow() - timedelta(days=40)
        with rig.db.session() as session:
            study = session.get(Study, ds.StudyInstanceUID)
            assert study is not None
            study.state, study.completed_at, study.last_received_at = StudyState.NO_ROUTE, long_ago, long_ago
        (path,) = [Path(row.path) for row in rig.rows().values()]

        # The same bytes sent again: acknowledged as a duplicate of the file on disk; its row waits in the applier.
        applying, release = threading.Event(), threading.Event()
        record = rig.journaled._record

        def slow_record(items):  # type: ignore[no-untyped-def]
            applying.set()
            release.wait(10)
            return record(items)

        rig.journaled._record = slow_record  # type: ignore[method-assign]
        assert receive_instance(rig.context, data, ExplicitVRLittleEndian, ORIGIN).status == Status.SUCCESS
        assert applying.wait(10)
        purger = Purger(settings, rig.db, rig.store, guard=rig.journaled.holding_study)
        held = purger.purge()
        release.set()
        assert rig.journaled.drain(10)

        assert held.studies == {} and held.skipped == 1
        assert path.exists(), "the acknowledged instance's file is still there"
        with rig.db.session() as session:
            assert session.get(Instance, ds.SOPInstanceUID) is not None
        assert Purger(settings, rig.db, rig.store, guard=rig.journaled.holding_study).purge().studies == {}
    finally:
        rig.journaled.stop()
        rig.db.dispose()


def test_a_held_study_is_released_once_applied_and_its_emptied_folders_are_made_again(tmp_path: Path) -> None:
    rig = _rig(tmp_path, start=False)
    try:
        ds, data = _dataset()
        assert receive_instance(rig.context, data, ExplicitVRLittleEndian, ORIGIN).status == Status.SUCCESS
        with rig.journaled.holding_study(ds.StudyInstanceUID) as clear:
            assert not clear
        with rig.journaled.holding_study("1.2.3") as clear:
            assert clear
        rig.journaled.start()
        assert rig.journaled.drain(10)
        with rig.journaled.holding_study(ds.StudyInstanceUID) as clear:
            assert clear
            (path,) = [Path(row.path) for row in rig.rows().values()]
            path.unlink()
            path.parent.rmdir()
            path.parent.parent.rmdir()
        again, _ = _dataset(study_uid=ds.StudyInstanceUID)
        again.SeriesInstanceUID = ds.SeriesInstanceUID  # into the folder that was removed
        again_data = bytes(encode(again, False, True))
        assert receive_instance(rig.context, again_data, ExplicitVRLittleEndian, ORIGIN).status == Status.SUCCESS
        assert rig.journaled.drain(10)
        assert Path(rig.rows()[again.SOPInstanceUID].path).exists()
    finally:
        rig.journaled.stop()
        rig.db.dispose()
