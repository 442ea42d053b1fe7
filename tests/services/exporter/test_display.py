"""Display copies (burned-in SC, GSPS) from the example application's SEG of a phantom.

Real components: the example application, highdicom, dciodvfy at the validation gate, and Pillow
rendering the copies to PNG: every drawn border pixel must lie on the lesion's border.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from orthanc_api_client import OrthancApiClient
from PIL import Image, ImageDraw
from scipy import ndimage
from sqlalchemy import select

from hounsfield.config import DestinationSettings, Settings
from hounsfield.db import JobState, Result
from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.exporter.display import (
    BANNER_MIN_PX,
    BORDER_RGB,
    NOT_DIAGNOSTIC,
    DisplayIdentity,
    banner_layout,
    burned_in_copies,
    lesion_masks,
    presentation_state,
    write_display_copies,
)
from hounsfield.exporter.validation import validate_object
from hounsfield.worker.pipeline import execute_job
from tests.services.exporter.conftest import run_example
from tests.support import routed_job

IDENTITY = DisplayIdentity("CT lesion segmentation", "1.0.0", "1.2.826.0.1.3680043.10.1392.", "job-key")


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    return run_example(tmp_path_factory.mktemp("display"), seed=51, shape=(16, 96, 96))


@pytest.fixture(scope="module")
def case(example: tuple[list[Path], Path]) -> tuple[list[pydicom.Dataset], dict[str, np.ndarray]]:
    files, out = example
    source = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: int(ds.InstanceNumber))
    return source, lesion_masks(pydicom.dcmread(out / "seg.dcm"), source)


def _near_border(drawn: np.ndarray, labels: np.ndarray) -> float:
    """The share of drawn pixels within 1 px of a lesion's border (its mask minus its erosion)."""
    mask = labels > 0
    border = mask & ~ndimage.binary_erosion(mask)
    near = ndimage.binary_dilation(border, iterations=1)
    return float((drawn & near).sum() / max(drawn.sum(), 1))


def test_the_burned_in_copy_passes_the_gate_and_its_border_lies_on_the_lesion(
    case: tuple[list[pydicom.Dataset], dict[str, np.ndarray]], tmp_path: Path
) -> None:
    source, masks = case
    copies = burned_in_copies(source, masks, IDENTITY)
    assert len(copies) == len(masks) >= 1
    for sc in copies:
        path = tmp_path / f"{sc.SOPInstanceUID}.dcm"
        sc.save_as(path, enforce_file_format=True)
        assert validate_object(path).errors == []
        png = tmp_path / "sc.png"
        Image.fromarray(sc.pixel_array).save(png)
        rgb = np.asarray(Image.open(png))
        drawn = np.all(rgb == BORDER_RGB, axis=-1)
        layout = banner_layout(IDENTITY, int(sc.Columns), int(sc.Rows))
        drawn[: layout.rows] = False
        labels = masks[str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert drawn.sum() > 0 and _near_border(drawn, labels) == 1.0
        assert sc.BurnedInAnnotation == "YES"
        for number in range(len(layout.lines)):  # each line of the banner is written (light text on black)
            top = 2 + number * layout.line_height
            assert (rgb[top : top + layout.line_height] > 200).sum() > 20, f"banner line {number + 1} is empty"


def test_the_presentation_state_draws_the_borders_over_the_original_images(
    case: tuple[list[pydicom.Dataset], dict[str, np.ndarray]], tmp_path: Path
) -> None:
    source, masks = case
    state = presentation_state(source, masks, IDENTITY)
    path = tmp_path / "gsps.dcm"
    state.save_as(path, enforce_file_format=True)
    assert validate_object(path).errors == []
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source}
    assert len(state.GraphicAnnotationSequence) == len(masks)
    for annotation in state.GraphicAnnotationSequence:
        uid = str(annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
        image = by_uid[uid]
        canvas = Image.new("L", (int(image.Columns), int(image.Rows)))
        draw = ImageDraw.Draw(canvas)
        for graphic in annotation.GraphicObjectSequence:
            assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
            points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2) - 0.5
            draw.line([tuple(p) for p in points], fill=255, width=1)
        canvas.save(tmp_path / "gsps.png")
        drawn = np.asarray(Image.open(tmp_path / "gsps.png")) > 0
        assert drawn.sum() > 0 and _near_border(drawn, masks[uid]) == 1.0


def test_copies_of_the_same_job_are_the_same_objects(case: tuple[list[pydicom.Dataset], dict[str, np.ndarray]]) -> None:
    source, masks = case
    first = [str(sc.SOPInstanceUID) for sc in burned_in_copies(source, masks, IDENTITY)]
    again = [str(sc.SOPInstanceUID) for sc in burned_in_copies(source, masks, IDENTITY)]
    assert first == again
    assert (
        presentation_state(source, masks, IDENTITY).SOPInstanceUID
        == presentation_state(source, masks, IDENTITY).SOPInstanceUID
    )


