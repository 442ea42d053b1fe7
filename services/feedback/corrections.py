"""Corrected segmentations sent back from a viewer or the PACS, recognised on arrival.

When a study completes (again), every SEG of it that is neither one of Hounsfield's results nor a
correction recorded already is read. It is a correction of one of our SEGs when

1. it refers to that SEG's SOP Instance UID anywhere (a Referenced SOP Instance UID in any sequence:
   Referenced Series, Source Image, Derivation Image), or
2. its frame of reference is that SEG's and it refers to a series our SEG was made from (OHIF and
   most editors reference the source images only); the newest of our SEGs that qualifies is taken.

A correction for another patient than the SEG it refers to is refused (an event on the study's path
says so; nothing is recorded against the model). Otherwise one :class:`~hounsfield.db.feedback.Feedback`
row of kind ``correction`` holds, per segment, the Dice of the corrected mask against ours on the
source images both refer to. Segments are paired by Tracking UID, else by label, else by number; a
segment of ours the correction dropped scores 0, as does a segment the correction added. The mean
over those is the correction's Dice. A correction whose masks cannot be read or aligned (or larger
than ``feedback.max_correction_mb``) is recorded without Dice, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from hounsfield.config import Settings
from hounsfield.db import Database, Result
from hounsfield.db.feedback import (
    Feedback,
    FeedbackKind,
    add_feedback,
    correction_candidates,
    refused_corrections,
    study_seg_results,
)
from hounsfield.db.index import add_event

__all__ = ["SegmentDice", "recognise_corrections", "segment_dice"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentDice:
    """One segment's agreement: ``segment_number`` ours (None: the correction added it), the corrected
    segment paired with it (None: the correction dropped it), Dice on the shared source images."""

    segment_number: int | None
    label: str
    corrected_segment_number: int | None
    dice: float


@dataclass(frozen=True)
class _Seg:
    """What the matching needs of a SEG's header."""

    sop_instance_uid: str
    patient_id: str
    frame_of_reference_uid: str
    referenced_series: frozenset[str]
    referenced_instances: frozenset[str]


