"""Results announced to the RIS/EHR: a FHIR R4 DiagnosticReport with one Observation per finding.

Built from the job's TID 1500 SR (read back with highdicom) with the ``fhir.resources`` R4B models,
which check every element. The report is *preliminary* (an AI result awaiting a radiologist) and
carries, as contained resources, the model as a Device (name, version, Device UID) and one Observation
per measured finding (:mod:`hounsfield.exporter.findings`): the finding and its site as SNOMED CT
codes, its tracking UID, and each measurement as a UCUM quantity. It points at the imaging study and
the SR by their DICOM UIDs, at the order by its accession number, and at the patient by the study's Patient ID.

It is created with ``If-None-Exist`` on the SR's SOP Instance UID: announcing the same results twice
leaves one report on a server that honours conditional create. Nothing of the patient is logged.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from pydicom import Dataset

from hounsfield.config import FhirSettings
from hounsfield.errors import HounsfieldError
from hounsfield.exporter.findings import Finding, report_findings

__all__ = ["AnnouncementFailed", "announce", "diagnostic_report", "model_device_uid", "post_report"]

DICOM_UID = "urn:dicom:uid"
UCUM = "http://unitsofmeasure.org"
_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": UCUM,
    "LN": "http://loinc.org",
}


class AnnouncementFailed(HounsfieldError):
    """The FHIR server could not be reached or refused the report."""


def _coding(code: Any) -> dict[str, str]:
    system = _SYSTEMS.get(str(code.scheme_designator), f"urn:dicom:coding-scheme:{code.scheme_designator}")
    return {"system": system, "code": str(code.value), "display": str(code.meaning)}


def _oid(uid: str) -> dict[str, str]:
    return {"system": DICOM_UID, "value": f"urn:oid:{uid}"}


_IMAGING = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}
_RADIOLOGY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
_ACCESSION = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
_IMAGING_STUDY = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}


def _observation(number: int, group: Finding) -> dict[str, Any]:
    """One finding: its code and site, tracking UID, and each measurement as a UCUM quantity."""
    label = group.tracking_identifier
    finding = group.finding_type
    components = [
        {
            "code": {"coding": [_coding(m.name)]},
            "valueQuantity": {
                "value": float(m.value),
                "unit": str(m.unit.meaning),
                "system": UCUM,
                "code": str(m.unit.value),
            },
        }
        for m in group.measurements
    ]
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"finding-{number}",
        "status": "preliminary",
        "category": [_IMAGING],
        "code": {"coding": [_coding(finding)], "text": label} if finding is not None else {"text": label},
        "identifier": [_oid(str(group.tracking_uid))],
        "device": {"reference": "#model"},
        "component": components,
    }
    if group.finding_sites:
        observation["bodySite"] = {"coding": [_coding(group.finding_sites[0])]}
    Observation.model_validate(observation)  # each finding checked on its own, with its own paths
    return observation


def model_device_uid(sr: Dataset, model_name: str) -> str | None:
    """The model's Device UID, from the SR's Contributing Equipment (IHE AIR)."""
    for item in sr.get("ContributingEquipmentSequence", []):
        if str(item.get("ManufacturerModelName", "")) == model_name and item.get("DeviceUID"):
            return str(item.DeviceUID)
    return None


def diagnostic_report(sr: Dataset, *, model_name: str, model_version: str, device_uid: str | None) -> DiagnosticReport:
    """The DiagnosticReport for one SR (see the module's docstring)."""
    groups = report_findings(sr)
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": "model",
        "deviceName": [{"name": model_name, "type": "model-name"}],
        "version": [{"value": model_version}],
    }
    if device_uid:
        device["identifier"] = [_oid(device_uid)]
    findings = [_observation(n, group) for n, group in enumerate(groups, start=1)]
    based_on = []
    if sr.get("AccessionNumber"):
        based_on = [{"identifier": {"type": _ACCESSION, "value": str(sr.AccessionNumber)}}]
    labelled = str(sr.get("SeriesDescription", ""))
    return DiagnosticReport.model_validate(
        {
            "resourceType": "DiagnosticReport",
            "status": "preliminary",
            "identifier": [_oid(str(sr.SOPInstanceUID))],
            "category": [_RADIOLOGY],
            "code": {"coding": [_IMAGING_STUDY], "text": f"AI result: {model_name} {model_version}"},
            "subject": {"identifier": {"value": str(sr.PatientID)}},
            "basedOn": based_on,
            "imagingStudy": [{"identifier": _oid(str(sr.StudyInstanceUID))}],
            "issued": datetime.now(UTC).isoformat(),
            "contained": [device, *findings],
            "result": [{"reference": f"#{f['id']}"} for f in findings],
            "conclusion": f"{len(findings)} finding(s) by {model_name} {model_version}. {labelled}".strip(),
        }
    )


def _issues(answer: httpx.Response) -> str:
    """The OperationOutcome's issue codes (never its diagnostics, which may echo patient data)."""
    try:
        outcome = answer.json()
    except ValueError:
        return ""
    issues = outcome.get("issue", []) if isinstance(outcome, dict) else []
    codes = [str(issue.get("code")) for issue in issues if isinstance(issue, dict)]
    return f" ({', '.join(codes)})" if codes else ""


def post_report(report: DiagnosticReport, settings: FhirSettings) -> str:
    """Create the report on the FHIR server; returns where it is (``Location``, or the server's id)."""
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    assert report.identifier, "made by diagnostic_report, with the SR's UID"
    identifier = report.identifier[0]
    headers["If-None-Exist"] = f"identifier={identifier.system}|{identifier.value}"
    if settings.token_env:
        token = os.environ.get(settings.token_env)
        if not token:
            raise AnnouncementFailed(f"the bearer token's variable {settings.token_env} is not set")
        headers["Authorization"] = f"Bearer {token}"
    try:
        answer = httpx.post(
            f"{settings.url.rstrip('/')}/DiagnosticReport",
            content=report.model_dump_json(exclude_none=True),
            headers=headers,
            timeout=settings.timeout_s,
        )
    except httpx.HTTPError as exc:
        raise AnnouncementFailed(f"{settings.url} unreachable: {type(exc).__name__}") from exc
    if answer.status_code not in (200, 201):
        raise AnnouncementFailed(f"{settings.url} refused the report: HTTP {answer.status_code}{_issues(answer)}")
    return answer.headers.get("Location") or str(answer.json().get("id", ""))


def announce(sr_path: Path, settings: FhirSettings, *, model_name: str, model_version: str) -> str:
    """Build the report from the SR file and create it on the server; returns where it is."""
    sr = pydicom.dcmread(sr_path)
    report = diagnostic_report(
        sr, model_name=model_name, model_version=model_version, device_uid=model_device_uid(sr, model_name)
    )
    return post_report(report, settings)
