"""Corrected segmentations sent back from a viewer or the PACS, recognised on arrival.

Each time a study completes (again: a new instance reopens it), every SEG of it that is neither one of
Hounsfield's results nor examined already is read. It is a correction of one of our SEGs when

1. it refers to that SEG's SOP Instance UID anywhere (a Referenced SOP Instance UID in any sequence:
   Referenced Series, Source Image, Derivation Image), or
2. its frame of reference is that SEG's and it refers to a series our SEG was made from (what OHIF and
   most editors write). Only SEGs a radiologist can have seen count here: delivered to a PACS, not
   superseded, not withdrawn (a shadow result never is). Where more than one qualifies (two models'
   SEGs of one series), the one whose segment labels the correction shares is taken; if that does not
   single one out, the correction is recorded as ambiguous on the study's path and credited to nobody.

A correction for another patient than the SEG it refers to is refused (an event on the study's path;
nothing is recorded against the model). Otherwise one :class:`~hounsfield.db.feedback.Feedback` row of
kind ``correction`` holds, per segment, the Dice of the corrected mask against ours on the source
images either refers to. Segments are paired by Tracking UID, else by label, else by number; a segment
of ours the correction dropped scores 0, as does a segment the correction added. The mean over those
is the correction's Dice. Before any pixel is decoded, the memory the masks would take (both SEGs'
frames, and a segment pair's pixels and masks over the source images, a byte per voxel) is checked against
``feedback.max_correction_mb``; a correction beyond it, or whose masks cannot be read or aligned, is
recorded without Dice, with the reason. Each SEG is examined once: one that is not a correction, or
was refused, is remembered by an event and not read again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from hounsfield.config import Settings
from hounsfield.db import Database, Result, Session
from hounsfield.db.feedback import (
    Feedback,
    FeedbackKind,
    add_feedback,
    correction_candidates,
    examined_segs,
    study_seg_results,
)
from hounsfield.db.index import add_event
from hounsfield.db.withdrawals import is_withdrawn
from hounsfield.errors import HounsfieldError

__all__ = ["NoSharedImage", "SegmentDice", "recognise_corrections", "segment_dice"]

logger = logging.getLogger(__name__)


class NoSharedImage(HounsfieldError, ValueError):
    """The two SEGs refer to no source image in common: nothing to compare."""


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
    labels: frozenset[str]
    """Segment labels, case and outer spaces aside."""
    frame_bytes: int
    """Its frames decoded, a byte per pixel."""
    plane_bytes: int
    """One plane (rows x columns), a byte per pixel."""


def _header(path: str | Path) -> _Seg:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    series = {
        str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in item
    }
    plane = int(ds.get("Rows", 0)) * int(ds.get("Columns", 0))
    return _Seg(
        sop_instance_uid=str(ds.SOPInstanceUID),
        patient_id=str(ds.get("PatientID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        referenced_series=frozenset(series),
        referenced_instances=frozenset(_referenced_sop_instances(ds)),
        labels=frozenset(str(s.get("SegmentLabel", "")).strip().casefold() for s in ds.get("SegmentSequence", [])),
        frame_bytes=int(ds.get("NumberOfFrames", 1) or 1) * plane,
        plane_bytes=plane,
    )


def _mask_bytes(original: _Seg, corrected: _Seg) -> int:
    """The memory measuring takes at most: both SEGs' frames, and over every image either refers to a segment
    pair's decoded pixels and their masks (four planes of a byte per image)."""
    sources = len(original.referenced_instances | corrected.referenced_instances)
    plane = max(original.plane_bytes, corrected.plane_bytes)
    return original.frame_bytes + corrected.frame_bytes + 4 * sources * plane


def _referenced_sop_instances(ds: Dataset) -> Iterator[str]:
    """Every Referenced SOP Instance UID in the dataset's sequences, at any depth."""
    for element in ds:
        if element.VR != "SQ":
            continue
        for item in element.value:
            if "ReferencedSOPInstanceUID" in item:
                yield str(item.ReferencedSOPInstanceUID)
            yield from _referenced_sop_instances(item)


@dataclass(frozen=True)
class _Ours:
    """One of our SEGs: its result, header, and whether a radiologist can have seen it."""

    result: Result
    seg: _Seg
    seen: bool
    """Delivered to a PACS, neither superseded nor withdrawn."""


def _original_for(correction: _Seg, ours: list[_Ours]) -> _Ours | Literal["ambiguous"] | None:
    """Which of our SEGs (newest first) the correction corrects: one, none, or ``"ambiguous"`` (see the
    module's docstring)."""
    for candidate in ours:
        if candidate.seg.sop_instance_uid in correction.referenced_instances:
            return candidate
    frame = correction.frame_of_reference_uid
    matching = [
        c
        for c in ours
        if c.seen and frame and c.seg.frame_of_reference_uid == frame
        and c.seg.referenced_series & correction.referenced_series
    ]  # fmt: skip
    if len(matching) > 1:
        labelled = [c for c in matching if c.seg.labels & correction.labels]
        matching = labelled if len(labelled) == 1 else matching
    if len(matching) > 1:
        return "ambiguous"
    return matching[0] if matching else None


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
    """A segment's mask on ``sources``: a BINARY segment as it is, a FRACTIONAL one above half its maximum."""
    if number is None:
        return None
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sources,
        segment_numbers=[number],
        assert_missing_frames_are_empty=True,
        rescale_fractional=False,  # its stored integers: a byte per voxel, never floats
    )[..., 0]
    if seg.SegmentationType == "FRACTIONAL":
        return np.asarray(pixels > int(seg.MaximumFractionalValue) / 2)
    return np.asarray(pixels > 0)


