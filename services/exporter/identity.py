"""The results belong to their job: the same patient, the same study, the input's frames of reference
and instances. Part of the validation gate: an application that writes another patient's or study's
identifiers (a warm process can carry state from one job to the next) never reaches a PACS.

:class:`JobIdentity` is read from the job's input files; :func:`identity_problems` compares one result
object with it: the patient module (PatientID, IssuerOfPatientID, PatientName, PatientBirthDate,
PatientSex), StudyInstanceUID, FrameOfReferenceUID, and every SOP instance the object references,
which must be one of the job's inputs or one of the job's own results. The problems name attributes,
never their values (they are recorded on the job and the study's path).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from hounsfield.exporter.validation import GateRejected, ValidationReport

__all__ = ["PATIENT_KEYWORDS", "JobIdentity", "check_results", "identity_problems"]

PATIENT_KEYWORDS = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")
"""The patient module's identifying attributes a result must repeat exactly as its input has them."""
_READ = [*PATIENT_KEYWORDS, "StudyInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"]


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


@dataclass(frozen=True)
class JobIdentity:
    """Who and what a job's input is: its patient, study, frames of reference and instances."""

    patient: tuple[tuple[str, str], ...]
    """(keyword, value) of each of :data:`PATIENT_KEYWORDS`, as the input has them."""
    study_instance_uid: str
    frames_of_reference: frozenset[str]
    instances: frozenset[str]

    @classmethod
    def of_inputs(cls, study_instance_uid: str, paths: Iterable[Path]) -> JobIdentity:
        """Read from the input files' headers (no pixels). Inputs that disagree on the patient are the
        pre-flight's concern; the first file's patient is the one results must name."""
        patient: tuple[tuple[str, str], ...] = ()
        frames: set[str] = set()
        instances: set[str] = set()
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_READ)
            if not patient:
                patient = tuple((keyword, _text(ds, keyword)) for keyword in PATIENT_KEYWORDS)
            if _text(ds, "FrameOfReferenceUID"):
                frames.add(_text(ds, "FrameOfReferenceUID"))
            instances.add(_text(ds, "SOPInstanceUID"))
        return cls(patient, study_instance_uid, frozenset(frames), frozenset(instances))


def _referenced_instances(ds: Dataset) -> set[str]:
    return {str(element.value) for element in ds.iterall() if element.keyword == "ReferencedSOPInstanceUID"}


def identity_problems(ds: Dataset, identity: JobIdentity, results: frozenset[str] = frozenset()) -> list[str]:
    """Why ``ds`` (a result object) does not belong to the job ``identity`` describes; empty when it does.

    ``results``: the SOP Instance UIDs of the job's own results (an SR references the job's SEG)."""
    problems = [
        f"{keyword} differs from the job's input" for keyword, value in identity.patient if _text(ds, keyword) != value
    ]
    if _text(ds, "StudyInstanceUID") != identity.study_instance_uid:
        problems.append("StudyInstanceUID is not the job's study")
    frame = _text(ds, "FrameOfReferenceUID")
    if frame and frame not in identity.frames_of_reference:
        problems.append("FrameOfReferenceUID is none of the input's")
    foreign = _referenced_instances(ds) - identity.instances - results
    if foreign:
        problems.append(f"{len(foreign)} referenced instance(s) are neither the job's input nor its results")
    return problems


def check_results(reports: Iterable[ValidationReport], identity: JobIdentity) -> None:
    """Refuse (:class:`~hounsfield.exporter.validation.GateRejected`) the first result that does not belong
    to the job, with every reason it does not."""
    reports = list(reports)
    results = frozenset(report.sop_instance_uid for report in reports)
    for report in reports:
        problems = identity_problems(pydicom.dcmread(report.path, stop_before_pixels=True), identity, results)
        if problems:
            raise GateRejected(
                f"{report.path.name} ({report.kind}) does not belong to this job: {'; '.join(problems)}",
                validator="identity",
            )
