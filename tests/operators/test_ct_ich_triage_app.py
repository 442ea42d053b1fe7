"""End-to-end tests of the head CT haemorrhage triage application, run in-process.

The model is the committed ``operators/ct_ich_triage/models/model.ts``. A head with a bleed and one
without are written as DICOM; the application runs on each (twice in one process on the first) and
its SR must say present or absent with the model's probability, name the model, pass ``dciodvfy``
and the exporter's validation gate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from hounsfield_operators.runtime_support import ensure_cuda_runtime_loadable

ensure_cuda_runtime_loadable()

import highdicom as hd  # noqa: E402
import torch  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

from hounsfield.exporter.validation import validate_object  # noqa: E402
from hounsfield.worker.runtimes.in_process import InProcessRuntime  # noqa: E402
from hounsfield_operators.application import PipelineError  # noqa: E402
from hounsfield_operators.ct_ich_triage.app import (  # noqa: E402
    APP_NAME,
    MODEL_NAME,
    TRACKING_IDENTIFIER,
    CTICHTriageApp,
)
from hounsfield_operators.ct_ich_triage.classifier import network_input_from_zyx  # noqa: E402
from hounsfield_operators.ct_ich_triage.phantom import HeadPhantom, make_head_phantom, write_dicom_series  # noqa: E402
from hounsfield_operators.result_context import IHE_PROCESSING_ALGORITHM, ResultContext  # noqa: E402
from tests.support import application_run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operators" / "ct_ich_triage"
MODEL = PACKAGE / "models" / "model.ts"
UID_ROOT = "1.2.826.0.1.3680043.10.543."
CONTEXT = {"uid_root": UID_ROOT, "model_name": "CT haemorrhage triage", "model_version": "1.0.0"}
BLEED_SEED = 20261203  # an intraparenchymal bleed of about 4 mL
NORMAL_SEED = 20261204
APP = "hounsfield_operators.ct_ich_triage.app:CTICHTriageApp"


@dataclass
class Case:
    """A phantom written as DICOM, the model's own probability for it, and the application's outputs."""

    phantom: HeadPhantom
    series_uid: str
    study_uid: str
    expected_probability: float
    context: ResultContext
    outputs: list[Path]


def _make_case(root: Path, phantom: HeadPhantom, job_key: str, runs: int) -> Case:
    assert MODEL.is_file(), f"missing {MODEL}"
    files = write_dicom_series(phantom, root / "input")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    (root / "work").mkdir(parents=True)
    (root / "work" / "result_context.json").write_text(json.dumps({**CONTEXT, "job_key": job_key}))
    outputs = []
    for run in range(runs):
        output = root / f"output{run}"
        argv = [APP_NAME, "-i", str(root / "input"), "-o", str(output), "-m", str(PACKAGE / "models"), "-w"]
        CTICHTriageApp(argv=[*argv, str(root / "work")]).run()
        outputs.append(output)
    model = torch.jit.load(str(MODEL), map_location="cpu").eval()
    with torch.no_grad():
        expected = float(model(torch.from_numpy(network_input_from_zyx(phantom.hu))[None])[0])
    return Case(
        phantom=phantom,
        series_uid=str(first.SeriesInstanceUID),
        study_uid=str(first.StudyInstanceUID),
        expected_probability=expected,
        context=ResultContext(**CONTEXT, job_key=job_key),
        outputs=outputs,
    )


@pytest.fixture(scope="module")
def bleed_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    phantom = make_head_phantom(BLEED_SEED, bleed=True, bleed_kind="intraparenchymal")
    return _make_case(tmp_path_factory.mktemp("bleed"), phantom, "job-bleed", runs=2)


@pytest.fixture(scope="module")
def normal_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    phantom = make_head_phantom(NORMAL_SEED, bleed=False)
    return _make_case(tmp_path_factory.mktemp("normal"), phantom, "job-normal", runs=1)


def _group(path: Path) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    return group


def _finding(case: Case) -> tuple[str, float]:
    """Presence (SNOMED code value) and probability from the SR, after checking the group's shape."""
    group = _group(case.outputs[0] / "sr.dcm")
    assert group.finding_type.value == "1386000" and group.finding_type.scheme_designator == "SCT"
    assert [site.value.value for site in group.finding_sites] == [codes.SCT.IntracranialStructure.value]
    assert group.tracking_identifier == TRACKING_IDENTIFIER
    assert str(group.tracking_uid).startswith(UID_ROOT)
    (presence,) = [e for e in group.get_qualitative_evaluations() if e.name == codes.DCM.PresenceOfProperty]
    (probability,) = group.get_measurements(name=codes.DCM.Probability)
    assert probability.unit.value == "{probability}" and probability.unit.scheme_designator == "UCUM"
    return str(presence.value.value), float(probability.value)


def test_bleed_is_reported_present_with_its_probability(bleed_case: Case) -> None:
    presence, probability = _finding(bleed_case)
    threshold = float(torch.jit.load(str(MODEL)).operating_threshold)
    assert presence == codes.SCT.Present.value
    assert 0.0 <= probability <= 1.0
    assert probability >= threshold
    assert probability == pytest.approx(bleed_case.expected_probability, abs=1e-4)


