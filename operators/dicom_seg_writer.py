"""DICOM Segmentation with one segment per lesion, and the App SDK operator that writes it.

The framework-free part (:func:`slice_order_and_spacing`, :func:`build_lesion_segmentation`)
works on pydicom datasets and arrays; :class:`LesionSegWriterOperator` is the thin App SDK
adapter. Importing this module imports ``monai.deploy``: call
:func:`hounsfield_operators.runtime_support.ensure_cuda_runtime_loadable` first on hosts without CUDA.

Orientation: ``DICOMSeriesToVolumeOperator`` sorts the series' instances in place by their
position along the slice normal and stacks them as ``(z, y, x)``; ``MonaiSegInferenceOperator``
returns its label map in that same order. The writer therefore pairs label-map slice ``k``
with ``series.get_sop_instances()[k]``, after checking that this list is indeed ordered by
position (and raising otherwise, rather than writing a mis-registered SEG).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from hounsfield_operators.lesion_measurement import MIN_LESION_VOLUME_ML, LesionSegmentation, measure_lesions
from hounsfield_operators.result_context import ResultContext

__all__ = [
    "LESION_CATEGORY",
    "LESION_REGION",
    "LESION_TYPE",
    "SEGMENT_COLOURS_RGB",
    "SEG_FILENAME",
    "LesionSegResult",
    "LesionSegWriterOperator",
    "build_lesion_segmentation",
    "lesion_tracking_id",
    "lesion_tracking_uid",
    "selected_source_images",
    "slice_order_and_spacing",
]

logger = logging.getLogger(__name__)

#: File name of the Segmentation in the output folder.
SEG_FILENAME = "seg.dcm"

#: Segmented Property Category of every segment (CID 7150).
LESION_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
#: Segmented Property Type of every segment (CID 7151).
LESION_TYPE = codes.SCT.Lesion
#: Anatomic region of every segment (the model is trained on abdominal CT).
LESION_REGION = codes.SCT.Abdomen

#: Recommended display colours of segments 1, 2, ... (Okabe-Ito, told apart with colour-blindness), as sRGB.
SEGMENT_COLOURS_RGB = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)

_SLICE_POSITION_TOLERANCE_MM = 1e-3


@dataclass(frozen=True, eq=False)
class LesionSegResult:
    """What the SEG writer hands to the SR writer.

    Attributes
    ----------
    lesions : LesionSegmentation
        Lesion label map ``(z, y, x)`` (slice ``k`` = ``source_images[k]``) and measurements.
    source_images : tuple of pydicom.dataset.Dataset
        The analysed series, ordered by slice position.
    segmentation : highdicom.seg.Segmentation or None
        The written SEG; ``None`` when there is no lesion.
    seg_path : pathlib.Path or None
        Where the SEG was written; ``None`` when there is no lesion.
    created : datetime.datetime
        Creation time shared by the SEG and the SR of this run.
    """

    lesions: LesionSegmentation
    source_images: tuple[Dataset, ...]
    segmentation: hd.seg.Segmentation | None
    seg_path: Path | None
    created: datetime.datetime


def lesion_tracking_id(index: int) -> str:
    """Tracking Identifier (and segment label) of lesion ``index``: ``"Lesion N"``."""
    return f"Lesion {index}"


def lesion_tracking_uid(context: ResultContext, index: int, source_series_uid: str) -> str:
    """Deterministic Tracking Unique Identifier of lesion ``index``, shared by SEG and SR."""
    return context.uid(f"tracking/{lesion_tracking_id(index)}", source_series_uid)


def _slice_normal(dataset: Dataset) -> np.ndarray:
    cosines = np.asarray(dataset.ImageOrientationPatient, dtype=np.float64)
    return np.cross(cosines[:3], cosines[3:])


def slice_order_and_spacing(source_images: Sequence[Dataset]) -> tuple[float, float, float]:
    """Check that single-frame images are ordered by position and return their spacing.

    Parameters
    ----------
    source_images : sequence of pydicom.dataset.Dataset
        Images of one series, in the order of the volume's first axis.

    Returns
    -------
    tuple of float
        Spacing ``(z, y, x)`` in mm: distance between neighbouring slices along the normal
        (median), row spacing, column spacing.

    Raises
    ------
    ValueError
        When images lack geometry, are not ordered by increasing position along the slice
        normal, or share a position.
    """
    if not source_images:
        raise ValueError("No source images.")
    first = source_images[0]
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        missing = [ds.SOPInstanceUID for ds in source_images if keyword not in ds]
        if missing:
            raise ValueError(f"{len(missing)} source image(s) lack {keyword}, e.g. {missing[0]}.")
    normal = _slice_normal(first)
    positions = np.array([normal @ np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in source_images])
    steps = np.diff(positions)
    if steps.size and (steps <= _SLICE_POSITION_TOLERANCE_MM).any():
        raise ValueError(
            "Source images are not ordered by strictly increasing position along the slice normal; "
            "the label map cannot be registered to them."
        )
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    slice_spacing = float(np.median(steps)) if steps.size else float(first.get("SliceThickness") or 1.0)
    return slice_spacing, row_spacing, column_spacing


def selected_source_images(study_selected_series_list: Sequence[StudySelectedSeries]) -> tuple[Dataset, ...]:
    """Native datasets of the first selected series, in the order the SDK stacked them.

    Parameters
    ----------
    study_selected_series_list : sequence of StudySelectedSeries
        Output of ``DICOMSeriesSelectorOperator`` (after ``DICOMSeriesToVolumeOperator`` sorted it).

    Returns
    -------
    tuple of pydicom.dataset.Dataset

    Raises
    ------
    ValueError
        When no series was selected.
    """
    if not study_selected_series_list:
        raise ValueError("No study/series was selected from the input.")
    study_selected = study_selected_series_list[0]
    if not isinstance(study_selected, StudySelectedSeries) or not study_selected.selected_series:
        raise ValueError("The selection holds no series.")
    series = study_selected.selected_series[0].series
    return tuple(instance.get_native_sop_instance() for instance in series.get_sop_instances())


def build_lesion_segmentation(
    source_images: Sequence[Dataset],
    lesions: LesionSegmentation,
    context: ResultContext,
    *,
    created: datetime.datetime,
) -> hd.seg.Segmentation:
    """Build a BINARY DICOM Segmentation with one segment per lesion.

    Parameters
    ----------
    source_images : sequence of pydicom.dataset.Dataset
        Single-frame images of the analysed series; ``lesions.labels[k]`` belongs to
        ``source_images[k]``.
    lesions : LesionSegmentation
        At least one lesion.
    context : ResultContext
        Identity of the algorithm and job (UIDs, descriptions, equipment).
    created : datetime.datetime
        Series and content date/time.

    Returns
    -------
    highdicom.seg.Segmentation

    Raises
    ------
    ValueError
        When there is no lesion or the label map does not match the images.
    """
    if not lesions.lesions:
        raise ValueError("A Segmentation needs at least one lesion.")
    rows, columns = int(source_images[0].Rows), int(source_images[0].Columns)
    if lesions.labels.shape != (len(source_images), rows, columns):
        raise ValueError(
            f"Label map {lesions.labels.shape} does not match {len(source_images)} images of {rows}x{columns}."
        )
    source_series_uid = str(source_images[0].SeriesInstanceUID)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=context.model_name,
        version=context.model_version,
        family=codes.cid7162.ArtificialIntelligence,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=lesion.index,
            segment_label=lesion_tracking_id(lesion.index),
            segmented_property_category=LESION_CATEGORY,
            segmented_property_type=LESION_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=lesion_tracking_id(lesion.index),
            tracking_uid=lesion_tracking_uid(context, lesion.index, source_series_uid),
            anatomic_regions=[LESION_REGION],
            display_color=hd.color.CIELabColor.from_rgb(
                *SEGMENT_COLOURS_RGB[(lesion.index - 1) % len(SEGMENT_COLOURS_RGB)]
            ),
        )
        for lesion in lesions.lesions
    ]
    segmentation = hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=lesions.labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=context.uid("seg/series", source_series_uid),
        series_number=context.series_number_seg,
        sop_instance_uid=context.uid("seg/instance", source_series_uid),
        instance_number=1,
        manufacturer=context.manufacturer,
        manufacturer_model_name=context.model_name,
        software_versions=context.model_version,
        device_serial_number=str(context.device_uid),
        content_description="Lesions segmented automatically",
        content_label="LESIONS",
        omit_empty_frames=True,
        contributing_equipment=[context.contributing_equipment()],
        series_description=context.series_description("SEG"),
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
    )
    # The body part of the images segmented. No Laterality: the abdomen is unpaired (PixelMed's IOD check
    # asks for one whenever no Image or Frame Laterality is present; the standard only for paired parts,
    # and the Frame Anatomy that would carry "U" is not in the Segmentation IOD).
    if source_images[0].get("BodyPartExamined"):
        segmentation.BodyPartExamined = source_images[0].BodyPartExamined
    return segmentation


def _write_atomically(dataset: Dataset, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    dataset.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)


class LesionSegWriterOperator(Operator):
    """Split the predicted lesion mask into lesions, measure them and write ``seg.dcm``.

    Named inputs:
        ``seg_image``: label map ``Image`` from ``MonaiSegInferenceOperator`` (non-zero = lesion).
        ``image``: the HU volume ``Image`` from ``DICOMSeriesToVolumeOperator``.
        ``study_selected_series_list``: the selection the volume was made from.

    Named output:
        ``lesion_result``: :class:`LesionSegResult` for
        :class:`~hounsfield_operators.dicom_sr_writer.LesionSRWriterOperator`.

    File output:
        ``<output_folder>/seg.dcm`` when at least one lesion was found; otherwise no SEG (and a
        stale ``seg.dcm`` from an earlier run into the same folder is removed).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: object,
        output_folder: Path,
        result_context: ResultContext,
        min_volume_ml: float = MIN_LESION_VOLUME_ML,
        **kwargs: object,
    ) -> None:
        """Configure the writer.

        Parameters
        ----------
        fragment : Fragment
            The application.
        output_folder : pathlib.Path
            Folder for ``seg.dcm``.
        result_context : ResultContext
            Identity of the algorithm and job.
        min_volume_ml : float
            Smallest component (mL) kept as a lesion.
        """
        self.output_folder = Path(output_folder)
        self.result_context = result_context
        self.min_volume_ml = min_volume_ml
        self.input_name_seg = "seg_image"
        self.input_name_image = "image"
        self.input_name_series = "study_selected_series_list"
        self.output_name_result = "lesion_result"
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the ports."""
        spec.input(self.input_name_seg)
        spec.input(self.input_name_image)
        spec.input(self.input_name_series)
        spec.output(self.output_name_result)

    def compute(self, op_input, op_output, context) -> None:  # holoscan's InputContext, OutputContext, ExecutionContext
        """Receive the label map, volume and series; write the SEG; emit the result."""
        seg_image = op_input.receive(self.input_name_seg)
        volume = op_input.receive(self.input_name_image)
        study_selected_series_list = op_input.receive(self.input_name_series)
        if not isinstance(seg_image, Image) or not isinstance(volume, Image):
            raise TypeError("LesionSegWriterOperator needs App SDK Image objects on 'seg_image' and 'image'.")
        result = self.write_seg(
            np.asarray(seg_image.asnumpy()),
            np.asarray(volume.asnumpy()),
            selected_source_images(study_selected_series_list),
        )
        op_output.emit(result, self.output_name_result)

    def write_seg(
        self, labels_zyx: np.ndarray, hu_zyx: np.ndarray, source_images: Sequence[Dataset]
    ) -> LesionSegResult:
        """Measure lesions and write the SEG (framework-free core of :meth:`compute`).

        Parameters
        ----------
        labels_zyx : numpy.ndarray
            Predicted label map ``(z, y, x)``, slice ``k`` belonging to ``source_images[k]``.
        hu_zyx : numpy.ndarray
            HU volume of the same shape.
        source_images : sequence of pydicom.dataset.Dataset
            The analysed images in volume order.

        Returns
        -------
        LesionSegResult
        """
        created = datetime.datetime.now().replace(microsecond=0)
        spacing = slice_order_and_spacing(source_images)
        if labels_zyx.shape != hu_zyx.shape:
            raise ValueError(f"Label map {labels_zyx.shape} and volume {hu_zyx.shape} differ in shape.")
        lesions = measure_lesions(labels_zyx, hu_zyx, spacing, min_volume_ml=self.min_volume_ml)
        logger.info(
            "Found %d lesion(s); largest: %s",
            len(lesions.lesions),
            ", ".join(f"{m.volume_ml:.2f} mL" for m in lesions.lesions[:5]) or "none",
        )
        self.output_folder.mkdir(parents=True, exist_ok=True)
        seg_path = self.output_folder / SEG_FILENAME
        if not lesions.lesions:
            if seg_path.exists():
                logger.info("No lesion: removing stale %s", seg_path)
                seg_path.unlink()
            return LesionSegResult(lesions, tuple(source_images), None, None, created)
        segmentation = build_lesion_segmentation(source_images, lesions, self.result_context, created=created)
        _write_atomically(segmentation, seg_path)
        logger.info("Wrote %s (SOP Instance UID %s)", seg_path, segmentation.SOPInstanceUID)
        return LesionSegResult(lesions, tuple(source_images), segmentation, seg_path, created)
