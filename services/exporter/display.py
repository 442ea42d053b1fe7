"""Display copies of a SEG for PACS that cannot show one: a burned-in Secondary Capture series and a GSPS.

Both are made from the job's validated SEG and the CT images it references, for destinations whose
``outputs`` ask for them:

* **Secondary Capture** (``sc``): one RGB image per CT slice that holds a lesion, the CT windowed
  (the image's own window, else soft tissue 40/400), each lesion's border burned in, and a banner
  across the top: "NOT FOR DIAGNOSTIC USE - AI result - <model> <version>", its type sized to the
  image's width (1/32 of it, at least 8 px) and wrapped onto more lines where one is too narrow,
  so that all of it shows on any image; on an image so small that it would cover more than a quarter
  of it, only "NOT FOR DIAGNOSTIC USE - AI result".
* **Grayscale Softcopy Presentation State** (``gsps``): the same borders as POLYLINE graphics in
  pixel units over the original CT images, on one layer named ``AI``, with a text object holding the
  whole banner; viewers that show GSPS draw them over the radiologist's own images.

Both say which model made them: the SEG's Contributing Equipment item of the algorithm (IHE AIR:
manufacturer, model name, version, Device UID) is copied into each, its Device UID is their Device
Serial Number, and their short descriptions (64 characters at most) start with "Not for diagnostic
use" so that shortening a long model name never drops it. The SC also carries the study's
description.

Borders are the iso-contours of each slice's mask at 0.5 (scikit-image's ``find_contours``): closed
polylines through the edges of the lesion's pixels. UIDs derive from the UID root and the job key,
so a re-run makes the same objects.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import generate_uid
from skimage.measure import find_contours

__all__ = [
    "BANNER_MIN_PX",
    "BORDER_RGB",
    "NOT_DIAGNOSTIC",
    "BannerLayout",
    "DisplayIdentity",
    "banner_layout",
    "border_polylines",
    "burned_in_copies",
    "lesion_masks",
    "presentation_state",
]

BORDER_RGB = (255, 255, 0)
"""The burned-in border's colour (yellow: visible on every window)."""
NOT_DIAGNOSTIC = "NOT FOR DIAGNOSTIC USE"
BANNER_MIN_PX = 8
"""Smallest banner type (pixels); a narrower image gets more lines, not smaller letters."""
_BANNER_WIDTH_PER_PX = 32
_BANNER_MARGIN = 2
_DESCRIPTION_LIMIT = 64  # LO
_SOFT_TISSUE = (40.0, 400.0)


@dataclass(frozen=True)
class DisplayIdentity:
    """Whose result the copies show, and the job they belong to.

    ``equipment`` are the SEG's Contributing Equipment items of the algorithm (IHE AIR), copied into
    each copy; :func:`write_display_copies` takes them from the SEG.
    """

    model_name: str
    model_version: str
    uid_root: str
    job_key: str
    manufacturer: str = "Hounsfield"
    equipment: tuple[Dataset, ...] = ()

    @property
    def banner(self) -> str:
        return f"{NOT_DIAGNOSTIC} - AI result - {self.model_name} {self.model_version}"

    def description(self, kind: str) -> str:
        """A 64-character description: "Not for diagnostic use", the kind, then the model (shortened)."""
        head, tail = f"Not for diagnostic use - AI {kind} - ", f" {self.model_version}"
        room = _DESCRIPTION_LIMIT - len(head) - len(tail)
        name = self.model_name if len(self.model_name) <= room else self.model_name[: max(room - 3, 0)] + "..."
        return (head + name + tail)[:_DESCRIPTION_LIMIT]

    @property
    def device_uid(self) -> str | None:
        """The algorithm's Device UID, from its equipment item."""
        return next((str(item.DeviceUID) for item in self.equipment if item.get("DeviceUID")), None)

    def uid(self, *parts: str) -> str:
        return generate_uid(prefix=self.uid_root, entropy_srcs=[self.job_key, "display", *parts])


@dataclass(frozen=True)
class BannerLayout:
    """How the banner is written on an image ``width`` pixels wide."""

    font: ImageFont.FreeTypeFont
    lines: tuple[str, ...]
    line_height: int

    @property
    def rows(self) -> int:
        """Height of the black band the banner is written on."""
        return len(self.lines) * self.line_height + 2 * _BANNER_MARGIN


