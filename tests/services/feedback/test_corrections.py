"""Corrected segmentations recognised on arrival as feedback on the SEG they correct, with Dice per segment.

Real components: the example application run by the worker's pipeline makes the SEG; corrections are
written with highdicom (as a viewer's editor would send them), indexed as the listener indexes them and
routed by the router, on SQLite and PostgreSQL. The Dice expected is counted here from each SEG's
frames and their source references, not with the code under test.
"""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from sqlalchemy import select

from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Event, JobState, Result
from hounsfield.db.feedback import Feedback
from hounsfield.feedback import segment_dice, summarise
from hounsfield.router.routing import Router
from hounsfield.worker.pipeline import execute_job
from tests.support import index_files, routed_job, write_study
from tests.support import settings_on_both_backends as settings_on_both_backends  # the settings fixture, on both

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


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


def test_corrected_segs_are_recognised_and_measured_against_ours(settings: Settings, tmp_path: Path) -> None:
    context, job = routed_job(tmp_path, settings, seed=62, destinations=[])
    assert execute_job(context, job.id) is JobState.DONE
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
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = SEG_STORAGE, original.SOPInstanceUID
    reference.ReferencedInstanceSequence = [item]
    naming.ReferencedSeriesSequence = [*naming.ReferencedSeriesSequence, reference]
    _arrive(db, context.settings, study_uid, naming, tmp_path / "in", ae="PACS")

    # 4. one for another patient than our SEG's: refused, recorded on the study's path only
    stranger = _seg(cts, {"Lesion 1": lesion}, PatientID="SOMEONE-ELSE")
    _arrive(db, context.settings, study_uid, stranger, tmp_path / "in")

    # 5. one larger than feedback.max_correction_mb: a correction, not measured
    padded = _seg(cts, {"Lesion 1": trimmed})
    padded.add_new((0x0011, 0x0010), "LO", "HOUNSFIELD TEST")
    padded.add_new((0x0011, 0x1000), "OB", bytes(2**20 + 1))
    small = context.settings.model_copy(
        update={"feedback": context.settings.feedback.model_copy(update={"max_correction_mb": 1})}
    )
    _arrive(db, small, study_uid, padded, tmp_path / "in")

    with db.session() as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.id)).all()
        events = session.scalars(select(Event).where(Event.study_instance_uid == study_uid).order_by(Event.id)).all()
    assert [r.correction_sop_instance_uid for r in rows] == [
        corrected.SOPInstanceUID,
        naming.SOPInstanceUID,
        padded.SOPInstanceUID,
    ]
    assert rows[1].given_by == "dicom:PACS" and rows[1].mean_dice == 1.0 and rows[1].result_id == ours.id
    assert rows[2].mean_dice is None and rows[2].dice == [] and "feedback.max_correction_mb" in rows[2].comment
    refused = [e for e in events if e.kind == "correction-refused"]
    assert len(refused) == 1 and refused[0].detail["sop_instance_uid"] == stranger.SOPInstanceUID
    assert [e.detail["sop_instance_uid"] for e in events if e.kind == "correction-recorded"] == [
        r.correction_sop_instance_uid for r in rows
    ]
    assert not [e for e in events if e.kind == "job-queued" and e.job_id != job.id], "a correction makes no new job"

    (summary,) = summarise(db)
    assert (summary.corrections, summary.corrections_measured) == (3, 2)
    assert summary.mean_correction_dice == pytest.approx((expected / 2 + 1.0) / 2, abs=1e-4)

    off = context.settings.model_copy(
        update={"feedback": context.settings.feedback.model_copy(update={"recognise_corrections": False})}
    )
    _arrive(db, off, study_uid, _seg(cts, {"Lesion 1": trimmed}), tmp_path / "in")
    with db.session() as session:
        assert len(session.scalars(select(Feedback)).all()) == 3, "feedback.recognise_corrections: false"
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
    with pytest.raises(ValueError, match="share no source image"):
        segment_dice(hd.seg.segread(_saved(ours, tmp_path)), hd.seg.segread(_saved(foreign, tmp_path)))


def _saved(seg: hd.seg.Segmentation, folder: Path) -> Path:
    path = folder / f"{seg.SOPInstanceUID}.dcm"
    seg.save_as(path, enforce_file_format=True)
    return path
