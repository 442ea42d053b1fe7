"""TID 1500 Measurement Report (Comprehensive 3D SR) for the lesions, and its App SDK operator.

Content, per IHE AI Results:

* Procedure Reported: the study's Procedure Code Sequence when present, otherwise
  (25045-6, LN, "CT unspecified body region") from CID 100 (for non-CT modalities the
  matching "unspecified body region" code); see :func:`procedure_reported`.
* Preliminary Flag FINAL for a clinical deployment's result, PRELIMINARY otherwise; Verification
  Flag always UNVERIFIED.
* Observer: the algorithm as a device observer (Device UID, manufacturer, model name).
* One TID 1501 measurement group per lesion: Tracking Identifier "Lesion N" and the same
  Tracking UID as the SEG segment, finding Lesion, finding site Abdomen, and measurements with
  TID 4019 algorithm identification. (Not a TID 1411 volumetric group referencing the segment:
  its measurements may carry no coordinates, and a report mixing TID 1411 and TID 1501 groups fails
  PixelMed's DicomSRValidator, which applies one template to all of a report's groups.)

  - Volume (118565006, SCT) in mL (``ml``), INFERRED FROM its segment (TID 320: an IMAGE item,
    Source of Measurement, naming the SEG instance and the segment number);
  - Long axis (103339001, SCT) in mm: the longest axial diameter. CID 7470 offers both
    Diameter (81827009, SCT) and Long axis; Diameter presumes a circular cross-section,
    whereas Long axis is the concept for the longest in-plane extent of a lesion (as in
    RECIST), which is what is measured. It is INFERRED FROM its line on the slice it was
    measured on (TID 320: a SCOORD POLYLINE of two points, SELECTED FROM that image), so
    that viewers draw it where it is;
  - Attenuation Coefficient (112031, DCM) with derivation Mean (373098007, SCT) in
    ``[hnsf'U]``, as in highdicom's examples, INFERRED FROM its segment;
  - qualitative evaluation Presence of property (121052, DCM) = Present (52101004, SCT).

* With no lesion: one TID 1501 group "Lesion assessment", finding Lesion, Presence of
  property = Absent (272519000, SCT), and no SEG reference.

The report's Image Library (TID 1600) lists the images its content refers to: those the long axes
are drawn on. A report that refers to no image (no lesion, a study-level finding) has none: listing
the whole analysed series instead would cost PixelMed's validator at the gate about 2 GB and 40 s for
32 images, and grows faster than the list.

A study-level finding (a classifier's answer, e.g. intracranial haemorrhage present or absent) is
written by :func:`build_finding_report` / :class:`FindingSRWriterOperator` as one TID 1501 group:
Tracking Identifier and UID, the finding, its finding site, Probability (122157, DCM) in
``{probability}`` when the model gives one, and Presence of property = Present or Absent. Both
reports share the observer, the algorithm identification, Contributing Equipment and the SR series.

Importing this module imports ``monai.deploy`` (see :mod:`hounsfield_operators.runtime_support`).
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
from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from hounsfield_operators.dicom_seg_writer import (
    LESION_REGION,
    LesionSegResult,
    lesion_tracking_id,
    lesion_tracking_uid,
)
from hounsfield_operators.lesion_measurement import LesionMeasurement
from hounsfield_operators.result_context import ResultContext

__all__ = [
    "FINDING_SITE",
    "LESION_ASSESSMENT_ID",
    "MILLILITER",
    "PROBABILITY_UNIT",
    "SR_FILENAME",
    "FindingSRWriterOperator",
    "LesionSRWriterOperator",
    "StudyFinding",
    "build_finding_report",
    "build_lesion_report",
    "procedure_reported",
    "save_report",
]

logger = logging.getLogger(__name__)

#: File name of the Structured Report in the output folder.
SR_FILENAME = "sr.dcm"

#: Finding site of every lesion (the model is trained on abdominal CT): the SEG's anatomic region.
FINDING_SITE = LESION_REGION

#: UCUM millilitre (not in pydicom's code dictionary).
MILLILITER = hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter")

#: Tracking Identifier of the study-level group written when no lesion is found.
LESION_ASSESSMENT_ID = "Lesion assessment"

#: UCUM unit of a probability (a dimensionless annotation; not in pydicom's code dictionary).
PROBABILITY_UNIT = hd.sr.CodedConcept(value="{probability}", scheme_designator="UCUM", meaning="probability")

_UNSPECIFIED_REGION_BY_MODALITY = {
    "CT": codes.cid100.CTUnspecifiedBodyRegion,
    "MR": codes.cid100.MRIUnspecifiedBodyRegion,
    "PT": codes.cid100.PETUnspecifiedBodyRegion,
    "NM": codes.cid100.NMUnspecifiedBodyRegion,
}


def procedure_reported(source_image: Dataset) -> list[hd.sr.CodedConcept]:
    """Procedure Reported codes for the analysed imaging procedure.

    Parameters
    ----------
    source_image : pydicom.dataset.Dataset
        Any image of the analysed series.

    Returns
    -------
    list of highdicom.sr.CodedConcept
        The items of the image's Procedure Code Sequence when present, else the CID 100 "unspecified
        body region" code of its modality (CT when unknown). Not a procedure named after the Body
        Part Examined: CID 100 has none for the abdomen or the head without contrast, and PixelMed's
        validator (the gate) refuses a code outside CID 100 although the group is extensible. The
        body part is in each finding's site and in the SEG.
    """
    items = source_image.get("ProcedureCodeSequence") or []
    codes_found = [hd.sr.CodedConcept.from_dataset(item) for item in items]
    if codes_found:
        return codes_found
    modality = str(source_image.get("Modality", "CT"))
    code = _UNSPECIFIED_REGION_BY_MODALITY.get(modality, codes.cid100.CTUnspecifiedBodyRegion)
    return [hd.sr.CodedConcept.from_code(code)]


def _long_axis_line(lesion: LesionMeasurement, source_images: Sequence[Dataset]) -> hd.sr.CoordinatesForMeasurement:
    """The lesion's long axis as a two-point SCOORD POLYLINE on the image it was measured on.

    SCOORD coordinates are (column, row) with the top left corner of the image at (0, 0), so a
    pixel's centre is its index plus 0.5; the end points stay within the image.
    """
    image = source_images[lesion.longest_axial_diameter_slice]
    rows, columns = int(image.Rows), int(image.Columns)
    points = [
        (min(max(column + 0.5, 0.0), float(columns)), min(max(row + 0.5, 0.0), float(rows)))
        for row, column in lesion.long_axis_rc
    ]
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(points, dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(str(image.SOPClassUID), str(image.SOPInstanceUID)),
    )


class SourceSegmentForMeasurement(hd.sr.SourceImageForMeasurement):
    """TID 320 IMAGE item: the SEG segment a measurement was made on (Source of Measurement, INFERRED FROM)."""

    def __init__(self, segmentation: Dataset, segment_number: int) -> None:
        hd.sr.ImageContentItem.__init__(
            self,
            name=codes.DCM.SourceOfMeasurement,
            referenced_sop_class_uid=str(segmentation.SOPClassUID),
            referenced_sop_instance_uid=str(segmentation.SOPInstanceUID),
            referenced_segment_numbers=[segment_number],
            relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
        )


def _lesion_group(
    lesion: LesionMeasurement,
    segmentation: hd.seg.Segmentation,
    context: ResultContext,
    algorithm: hd.sr.AlgorithmIdentification,
    source_images: Sequence[Dataset],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One lesion's TID 1501 group: its volume and attenuation from its SEG segment, its long axis on its slice."""
    source_series_uid = str(source_images[0].SeriesInstanceUID)
    segment = [SourceSegmentForMeasurement(segmentation, lesion.index)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=lesion_tracking_uid(context, lesion.index, source_series_uid),
            identifier=lesion_tracking_id(lesion.index),
        ),
        finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(FINDING_SITE)],
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=round(lesion.volume_ml, 4),
                unit=MILLILITER,
                algorithm_id=algorithm,
                referenced_images=segment,
            ),
            hd.sr.Measurement(
                name=codes.SCT.LongAxis,
                value=round(lesion.longest_axial_diameter_mm, 2),
                unit=codes.UCUM.Millimeter,
                algorithm_id=algorithm,
                referenced_coordinates=[_long_axis_line(lesion, source_images)],
            ),
            hd.sr.Measurement(
                name=codes.DCM.AttenuationCoefficient,
                value=round(lesion.mean_hu, 1),
                unit=codes.UCUM.HounsfieldUnit,
                derivation=codes.SCT.Mean,
                algorithm_id=algorithm,
                referenced_images=segment,
            ),
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.PresenceOfProperty, codes.SCT.Present)],
    )


