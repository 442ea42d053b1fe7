"""The whole path with real services: dcmtk storescu -> Hounsfield -> Orthanc.

redis-server, the Celery worker running the CT lesion MAP in-process, the listener and the
registry all run as ``hounsfield up`` does; Orthanc is the PACS. Nothing is mocked.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from orthanc_api_client import OrthancApiClient

from hounsfield.demo.findings import lesion_findings
from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.demo.stack import CT_LESION_DEPLOYMENT, HounsfieldStack
from hounsfield_operators.ct_lesion_seg.phantom import Phantom, make_phantom, write_dicom_series
from tests.e2e.conftest import running_stack
from tests.e2e.raising_app import MESSAGE

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


CATALOG_RULE = {"kind": "series_description", "regex": "^CATALOG"}
"""Series for the deployment made through the registry API (test_a_deployment_made_through_the_api_...)."""


def _deployments() -> list[dict]:
    raise_rule = {"kind": "series_description", "regex": "^RAISE"}
    ct = dict(CT_LESION_DEPLOYMENT)
    ct["rule"] = {
        "kind": "all",
        "rules": [
            CT_LESION_DEPLOYMENT["rule"],
            {"kind": "not", "rule": raise_rule},
            {"kind": "not", "rule": CATALOG_RULE},
        ],
    }
    raising = {
        **CT_LESION_DEPLOYMENT,
        "name": "raising-model",
        "app": "tests.e2e.raising_app:RaisingApp",
        "model_name": "Exploding model",
        "rule": {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, raise_rule]},
    }
    return [ct, raising]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pacs: LocalOrthanc, request: pytest.FixtureRequest
) -> Iterator[HounsfieldStack]:
    options = {"deployments": _deployments(), "extra_env": {"PYTHONPATH": str(REPO)}}  # the worker imports tests.e2e
    with running_stack(tmp_path_factory, pacs, request, **options) as running:
        yield running


def _series(folder: Path, seed: int, **kwargs) -> tuple[Phantom, str, list[Path]]:
    phantom = make_phantom(seed, n_lesions=kwargs.pop("n_lesions", 2))
    files = write_dicom_series(phantom, folder, uid_seed=f"e2e-{seed}", **kwargs)
    return phantom, str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files


def _dciodvfy_errors(data: bytes, tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / name
    path.write_bytes(data)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _seg_mask_zyx(seg: hd.seg.Segmentation, source: list[pydicom.Dataset]) -> np.ndarray:
    """The union of all segments, on the source slices' grid, slices in z order."""
    ordered = sorted(source, key=lambda ds: float(ds.ImagePositionPatient[2]))
    uids = [str(ds.SOPInstanceUID) for ds in ordered]
    volume = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, ignore_spatial_locations=True, assert_missing_frames_are_empty=True
    )
    return volume.any(axis=-1)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def test_ct_study_results_reach_the_pacs(
    stack: HounsfieldStack, pacs: LocalOrthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    phantom, study_uid, files = _series(tmp_path / "ct", seed=424242)
    stack.send(files)
    study = stack.wait_for_study(study_uid)
    assert study["state"] == "routed" and study["completion_trigger"] == "association-release"
    (job,) = study["jobs"]
    assert job["state"] == "done", job["error"]
    assert job["deployment"] == "ct-lesion-seg" and job["model_version"] == "1.0.0"
    assert {"completeness", "queue_wait", "load", "inference", "validate", "export"} <= set(job["timings"])
    kinds = sorted(r["kind"] for r in job["results"])
    assert kinds == ["SEG", "SR"]

    orthanc = OrthancApiClient(pacs.url)
    source = [pydicom.dcmread(p) for p in files]
    source_series = str(source[0].SeriesInstanceUID)
    objects = {}
    for result in job["results"]:
        instance_id = orthanc.instances.lookup(result["sop_instance_uid"])
        assert instance_id, f"{result['kind']} is not in Orthanc"
        data = orthanc.instances.get_file(instance_id)
        assert _dciodvfy_errors(data, tmp_path, f"{result['kind']}.dcm") == []
        objects[result["kind"]] = pydicom.dcmread(io.BytesIO(data))

    seg_ds, sr_ds = objects["SEG"], objects["SR"]
    for ds in (seg_ds, sr_ds):
        assert ds.StudyInstanceUID == study_uid
        assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription.upper()
        (algorithm,) = [
            item
            for item in ds.ContributingEquipmentSequence
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"  # IHE AIR: Processing Algorithm
        ]
        assert algorithm.ManufacturerModelName == "CT lesion segmentation"
        assert str(algorithm.SoftwareVersions) == "1.0.0" and algorithm.DeviceUID
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series
    assert seg_ds.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    dice = _dice(_seg_mask_zyx(seg, source), phantom.lesion_mask)
    with capsys.disabled():
        print(f"\nend-to-end SEG Dice vs phantom truth: {dice:.3f}")
    assert dice >= 0.85

    findings = lesion_findings(sr_ds)
    assert len(findings) == len(phantom.lesions)
    segment_numbers = {int(s.SegmentNumber) for s in seg_ds.SegmentSequence}
    for finding in findings:
        assert finding["segment_number"] in segment_numbers
        assert finding["segmentation_sop_instance_uid"] == seg_ds.SOPInstanceUID
    measured = sorted(f["measurements"][_volume_name(f)]["value"] for f in findings)
    truth = sorted(t.volume_ml for t in phantom.lesions)
    for m, t in zip(measured, truth, strict=True):
        assert abs(m - t) <= 0.15 * t, f"SR volume {m:.2f} mL vs truth {t:.2f} mL"

    # The second, identical send makes no second result set.
    before = len(orthanc.studies.get_instances_ids(orthanc.studies.lookup(study_uid)))
    stack.send(files)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = [e["kind"] for e in stack.study(study_uid)["events"]]
        if "job-exists" in events:
            break
        time.sleep(0.5)
    again = stack.wait_for_study(study_uid)
    assert "job-exists" in [e["kind"] for e in again["events"]]
    assert len(again["jobs"]) == 1
    time.sleep(2)
    assert len(orthanc.studies.get_instances_ids(orthanc.studies.lookup(study_uid))) == before

    _a_radiologist_corrects_the_seg(stack, seg, source, tmp_path)


def _a_radiologist_corrects_the_seg(
    stack: HounsfieldStack, seg: hd.seg.Segmentation, source: list[pydicom.Dataset], tmp_path: Path
) -> None:
    """The SEG from the PACS, its second lesion deleted in an editor, sent back over DICOM (dcmtk): recognised
    as a correction of Hounsfield's SEG on arrival, with Dice 1 for the kept lesion and 0 for the deleted one."""
    ordered = sorted(source, key=lambda ds: float(ds.ImagePositionPatient[2]))
    uids = [str(ds.SOPInstanceUID) for ds in ordered]
    kept = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    ours = seg.SegmentSequence[0]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion 1",
        segmented_property_category=ours.SegmentedPropertyCategoryCodeSequence[0],
        segmented_property_type=ours.SegmentedPropertyTypeCodeSequence[0],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    corrected = hd.seg.Segmentation(
        source_images=ordered, pixel_array=(kept[..., 0] > 0).astype(np.uint8), segmentation_type="BINARY",
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=91, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="Reading room", manufacturer_model_name="SEG editor", software_versions="1",
        device_serial_number="1",
    )  # fmt: skip
    path = tmp_path / "corrected-seg.dcm"
    corrected.save_as(path, enforce_file_format=True)
    stack.send([path], required_only=True)  # from an AE the listener knows (a PACS forwarding the viewer's SEG)
    url = f"{stack.api}/results/{seg.SOPInstanceUID}/feedback"
    deadline = time.monotonic() + 120
    feedback: list[dict] = []
    while time.monotonic() < deadline and not feedback:
        feedback = httpx.get(url, headers=stack.api_headers, timeout=10).json()
        time.sleep(0.5)
    (correction,) = feedback
    assert correction["kind"] == "correction" and correction["given_by"] == "dicom:DEMO-CT"
    assert (
        correction["correction_sop_instance_uid"] == corrected.SOPInstanceUID and correction["model_version"] == "1.0.0"
    )
    assert [(d["label"], d["dice"]) for d in correction["dice"]] == [("Lesion 1", 1.0), ("Lesion 2", 0.0)]
    assert correction["mean_dice"] == 0.5
    summary = httpx.get(f"{stack.api}/feedback/summary", headers=stack.api_headers, timeout=10).json()
    assert [(s["corrections"], s["mean_correction_dice"]) for s in summary] == [(1, 0.5)]


def _volume_name(finding: dict) -> str:
    (name,) = [n for n in finding["measurements"] if "volume" in n.lower()]
    return name


def test_mr_study_is_kept_with_no_route(stack: HounsfieldStack, pacs: LocalOrthanc, tmp_path: Path) -> None:
    _, study_uid, files = _series(tmp_path / "mr", seed=515151, modality="MR", n_lesions=1)
    stack.send(files, calling_ae="MR-SCANNER")
    study = stack.wait_for_study(study_uid)
    assert study["state"] == "no_route"
    assert study["jobs"] == []
    assert study["series"][0]["instance_count"] == len(files)
    assert "no-route" in [e["kind"] for e in study["events"]]
    assert OrthancApiClient(pacs.url).studies.lookup(study_uid) is None


def test_failures_are_recorded_and_the_worker_goes_on(
    stack: HounsfieldStack, pacs: LocalOrthanc, tmp_path: Path
) -> None:
    _, broken_uid, broken = _series(tmp_path / "broken", seed=616161, drop_pixel_data_at=5)
    _, raising_uid, raising = _series(tmp_path / "raising", seed=717171, series_description="RAISE me")
    _, good_uid, good = _series(tmp_path / "good", seed=818181, n_lesions=1)
    for files in (broken, raising, good):
        stack.send(files)

    (broken_job,) = stack.wait_for_study(broken_uid)["jobs"]
    assert broken_job["state"] == "failed"
    assert "instance number 6 has no pixel data" in broken_job["error"]
    (raising_job,) = stack.wait_for_study(raising_uid)["jobs"]
    assert raising_job["state"] == "failed" and raising_job["deployment"] == "raising-model"
    assert MESSAGE in raising_job["error"]
    (good_job,) = stack.wait_for_study(good_uid)["jobs"]
    assert good_job["state"] == "done", good_job["error"]
    orthanc = OrthancApiClient(pacs.url)
    assert orthanc.studies.lookup(broken_uid) is None and orthanc.studies.lookup(raising_uid) is None
    assert list((stack.folder / "data" / "jobs").iterdir()) == [], "no workspace is left behind, failed or not"


def test_demo_command_prints_one_json_summary() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "hounsfield.cli", "demo", "--json"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    (job,) = summary["jobs"]
    assert job["state"] == "done" and job["model"] == {
        "name": "CT lesion segmentation",
        "version": "1.0.0",
        "mode": "research",
    }
    assert sorted(r["kind"] for r in job["results"]) == ["SEG", "SR"]
    assert all(r["orthanc_instance"] and r["url"].startswith("http://127.0.0.1:") for r in job["results"])
    assert summary["study"]["instances"] > 0 and summary["timings_s"]["time_to_result"] > 0


def test_a_deployment_made_through_the_api_runs_in_shadow_then_clinical(
    stack: HounsfieldStack, pacs: LocalOrthanc, tmp_path: Path
) -> None:
    """Registry to PACS: a catalog version deployed through the API, shadow results held back from the
    clinical PACS, then clinical results labelled with the version's Device UID, while a newer version
    runs in shadow on the same study as a second, distinct and labelled result set."""
    api, headers = stack.api, stack.api_headers
    manifests = REPO / "operators" / "ct_lesion_seg"
    model = {
        "name": "ct-lesions", "display_name": "CT lesion segmentation (registered)",
        "intended_use": "Segments and measures liver-like lesions on CT phantoms.", "use_cases": ["scheduled"],
        "modality": "CT", "regulatory_status": "ce-marked", "owner": "Hounsfield tests",
    }  # fmt: skip
    assert httpx.post(f"{api}/models", json=model, headers=headers).status_code == 201
    device_uids = {}
    for number in ("1.0.0", "1.1.0"):
        version = {
            "version": number,
            "app": json.loads((manifests / "app.json").read_text()),
            "pkg": json.loads((manifests / "pkg.json").read_text()),
        }
        registered = httpx.post(f"{api}/models/ct-lesions/versions", json=version, headers=headers)
        assert registered.status_code == 201, registered.text
        device_uids[number] = registered.json()["device_uid"]
    assert device_uids["1.0.0"] != device_uids["1.1.0"]
    rule = {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, CATALOG_RULE]}
    assert httpx.put(f"{api}/rules/catalog-ct", json={"rule": rule}, headers=headers).status_code == 201
    for name, number in (("ct-lesions-v1", "1.0.0"), ("ct-lesions-v2", "1.1.0")):
        deployment = {
            "name": name, "model": "ct-lesions", "version": number, "rule": "catalog-ct", "destinations": ["pacs"],
            "app": CT_LESION_DEPLOYMENT["app"], "model_path": CT_LESION_DEPLOYMENT["model_path"],
        }  # fmt: skip
        made = httpx.post(f"{api}/deployments", json=deployment, headers=headers)
        assert made.status_code == 201, made.text

    def promote(name: str, expected: str) -> None:
        moved = httpx.post(f"{api}/deployments/{name}/promote", json={"reason": "e2e"}, headers=headers)
        assert moved.status_code == 200 and moved.json()["stage"] == expected, moved.text

    promote("ct-lesions-v1", "validated")
    promote("ct-lesions-v1", "shadow")
    orthanc = OrthancApiClient(pacs.url)
    _, shadow_uid, shadow_files = _series(tmp_path / "shadow", seed=919191, n_lesions=1, series_description="CATALOG a")
    stack.send(shadow_files)
    (shadow_job,) = stack.wait_for_study(shadow_uid)["jobs"]  # v2 is a draft: it does not run
    assert shadow_job["state"] == "done", shadow_job["error"]
    assert shadow_job["deployment"] == "ct-lesions-v1" and shadow_job["mode"] == "shadow"
    assert sorted(r["kind"] for r in shadow_job["results"]) == ["SEG", "SR"], "shadow results are kept"
    assert all(r["exported_to"] == [] for r in shadow_job["results"])
    assert orthanc.studies.lookup(shadow_uid) is None, "shadow results never reach a clinical destination"

    promote("ct-lesions-v1", "clinical")
    promote("ct-lesions-v2", "validated")
    promote("ct-lesions-v2", "shadow")
    _, clinical_uid, clinical_files = _series(
        tmp_path / "clinical", seed=929292, n_lesions=1, series_description="CATALOG b"
    )
    stack.send(clinical_files)
    jobs = {job["deployment"]: job for job in stack.wait_for_study(clinical_uid)["jobs"]}
    assert sorted(jobs) == ["ct-lesions-v1", "ct-lesions-v2"], "two deployments on one study: two jobs"
    clinical_job, shadow_v2 = jobs["ct-lesions-v1"], jobs["ct-lesions-v2"]
    assert clinical_job["state"] == "done" and clinical_job["mode"] == "clinical", clinical_job["error"]
    assert shadow_v2["state"] == "done" and shadow_v2["mode"] == "shadow", shadow_v2["error"]
    for result in clinical_job["results"]:
        instance_id = orthanc.instances.lookup(result["sop_instance_uid"])
        assert instance_id, f"{result['kind']} is not in Orthanc"
        ds = pydicom.dcmread(io.BytesIO(orthanc.instances.get_file(instance_id)))
        assert "NOT FOR DIAGNOSTIC USE" not in ds.SeriesDescription.upper()
        assert _algorithm(ds).DeviceUID == device_uids["1.0.0"], "the catalog version's Device UID labels it"
        assert _algorithm(ds).ManufacturerModelName == "CT lesion segmentation (registered)"
    stored = orthanc.studies.get_instances_ids(orthanc.studies.lookup(clinical_uid))
    assert len(stored) == 2, "only the clinical version's SEG and SR reached the PACS"
    v1_uids = {r["sop_instance_uid"] for r in clinical_job["results"]}
    v2_uids = {r["sop_instance_uid"] for r in shadow_v2["results"]}
    assert len(v2_uids) == 2 and not v1_uids & v2_uids, "a distinct result set"
    kept = sorted((stack.folder / "data" / "results" / shadow_v2["id"]).glob("*.dcm"))
    assert len(kept) == 2, kept
    for path in kept:
        ds = pydicom.dcmread(path)
        assert "1.1.0" in ds.SeriesDescription and "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription.upper()
        assert _algorithm(ds).DeviceUID == device_uids["1.1.0"] and str(_algorithm(ds).SoftwareVersions) == "1.1.0"


def _algorithm(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The IHE AIR Processing Algorithm item of a result's Contributing Equipment."""
    (item,) = [
        item for item in ds.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    ]  # fmt: skip
    return item