@pytest.mark.parametrize("outputs", [["sc", "gsps"], ["seg", "sr"]])
def test_each_destination_gets_what_its_outputs_ask_for(tmp_path: Path, settings: Settings, outputs: list[str]) -> None:
    pacs = LocalOrthanc(tmp_path / "orthanc", aet="VIEWER")
    pacs.start()
    try:
        viewer = DestinationSettings(ae_title="VIEWER", host="127.0.0.1", port=pacs.dicom_port, outputs=outputs)
        settings = settings.model_copy(update={"destinations": {"viewer": viewer}})
        context, job = routed_job(tmp_path, settings, 54, mode="clinical", destinations=["viewer"])
        assert execute_job(context, job.id) is JobState.DONE
        with context.db.session() as session:
            results = session.scalars(select(Result).where(Result.job_id == job.id)).all()
        made = sorted({r.kind for r in results})
        sent = sorted({r.kind for r in results if r.exported_to == ["viewer"]})
        orthanc = OrthancApiClient(pacs.url)
        ids = orthanc.studies.get_instances_ids(orthanc.studies.lookup(job.study_instance_uid))
        in_pacs = sorted({orthanc.instances.get_tags(i)["Modality"] for i in ids})
    finally:
        pacs.stop()
    if outputs == ["seg", "sr"]:
        assert made == sent == ["SEG", "SR"], "no display copies when no destination asks for them"
        assert in_pacs == ["SEG", "SR"]
    else:
        assert made == ["PR", "SC", "SEG", "SR"] and sent == ["PR", "SC"]
        assert "SEG" not in in_pacs and "SR" not in in_pacs and "PR" in in_pacs
    context.db.dispose()


@pytest.mark.parametrize("width", [64, 96, 128, 256, 512, 1024])
def test_the_banner_fits_any_width_in_type_that_grows_with_it(width: int) -> None:
    """Every word of the banner is on a line that fits the image; the type is 1/32 of the width (>= 8 px);
    "NOT FOR DIAGNOSTIC USE" is always there, the model's name where it leaves three quarters of the image."""
    identity = DisplayIdentity("A rather long model name for lesion segmentation", "10.2.3", "1.2.3.", "k")
    layout = banner_layout(identity, width, width)
    written = " ".join(layout.lines)
    assert written.startswith(NOT_DIAGNOSTIC)
    assert written == identity.banner if width >= 256 else written in (identity.banner, f"{NOT_DIAGNOSTIC} - AI result")
    assert all(layout.font.getlength(line) <= width - 4 for line in layout.lines if " " in line)
    assert layout.font.size == max(BANNER_MIN_PX, width // 32)
    if width >= 512:
        assert layout.font.size >= 16, "readable on a 512-pixel CT (the old banner's type was 11 px)"


def test_descriptions_keep_not_for_diagnostic_use_when_a_long_model_name_is_cut() -> None:
    identity = DisplayIdentity("A" * 80, "1.0.0", "1.2.3.", "k")
    for kind in ("SC", "contours"):
        description = identity.description(kind)
        assert len(description) <= 64 and description.startswith("Not for diagnostic use")
        assert description.endswith("... 1.0.0")


def test_written_copies_name_the_algorithm_and_the_study(example: tuple[list[Path], Path], tmp_path: Path) -> None:
    """Through write_display_copies (as the worker calls it): the SEG's algorithm equipment, its Device UID
    as Device Serial Number (not the job key), the study's description, descriptions that say not diagnostic."""
    files, out = example
    seg = pydicom.dcmread(out / "seg.dcm")
    (algorithm,) = [item for item in seg.ContributingEquipmentSequence if item.get("DeviceUID")]
    written = write_display_copies(out / "seg.dcm", files, {"sc", "gsps"}, IDENTITY, tmp_path)
    classes = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID) for path in written}
    assert classes == {pydicom.uid.SecondaryCaptureImageStorage, pydicom.uid.GrayscaleSoftcopyPresentationStateStorage}
    for path in written:
        made = pydicom.dcmread(path, stop_before_pixels=True)
        assert validate_object(path).errors == []
        devices = [item.DeviceUID for item in made.ContributingEquipmentSequence if item.get("DeviceUID")]
        assert devices == [algorithm.DeviceUID]
        assert made.DeviceSerialNumber == algorithm.DeviceUID != IDENTITY.job_key
        assert (made.ManufacturerModelName, made.SoftwareVersions) == (IDENTITY.model_name, IDENTITY.model_version)
        if made.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage:
            assert made.StudyDescription == seg.StudyDescription and made.SeriesDescription.startswith("Not for")
        else:
            assert made.ContentDescription.startswith("Not for diagnostic use")
            layer = made.GraphicLayerSequence[0]
            assert layer.GraphicLayerDescription.startswith("Not for diagnostic use")
            texts = [t.UnformattedTextValue for a in made.GraphicAnnotationSequence for t in a.TextObjectSequence]
            assert texts and all(text == IDENTITY.banner for text in texts)