def build_lesion_report(result: LesionSegResult, context: ResultContext) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Comprehensive 3D SR for one analysed series.

    Parameters
    ----------
    result : LesionSegResult
        Lesions, source images and (when lesions were found) the SEG.
    context : ResultContext
        Identity of the algorithm and job.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR

    Raises
    ------
    ValueError
        When lesions were found but no SEG is given.
    """
    source_images: Sequence[Dataset] = result.source_images
    source_series_uid = str(source_images[0].SeriesInstanceUID)
    algorithm = _algorithm_identification(context)
    groups: list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]
    evidence: list[Dataset] = list(source_images)
    if result.lesions.lesions:
        if result.segmentation is None:
            raise ValueError("Lesions were found but no Segmentation was given to reference.")
        groups = [
            _lesion_group(lesion, result.segmentation, context, algorithm, source_images)
            for lesion in result.lesions.lesions
        ]
        evidence.append(result.segmentation)
    else:
        groups = [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=context.uid(f"tracking/{LESION_ASSESSMENT_ID}", source_series_uid),
                    identifier=LESION_ASSESSMENT_ID,
                ),
                finding_type=codes.SCT.Lesion,
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(FINDING_SITE)],
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.PresenceOfProperty, codes.SCT.Absent)],
            )
        ]
    # The Image Library: the images the lines are drawn on (none with no lesion).
    drawn_on = sorted({lesion.longest_axial_diameter_slice for lesion in result.lesions.lesions})
    library = [source_images[k] for k in drawn_on]
    return _comprehensive_3d_sr(groups, evidence, library, source_images, context, result.created)


def _algorithm_identification(context: ResultContext) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification of the model (name, version, family AI, manufacturer)."""
    return hd.sr.AlgorithmIdentification(
        name=context.model_name,
        version=context.model_version,
        family=codes.cid7162.ArtificialIntelligence,
        manufacturer=context.manufacturer,
    )


