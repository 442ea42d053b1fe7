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

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Operator, parse_args
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.monai_seg_inference_operator import MonaiSegInferenceOperator
from monai.transforms import Compose

from hounsfield_operators.ct_lesion_seg.preprocessing import (
    OVERLAP,
    ROI_SIZE,
    SW_BATCH_SIZE,
    inference_post_transforms,
    inference_pre_transforms,
)
from hounsfield_operators.dicom_seg_writer import LesionSegWriterOperator
from hounsfield_operators.dicom_sr_writer import LesionSRWriterOperator
from hounsfield_operators.result_context import ResultContext

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
#: File name of the TorchScript model.
MODEL_FILENAME = "model.ts"

#: Series selection: any CT series; with ``all_matched`` and sorting by instance count the series
#: with the most instances comes first and is the one analysed.
SERIES_SELECTION_RULES = json.dumps({"selections": [{"name": "CT series", "conditions": {"Modality": "(?i)CT"}}]})


class PipelineError(RuntimeError):
    """An operator of the application failed; the original exception is chained."""


def resolve_model_file(model_path: str | Path) -> Path:
    """Find the TorchScript file behind a ``-m`` argument.

    Parameters
    ----------
    model_path : str or pathlib.Path
        A TorchScript file, a folder holding ``model.ts``, or a model repository holding
        ``ct_lesion_seg/model.ts``.

    Returns
    -------
    pathlib.Path
        The model file.

    Raises
    ------
    FileNotFoundError
        When none of these exists.
    """
    path = Path(model_path)
    candidates = [path, path / MODEL_FILENAME, path / MODEL_NAME / MODEL_FILENAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"No TorchScript model at {', '.join(str(c) for c in candidates)}.")


def _failing_operator(exc: BaseException) -> str | None:
    """Name of the innermost App SDK operator on the exception's traceback, if any."""
    name = None
    frame_tb = exc.__traceback__
    while frame_tb is not None:
        owner = frame_tb.tb_frame.f_locals.get("self")
        if isinstance(owner, Operator):
            name = owner.name
        frame_tb = frame_tb.tb_next
    return name


def _describe_failure(exc: BaseException) -> str:
    """One readable line: where it failed, what, and the root cause."""
    operator = _failing_operator(exc)
    where = f"operator {operator!r}" if operator else "composing the pipeline"
    message = f"{APP_NAME} failed in {where}: {type(exc).__name__}: {exc}"
    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    if root is not exc:
        message += f" (root cause: {type(root).__name__}: {root})"
    return message


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


class CTLesionSegApp(Application):
    """Segment and measure lesions in a CT series; write a DICOM SEG and a TID 1500 SR.

    See the module docstring for the argv contract and outputs.
    """

    def __init__(self, argv: Sequence[str] | None = None, *args: Any, **kwargs: Any) -> None:
        """Create the application.

        Parameters
        ----------
        argv : sequence of str or None
            ``[program_name, *flags]`` as in the module docstring; ``None`` uses ``sys.argv``.

        Raises
        ------
        ValueError
            When the arguments do not parse (argparse's ``SystemExit`` is turned into an exception
            a worker can handle).
        """
        # Holoscan drops argv[0] as the interpreter and keeps the rest as ``self.argv``, whose
        # first item the SDK's parser then drops as the program name.
        full_argv = None if argv is None else [sys.executable, *argv]
        super().__init__(full_argv, *args, **kwargs)
        try:
            parse_args(self.argv)
        except SystemExit as exc:
            message = f"Invalid arguments for {APP_NAME}: {list(self.argv)!r} (argparse exit status {exc.code})."
            raise ValueError(message) from exc

    def compose(self) -> None:
        """Build the operator graph from the parsed arguments."""
        app_context: AppContext = Application.init_app_context(self.argv)
        model_file = resolve_model_file(app_context.model_path)
        if Path(app_context.model_path).resolve() != model_file:
            app_context.update({"model": str(model_file)})  # reloads app_context.models as a TorchScriptModel
        input_folder = Path(app_context.input_path)
        output_folder = Path(app_context.output_path)
        workdir = Path(app_context.workdir) if app_context.workdir else None
        result_context = ResultContext.load(workdir)
        logger.info(
            "Input %s, output %s, model %s, result context %s", input_folder, output_folder, model_file, result_context
        )

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_folder, name="dicom_loader")
        selector = DICOMSeriesSelectorOperator(
            self,
            rules=SERIES_SELECTION_RULES,
            all_matched=True,
            sort_by_sop_instance_count=True,
            name="series_selector",
        )
        to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
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
            self, output_folder=output_folder, result_context=result_context, name="seg_writer"
        )
        sr_writer = LesionSRWriterOperator(
            self, output_folder=output_folder, result_context=result_context, name="sr_writer"
        )

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, inference, {("image", "image")})
        self.add_flow(inference, seg_writer, {("seg_image", "seg_image")})
        self.add_flow(to_volume, seg_writer, {("image", "image")})
        self.add_flow(selector, seg_writer, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(seg_writer, sr_writer, {("lesion_result", "lesion_result")})

    def run(self, *args: Any, **kwargs: Any) -> None:
        """Run the pipeline once.

        Holoscan stops the graph when an operator's ``compute`` raises and re-raises that
        exception from ``run``; it is translated here into a :class:`PipelineError` that names
        the operator and the root cause.

        Raises
        ------
        PipelineError
            When an operator (or composing the graph) failed.
        """
        try:
            super().run(*args, **kwargs)
        except PipelineError:
            raise
        except Exception as exc:  # boundary: every operator failure becomes a PipelineError
            raise PipelineError(_describe_failure(exc)) from exc
