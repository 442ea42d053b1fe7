"""Corrected segmentations recognised on arrival as feedback on the SEG they correct, with Dice per segment.

Real components: the example application run by the worker's pipeline makes the SEG; corrections are
written with highdicom (as a viewer's editor would send them), indexed as the listener indexes them and
routed by the router, on SQLite and PostgreSQL. The Dice expected is counted here from each SEG's
frames and their source references, not with the code under test.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage
from sqlalchemy import select

from hounsfield.config import DestinationSettings, Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Event, JobState, Result
from hounsfield.db.feedback import Feedback
from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.feedback import NoSharedImage, segment_dice, summarise
from hounsfield.feedback.corrections import _header, _original_for, _Ours
from hounsfield.router.routing import Router
from hounsfield.worker.pipeline import execute_job
from tests.support import index_files, routed_job, write_study
from tests.support import settings_on_both_backends as settings_on_both_backends  # the settings fixture, on both


def _ct(folder: Path) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))


def _masks(seg: pydicom.Dataset, cts: list[pydicom.Dataset]) -> dict[str, np.ndarray]:
    """Each segment's mask (by label) on the CT's grid, frames placed by their source image reference."""
    index_of = {str(ct.SOPInstanceUID): k for k, ct in enumerate(cts)}
    label_of = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    shape = (len(cts), int(cts[0].Rows), int(cts[0].Columns))
    masks = {label: np.zeros(shape, dtype=bool) for label in label_of.values()}
    frames = seg.pixel_array.reshape(-1, *shape[1:])
    shared = seg.SharedFunctionalGroupsSequence[0]  # holds the segment when there is one
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        label = label_of[int(identification[0].ReferencedSegmentNumber)]
        masks[label][index_of[source]] |= frame > 0
    return masks


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def _seg(cts: list[pydicom.Dataset], masks: dict[str, np.ndarray], **attributes: object) -> hd.seg.Segmentation:
    """A manual SEG of ``cts`` as a viewer's editor writes one: labels, no tracking UIDs."""
    labels = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
    descriptions = []
    for number, (label, mask) in enumerate(masks.items(), start=1):
        labels[mask] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lesion,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    # highdicom shares the source's elements: a copy, so that changing the SEG's leaves the CT's alone
    seg = hd.seg.Segmentation(
        source_images=copy.deepcopy(cts), pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=90, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="Viewer", manufacturer_model_name="editor", software_versions="1",
        device_serial_number="1",
    )  # fmt: skip
    for keyword, value in attributes.items():
        setattr(seg, keyword, value)
    return seg