def _comprehensive_3d_sr(
    groups: Sequence[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ],
    evidence: Sequence[Dataset],
    library: Sequence[Dataset],
    source_images: Sequence[Dataset],
    context: ResultContext,
    created: datetime.datetime,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of ``groups``, observed by the model as a device, in the job's SR series.

    ``evidence`` are the instances the report was made from, ``library`` the images its Image Library
    lists, ``source_images`` the analysed series.
    """
    source_series_uid = str(source_images[0].SeriesInstanceUID)
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=str(context.device_uid),
                name=context.model_name,
                manufacturer_name=context.manufacturer,
                model_name=context.model_name,
            ),
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure_reported(source_images[0]),
        imaging_measurements=groups,
        referenced_images=list(library) or None,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=context.uid("sr/series", source_series_uid),
        series_number=context.series_number_sr,
        sop_instance_uid=context.uid("sr/instance", source_series_uid),
        instance_number=1,
        manufacturer=context.manufacturer,
        is_complete=True,
        # FINAL: the model will not revise it; PRELIMINARY for shadow and research results. Never
        # VERIFIED: no person has checked it when it is made (a radiologist's verdict is recorded apart).
        is_final=context.is_clinical,
        is_verified=False,
        contributing_equipment=[context.contributing_equipment()],
        series_description=context.series_description("SR"),
        manufacturer_model_name=context.model_name,
        software_versions=context.model_version,
        device_serial_number=str(context.device_uid),
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
    )


@dataclass(frozen=True)
class StudyFinding:
    """A finding about the analysed series as a whole (a classifier's answer), for the SR.

    Attributes
    ----------
    finding : highdicom.sr.CodedConcept
        What was looked for, e.g. ``codes.SCT.IntracranialHemorrhage``.
    finding_site : highdicom.sr.CodedConcept
        Where, e.g. ``codes.SCT.IntracranialStructure``.
    present : bool
        The model's decision at its operating threshold.
    probability : float or None
        The model's probability of the finding, in [0, 1]; ``None`` when it gives none.
    tracking_identifier : str
        Tracking Identifier of the measurement group, e.g. "Intracranial hemorrhage assessment".
    source_images : tuple of pydicom.dataset.Dataset
        The analysed series.
    created : datetime.datetime
        Creation time of the result.
    """

    finding: hd.sr.CodedConcept
    finding_site: hd.sr.CodedConcept
    present: bool
    probability: float | None
    tracking_identifier: str
    source_images: tuple[Dataset, ...]
    created: datetime.datetime

    def __post_init__(self) -> None:
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"A probability must lie in [0, 1], got {self.probability}.")
        if not self.source_images:
            raise ValueError("A finding needs the source images it was made on.")


def build_finding_report(finding: StudyFinding, context: ResultContext) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Comprehensive 3D SR holding one study-level finding.

    Parameters
    ----------
    finding : StudyFinding
        The finding, its probability and the analysed images.
    context : ResultContext
        Identity of the algorithm and job.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        One TID 1501 measurement group: tracking identifier and UID, finding, finding site,
        Probability (when given) and Presence of property = Present or Absent.
    """
    source_series_uid = str(finding.source_images[0].SeriesInstanceUID)
    algorithm = _algorithm_identification(context)
    measurements = []
    if finding.probability is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.DCM.Probability,
                value=round(float(finding.probability), 4),
                unit=PROBABILITY_UNIT,
                algorithm_id=algorithm,
            )
        )
    presence = codes.SCT.Present if finding.present else codes.SCT.Absent
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=context.uid(f"tracking/{finding.tracking_identifier}", source_series_uid),
            identifier=finding.tracking_identifier,
        ),
        finding_type=finding.finding,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(finding.finding_site)],
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.PresenceOfProperty, presence)],
    )
    images = finding.source_images
    return _comprehensive_3d_sr([group], images, [], images, context, finding.created)


