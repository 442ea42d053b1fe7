"""Reading our SR back: the measurement groups of a TID 1500 report as plain data."""

from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset

__all__ = ["lesion_findings"]


def lesion_findings(sr: Dataset) -> list[dict[str, Any]]:
    """One dict per volumetric measurement group: tracking identifier and UID, segment, measurements."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True)
    findings = []
    for item in report.content:
        measurement_report = hd.sr.MeasurementReport.from_sequence([item])
        for group in measurement_report.get_volumetric_roi_measurement_groups():
            segment = group.referenced_segment
            numbers = (segment.referenced_segment_numbers or []) if segment else []
            findings.append(
                {
                    "tracking_identifier": group.tracking_identifier,
                    "tracking_uid": group.tracking_uid,
                    "segment_number": int(numbers[0]) if numbers else None,
                    "segmentation_sop_instance_uid": segment.referenced_sop_instance_uid if segment else None,
                    "measurements": {
                        m.name.meaning: {"value": float(m.value), "unit": m.unit.value}
                        for m in group.get_measurements()
                    },
                }
            )
    return findings
