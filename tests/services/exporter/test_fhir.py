"""Results announced to the RIS/EHR as a FHIR R4 DiagnosticReport, against a local FHIR test server.

The test server is a small HTTP server in the test: it checks every report it receives against the
FHIR R4B models (``fhir.resources``), keeps it, honours conditional create (``If-None-Exist`` on the
identifier), and can be told to want a bearer token or to refuse. Real components besides: the
example application's SR of a phantom, and the worker's own pipeline on a stored study.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError
from sqlalchemy import select

from hounsfield.config import FhirSettings, Settings
from hounsfield.db import Event, JobState
from hounsfield.exporter.fhir import AnnouncementFailed, diagnostic_report, model_device_uid, post_report
from hounsfield.worker.pipeline import execute_job
from tests.support import routed_job


class FhirTestServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reports: dict[str, dict[str, Any]] = {}
        self.token: str | None = None
        self.refuse = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fhir"


class _Handler(BaseHTTPRequestHandler):
    server: FhirTestServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict[str, Any], location: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/fhir/DiagnosticReport" or self.headers["Content-Type"] != "application/fhir+json":
            return self._answer(404, {"resourceType": "OperationOutcome", "issue": [{"code": "not-found"}]})
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self._answer(401, {"resourceType": "OperationOutcome", "issue": [{"code": "login"}]})
        if self.server.refuse:
            issue = {"severity": "error", "code": "invalid", "diagnostics": "Patient HF-PHANTOM-0001 unknown"}
            return self._answer(422, {"resourceType": "OperationOutcome", "issue": [issue]})
        try:
            report = DiagnosticReport.model_validate_json(body)
        except ValidationError as exc:
            return self._answer(
                400, {"resourceType": "OperationOutcome", "issue": [{"code": "structure"}], "x": str(exc)}
            )
        key = self.headers.get("If-None-Exist", "")
        if key in self.server.reports:
            return self._answer(200, self.server.reports[key])
        stored = {**json.loads(report.model_dump_json(exclude_none=True)), "id": str(len(self.server.reports) + 1)}
        self.server.reports[key] = stored
        return self._answer(201, stored, location=f"{self.server.url}/DiagnosticReport/{stored['id']}/_history/1")


@pytest.fixture
def fhir_server() -> Iterator[FhirTestServer]:
    server = FhirTestServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _volumes_mm(sr: pydicom.Dataset) -> list[tuple[str, float, str]]:
    content: Any = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    return [
        (str(g.tracking_uid), float(m.value), str(m.unit.value))
        for g in (
            *content.get_planar_roi_measurement_groups(),
            *content.get_volumetric_roi_measurement_groups(),
            *content.get_image_measurement_groups(),
        )
        for m in g.get_measurements()
    ]


def test_the_report_carries_each_finding_and_its_measurements_from_the_sr(
    example_results: list[pydicom.Dataset],
) -> None:
    sr = example_results[1]
    device_uid = model_device_uid(sr, "CT lesion segmentation")
    assert device_uid is not None
    report = diagnostic_report(sr, model_name="CT lesion segmentation", model_version="1.0.0", device_uid=device_uid)
    assert report.status == "preliminary"
    assert report.subject.identifier.value == str(sr.PatientID)
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{sr.StudyInstanceUID}"
    assert report.identifier[0].value == f"urn:oid:{sr.SOPInstanceUID}"
    device, *findings = report.contained
    assert device.get_resource_type() == "Device" and device.version[0].value == "1.0.0"
    assert device.identifier[0].value == f"urn:oid:{device_uid}"
    measured = [
        (f.identifier[0].value.removeprefix("urn:oid:"), float(c.valueQuantity.value), c.valueQuantity.code)
        for f in findings
        for c in f.component
    ]
    assert measured == _volumes_mm(sr) and len(findings) >= 1, "every SR measurement, as a UCUM quantity"
    assert all(f.status == "preliminary" and f.device.reference == "#model" for f in findings)
    assert [r.reference for r in report.result] == [f"#{f.id}" for f in findings]


def test_posting_twice_leaves_one_report_and_a_refusal_names_no_patient(
    example_results: list[pydicom.Dataset], fhir_server: FhirTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = diagnostic_report(example_results[1], model_name="m", model_version="1.0.0", device_uid=None)
    settings = FhirSettings(url=fhir_server.url)
    first = post_report(report, settings)
    assert first.endswith("/DiagnosticReport/1/_history/1")
    post_report(report, settings)
    assert len(fhir_server.reports) == 1, "conditional create: the same SR is announced once"

    fhir_server.refuse = True
    with pytest.raises(AnnouncementFailed, match=r"refused the report: HTTP 422 \(invalid\)") as refused:
        post_report(report, settings)
    assert "HF-PHANTOM" not in str(refused.value), "the server's diagnostics (patient data) are not repeated"
    fhir_server.refuse = False

    fhir_server.token = "t0ken"
    guarded = FhirSettings(url=fhir_server.url, token_env="EHR_TOKEN", allow_insecure_http=True)  # a test server
    with pytest.raises(AnnouncementFailed, match="EHR_TOKEN is not set"):
        post_report(report, guarded)
    monkeypatch.setenv("EHR_TOKEN", "wrong")
    with pytest.raises(AnnouncementFailed, match="HTTP 401"):
        post_report(report, guarded)
    monkeypatch.setenv("EHR_TOKEN", "t0ken")
    post_report(report, guarded)


@pytest.mark.parametrize("mode", ["clinical", "shadow"])
def test_a_finished_clinical_job_is_announced_and_a_shadow_one_never(
    tmp_path: Path, settings: Settings, fhir_server: FhirTestServer, mode: str
) -> None:
    settings = settings.model_copy(update={"fhir": FhirSettings(url=fhir_server.url)})
    context, job = routed_job(tmp_path, settings, 52, mode=mode, destinations=[])
    assert execute_job(context, job.id) is JobState.DONE
    with context.db.session() as session:
        events = {e.kind: e.detail for e in session.scalars(select(Event).where(Event.job_id == job.id))}
    if mode == "shadow":
        assert fhir_server.reports == {} and "fhir-announced" not in events
    else:
        (stored,) = fhir_server.reports.values()
        assert events["fhir-announced"]["location"].endswith("/DiagnosticReport/1/_history/1")
        assert stored["code"]["text"] == "AI result: CT lesion segmentation 1.0.0"
    context.db.dispose()


def test_a_refused_announcement_is_recorded_and_the_job_stays_done(
    tmp_path: Path, settings: Settings, fhir_server: FhirTestServer
) -> None:
    fhir_server.refuse = True
    settings = settings.model_copy(update={"fhir": FhirSettings(url=fhir_server.url)})
    context, job = routed_job(tmp_path, settings, 53, mode="clinical", destinations=[])
    assert execute_job(context, job.id) is JobState.DONE
    with context.db.session() as session:
        failed = session.scalars(select(Event).where(Event.job_id == job.id, Event.kind == "fhir-failed")).all()
    assert [e.detail["reason"] for e in failed] == [f"{fhir_server.url} refused the report: HTTP 422 (invalid)"]
    context.db.dispose()
