"""CT lesion segmentation as a MONAI Deploy application.

Pipeline::

    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator -> DICOMSeriesToVolumeOperator
        -> MonaiSegInferenceOperator -> LesionSegWriterOperator -> LesionSRWriterOperator

Worker contract
---------------
Invocation (in-process, any number of times in one process, or as ``python -m
hounsfield_operators.ct_lesion_seg``)::

    CTLesionSegApp(argv=["ct_lesion_seg", "-i", IN, "-o", OUT, "-m", MODEL, "-w", WORKDIR]).run()

``argv[0]`` is a program name and is ignored. Flags (``monai.deploy.core.arg_parser``); each
falls back to the MAP environment variable, then to the SDK default:

* ``-i/--input``: folder of DICOM files (searched recursively) -- ``HOLOSCAN_INPUT_PATH``;
  the CT series with the most instances is analysed.
* ``-o/--output``: output folder (created) -- ``HOLOSCAN_OUTPUT_PATH``.
* ``-m/--model``: the TorchScript file, a folder holding ``model.ts``, or a model repository
  holding ``ct_lesion_seg/model.ts`` (the MAP layout, ``/opt/holoscan/models``) --
  ``HOLOSCAN_MODEL_PATH``. The SDK's ``ModelFactory`` itself only recognises a TorchScript file
  or a repository of one-file sub-folders; a folder with ``model.ts`` directly inside would
  become a generic model without predictor, so the app resolves the path to the file first.
* ``-w/--workdir``: job folder -- ``HOLOSCAN_WORKDIR``; ``<workdir>/result_context.json``
  (see :class:`hounsfield_operators.result_context.ResultContext`) sets model identity, deployment mode,
  UID root and job key. Without it defaults apply (pydicom's test UID root).
* ``-l/--log-level``: root log level.

Outputs in the output folder: ``seg.dcm`` (DICOM Segmentation, one segment per lesion; absent
when no lesion is found) and ``sr.dcm`` (TID 1500 Comprehensive 3D SR; always).

Failures: any exception in an operator (unreadable series, a slice without pixel data, the
model raising) makes :meth:`CTLesionSegApp.run` raise :class:`PipelineError` naming the
operator, chained to the original exception; no partial ``seg.dcm``/``sr.dcm`` is left from
that run (files are written atomically).

Side effect to know: ``Application.init_app_context`` calls ``logging.config.dictConfig`` on
every compose, replacing the root logger's handlers; a long-lived worker that keeps its own
logging must restore it after each run.

Call :func:`hounsfield_operators.runtime_support.ensure_cuda_runtime_loadable` before importing this
module on hosts without a CUDA toolkit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.deploy.operators.monai_seg_inference_operator import MonaiSegInferenceOperator
from monai.transforms import Compose

from hounsfield_operators import application
from hounsfield_operators.application import CT_SERIES_SELECTION_RULES, MODEL_FILENAME, HounsfieldApp, PipelineError
from hounsfield_operators.ct_lesion_seg.preprocessing import (
    OVERLAP,
    ROI_SIZE,
    SW_BATCH_SIZE,
    inference_post_transforms,
    inference_pre_transforms,
)
from hounsfield_operators.dicom_seg_writer import LesionSegWriterOperator
from hounsfield_operators.dicom_sr_writer import LesionSRWriterOperator

__all__ = [
    "APP_NAME",
    "MODEL_FILENAME",
    "MODEL_NAME",
    "SERIES_SELECTION_RULES",
    "CTLesionSegApp",
    "LesionInferenceOperator",
    "PipelineError",
    "resolve_model_file",
]

logger = logging.getLogger(__name__)

#: Program name used as ``argv[0]``.
APP_NAME = "ct_lesion_seg"
#: Name of the model folder in a model repository (``/opt/holoscan/models/<MODEL_NAME>/``).
MODEL_NAME = "ct_lesion_seg"
#: Series selection: the CT series with the most instances (see :mod:`hounsfield_operators.application`).
SERIES_SELECTION_RULES = CT_SERIES_SELECTION_RULES


def resolve_model_file(model_path: str | Path) -> Path:
    """The model file behind a ``-m`` argument: :func:`hounsfield_operators.application.resolve_model_file`."""
    return application.resolve_model_file(model_path, MODEL_NAME)


class LesionInferenceOperator(MonaiSegInferenceOperator):
    """``MonaiSegInferenceOperator`` with the transforms of :mod:`hounsfield_operators.ct_lesion_seg.preprocessing`.

    The pre-transforms need the SDK's ``InMemImageReader`` bound to each incoming image, which
    the base class creates in ``compute``; it asks :meth:`pre_process` for transforms when none
    were given at construction, so none are given.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Create the operator; keyword arguments as for ``MonaiSegInferenceOperator`` minus transforms."""
        super().__init__(*args, pre_transforms=None, post_transforms=None, **kwargs)

    def pre_process(self, data: Any, *args: Any, **kwargs: Any) -> Compose:
        """Return the pre-transforms for ``data``, the reader of the current image."""
        return inference_pre_transforms(data, self.input_dataset_key)

    def post_process(self, data: Any, *args: Any, **kwargs: Any) -> Compose:
        """Return the post-transforms (``data``, the pre-transforms, is not needed)."""
        return inference_post_transforms(self.pred_dataset_key)


class CTLesionSegApp(HounsfieldApp):
    """Segment and measure lesions in a CT series; write a DICOM SEG and a TID 1500 SR.

    See the module docstring for the argv contract and outputs; argument parsing and failure
    reporting come from :class:`~hounsfield_operators.application.HounsfieldApp`.
    """

    app_name = APP_NAME
    model_name = MODEL_NAME

    def compose(self) -> None:
        """Build the operator graph from the parsed arguments."""
        dicom = self.compose_dicom_input()
        app_context, model_file, to_volume = dicom.app_context, dicom.model_file, dicom.to_volume
        if Path(app_context.model_path).resolve() != model_file:
            app_context.update({"model": str(model_file)})  # reloads app_context.models as a TorchScriptModel
        inference = LesionInferenceOperator(
            self,
            roi_size=ROI_SIZE,
            app_context=app_context,
            model_path=model_file,
            overlap=OVERLAP,
            sw_batch_size=SW_BATCH_SIZE,
            name="seg_inference",
        )
        seg_writer = LesionSegWriterOperator(
            self, output_folder=dicom.output_folder, result_context=dicom.result_context, name="seg_writer"
        )
        sr_writer = LesionSRWriterOperator(
            self, output_folder=dicom.output_folder, result_context=dicom.result_context, name="sr_writer"
        )

        self.add_flow(to_volume, inference, {("image", "image")})
        self.add_flow(inference, seg_writer, {("seg_image", "seg_image")})
        self.add_flow(to_volume, seg_writer, {("image", "image")})
        self.add_flow(dicom.selector, seg_writer, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(seg_writer, sr_writer, {("lesion_result", "lesion_result")})
