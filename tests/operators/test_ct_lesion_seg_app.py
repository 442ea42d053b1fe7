"""End-to-end tests of the CT lesion segmentation MONAI Deploy application, run in-process.

The model is ``operators/ct_lesion_seg/models/model.ts`` (or ``$HOUNSFIELD_CT_LESION_MODEL``);
the tests are skipped when neither exists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hounsfield_operators.runtime_support import ensure_cuda_runtime_loadable

ensure_cuda_runtime_loadable()

import highdicom as hd  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

from hounsfield_operators.ct_lesion_seg.app import APP_NAME, MODEL_NAME, CTLesionSegApp, PipelineError  # noqa: E402
from hounsfield_operators.ct_lesion_seg.phantom import Phantom, make_phantom, write_dicom_series  # noqa: E402
from hounsfield_operators.ct_lesion_seg.phantom import longest_axial_diameter_mm as truth_diameter_mm  # noqa: E402
from hounsfield_operators.result_context import IHE_PROCESSING_ALGORITHM, ResultContext  # noqa: E402

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("HOUNSFIELD_CT_LESION_MODEL", REPO / "operators" / "ct_lesion_seg" / "models" / "model.ts"))
UID_ROOT = "1.2.826.0.1.3680043.10.543."
LESION_SEED = 3
EMPTY_SEED = 11


@dataclass
class Case:
    """A phantom written as DICOM and the outputs of two in-process runs."""

    phantom: Phantom
    sop_uids: list[str]  # slice k of the phantom -> SOP Instance UID
    series_uid: str
    frame_of_reference_uid: str
    context: ResultContext
    outputs: list[Path]
    seconds: list[float]


def _write_context(workdir: Path, job_key: str) -> ResultContext:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "result_context.json").write_text(
        json.dumps({"job_key": job_key, "uid_root": UID_ROOT, "deployment_mode": "research"})
    )
    return ResultContext(job_key=job_key, uid_root=UID_ROOT, deployment_mode="research")


def _run(input_dir: Path, output_dir: Path, workdir: Path) -> float:
    if not MODEL.is_file():
        pytest.skip(f"trained model not found at {MODEL}")
    started = time.perf_counter()
    argv = [APP_NAME, "-i", str(input_dir), "-o", str(output_dir), "-m", str(MODEL), "-w", str(workdir)]
    CTLesionSegApp(argv=argv).run()
    return time.perf_counter() - started


def _make_case(root: Path, seed: int, n_lesions: int, runs: int) -> Case:
    phantom = make_phantom(seed, n_lesions=n_lesions)
    files = write_dicom_series(phantom, root / "input")
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    context = _write_context(root / "work", job_key=f"job-{seed}")
    outputs, seconds = [], []
    for run in range(runs):
        output = root / f"output{run}"
        seconds.append(_run(root / "input", output, root / "work"))
        outputs.append(output)
    logger.info("seed %d: in-process run times %s s", seed, ", ".join(f"{s:.2f}" for s in seconds))
    return Case(
        phantom=phantom,
        sop_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        series_uid=str(datasets[0].SeriesInstanceUID),
        frame_of_reference_uid=str(datasets[0].FrameOfReferenceUID),
        context=context,
        outputs=outputs,
        seconds=seconds,
    )


@pytest.fixture(scope="module")
def lesion_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    case = _make_case(tmp_path_factory.mktemp("lesions"), LESION_SEED, n_lesions=3, runs=2)
    assert len(case.phantom.lesions) >= 2
    return case


@pytest.fixture(scope="module")
def empty_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _make_case(tmp_path_factory.mktemp("empty"), EMPTY_SEED, n_lesions=0, runs=1)


def _report(sr: object) -> hd.sr.MeasurementReport:
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def _dciodvfy(path: Path) -> list[str]:
    completed = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False, timeout=120)
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Warning"):
            logger.warning("dciodvfy %s: %s", path.name, line)
    return [line for line in lines if line.startswith("Error")]


def _seg_labels_by_reference(seg: hd.seg.Segmentation, sop_uids: list[str], shape: tuple[int, ...]) -> np.ndarray:
    """Rebuild the SEG as a (z, y, x) segment-number map, placing frames by their referenced source instance."""
    index_of = {uid: k for k, uid in enumerate(sop_uids)}
    labels = np.zeros(shape, dtype=np.uint16)
    frames = seg.pixel_array.reshape(-1, *shape[1:])
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        k = index_of[source]
        assert not (labels[k][frame > 0] > 0).any(), "segments overlap"
        labels[k][frame > 0] = segment
    return labels


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def _algorithm_equipment(dataset: pydicom.Dataset) -> pydicom.Dataset:
    for item in dataset.ContributingEquipmentSequence:
        purpose = item.PurposeOfReferenceCodeSequence[0]
        if (purpose.CodeValue, purpose.CodingSchemeDesignator) == (
            IHE_PROCESSING_ALGORITHM.value,
            IHE_PROCESSING_ALGORITHM.scheme_designator,
        ):
            return item
    raise AssertionError("no Processing Algorithm item in Contributing Equipment Sequence")


# --- two runs in one process ---------------------------------------------------------------------


def test_second_in_process_run_reproduces_uids(lesion_case: Case) -> None:
    first, second = lesion_case.outputs
    for name in ("seg.dcm", "sr.dcm"):
        a, b = pydicom.dcmread(first / name), pydicom.dcmread(second / name)
        assert (a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID) == (
            b.StudyInstanceUID,
            b.SeriesInstanceUID,
            b.SOPInstanceUID,
        )
        assert a.SOPInstanceUID.startswith(UID_ROOT)
    seg_a, seg_b = pydicom.dcmread(first / "seg.dcm"), pydicom.dcmread(second / "seg.dcm")
    assert seg_a.PixelData == seg_b.PixelData
    assert [s.TrackingUID for s in seg_a.SegmentSequence] == [s.TrackingUID for s in seg_b.SegmentSequence]


# --- DICOM validity ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("name", ["seg.dcm", "sr.dcm"])
def test_dciodvfy_reports_no_error(lesion_case: Case, name: str) -> None:
    assert _dciodvfy(lesion_case.outputs[0] / name) == []


def test_highdicom_round_trip(lesion_case: Case) -> None:
    seg = hd.seg.segread(lesion_case.outputs[0] / "seg.dcm")
    sr = hd.sr.srread(lesion_case.outputs[0] / "sr.dcm")
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert hd.seg.Segmentation.from_dataset(pydicom.dcmread(lesion_case.outputs[0] / "seg.dcm")).SOPInstanceUID == (
        seg.SOPInstanceUID
    )
    assert seg.SegmentationType == "BINARY"
    assert isinstance(sr.content, hd.sr.MeasurementReport)


# --- SEG content ---------------------------------------------------------------------------------


def test_seg_segments_describe_lesions(lesion_case: Case) -> None:
    seg = hd.seg.segread(lesion_case.outputs[0] / "seg.dcm")
    assert seg.FrameOfReferenceUID == lesion_case.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == lesion_case.series_uid
    for number, item in enumerate(seg.SegmentSequence, start=1):
        assert item.SegmentNumber == number
        assert item.SegmentLabel == f"Lesion {number}"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == lesion_case.context.model_name
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == ("52988006", "SCT")
        assert item.TrackingID == f"Lesion {number}"
        assert str(item.TrackingUID).startswith(UID_ROOT)


def test_seg_matches_truth(lesion_case: Case) -> None:
    seg = hd.seg.segread(lesion_case.outputs[0] / "seg.dcm")
    truth = lesion_case.phantom.lesion_mask
    labels = _seg_labels_by_reference(seg, lesion_case.sop_uids, truth.shape)
    dice = _dice(labels > 0, truth)
    logger.info("Dice %.3f over %d segments", dice, len(seg.SegmentSequence))
    assert dice >= 0.85


# --- SR content ----------------------------------------------------------------------------------


def _segment_of(measurement: hd.sr.Measurement) -> tuple[str, int]:
    """The SEG instance and segment number a measurement is INFERRED FROM (its only referenced image)."""
    (image,) = measurement.referenced_images or []
    item = image.ReferencedSOPSequence[0]
    return str(item.ReferencedSOPInstanceUID), int(item.ReferencedSegmentNumber)


def _sr_groups_by_segment(case: Case) -> tuple[np.ndarray, dict[int, object]]:
    """SEG label map rebuilt by reference, and the SR measurement groups keyed by referenced segment number."""
    out = case.outputs[0]
    seg = hd.seg.segread(out / "seg.dcm")
    sr = hd.sr.srread(out / "sr.dcm")
    labels = _seg_labels_by_reference(seg, case.sop_uids, case.phantom.lesion_labels.shape)
    segment_uids = {item.SegmentNumber: item.TrackingUID for item in seg.SegmentSequence}
    groups = _report(sr).get_image_measurement_groups()
    assert len(groups) == len(segment_uids)
    by_segment: dict[int, object] = {}
    for group in groups:
        volume, _, attenuation = (group.get_measurements(name=name)[0] for name in _MEASURED)
        references = {_segment_of(volume), _segment_of(attenuation)}
        assert len(references) == 1, f"volume and attenuation come from different segments: {references}"
        ((seg_uid, number),) = references
        assert seg_uid == seg.SOPInstanceUID
        assert number in segment_uids, f"SR references segment {number}, absent from the SEG"
        assert group.tracking_uid == segment_uids[number]
        assert group.tracking_identifier == f"Lesion {number}"
        by_segment[number] = group
    return labels, by_segment


_MEASURED = (codes.SCT.Volume, codes.SCT.LongAxis, codes.DCM.AttenuationCoefficient)


def _values(group: object) -> tuple[float, float, float]:
    assert isinstance(group, hd.sr.MeasurementsAndQualitativeEvaluations)
    volume, diameter, attenuation = (group.get_measurements(name=name)[0] for name in _MEASURED)
    assert (volume.unit.value, diameter.unit.value, attenuation.unit.value) == ("ml", "mm", "[hnsf'U]")
    return float(volume.value), float(diameter.value), float(attenuation.value)


def test_sr_long_axis_is_drawn_on_its_slice_inside_its_segment(lesion_case: Case) -> None:
    """Each lesion's long axis is a two-point line on one source image: as long as the value, ends on the segment,
    and that image is in the report's Image Library."""
    labels, groups = _sr_groups_by_segment(lesion_case)
    sr = pydicom.dcmread(lesion_case.outputs[0] / "sr.dcm")
    (library,) = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    listed = {
        str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for group in library.ContentSequence
        for entry in group.ContentSequence
        if entry.ValueType == "IMAGE"
    }
    row_spacing, column_spacing = lesion_case.phantom.spacing_zyx_mm[1:]
    for number, group in groups.items():
        assert isinstance(group, hd.sr.MeasurementsAndQualitativeEvaluations)
        diameter = group.get_measurements(name=codes.SCT.LongAxis)[0]
        (line,) = diameter.referenced_coordinates or []
        assert line.GraphicType == "POLYLINE"
        (start, end) = np.asarray(line.value, dtype=np.float64).reshape(2, 2)  # (column, row), pixel corner at 0
        image_uid = str(line.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        assert image_uid in listed, "the image the line is drawn on is in the Image Library"
        k = lesion_case.sop_uids.index(image_uid)
        length = float(np.hypot((end[0] - start[0]) * column_spacing, (end[1] - start[1]) * row_spacing))
        assert length == pytest.approx(float(diameter.value), abs=0.01)
        for column, row in (start, end):
            near = labels[k, max(int(row) - 1, 0) : int(row) + 2, max(int(column) - 1, 0) : int(column) + 2]
            assert (near == number).any(), f"lesion {number}: a line end ({column:.1f}, {row:.1f}) is off its segment"


def test_sr_measurements_describe_the_seg_segments(lesion_case: Case) -> None:
    """SR numbers are exact measurements of the SEG segments (independent diameter implementation)."""
    phantom = lesion_case.phantom
    labels, groups = _sr_groups_by_segment(lesion_case)
    voxel_ml = float(np.prod(phantom.spacing_zyx_mm)) / 1000.0
    for number, group in groups.items():
        mask = labels == number
        volume, diameter, attenuation = _values(group)
        assert volume == pytest.approx(mask.sum() * voxel_ml, rel=1e-3)
        assert diameter == pytest.approx(truth_diameter_mm(mask, phantom.spacing_zyx_mm), abs=0.01)
        assert attenuation == pytest.approx(float(phantom.hu[mask].mean()), abs=0.06)


def test_sr_measurements_match_truth(lesion_case: Case) -> None:
    """Model + measurement against the phantom truth: volume within 15 %, long axis within 2 mm."""
    phantom = lesion_case.phantom
    labels, groups = _sr_groups_by_segment(lesion_case)
    spacing = np.asarray(phantom.spacing_zyx_mm)
    rows, failures, matched = [], [], set()
    for number, group in sorted(groups.items()):
        centroid = np.argwhere(labels == number).mean(axis=0) * spacing
        truth = min(phantom.lesions, key=lambda t: float(np.linalg.norm(np.asarray(t.center_zyx_mm) - centroid)))
        if float(np.linalg.norm(np.asarray(truth.center_zyx_mm) - centroid)) > 5.0:
            rows.append(f"segment {number}: no truth lesion within 5 mm")
            continue  # a false positive; the Dice test covers it
        matched.add(truth.index)
        volume, diameter, attenuation = _values(group)
        row = (
            f"segment {number} ~ truth {truth.index}: volume {volume:.2f} vs {truth.volume_ml:.2f} mL "
            f"({volume / truth.volume_ml - 1:+.0%}), long axis {diameter:.1f} vs "
            f"{truth.longest_axial_diameter_mm:.1f} mm, mean {attenuation:.0f} vs {truth.mean_hu:.0f} HU"
        )
        rows.append(row)
        if abs(volume / truth.volume_ml - 1) > 0.15 or abs(diameter - truth.longest_axial_diameter_mm) > 2.0:
            failures.append(row)
    logger.info("SR vs truth: %s", "; ".join(rows))
    assert matched == {lesion.index for lesion in phantom.lesions}, "; ".join(rows)
    assert not failures, "; ".join(failures)


def test_contributing_equipment_and_descriptions(lesion_case: Case) -> None:
    context = lesion_case.context
    for name, kind in (("seg.dcm", "SEG"), ("sr.dcm", "SR")):
        dataset = pydicom.dcmread(lesion_case.outputs[0] / name)
        item = _algorithm_equipment(dataset)
        assert item.Manufacturer == context.manufacturer
        assert item.ManufacturerModelName == context.model_name
        assert item.SoftwareVersions == context.model_version
        assert item.DeviceUID == context.device_uid
        assert dataset.SeriesDescription == context.series_description(kind)
        assert "NOT FOR DIAGNOSTIC USE" in dataset.SeriesDescription
        assert context.model_version in dataset.SeriesDescription
        assert len(dataset.SeriesDescription) <= 64


# --- no lesion, broken input ---------------------------------------------------------------------


def test_no_lesion_writes_only_a_valid_sr(empty_case: Case) -> None:
    out = empty_case.outputs[0]
    assert sorted(p.name for p in out.iterdir()) == ["sr.dcm"]
    if shutil.which("dciodvfy"):
        assert _dciodvfy(out / "sr.dcm") == []
    sr = hd.sr.srread(out / "sr.dcm")
    assert _report(sr).get_volumetric_roi_measurement_groups() == []
    (group,) = _report(sr).get_image_measurement_groups()
    evaluations = {(e.name.value, getattr(e.value, "value", None)) for e in group.get_qualitative_evaluations()}
    assert (codes.DCM.PresenceOfProperty.value, codes.SCT.Absent.value) in evaluations
    top = [item.ConceptNameCodeSequence[0].CodeValue for item in pydicom.dcmread(out / "sr.dcm").ContentSequence]
    assert "111028" not in top, "a report that refers to no image has no Image Library"
    _algorithm_equipment(pydicom.dcmread(out / "sr.dcm"))


def test_seg_registered_when_slices_are_stored_in_reverse_order(tmp_path: Path) -> None:
    """Files ordered head-to-feet while the SDK stacks feet-to-head: frames must follow the references."""
    phantom = make_phantom(LESION_SEED, n_lesions=3)
    files = write_dicom_series(phantom, tmp_path / "input")
    sop_uids = []
    for path in files:
        dataset = pydicom.dcmread(path)
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [f"{x:.6g}", f"{y:.6g}", f"{-z:.6g}"]
        dataset.SliceLocation = f"{-z:.6g}"
        dataset.save_as(path, enforce_file_format=True)
        sop_uids.append(str(dataset.SOPInstanceUID))
    _write_context(tmp_path / "work", job_key="reversed")
    _run(tmp_path / "input", tmp_path / "output", tmp_path / "work")
    seg = hd.seg.segread(tmp_path / "output" / "seg.dcm")
    labels = _seg_labels_by_reference(seg, sop_uids, phantom.lesion_mask.shape)
    assert _dice(labels > 0, phantom.lesion_mask) >= 0.85


def test_manifests_are_consistent() -> None:
    package = REPO / "operators" / "ct_lesion_seg"
    app = json.loads((package / "app.json").read_text())
    pkg = json.loads((package / "pkg.json").read_text())
    assert {"command", "input", "output"} <= app.keys() and app["input"]["formats"] and app["output"]["format"]
    assert (app["sdk"], app["sdkVersion"], app["version"]) == ("monai-deploy", "4.0.0", "1.0.0")
    assert pkg["applicationRoot"] and pkg["resources"] == {"cpu": 1, "gpu": 0, "memory": "2Gi"}
    assert pkg["models"] == [{"name": MODEL_NAME, "path": f"{app['environment']['HOLOSCAN_MODEL_PATH']}/{MODEL_NAME}"}]


def test_missing_pixel_data_raises_readable_error(tmp_path: Path) -> None:
    write_dicom_series(make_phantom(LESION_SEED, n_lesions=2), tmp_path / "input", drop_pixel_data_at=5)
    with pytest.raises(PipelineError, match=r"series_to_volume.*Pixel Data"):
        _run(tmp_path / "input", tmp_path / "output", tmp_path / "work")
    assert not (tmp_path / "output" / "seg.dcm").exists()
    assert not (tmp_path / "output" / "sr.dcm").exists()


def test_invalid_arguments_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Invalid arguments"):
        CTLesionSegApp(argv=[APP_NAME, "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])


def test_result_context_rejects_unknown_key(tmp_path: Path) -> None:
    (tmp_path / "result_context.json").write_text(json.dumps({"job_key": "a", "colour": "red"}))
    with pytest.raises(ValueError, match="'colour'"):
        ResultContext.load(tmp_path)
    assert ResultContext.load(None) == ResultContext()