def _arrive(db: Database, settings: Settings, study_uid: str, seg: Dataset, folder: Path, ae: str = "OHIF") -> None:
    """The SEG stored and indexed as the listener does, and the study completing again."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{seg.SOPInstanceUID}.dcm"
    seg.save_as(path, enforce_file_format=True)
    index_files(db, [path], calling_ae=ae)
    Router(settings, db, lambda job: None).on_study_complete(
        StudyComplete(study_instance_uid=study_uid, trigger="quiet-period")
    )


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    orthanc = LocalOrthanc(tmp_path_factory.mktemp("orthanc"), aet="READPACS")
    orthanc.start()
    yield orthanc
    orthanc.stop()


def test_corrected_segs_are_recognised_and_measured_against_ours(
    settings: Settings, tmp_path: Path, pacs: LocalOrthanc
) -> None:
    destination = {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port, "retries": 0}
    settings = settings.model_copy(update={"destinations": {"pacs": DestinationSettings.model_validate(destination)}})
    context, job = routed_job(tmp_path, settings, seed=62, mode="clinical", destinations=["pacs"])
    assert execute_job(context, job.id) is JobState.DONE  # its SEG in the PACS, where a radiologist sees it
    db, study_uid = context.db, job.study_instance_uid
    with db.session() as session:
        (ours,) = session.scalars(select(Result).where(Result.job_id == job.id, Result.kind == "SEG")).all()
    original = pydicom.dcmread(ours.path)
    cts = _ct(tmp_path / "study")
    masks = _masks(original, cts)
    assert list(masks) == ["Lesion 1"] and masks["Lesion 1"].any(), "the phantom's lesion was found"
    lesion = masks["Lesion 1"]

    # 1. OHIF's way: the source series, the same frame of reference; lesion trimmed on its first slice,
    # a missed finding added
    trimmed = lesion.copy()
    trimmed[np.flatnonzero(lesion.any(axis=(1, 2)))[0]] = False
    missed = np.zeros_like(lesion)
    missed[0, :3, :3] = True
    corrected = _seg(cts, {"lesion 1": trimmed, "Missed nodule": missed})
    _arrive(db, context.settings, study_uid, corrected, tmp_path / "in")
    with db.session() as session:
        (row,) = session.scalars(select(Feedback)).all()
    assert (row.kind, row.result_id, row.job_id, row.given_by) == ("correction", ours.id, job.id, "dicom:OHIF")
    assert (row.model_name, row.model_version) == ("CT lesion segmentation", "1.0.0")
    assert row.correction_sop_instance_uid == corrected.SOPInstanceUID
    expected = _dice(lesion, trimmed)
    assert 0.3 < expected < 1.0
    assert row.dice == [
        {
            "segment_number": 1,
            "label": "Lesion 1",
            "corrected_segment_number": 1,
            "dice": pytest.approx(expected, abs=1e-6),
        },
        {"segment_number": None, "label": "Missed nodule", "corrected_segment_number": 2, "dice": 0.0},
    ]
    assert row.mean_dice == pytest.approx(expected / 2, abs=1e-6)

    # 2. a SEG of another frame of reference that refers to nothing of ours: not a correction;
    # the first correction is not counted twice when the study completes again
    unrelated = _seg(cts, {"Liver": lesion}, FrameOfReferenceUID=hd.UID())
    unrelated.ReferencedSeriesSequence[0].SeriesInstanceUID = hd.UID()
    _arrive(db, context.settings, study_uid, unrelated, tmp_path / "in")
    with db.session() as session:
        assert len(session.scalars(select(Feedback)).all()) == 1

    # 3. one that names our SEG (its frame of reference not given right): a correction of it, all agreeing
    naming = _seg(cts, {"Lesion 1": lesion}, FrameOfReferenceUID=hd.UID())
    reference = Dataset()
    reference.SeriesInstanceUID = original.SeriesInstanceUID
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = SegmentationStorage, original.SOPInstanceUID
    reference.ReferencedInstanceSequence = [item]
    naming.ReferencedSeriesSequence = [*naming.ReferencedSeriesSequence, reference]
    _arrive(db, context.settings, study_uid, naming, tmp_path / "in", ae="PACS")

    # 4. one for another patient than our SEG's: refused, recorded on the study's path only
    stranger = _seg(cts, {"Lesion 1": lesion}, PatientID="SOMEONE-ELSE")
    _arrive(db, context.settings, study_uid, stranger, tmp_path / "in")

    # 5. one whose masks would take more than feedback.max_correction_mb (8 KiB of frames here, 32 KiB of
    # masks over 8 images of 32 x 32): a correction, not measured
    padded = _seg(cts, {"Lesion 1": trimmed})
    small = context.settings.model_copy(
        update={"feedback": context.settings.feedback.model_copy(update={"max_correction_mb": 0.03})}
    )
    _arrive(db, small, study_uid, padded, tmp_path / "in")

    # 6. one whose pixel data is cut short: a correction, not measured, and the study still routed
    broken = _seg(cts, {"Lesion 1": trimmed})
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 2]
    _arrive(db, context.settings, study_uid, broken, tmp_path / "in")

    with db.session() as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.id)).all()
        events = session.scalars(select(Event).where(Event.study_instance_uid == study_uid).order_by(Event.id)).all()
    assert [r.correction_sop_instance_uid for r in rows] == [
        corrected.SOPInstanceUID,
        naming.SOPInstanceUID,
        padded.SOPInstanceUID,
        broken.SOPInstanceUID,
    ]
    assert rows[1].given_by == "dicom:PACS" and rows[1].mean_dice == 1.0 and rows[1].result_id == ours.id
    assert rows[2].mean_dice is None and rows[2].dice == [] and "over feedback.max_correction_mb" in rows[2].comment
    assert rows[3].mean_dice is None and "cannot be read or aligned" in rows[3].comment
    assert study_uid not in rows[3].comment and "/" not in rows[3].comment, "a reason, not a path or a value"
    refused = [e for e in events if e.kind == "correction-refused"]
    assert len(refused) == 1 and refused[0].detail["sop_instance_uid"] == stranger.SOPInstanceUID
    not_corrections = [e.detail["sop_instance_uid"] for e in events if e.kind == "seg-not-a-correction"]
    assert not_corrections == [unrelated.SOPInstanceUID], "examined once, however often the study completes"
    assert [e.detail["sop_instance_uid"] for e in events if e.kind == "correction-recorded"] == [
        r.correction_sop_instance_uid for r in rows
    ]
    assert not [e for e in events if e.kind == "job-queued" and e.job_id != job.id], "a correction makes no new job"

    (summary,) = summarise(db)
    assert (summary.corrections, summary.corrections_measured) == (4, 2)
    assert summary.mean_correction_dice == pytest.approx((expected / 2 + 1.0) / 2, abs=1e-4)

    off = context.settings.model_copy(
        update={"feedback": context.settings.feedback.model_copy(update={"recognise_corrections": False})}
    )
    _arrive(db, off, study_uid, _seg(cts, {"Lesion 1": trimmed}), tmp_path / "in")
    with db.session() as session:
        assert len(session.scalars(select(Feedback)).all()) == 4, "feedback.recognise_corrections: false"
    db.dispose()


def test_segments_pair_by_tracking_uid_then_label_then_number(tmp_path: Path) -> None:
    _, files = write_study(tmp_path / "ct", seed=3, shape=(6, 24, 24))
    cts = _ct(files[0].parent)
    a = np.zeros((6, 24, 24), dtype=bool)
    a[1:4, 2:10, 2:10] = True  # 192 voxels
    b = np.zeros_like(a)
    b[4:6, 12:20, 12:20] = True  # 128 voxels
    c = np.zeros_like(a)
    c[0, :2, :2] = True
    ours = _seg(cts, {"Lesion 1": a, "Lesion 2": b})
    tracking = hd.UID()
    ours.SegmentSequence[1].TrackingID, ours.SegmentSequence[1].TrackingUID = "Lesion 2", tracking
    a_trimmed = a.copy()
    a_trimmed[1] = False  # 128 voxels, all inside a: Dice 2*128/(192+128) = 0.8
    theirs = _seg(cts, {"Renamed": b, "LESION 1 ": a_trimmed, "Nodule": c})
    theirs.SegmentSequence[0].TrackingID, theirs.SegmentSequence[0].TrackingUID = "Renamed", tracking
    scored = segment_dice(*(hd.seg.segread(_saved(s, tmp_path)) for s in (ours, theirs)))
    assert [(s.segment_number, s.corrected_segment_number, s.dice) for s in scored] == [
        (1, 2, 0.8),  # by label, case and outer spaces aside
        (2, 1, 1.0),  # by Tracking UID
        (None, 3, 0.0),  # added by the radiologist
    ]

    relabelled = _seg(cts, {"Cyst": a, "Unlabelled": a_trimmed})
    relabelled.SegmentSequence[1].SegmentLabel = ""  # another editor's: no label, paired by number
    scored = segment_dice(
        *(hd.seg.segread(_saved(s, tmp_path)) for s in (_seg(cts, {"Lesion 1": a, "Lesion 2": b}), relabelled))
    )
    assert [(s.segment_number, s.corrected_segment_number, s.dice) for s in scored] == [
        (1, None, 0.0),  # labelled otherwise: not the same finding, dropped
        (2, 2, 0.0),  # paired by number: no overlap
        (None, 1, 0.0),
    ]

    _, elsewhere = write_study(tmp_path / "other", seed=4, shape=(6, 24, 24))
    foreign = _seg(_ct(elsewhere[0].parent), {"Lesion 1": a})
    with pytest.raises(NoSharedImage, match="share no source image"):
        segment_dice(hd.seg.segread(_saved(ours, tmp_path)), hd.seg.segread(_saved(foreign, tmp_path)))


def _saved(seg: hd.seg.Segmentation, folder: Path) -> Path:
    path = folder / f"{seg.SOPInstanceUID}.dcm"
    seg.save_as(path, enforce_file_format=True)
    return path


def test_a_correction_of_the_series_goes_to_the_seg_a_radiologist_saw(tmp_path: Path) -> None:
    """Two SEGs of ours on one series (a shadow version beside the clinical one, another model's): the
    correction is credited to the one delivered and, among those, the one whose labels it shares."""
    _, files = write_study(tmp_path / "ct", seed=5, shape=(6, 24, 24))
    cts = _ct(files[0].parent)
    lesion = np.zeros((6, 24, 24), dtype=bool)
    lesion[2:4, 5:9, 5:9] = True
    headers = {
        name: _header(_saved(_seg(cts, {label: lesion}), tmp_path))
        for name, label in [("v1", "Lesion 1"), ("v2", "Lesion 1"), ("liver", "Liver"), ("fix", "lesion 1")]
    }

    def ours(name: str, job: str, *, seen: bool) -> _Ours:
        return _Ours(
            Result(id=len(job), job_id=job, sop_instance_uid=headers[name].sop_instance_uid), headers[name], seen
        )

    clinical_v1, shadow_v2 = ours("v1", "clinical-v1", seen=True), ours("v2", "shadow-v2", seen=False)
    liver = ours("liver", "liver-model", seen=True)
    assert _original_for(headers["fix"], [shadow_v2, clinical_v1]) is clinical_v1, "never a result nobody saw"
    assert _original_for(headers["fix"], [liver, clinical_v1]) is clinical_v1, "the one whose labels it shares"
    twin = ours("v2", "clinical-v2", seen=True)
    assert _original_for(headers["fix"], [twin, clinical_v1]) == "ambiguous", "credited to nobody"
    assert _original_for(headers["fix"], [shadow_v2]) is None
    named = _header(_saved(_seg(cts, {"Lesion 1": lesion}, FrameOfReferenceUID=hd.UID()), tmp_path))
    assert _original_for(named, [shadow_v2, clinical_v1]) is None, "another frame of reference, our SEG not named"


def test_a_failing_look_for_corrections_leaves_the_routing_alone(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hounsfield.catalog import prepare_database
    from hounsfield.router import routing

    def failing(*_: object) -> None:
        raise RuntimeError("a decoder nobody expected")

    monkeypatch.setattr(routing, "recognise_corrections", failing)
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    study_uid, files = write_study(tmp_path / "ct", seed=6, shape=(8, 32, 32))
    index_files(db, files)
    (job,) = Router(settings, db, lambda job: None).on_study_complete(
        StudyComplete(study_instance_uid=study_uid, trigger="manual")
    )
    with db.session() as session:
        kinds = session.scalars(select(Event.kind).where(Event.study_instance_uid == study_uid)).all()
    assert "job-queued" in kinds and job.study_instance_uid == study_uid
    db.dispose()