def segment_dice(original: hd.seg.Segmentation, corrected: hd.seg.Segmentation) -> list[SegmentDice]:
    """Per segment, the Dice of ``corrected`` against ``original`` on the source images either refers to.

    Raises :class:`NoSharedImage` when the two share no source image.
    """
    ours, theirs = _source_instances(original), _source_instances(corrected)
    if not ours & theirs:
        raise NoSharedImage("the corrected SEG and ours share no source image")
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
        examined = examined_segs(session, study_uid)
        candidates = [c for c in correction_candidates(session, study_uid) if c[0] not in examined]
        if not candidates:
            return []
        results = [(r.id, r.path, _seen(session, r)) for r in study_seg_results(session, study_uid)]
    ours: list[tuple[int, str, _Seg, bool]] = []
    for result_id, path, seen in results:
        try:
            ours.append((result_id, path, _header(path), seen))
        except _UNREADABLE as exc:
            logger.warning("result %s: its SEG cannot be read to match corrections (%s)", result_id, type(exc).__name__)
    recorded: list[Feedback] = []
    for sop_uid, path, calling_ae in candidates:
        try:
            correction = _header(path)
        except _UNREADABLE as exc:
            logger.warning(
                "a SEG of a study cannot be read to tell whether it is a correction (%s)", type(exc).__name__
            )
            correction = None
        row = _examine(settings, db, study_uid, sop_uid, path, calling_ae, correction, ours)
        if row is not None:
            recorded.append(row)
    return recorded


_UNREADABLE = (OSError, InvalidDicomError, AttributeError, ValueError, TypeError, KeyError, IndexError)
"""What reading an untrusted SEG's header may raise (pydicom on a broken file)."""


def _seen(session: Session, result: Result) -> bool:
    return bool(result.exported_to) and result.superseded_by is None and not is_withdrawn(session, result.job_id)


def _examine(
    settings: Settings,
    db: Database,
    study_uid: str,
    sop_uid: str,
    path: str,
    calling_ae: str,
    correction: _Seg | None,
    ours: list[tuple[int, str, _Seg, bool]],
) -> Feedback | None:
    """Record one SEG of the study as a correction, or why it is none (once)."""
    with db.session() as session:
        if correction is None:
            add_event(
                session, study_uid, "feedback", "seg-not-a-correction", sop_instance_uid=sop_uid, reason="unreadable"
            )
            return None
        by_id = {r.id: r for r in study_seg_results(session, study_uid)}
        candidates = [_Ours(by_id[i], seg, seen) for i, _, seg, seen in ours if i in by_id]
        matched = _original_for(correction, candidates)
        if matched is None or matched == "ambiguous":
            kind = "seg-not-a-correction" if matched is None else "correction-ambiguous"
            add_event(session, study_uid, "feedback", kind, sop_instance_uid=sop_uid)
            return None
        result, original = matched.result, matched.seg
        if correction.patient_id != original.patient_id:
            reason = "another patient than the SEG it corrects"
            add_event(session, study_uid, "feedback", "correction-refused", job_id=result.job_id,
                      result_id=result.id, sop_instance_uid=sop_uid, reason=reason)  # fmt: skip
            return None
        original_path = next(p for i, p, _, _ in ours if i == result.id)
        scored, why = _measure(settings, original_path, original, path, correction)
        mean = round(sum(s.dice for s in scored) / len(scored), 6) if scored else None
        row = add_feedback(
            session, result, kind=FeedbackKind.CORRECTION.value, given_by=f"dicom:{calling_ae or 'stow-rs'}",
            correction_sop_instance_uid=sop_uid, dice=[asdict(s) for s in scored], mean_dice=mean, comment=why,
        )  # fmt: skip
        add_event(session, study_uid, "feedback", "correction-recorded", job_id=result.job_id,
                  result_id=result.id, sop_instance_uid=sop_uid, mean_dice=mean, segments=len(scored))  # fmt: skip
        session.flush()
        session.expunge(row)
    logger.info("correction of result %s recorded (mean Dice %s)", row.result_id, mean)
    return row


def _measure(
    settings: Settings, original_path: str, original: _Seg, corrected_path: str, corrected: _Seg
) -> tuple[list[SegmentDice], str | None]:
    """Dice per segment, or none and why not (the reason says no more than the kind of failure)."""
    needed = _mask_bytes(original, corrected)
    if needed > settings.feedback.max_correction_mb * 2**20:
        return [], f"not measured: its masks would take {needed // 2**20} MiB, over feedback.max_correction_mb"
    try:
        return segment_dice(hd.seg.segread(original_path), hd.seg.segread(corrected_path)), None
    except NoSharedImage:
        return [], "not measured: the corrected SEG and ours share no source image"
    except Exception as exc:  # untrusted pixel data through highdicom and pydicom's decoders: any failure is its own
        logger.warning("a correction's Dice cannot be measured (%s)", type(exc).__name__)
        return [], f"not measured: its masks cannot be read or aligned with ours ({type(exc).__name__})"