def _wrapped(text: str, width: int) -> BannerLayout:
    size = max(BANNER_MIN_PX, width // _BANNER_WIDTH_PER_PX)
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow without FreeType has one bitmap size
        raise RuntimeError("the banner needs Pillow with FreeType (its wheels have it)")
    room = width - 2 * _BANNER_MARGIN
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= room:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return BannerLayout(font=font, lines=tuple(lines), line_height=size + max(2, size // 4))


def banner_layout(identity: DisplayIdentity, width: int, height: int) -> BannerLayout:
    """The banner for an image ``width`` x ``height``: type 1/32 of the width (at least
    :data:`BANNER_MIN_PX`), words wrapped to fit. Where the whole banner would cover more than a
    quarter of the image, only "NOT FOR DIAGNOSTIC USE - AI result" (the model is in the header)."""
    layout = _wrapped(identity.banner, width)
    if layout.rows > height // 4:
        layout = _wrapped(f"{NOT_DIAGNOSTIC} - AI result", width)
    return layout


def _equipment(seg: Dataset) -> tuple[Dataset, ...]:
    """The SEG's Contributing Equipment items that name a device (the algorithm, per IHE AIR)."""
    return tuple(copy.deepcopy(item) for item in seg.get("ContributingEquipmentSequence", []) if item.get("DeviceUID"))


def lesion_masks(seg: Dataset, source_images: Sequence[Dataset]) -> dict[str, np.ndarray]:
    """Per CT image (by SOP Instance UID) that holds a lesion: its label map (0 background, else the
    segment number)."""
    segmentation = hd.seg.Segmentation.from_dataset(seg, copy=False)
    uids = [str(ds.SOPInstanceUID) for ds in source_images]
    labels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    return {uid: labels[i] for i, uid in enumerate(uids) if labels[i].any()}


def border_polylines(labels: np.ndarray) -> list[np.ndarray]:
    """Each lesion's border on one slice as closed polylines of (column, row) pixel coordinates, the
    DICOM graphic convention (the centre of the top left pixel is (0.5, 0.5))."""
    lines = []
    for label in sorted(int(v) for v in np.unique(labels) if v):
        padded = np.pad(labels == label, 1).astype(np.float32)  # a lesion touching the edge still closes
        for contour in find_contours(padded, 0.5):
            rows, columns = contour[:, 0] - 1 + 0.5, contour[:, 1] - 1 + 0.5
            lines.append(np.stack([columns, rows], axis=1).astype(np.float32))
    return lines


def _letter(direction: Sequence[float]) -> str:
    """The patient direction a unit vector mostly points to (L/R, P/A, H/F)."""
    axis = int(np.argmax(np.abs(direction)))
    return ("L", "P", "H")[axis] if direction[axis] > 0 else ("R", "A", "F")[axis]


def _patient_orientation(image: Dataset) -> tuple[str, str]:
    cosines = [float(v) for v in image.ImageOrientationPatient]
    return _letter(cosines[:3]), _letter(cosines[3:])


def _body_part(made: Dataset, source: Dataset) -> None:
    """The source's Body Part Examined (and Laterality, for a paired part): General Series' Laterality is
    type 2C on whether the part is paired, which a validator can only tell from the body part."""
    for keyword in ("BodyPartExamined", "Laterality"):
        if source.get(keyword):
            setattr(made, keyword, source.get(keyword))


def _windowed(image: Dataset) -> np.ndarray:
    pixels = image.pixel_array.astype(np.float32) * float(image.get("RescaleSlope", 1)) + float(
        image.get("RescaleIntercept", 0)
    )
    center, width = _SOFT_TISSUE
    if "WindowCenter" in image and "WindowWidth" in image:
        center = float(np.atleast_1d(image.WindowCenter)[0])
        width = float(np.atleast_1d(image.WindowWidth)[0])
    low = center - width / 2
    return np.clip((pixels - low) / width * 255.0, 0, 255).astype(np.uint8)


def _burn(image: Dataset, labels: np.ndarray, identity: DisplayIdentity) -> np.ndarray:
    gray = _windowed(image)
    canvas = Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    for line in border_polylines(labels):
        points = [(float(x) - 0.5, float(y) - 0.5) for x, y in line]  # to PIL's pixel-centre coordinates
        draw.line([*points, points[0]], fill=BORDER_RGB, width=1)
    layout = banner_layout(identity, canvas.width, canvas.height)
    draw.rectangle((0, 0, canvas.width - 1, layout.rows - 1), fill=(0, 0, 0))
    for number, text in enumerate(layout.lines):
        draw.text(
            (_BANNER_MARGIN, _BANNER_MARGIN + number * layout.line_height), text, fill=(255, 255, 255), font=layout.font
        )
    return np.asarray(canvas)


def burned_in_copies(
    source_images: Sequence[Dataset], masks: dict[str, np.ndarray], identity: DisplayIdentity
) -> list[hd.sc.SCImage]:
    """The Secondary Capture series: one burned-in image per CT slice with a lesion."""
    series_uid = identity.uid("sc-series")
    copies = []
    for number, image in enumerate((ds for ds in source_images if str(ds.SOPInstanceUID) in masks), start=1):
        sop_uid = str(image.SOPInstanceUID)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=image,
            pixel_array=_burn(image, masks[sop_uid], identity),
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=9801,
            sop_instance_uid=identity.uid("sc", sop_uid),
            instance_number=number,
            manufacturer=identity.manufacturer,
            pixel_spacing=tuple(image.PixelSpacing) if "PixelSpacing" in image else None,
            patient_orientation=_patient_orientation(image),
            series_description=identity.description("SC"),
        )
        sc.BurnedInAnnotation = "YES"
        if image.get("StudyDescription"):
            sc.StudyDescription = image.StudyDescription
        _name_the_algorithm(sc, identity)
        source = Dataset()
        source.ReferencedSOPClassUID = image.SOPClassUID
        source.ReferencedSOPInstanceUID = image.SOPInstanceUID
        sc.SourceImageSequence = [source]  # the CT slice it shows
        _body_part(sc, image)
        copies.append(sc)
    return copies


def _name_the_algorithm(made: Dataset, identity: DisplayIdentity) -> None:
    """The algorithm's equipment item and Device UID, as on the SEG and SR."""
    if identity.equipment:
        made.ContributingEquipmentSequence = [
            *made.get("ContributingEquipmentSequence", []),
            *(copy.deepcopy(item) for item in identity.equipment),
        ]
    if identity.device_uid:
        made.DeviceSerialNumber = identity.device_uid
    made.ManufacturerModelName = identity.model_name[:_DESCRIPTION_LIMIT]
    made.SoftwareVersions = identity.model_version


def presentation_state(
    source_images: Sequence[Dataset], masks: dict[str, np.ndarray], identity: DisplayIdentity
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The GSPS: each lesion's border as polylines over the CT images that hold it."""
    layer = hd.pr.GraphicLayer(layer_name="AI", order=1, description=identity.description("contours"))
    annotations = []
    for image in source_images:
        labels = masks.get(str(image.SOPInstanceUID))
        if labels is None:
            continue
        objects = [
            hd.pr.GraphicObject(graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=line, units="PIXEL")
            for line in border_polylines(labels)
        ]
        label = hd.pr.TextObject(
            text_value=identity.banner,
            units="PIXEL",
            bounding_box=(
                1.0,
                1.0,
                float(image.Columns) - 1.0,
                float(min(_wrapped(identity.banner, int(image.Columns)).rows, int(image.Rows) - 1)),
            ),
        )
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[image], graphic_layer=layer, graphic_objects=objects, text_objects=[label]
            )
        )
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[ds for ds in source_images if str(ds.SOPInstanceUID) in masks],
        series_instance_uid=identity.uid("gsps-series"),
        series_number=9802,
        sop_instance_uid=identity.uid("gsps"),
        instance_number=1,
        manufacturer=identity.manufacturer,
        manufacturer_model_name=identity.model_name[:64],
        software_versions=identity.model_version,
        device_serial_number=identity.device_uid or "",
        content_label="AI_CONTOURS",
        content_description=identity.description("contours"),
        graphic_layers=[layer],
        graphic_annotations=annotations,
    )
    _body_part(state, source_images[0])
    _name_the_algorithm(state, identity)
    return state


