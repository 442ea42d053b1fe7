"""The validation gate: nothing leaves that highdicom cannot read back, ``dciodvfy`` flags, or, for
structured reports and key object selections (rejection notes), PixelMed's ``DicomSRValidator`` finds
a template error in (TID 1500, TID 2010).

Only errors stop an object; warnings are kept in its :class:`ValidationReport`. A validator that is
missing, or that does not finish, stops it too: an object nobody could check does not leave.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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

from hounsfield.config import Settings
from hounsfield.errors import HounsfieldError

__all__ = ["GateRejected", "ValidationReport", "Validator", "validate_object", "validators"]

_SR_CLASSES = {Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage}
_TEMPLATE_CHECKED = {*_SR_CLASSES, KeyObjectSelectionDocumentStorage}

PIXELMED_JAR = "/usr/share/java/pixelmed.jar"
"""Where Debian's ``libpixelmed-java`` puts PixelMed."""

# PixelMed's template rules are XPath expressions larger than the JDK's default limits for secure
# processing allow (JAXP0801003); the rules are PixelMed's own, not input. A short run: the client
# compiler only and the serial collector (a third less CPU, a fifth less memory, measured).
_JAVA_OPTIONS = (
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
_SR_VALIDATOR_CLASS = "com.pixelmed.validate.DicomSRValidator"


@dataclass(frozen=True)
class ValidationReport:
    path: Path
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


Validator = Literal["readable", "highdicom", "dciodvfy", "pixelmed", "identity"]
"""Which check refused an object: Part 10 parsing, highdicom's round trip, dciodvfy, PixelMed's
``DicomSRValidator``, or the job's own patient and study (:mod:`hounsfield.exporter.identity`)."""


class GateRejected(HounsfieldError, ValueError):
    """The validation gate refused an object; the message carries the validator's words, :attr:`validator`
    names the check (a label of the worker's metrics)."""

    def __init__(self, message: str, *, validator: Validator) -> None:
        super().__init__(message)
        self.validator: Validator = validator


def validators(settings: Settings) -> dict[str, Any]:
    """The validators :func:`validate_object` runs, as the settings name them (its keyword arguments)."""
    worker = settings.worker
    return {
        "dciodvfy": worker.dciodvfy,
        "java": worker.java,
        "pixelmed_jar": worker.pixelmed_jar,
        "heap_mb": worker.pixelmed_heap_mb,
        "timeout_s": worker.validator_timeout_s,
    }


def _dciodvfy(path: Path, executable: str, timeout_s: float) -> tuple[list[str], list[str]]:
    try:
        proc = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise GateRejected(
            f"validator {executable!r} is not installed (Debian package dicom3tools)", validator="dciodvfy"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise GateRejected(f"{path.name}: dciodvfy did not finish in {timeout_s:g} s", validator="dciodvfy") from exc
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def _dicom_sr_validator(
    path: Path, java: str, pixelmed_jar: str, heap_mb: int, timeout_s: float
) -> tuple[list[str], list[str]]:
    command = [java, f"-Xmx{heap_mb}m", *_JAVA_OPTIONS, "-cp", pixelmed_jar, _SR_VALIDATOR_CLASS, str(path)]
    if not Path(pixelmed_jar).is_file():
        raise GateRejected(
            f"validator PixelMed ({pixelmed_jar}) is not installed (Debian package libpixelmed-java)",
            validator="pixelmed",
        )
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise GateRejected(
            f"validator {java!r} is not installed (Debian package default-jre-headless)", validator="pixelmed"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise GateRejected(
            f"{path.name}: PixelMed's DicomSRValidator did not finish in {timeout_s:g} s", validator="pixelmed"
        ) from exc
    if any("OutOfMemoryError" in line for line in proc.stderr.splitlines()):
        raise GateRejected(
            f"{path.name}: PixelMed's DicomSRValidator ran out of its {heap_mb} MB heap", validator="pixelmed"
        )
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0 or not any(line.startswith("IOD validation complete") for line in lines):
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise GateRejected(
            f"{path.name}: PixelMed's DicomSRValidator did not finish: {last[:300]}", validator="pixelmed"
        )
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def validate_object(
    path: Path,
    *,
    dciodvfy: str = "dciodvfy",
    java: str = "java",
    pixelmed_jar: str = PIXELMED_JAR,
    heap_mb: int = 1024,
    timeout_s: float = 300.0,
) -> ValidationReport:
    """Check one result object; raise :class:`GateRejected` with the reasons when it fails.

    The keyword arguments are the settings ``worker.dciodvfy``, ``worker.java``, ``worker.pixelmed_jar``,
    ``worker.pixelmed_heap_mb`` and ``worker.validator_timeout_s`` (:func:`validators`).
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # any parse failure means the object must not leave
        raise GateRejected(f"{path.name}: not readable DICOM: {exc}", validator="readable") from exc
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
        raise GateRejected(f"{path.name}: highdicom cannot read it back: {exc}", validator="highdicom") from exc
    errors, warnings = _dciodvfy(path, dciodvfy, timeout_s)
    if errors:
        raise GateRejected(f"{path.name} ({kind}) failed dciodvfy: " + "; ".join(errors[:5]), validator="dciodvfy")
    if sop_class in _TEMPLATE_CHECKED:
        template_errors, template_warnings = _dicom_sr_validator(path, java, pixelmed_jar, heap_mb, timeout_s)
        if template_errors:
            raise GateRejected(
                f"{path.name} ({kind}) failed DicomSRValidator: " + "; ".join(template_errors[:5]), validator="pixelmed"
            )
        warnings += template_warnings
    report = ValidationReport(
        path=path,
        kind=kind,
        sop_class_uid=sop_class,
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        errors=errors,
        warnings=warnings,
    )
    return report
