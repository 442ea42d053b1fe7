"""Reading a TID 1500 Measurement Report back: its findings, each with its measurements and segment.

A finding is a measurement group with at least one measurement (a group stating only presence or
absence, such as "Lesion assessment: absent", is not one). Groups of any of the three kinds
(TID 1410, 1411, 1501) count. The segment a finding was made on is the TID 1411 group's Referenced
Segment, or the SEG instance and segment number a measurement is INFERRED FROM (TID 320), as
Hounsfield's own lesion reports write it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

__all__ = ["Finding", "report_findings"]


@dataclass(frozen=True)
class Finding:
    """One measured finding of a report.

    Attributes
    ----------
    tracking_identifier, tracking_uid : str
        The finding's Tracking Identifier and Tracking Unique Identifier.
    finding_type : highdicom.sr.CodedConcept or None
        What was found (e.g. Lesion).
    finding_sites : tuple of highdicom.sr.CodedConcept
        Where.
    measurements : tuple of highdicom.sr.Measurement
        Its measurements, in the report's order.
    segmentation_sop_instance_uid : str or None
        The SEG the finding was segmented in, when the report names one.
    segment_number : int or None
        Its segment in that SEG.
    """

    tracking_identifier: str
    tracking_uid: str
    finding_type: hd.sr.CodedConcept | None
    finding_sites: tuple[hd.sr.CodedConcept, ...]
    measurements: tuple[hd.sr.Measurement, ...]
    segmentation_sop_instance_uid: str | None
    segment_number: int | None


def _segment(group: Any) -> tuple[str, int] | None:
    reference = getattr(group, "referenced_segment", None)
    if reference is not None and reference.referenced_segment_numbers:
        return str(reference.referenced_sop_instance_uid), int(reference.referenced_segment_numbers[0])
    for measurement in group.get_measurements():
        for image in measurement.referenced_images or []:
            item = image.ReferencedSOPSequence[0]
            if str(item.ReferencedSOPClassUID) == SegmentationStorage and "ReferencedSegmentNumber" in item:
                return str(item.ReferencedSOPInstanceUID), int(item.ReferencedSegmentNumber)
    return None


def report_findings(sr: Dataset) -> list[Finding]:
    """The measured findings of a TID 1500 report, in the report's order."""
    content: Any = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True).content
    groups = [
        *content.get_planar_roi_measurement_groups(),
        *content.get_volumetric_roi_measurement_groups(),
        *content.get_image_measurement_groups(),
    ]
    findings = []
    for group in groups:
        measurements = tuple(group.get_measurements())
        if not measurements:
            continue
        segment = _segment(group)
        findings.append(
            Finding(
                tracking_identifier=str(group.tracking_identifier),
                tracking_uid=str(group.tracking_uid),
                finding_type=group.finding_type,
                finding_sites=tuple(site.value for site in group.finding_sites or []),
                measurements=measurements,
                segmentation_sop_instance_uid=segment[0] if segment else None,
                segment_number=segment[1] if segment else None,
            )
        )
    return findings