def test_normal_head_is_reported_absent(normal_case: Case) -> None:
    presence, probability = _finding(normal_case)
    threshold = float(torch.jit.load(str(MODEL)).operating_threshold)
    assert presence == codes.SCT.Absent.value
    assert 0.0 <= probability < threshold
    assert probability == pytest.approx(normal_case.expected_probability, abs=1e-4)
    assert sorted(p.name for p in normal_case.outputs[0].iterdir()) == ["sr.dcm"]


def test_second_in_process_run_reproduces_the_sr(bleed_case: Case) -> None:
    first, second = (pydicom.dcmread(out / "sr.dcm") for out in bleed_case.outputs)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (second.SeriesInstanceUID, second.SOPInstanceUID)
    assert first.SOPInstanceUID.startswith(UID_ROOT)
    assert first.StudyInstanceUID == bleed_case.study_uid
    assert _group(bleed_case.outputs[1] / "sr.dcm").get_measurements(name=codes.DCM.Probability)[0].value == (
        _group(bleed_case.outputs[0] / "sr.dcm").get_measurements(name=codes.DCM.Probability)[0].value
    )


def test_the_workers_in_process_runtime_runs_it_job_after_job(
    bleed_case: Case, normal_case: Case, tmp_path: Path
) -> None:
    """The worker's own runtime: one warm process, three jobs, each answered as when run alone."""
    runtime = InProcessRuntime()
    jobs = (("first", bleed_case), ("second", normal_case), ("third", bleed_case))
    try:
        for name, case in jobs:
            job = case.outputs[0].parent
            runtime.run(
                application_run(
                    input_dir=job / "input", output_dir=tmp_path / name, workdir=job / "work", app=APP, model_path=MODEL
                )
            )
    finally:
        runtime.close()
    for name, case in jobs:
        presence, probability = _finding(Case(**{**case.__dict__, "outputs": [tmp_path / name]}))
        assert (presence, probability) == _finding(case), name
    first, third = (pydicom.dcmread(tmp_path / name / "sr.dcm") for name in ("first", "third"))
    alone = pydicom.dcmread(bleed_case.outputs[0] / "sr.dcm")
    assert first.SOPInstanceUID == third.SOPInstanceUID == alone.SOPInstanceUID


def test_model_identity_in_contributing_equipment_and_observer(bleed_case: Case) -> None:
    dataset = pydicom.dcmread(bleed_case.outputs[0] / "sr.dcm")
    context = bleed_case.context
    (item,) = [
        e
        for e in dataset.ContributingEquipmentSequence
        if e.PurposeOfReferenceCodeSequence[0].CodeValue == IHE_PROCESSING_ALGORITHM.value
    ]
    assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    assert (item.Manufacturer, item.ManufacturerModelName, item.SoftwareVersions) == (
        "Hounsfield",
        "CT haemorrhage triage",
        "1.0.0",
    )
    assert item.DeviceUID == context.device_uid
    assert dataset.SeriesDescription == context.series_description("SR")
    assert "NOT FOR DIAGNOSTIC USE" in dataset.SeriesDescription
    sr = hd.sr.srread(bleed_case.outputs[0] / "sr.dcm")
    observer = sr.content.get_observer_contexts(observer_type=codes.DCM.Device)[0]
    assert observer.observer_identifying_attributes.uid == context.device_uid


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("case_name", ["bleed_case", "normal_case"])
def test_sr_passes_dciodvfy_and_the_validation_gate(case_name: str, request: pytest.FixtureRequest) -> None:
    case: Case = request.getfixturevalue(case_name)
    path = case.outputs[0] / "sr.dcm"
    completed = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False, timeout=120)
    assert [line for line in (completed.stdout + completed.stderr).splitlines() if line.startswith("Error")] == []
    report = validate_object(path)
    assert report.kind == "SR" and report.errors == []
    assert report.series_instance_uid != case.series_uid


def test_manifests_are_consistent() -> None:
    app = json.loads((PACKAGE / "app.json").read_text())
    pkg = json.loads((PACKAGE / "pkg.json").read_text())
    assert app["command"] == "python3 -u -m hounsfield_operators.ct_ich_triage"
    assert app["output"]["format"]["files"] == ["sr.dcm"]
    assert app["output"]["format"]["sopClasses"] == [pydicom.uid.Comprehensive3DSRStorage]
    assert (app["sdk"], app["sdkVersion"], app["version"]) == ("monai-deploy", "4.0.0", "1.0.0")
    assert pkg["models"] == [{"name": MODEL_NAME, "path": f"{app['environment']['HOLOSCAN_MODEL_PATH']}/{MODEL_NAME}"}]


def test_missing_pixel_data_raises_readable_error(tmp_path: Path) -> None:
    write_dicom_series(make_head_phantom(NORMAL_SEED, bleed=False), tmp_path / "input", drop_pixel_data_at=3)
    argv = [APP_NAME, "-i", str(tmp_path / "input"), "-o", str(tmp_path / "output"), "-m", str(MODEL)]
    with pytest.raises(PipelineError, match=r"ct_ich_triage failed in operator 'series_to_volume'"):
        CTICHTriageApp(argv=[*argv, "-w", str(tmp_path / "work")]).run()
    assert not (tmp_path / "output" / "sr.dcm").exists()
