"""The validation gate: nothing leaves that ``dciodvfy`` flags or highdicom cannot read back."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from hounsfield.errors import HounsfieldError

__all__ = ["GateRejected", "ValidationReport", "validate_object"]

_SR_CLASSES = {Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage}


@dataclass(frozen=True)
class ValidationReport:
    path: Path
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class GateRejected(HounsfieldError, ValueError):
    """The validation gate refused an object; the message carries the validator's words."""


def _dciodvfy(path: Path, executable: str) -> tuple[list[str], list[str]]:
    try:
        proc = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError as exc:
        raise GateRejected(f"validator {executable!r} is not installed (Debian package dicom3tools)") from exc
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def validate_object(path: Path, *, dciodvfy: str = "dciodvfy") -> ValidationReport:
    """Check one result object; raise :class:`GateRejected` with the reasons when it fails."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # any parse failure means the object must not leave
        raise GateRejected(f"{path.name}: not readable DICOM: {exc}") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    try:
        if sop_class == SegmentationStorage:
            kind = "SEG"
            hd.seg.Segmentation.from_dataset(ds, copy=True)
        elif sop_class in _SR_CLASSES:
            kind = "SR"
            hd.sr.Comprehensive3DSR.from_dataset(ds, copy=True) if sop_class == Comprehensive3DSRStorage else (
                hd.sr.ComprehensiveSR.from_dataset(ds, copy=True)
            )
        elif sop_class == SecondaryCaptureImageStorage:  # a burned-in display copy
            kind = "SC"
            hd.Image.from_dataset(ds, copy=True)  # highdicom reads an SC back as an image
        elif sop_class == GrayscaleSoftcopyPresentationStateStorage:  # highdicom writes GSPS, reads none back
            kind = "PR"
        elif sop_class == KeyObjectSelectionDocumentStorage:  # an IOCM rejection note
            kind = "KO"
            hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
        else:
            kind = str(ds.get("Modality", "OT"))
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise GateRejected(f"{path.name}: highdicom cannot read it back: {exc}") from exc
    errors, warnings = _dciodvfy(path, dciodvfy)
    report = ValidationReport(
        path=path,
        kind=kind,
        sop_class_uid=sop_class,
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        errors=errors,
        warnings=warnings,
    )
    if errors:
        raise GateRejected(f"{path.name} ({kind}) failed dciodvfy: " + "; ".join(errors[:5]))
    return report
