"""The lesion SEG and SR as a viewer and the validators read them, built from a phantom's true lesions.

No model: the phantom's own lesion mask is segmented and measured, so the tests look at the objects
alone (the application's tests look at what the model finds). PixelMed's validators and dciodvfy are
the real Debian tools, run through the validation gate.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hounsfield_operators.runtime_support import ensure_cuda_runtime_loadable

ensure_cuda_runtime_loadable()

import highdicom as hd  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

from hounsfield.exporter.validation import validate_object  # noqa: E402
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series  # noqa: E402
from hounsfield_operators.dicom_seg_writer import (  # noqa: E402
    SEGMENT_COLOURS_RGB,
    LesionSegResult,
    build_lesion_segmentation,
    slice_order_and_spacing,
)
from hounsfield_operators.dicom_sr_writer import build_lesion_report  # noqa: E402
from hounsfield_operators.lesion_measurement import measure_lesions  # noqa: E402
from hounsfield_operators.result_context import ResultContext  # noqa: E402

UID_ROOT = "1.2.826.0.1.3680043.10.543."
IMAGE_LIBRARY = "111028"


def _objects(folder: Path, mode: str) -> tuple[list[pydicom.Dataset], Path, Path]:
    phantom = make_phantom(3, n_lesions=3)
    files = write_dicom_series(phantom, folder / "ct")
    images = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in images])
    lesions = measure_lesions(phantom.lesion_mask, hu, slice_order_and_spacing(images))
    context = ResultContext(job_key=f"job-{mode}", uid_root=UID_ROOT, deployment_mode=mode)  # type: ignore[arg-type]
    created = datetime.datetime(2026, 12, 2, 12, 0)
    seg = build_lesion_segmentation(images, lesions, context, created=created)
    seg_path, sr_path = folder / "seg.dcm", folder / "sr.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    build_lesion_report(LesionSegResult(lesions, tuple(images), seg, seg_path, created), context).save_as(
        sr_path, enforce_file_format=True
    )
    return images, seg_path, sr_path


@pytest.fixture(scope="module")
def research(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[pydicom.Dataset], Path, Path]:
    return _objects(tmp_path_factory.mktemp("research"), "research")


def test_both_pass_the_validation_gate_with_pixelmed_on_the_report(research: tuple) -> None:
    _, seg_path, sr_path = research
    assert validate_object(seg_path).kind == "SEG"
    report = validate_object(sr_path)
    assert report.kind == "SR" and report.errors == []
    # PixelMed's templates (2022) predate two items highdicom writes: Presence of property in TID 1501,
    # Algorithm Manufacturer in TID 4019. Every other item is in its templates.
    newer = ("Presence of property", "Algorithm Manufacturer")
    assert not [w for w in report.warnings if "not in template" in w and not any(n in w for n in newer)]


def test_the_report_lists_the_images_its_lines_are_drawn_on(research: tuple) -> None:
    images, _, sr_path = research
    sr = pydicom.dcmread(sr_path)
    (library,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == IMAGE_LIBRARY]
    listed = [
        str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for group in library.ContentSequence
        for entry in group.ContentSequence
        if entry.ValueType == "IMAGE"
    ]
    content = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    drawn_on = {
        str(line.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for group in content.get_image_measurement_groups()
        for measurement in group.get_measurements(name=codes.SCT.LongAxis)
        for line in measurement.referenced_coordinates or []
    }
    assert len(drawn_on) >= 2 and sorted(listed) == sorted(drawn_on)
    assert set(listed) <= {str(image.SOPInstanceUID) for image in images}


def test_a_research_result_is_preliminary(research: tuple) -> None:
    _, _, sr_path = research
    sr = pydicom.dcmread(sr_path)
    assert (sr.PreliminaryFlag, sr.VerificationFlag, sr.CompletionFlag) == ("PRELIMINARY", "UNVERIFIED", "COMPLETE")


def test_a_clinical_result_is_final_and_still_unverified(tmp_path: Path) -> None:
    _, _, sr_path = _objects(tmp_path, "clinical")
    sr = pydicom.dcmread(sr_path)
    assert (sr.PreliminaryFlag, sr.VerificationFlag) == ("FINAL", "UNVERIFIED")


def test_segments_carry_body_part_region_and_distinct_colours(research: tuple) -> None:
    images, seg_path, _ = research
    seg = pydicom.dcmread(seg_path)
    assert seg.BodyPartExamined == images[0].BodyPartExamined == "ABDOMEN"
    colours = [tuple(item.RecommendedDisplayCIELabValue) for item in seg.SegmentSequence]
    assert len(set(colours)) == len(colours) == 3
    expected = [hd.color.CIELabColor.from_rgb(*rgb).value for rgb in SEGMENT_COLOURS_RGB[:3]]
    assert colours == [tuple(c) for c in expected]
    for item in seg.SegmentSequence:
        (region,) = item.AnatomicRegionSequence
        assert (region.CodeValue, region.CodingSchemeDesignator) == ("818981001", "SCT")