def save_report(report: hd.sr.Comprehensive3DSR, output_folder: Path) -> Path:
    """Write ``report`` as ``<output_folder>/sr.dcm``, atomically (no partial file is left behind).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    output_folder.mkdir(parents=True, exist_ok=True)
    path = output_folder / SR_FILENAME
    partial = path.with_name(path.name + ".partial")
    report.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)
    logger.info("Wrote %s (SOP Instance UID %s)", path, report.SOPInstanceUID)
    return path


class _SRWriterOperator(Operator):
    """Base of the SR writers: configuration and the one input port, named by ``input_name``."""

    input_name = ""

    def __init__(
        self, fragment: Fragment, *args: object, output_folder: Path, result_context: ResultContext, **kwargs: object
    ) -> None:
        """Configure the writer.

        Parameters
        ----------
        fragment : Fragment
            The application.
        output_folder : pathlib.Path
            Folder for ``sr.dcm``.
        result_context : ResultContext
            Identity of the algorithm and job.
        """
        self.output_folder = Path(output_folder)
        self.result_context = result_context
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the port."""
        spec.input(self.input_name)


class LesionSRWriterOperator(_SRWriterOperator):
    """Write the TID 1500 lesion report ``sr.dcm``.

    Named input:
        ``lesion_result``: :class:`~hounsfield_operators.dicom_seg_writer.LesionSegResult` from
        :class:`~hounsfield_operators.dicom_seg_writer.LesionSegWriterOperator`.

    File output:
        ``<output_folder>/sr.dcm``, always (also when no lesion was found).
    """

    input_name = "lesion_result"

    def compute(self, op_input, op_output, context) -> None:  # holoscan's InputContext, OutputContext, ExecutionContext
        """Receive the lesion result and write the SR."""
        result = op_input.receive(self.input_name)
        if not isinstance(result, LesionSegResult):
            raise TypeError(f"Expected a LesionSegResult on {self.input_name!r}, got {type(result).__name__}.")
        self.write_sr(result)

    def write_sr(self, result: LesionSegResult) -> Path:
        """Build and write ``sr.dcm`` (framework-free core of :meth:`compute`).

        Returns
        -------
        pathlib.Path
            The written file.
        """
        return save_report(build_lesion_report(result, self.result_context), self.output_folder)


class FindingSRWriterOperator(_SRWriterOperator):
    """Write the TID 1500 report ``sr.dcm`` of a study-level finding.

    Named input:
        ``finding``: :class:`StudyFinding`, e.g. from a classifier operator.

    File output:
        ``<output_folder>/sr.dcm``, always (the finding present or absent).
    """

    input_name = "finding"

    def compute(self, op_input, op_output, context) -> None:  # holoscan's InputContext, OutputContext, ExecutionContext
        """Receive the finding and write the SR."""
        finding = op_input.receive(self.input_name)
        if not isinstance(finding, StudyFinding):
            raise TypeError(f"Expected a StudyFinding on {self.input_name!r}, got {type(finding).__name__}.")
        save_report(build_finding_report(finding, self.result_context), self.output_folder)
