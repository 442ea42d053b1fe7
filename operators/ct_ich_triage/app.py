"""Head CT haemorrhage triage as a MONAI Deploy application.

Pipeline::

    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator -> DICOMSeriesToVolumeOperator
        -> HaemorrhageClassifierOperator -> FindingSRWriterOperator

Worker contract
---------------
The same as the lesion application's (:mod:`hounsfield_operators.ct_lesion_seg.app`): in-process,
any number of times in one process, or as ``python -m hounsfield_operators.ct_ich_triage``::

    CTICHTriageApp(argv=["ct_ich_triage", "-i", IN, "-o", OUT, "-m", MODEL, "-w", WORKDIR]).run()

* ``-i``: folder of DICOM files; the CT series with the most instances is analysed.
* ``-o``: output folder; ``-w``: job folder with ``result_context.json``
  (:class:`hounsfield_operators.result_context.ResultContext`).
* ``-m``: the TorchScript file, a folder holding ``model.ts``, or a model repository holding
  ``ct_ich_triage/model.ts`` (the MAP layout, ``/opt/holoscan/models``).

Output: ``sr.dcm``, a TID 1500 Comprehensive 3D SR with one study-level group: finding
Intracranial hemorrhage (1386000, SCT), finding site Intracranial structure, Probability
(122157, DCM, ``{probability}``) and Presence of property Present or Absent, decided at the
model's operating threshold. Contributing Equipment and the observer name the model (IHE AIR).

Bad arguments raise ``ValueError``; failures raise :class:`~hounsfield_operators.application.PipelineError`
naming the operator; no partial ``sr.dcm`` is left (see :mod:`hounsfield_operators.application`).
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import numpy as np
import torch
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec
from pydicom.sr.codedict import codes

from hounsfield_operators.application import HounsfieldApp
from hounsfield_operators.ct_ich_triage.classifier import network_input_from_zyx
from hounsfield_operators.dicom_seg_writer import selected_source_images
from hounsfield_operators.dicom_sr_writer import FindingSRWriterOperator, StudyFinding

__all__ = [
    "APP_NAME",
    "FINDING",
    "FINDING_SITE",
    "MODEL_NAME",
    "TRACKING_IDENTIFIER",
    "CTICHTriageApp",
    "HaemorrhageClassifierOperator",
]

logger = logging.getLogger(__name__)

#: Program name used as ``argv[0]``.
APP_NAME = "ct_ich_triage"
#: Name of the model folder in a model repository (``/opt/holoscan/models/<MODEL_NAME>/``).
MODEL_NAME = "ct_ich_triage"
#: What the model looks for.
FINDING = codes.SCT.IntracranialHemorrhage
#: Where it looks.
FINDING_SITE = codes.SCT.IntracranialStructure
#: Tracking Identifier of the SR's measurement group.
TRACKING_IDENTIFIER = "Intracranial hemorrhage assessment"


class HaemorrhageClassifierOperator(Operator):
    """Classify a head CT volume: haemorrhage present or absent, with its probability.

    Named inputs:
        ``image``: the App SDK ``Image`` from ``DICOMSeriesToVolumeOperator`` (HU, ``(z, y, x)``);
        ``study_selected_series_list``: the selection, for the source images.

    Named output:
        ``finding``: :class:`~hounsfield_operators.dicom_sr_writer.StudyFinding`.

    The TorchScript model (a frozen :class:`~hounsfield_operators.ct_ich_triage.classifier.TriageClassifier`)
    returns the probability; its ``operating_threshold`` decides present (probability at or above it).
    """

    def __init__(self, fragment: Fragment, *args: object, model_path: Path, **kwargs: object) -> None:
        """Load the model.

        Parameters
        ----------
        fragment : Fragment
            The application.
        model_path : pathlib.Path
            The TorchScript file.
        """
        self.model = torch.jit.load(str(model_path), map_location="cpu").eval()
        self.threshold = float(self.model.operating_threshold)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the ports."""
        spec.input("image")
        spec.input("study_selected_series_list")
        spec.output("finding")

    def compute(self, op_input, op_output, context) -> None:  # holoscan's InputContext, OutputContext, ExecutionContext
        """Receive the volume and the series; emit the finding."""
        volume = op_input.receive("image")
        study_selected_series_list = op_input.receive("study_selected_series_list")
        if not isinstance(volume, Image):
            raise TypeError(f"Expected an App SDK Image on 'image', got {type(volume).__name__}.")
        finding = self.classify(np.asarray(volume.asnumpy()), selected_source_images(study_selected_series_list))
        op_output.emit(finding, "finding")

    def classify(self, hu_zyx: np.ndarray, source_images: tuple) -> StudyFinding:
        """Classify one volume (framework-free core of :meth:`compute`).

        Parameters
        ----------
        hu_zyx : numpy.ndarray
            The volume in HU, ``(z, y, x)``.
        source_images : tuple of pydicom.dataset.Dataset
            The analysed series.

        Returns
        -------
        StudyFinding
        """
        if hu_zyx.ndim != 3 or min(hu_zyx.shape) < 8:
            raise ValueError(f"Expected a 3D volume of at least 8 voxels per axis, got shape {hu_zyx.shape}.")
        inputs = torch.from_numpy(network_input_from_zyx(hu_zyx))[None]
        with torch.no_grad():
            probability = float(self.model(inputs)[0])
        present = probability >= self.threshold
        logger.info("Haemorrhage probability %.4f (threshold %.2f): %s", probability, self.threshold, present)
        return StudyFinding(
            finding=FINDING,
            finding_site=FINDING_SITE,
            present=present,
            probability=probability,
            tracking_identifier=TRACKING_IDENTIFIER,
            source_images=tuple(source_images),
            created=datetime.datetime.now().replace(microsecond=0),
        )


class CTICHTriageApp(HounsfieldApp):
    """Triage a head CT for intracranial haemorrhage; write a TID 1500 SR.

    See the module docstring for the argv contract and outputs; argument parsing and failure
    reporting come from :class:`~hounsfield_operators.application.HounsfieldApp`.
    """

    app_name = APP_NAME
    model_name = MODEL_NAME

    def compose(self) -> None:
        """Build the operator graph from the parsed arguments."""
        dicom = self.compose_dicom_input()
        classifier = HaemorrhageClassifierOperator(self, model_path=dicom.model_file, name="ich_classifier")
        sr_writer = FindingSRWriterOperator(
            self, output_folder=dicom.output_folder, result_context=dicom.result_context, name="sr_writer"
        )
        self.add_flow(dicom.to_volume, classifier, {("image", "image")})
        self.add_flow(dicom.selector, classifier, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(classifier, sr_writer, {("finding", "finding")})
