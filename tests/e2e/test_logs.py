"""Every line every Hounsfield process logs while a study goes the whole way is JSON, carries its study's and
its job's correlation ids, and holds none of its patient's data.

One run of the real stack (redis-server, the worker running the CT lesion MAP, the listener, the registry, as
``hounsfield up`` runs them; Orthanc as the PACS) takes one study whose patient has a distinctive name, ID and
birth date to SEG and SR in Orthanc. The same run forces error paths that might quote the patient: an
application that says the patient's data on its output and in its failure (``quoting_app``), a caller the
listener refuses, an instance it refuses, and requests the registry refuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from orthanc_api_client import OrthancApiClient

from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.demo.stack import CT_LESION_DEPLOYMENT, HounsfieldStack, StackFailed, storescu
from hounsfield.logs import study_correlation_id
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series
from tests.e2e.conftest import running_stack

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]

NAME = "Quillfeather^Zebediah^Orrin^Dr^III"
PATIENT_ID = "PXQ77310ZK"
BIRTH_DATE = "19370412"
QUOTE_RULE = {"kind": "series_description", "regex": "^QUOTE"}
FIELDS = {"time", "level", "process", "pid", "thread", "logger", "message", "study", "job", "request"}


def _forbidden() -> list[str]:
    """Every form of the patient's data a line might hold, lower case: each name component, the ID, the
    birth date as DICOM writes it and as ISO 8601 does."""
    components = [part.lower() for part in NAME.split("^") if len(part) > 3]  # "Dr", "III" are not theirs alone
    iso = f"{BIRTH_DATE[:4]}-{BIRTH_DATE[4:6]}-{BIRTH_DATE[6:]}"
    return [*components, NAME.lower(), NAME.replace("^", " ").lower(), PATIENT_ID.lower(), BIRTH_DATE, iso]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pacs: LocalOrthanc, request: pytest.FixtureRequest
) -> Iterator[HounsfieldStack]:
    ct = dict(CT_LESION_DEPLOYMENT)
    ct["rule"] = {"kind": "all", "rules": [CT_LESION_DEPLOYMENT["rule"], {"kind": "not", "rule": QUOTE_RULE}]}
    quoting = {
        **CT_LESION_DEPLOYMENT,
        "name": "quoting-model",
        "app": "tests.e2e.quoting_app:QuotingApp",
        "model_name": "Quoting model",
        "rule": {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, QUOTE_RULE]},
    }
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # the worker imports tests.e2e
    options = {"deployments": [ct, quoting], "extra_env": {"PYTHONPATH": path}}
    with running_stack(tmp_path_factory, pacs, request, **options) as running:
        yield running


def _object(line: str) -> dict | str:
    """The JSON object the line is, or the line itself when it is none."""
    try:
        parsed = json.loads(line)
    except json.JSONDecodeError:
        return line
    return parsed if isinstance(parsed, dict) else line


def _with_patient(files: list[Path]) -> list[Path]:
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PATIENT_ID, BIRTH_DATE
        ds.save_as(path)
    return files


def test_no_line_of_any_process_holds_the_patients_data(
    stack: HounsfieldStack, pacs: LocalOrthanc, tmp_path: Path
) -> None:
    ct_files = _with_patient(
        write_dicom_series(make_phantom(515151, n_lesions=2), tmp_path / "ct", uid_seed="e2e-logs", patient_name=NAME)
    )
    study_uid = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)
    quote_files = _with_patient(
        write_dicom_series(
            make_phantom(515152, n_lesions=1), tmp_path / "quote", uid_seed="e2e-logs-quote", patient_name=NAME,
            study_instance_uid=study_uid, series_description="QUOTE the patient",
        )
    )  # fmt: skip

    # Error paths first: a caller the listener refuses, an instance it refuses (a UID that is no UID), a
    # request without a credential, a study that is not there.
    with pytest.raises(StackFailed):
        storescu(
            ct_files[:1], host="127.0.0.1", port=stack.listener_port, called_ae="HOUNSFIELD", calling_ae="INTRUDER"
        )
    bad = pydicom.dcmread(ct_files[0])
    bad.StudyInstanceUID = "1.2.840.Quillfeather"
    bad.save_as(tmp_path / "bad.dcm")
    with contextlib.suppress(StackFailed):  # storescu may say the store failed: that is the point
        stack.send([tmp_path / "bad.dcm"])
    assert httpx.get(f"{stack.api}/studies", timeout=10).status_code == 401
    missing = httpx.get(f"{stack.api}/studies/1.2.3.4.5", headers={**stack.api_headers, "X-Request-ID": "probe-404"})
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "probe-404"

    stack.send(ct_files + quote_files)
    study = stack.wait_for_study(study_uid)
    jobs = {job["deployment"]: job for job in study["jobs"]}
    assert jobs["ct-lesion-seg"]["state"] == "done", jobs["ct-lesion-seg"]["error"]
    assert sorted(r["kind"] for r in jobs["ct-lesion-seg"]["results"]) == ["SEG", "SR"]
    orthanc = OrthancApiClient(pacs.url)
    for result in jobs["ct-lesion-seg"]["results"]:
        assert orthanc.instances.lookup(result["sop_instance_uid"]), f"{result['kind']} is not in Orthanc"
    quoted = jobs["quoting-model"]
    assert quoted["state"] == "failed" and PATIENT_ID in (quoted["error"] or ""), (
        "the application's words, the patient's among them, are the job's error (read with a credential)"
    )
    read = httpx.get(f"{stack.api}/studies/{study_uid}", headers={**stack.api_headers, "X-Request-ID": "probe-read"})
    assert read.headers["X-Request-ID"] == "probe-read"
    correlation = study_correlation_id(study_uid, stack.config.get("uid_root", "1.2.826.0.1.3680043.10.1392.").encode())
    assert study["correlation_id"] == correlation

    stack.stop()  # every line of the run, the services' shutdown included
    log = stack.folder / "hounsfield.log"
    raw = log.read_text(encoding="utf-8")
    lines = [_object(line) for line in raw.splitlines()]
    not_json = [line for line in lines if isinstance(line, str)]
    assert not not_json, not_json[:10]
    assert all(set(line) >= FIELDS for line in lines if isinstance(line, dict))
    processes = {line["process"] for line in lines}
    assert {"up", "listener", "worker", "registry"} <= processes, processes

    lowered = raw.lower()
    leaks = [form for form in _forbidden() if form in lowered]
    assert not leaks, [line for line in raw.splitlines() if any(form in line.lower() for form in leaks)][:5]
    assert study_uid not in raw, "the study's lines carry its correlation id, never its UID"

    studys = [line for line in lines if line["study"] == correlation]
    by_process = {line["process"] for line in studys}
    assert {"listener", "worker", "registry"} <= by_process, by_process
    routed = [line for line in studys if line["logger"] == "hounsfield.router.routing"]
    assert routed and any(line["message"].startswith("study routed") for line in routed)
    for name, job in jobs.items():
        its = [line for line in lines if line["job"] == job["id"]]
        assert {"listener", "worker"} <= {line["process"] for line in its}, (name, its)
        assert all(line["study"] == correlation for line in its), "a job's lines carry its study's id too"
        assert any(re.search(r"job \S+ (done|failed)", line["message"]) for line in its), name
    delivered = [line for line in lines if line["logger"] == "hounsfield.exporter.delivery"]
    assert delivered and all(line["job"] == jobs["ct-lesion-seg"]["id"] for line in delivered), "through the exporter"
    failed = [line for line in lines if line["job"] == quoted["id"] and line["level"] == "WARNING"]
    assert any("failed (ApplicationFailed)" in line["message"] for line in failed), failed
    refused = [line for line in lines if "instance refused" in line["message"]]
    assert refused and all(line["process"] == "listener" for line in refused)
    assert any("INTRUDER" in line["message"] and "rejected" in line["message"] for line in lines)
    probe = [line for line in lines if line["request"] == "probe-read"]
    assert [(line["process"], line["logger"], line["study"]) for line in probe] == [
        ("registry", "hounsfield.registry.reads", correlation)
    ]