def write_display_copies(
    seg_path: Path, source_paths: Sequence[Path], outputs: set[str], identity: DisplayIdentity, folder: Path
) -> list[Path]:
    """Write the copies ``outputs`` asks for (``sc``, ``gsps``) of the SEG at ``seg_path`` into
    ``folder``; returns their files (none when the SEG marks no CT image of ``source_paths``)."""
    seg = pydicom.dcmread(seg_path)
    series = {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}
    images = [ds for ds in (pydicom.dcmread(p) for p in source_paths) if str(ds.SeriesInstanceUID) in series]
    images.sort(key=lambda ds: float(ds.ImagePositionPatient[2]) if "ImagePositionPatient" in ds else 0.0)
    masks = lesion_masks(seg, images)
    if not masks:
        return []
    identity = replace(identity, equipment=_equipment(seg))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if "sc" in outputs:
        for sc in burned_in_copies(images, masks, identity):
            written.append(folder / f"sc-{sc.SOPInstanceUID}.dcm")
            sc.save_as(written[-1], enforce_file_format=True)
    if "gsps" in outputs:
        state = presentation_state(images, masks, identity)
        written.append(folder / f"pr-{state.SOPInstanceUID}.dcm")
        state.save_as(written[-1], enforce_file_format=True)
    return written
