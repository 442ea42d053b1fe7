"""Reading our SR back: the findings of a TID 1500 report as plain data."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from hounsfield.exporter.findings import report_findings

__all__ = ["lesion_findings"]


def lesion_findings(sr: Dataset) -> list[dict[str, Any]]:
    """One dict per measured finding: tracking identifier and UID, segment, measurements."""
    return [
        {
            "tracking_identifier": finding.tracking_identifier,
            "tracking_uid": finding.tracking_uid,
            "segment_number": finding.segment_number,
            "segmentation_sop_instance_uid": finding.segmentation_sop_instance_uid,
            "measurements": {
                m.name.meaning: {"value": float(m.value), "unit": m.unit.value} for m in finding.measurements
            },
        }
        for finding in report_findings(sr)
    ]