def _header(path: str | Path) -> _Seg:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    series = {
        str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in item
    }
    return _Seg(
        sop_instance_uid=str(ds.SOPInstanceUID),
        patient_id=str(ds.get("PatientID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        referenced_series=frozenset(series),
        referenced_instances=frozenset(_referenced_sop_instances(ds)),
    )


def _referenced_sop_instances(ds: Dataset) -> Iterator[str]:
    """Every Referenced SOP Instance UID in the dataset's sequences, at any depth."""
    for element in ds:
        if element.VR != "SQ":
            continue
        for item in element.value:
            if "ReferencedSOPInstanceUID" in item:
                yield str(item.ReferencedSOPInstanceUID)
            yield from _referenced_sop_instances(item)


def _original_for(correction: _Seg, ours: list[tuple[Result, _Seg]]) -> tuple[Result, _Seg] | None:
    """Which of our SEGs (newest first) the correction corrects, if any (see the module's docstring)."""
    for result, seg in ours:
        if seg.sop_instance_uid in correction.referenced_instances:
            return result, seg
    for result, seg in ours:
        same_frame = seg.frame_of_reference_uid and seg.frame_of_reference_uid == correction.frame_of_reference_uid
        if same_frame and seg.referenced_series & correction.referenced_series:
            return result, seg
    return None


def _segments(seg: hd.seg.Segmentation) -> list[tuple[int, str, str | None]]:
    return [
        (
            int(item.SegmentNumber),
            str(item.get("SegmentLabel", "")),
            str(item.TrackingUID) if "TrackingUID" in item else None,
        )
        for item in seg.SegmentSequence
    ]


def _pairs(original: hd.seg.Segmentation, corrected: hd.seg.Segmentation) -> list[tuple[int | None, int | None, str]]:
    """``(ours, theirs, label)``: paired by Tracking UID, else label (case and outer spaces aside), else by
    number where the corrected segment has no label; then ours unpaired, and theirs unpaired."""
    theirs = _segments(corrected)
    label_of = {number: label.strip().casefold() for number, label, _ in theirs}
    free = set(label_of)
    pairs: list[tuple[int | None, int | None, str]] = []
    for number, label, tracking in _segments(original):
        key = label.strip().casefold()
        found = next((n for n, _, t in theirs if n in free and tracking and t == tracking), None)
        if found is None and key:
            found = next((n for n in label_of if n in free and label_of[n] == key), None)
        if found is None and number in free and not label_of[number]:
            found = number
        if found is not None:
            free.discard(found)
        pairs.append((number, found, label))
    pairs += [(None, n, label) for n, label, _ in theirs if n in free]
    return pairs


def _source_instances(seg: hd.seg.Segmentation) -> set[str]:
    return {sop for _, _, sop in seg.get_source_image_uids()}


def _mask(seg: hd.seg.Segmentation, number: int | None, sources: list[str]) -> np.ndarray | None:
    if number is None:
        return None
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sources, segment_numbers=[number], assert_missing_frames_are_empty=True
    )
    return np.asarray(pixels[..., 0] > 0)


def segment_dice(original: hd.seg.Segmentation, corrected: hd.seg.Segmentation) -> list[SegmentDice]:
    """Per segment, the Dice of ``corrected`` against ``original`` on the source images either refers to.

    Raises :class:`ValueError` when the two share no source image.
    """
    ours, theirs = _source_instances(original), _source_instances(corrected)
    if not ours & theirs:
        raise ValueError("the corrected SEG and ours share no source image")
    sources = sorted(ours | theirs)
    scored: list[SegmentDice] = []
    for number, paired, label in _pairs(original, corrected):
        a = _mask(original, number, sources)
        b = _mask(corrected, paired, sources)
        a_sum = int(a.sum()) if a is not None else 0
        b_sum = int(b.sum()) if b is not None else 0
        overlap = int(np.logical_and(a, b).sum()) if a is not None and b is not None else 0
        dice = 1.0 if a_sum + b_sum == 0 else 2.0 * overlap / (a_sum + b_sum)
        scored.append(SegmentDice(number, label, paired, round(dice, 6)))
    return scored


def recognise_corrections(settings: Settings, db: Database, study_uid: str) -> list[Feedback]:
    """Record the study's corrected SEGs that arrived since last time (see the module's docstring)."""
    if not settings.feedback.recognise_corrections:
        return []
    with db.session() as session:
        refused = refused_corrections(session, study_uid)
        candidates = [c for c in correction_candidates(session, study_uid) if c[0] not in refused]
        if not candidates:
            return []
        results = [(r.id, r.path) for r in study_seg_results(session, study_uid)]
    ours: list[tuple[int, str, _Seg]] = []
    for result_id, path in results:
        try:
            ours.append((result_id, path, _header(path)))
        except (OSError, InvalidDicomError, AttributeError) as exc:
            logger.warning("result %s: its SEG cannot be read to match corrections (%s)", result_id, exc)
    recorded: list[Feedback] = []
    for sop_uid, path, calling_ae in candidates:
        try:
            correction = _header(path)
        except (OSError, InvalidDicomError, AttributeError) as exc:
            logger.warning("a SEG of the study cannot be read to tell whether it is a correction (%s)", exc)
            continue
        with db.session() as session:
            by_id = {r.id: r for r in study_seg_results(session, study_uid)}
            matched = _original_for(correction, [(by_id[i], seg) for i, _, seg in ours if i in by_id])
            if matched is None:
                continue
            result, original = matched
            if correction.patient_id != original.patient_id:
                add_event(
                    session,
                    study_uid,
                    "feedback",
                    "correction-refused",
                    job_id=result.job_id,
                    result_id=result.id,
                    sop_instance_uid=sop_uid,
                    reason="another patient than the SEG it corrects",
                )
                continue
            original_path = next(p for i, p, _ in ours if i == result.id)
            scored, why = _measure(settings, original_path, path)
            mean = round(sum(s.dice for s in scored) / len(scored), 6) if scored else None
            row = add_feedback(
                session, result, kind=FeedbackKind.CORRECTION.value, given_by=f"dicom:{calling_ae or 'stow-rs'}",
                correction_sop_instance_uid=sop_uid, dice=[asdict(s) for s in scored], mean_dice=mean, comment=why,
            )  # fmt: skip
            add_event(
                session,
                study_uid,
                "feedback",
                "correction-recorded",
                job_id=result.job_id,
                result_id=result.id,
                sop_instance_uid=sop_uid,
                mean_dice=mean,
                segments=len(scored),
            )
            session.flush()
            session.expunge(row)
        logger.info("correction of result %s recorded (mean Dice %s)", row.result_id, mean)
        recorded.append(row)
    return recorded


def _measure(settings: Settings, original: str, corrected: str) -> tuple[list[SegmentDice], str | None]:
    """Dice per segment, or none and why not."""
    limit = settings.feedback.max_correction_mb * 2**20
    size = Path(corrected).stat().st_size
    if size > limit:
        return [], f"not measured: the corrected SEG has {size} bytes, over feedback.max_correction_mb"
    try:
        return segment_dice(hd.seg.segread(original), hd.seg.segread(corrected)), None
    except (ValueError, KeyError, AttributeError, OSError, InvalidDicomError) as exc:
        logger.warning("a correction's Dice cannot be measured: %s", exc)
        return [], f"not measured: {exc}"
