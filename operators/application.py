"""What every Hounsfield example application shares: the worker's argv contract and failure reporting.

:class:`HounsfieldApp` is an App SDK ``Application`` that a worker can build and run again and again
in one process: ``App(argv=[name, "-i", IN, "-o", OUT, "-m", MODEL, "-w", WORKDIR]).run()``. Bad
arguments raise ``ValueError`` (not argparse's ``SystemExit``); any operator failure raises
:class:`PipelineError` naming the operator and the root cause. Subclasses set :attr:`HounsfieldApp.app_name`
and write ``compose``.

Importing this module imports ``monai.deploy`` (see :mod:`hounsfield_operators.runtime_support`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Operator, parse_args
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from hounsfield_operators.result_context import ResultContext

__all__ = [
    "CT_SERIES_SELECTION_RULES",
    "MODEL_FILENAME",
    "DicomInput",
    "HounsfieldApp",
    "PipelineError",
    "resolve_model_file",
]

logger = logging.getLogger(__name__)

#: File name of the TorchScript model.
MODEL_FILENAME = "model.ts"

#: Series selection: any CT series; with ``all_matched`` and sorting by instance count the series
#: with the most instances comes first and is the one analysed.
CT_SERIES_SELECTION_RULES = json.dumps({"selections": [{"name": "CT series", "conditions": {"Modality": "(?i)CT"}}]})


class PipelineError(RuntimeError):
    """An operator of the application failed; the original exception is chained."""


def resolve_model_file(model_path: str | Path, model_name: str) -> Path:
    """Find the TorchScript file behind a ``-m`` argument.

    Parameters
    ----------
    model_path : str or pathlib.Path
        A TorchScript file, a folder holding ``model.ts``, or a model repository holding
        ``<model_name>/model.ts`` (the MAP layout, ``/opt/holoscan/models``).
    model_name : str
        The model's folder in a model repository.

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
    candidates = [path, path / MODEL_FILENAME, path / model_name / MODEL_FILENAME]
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


def _describe_failure(app_name: str, exc: BaseException) -> str:
    """One readable line: where it failed, what, and the root cause."""
    operator = _failing_operator(exc)
    where = f"operator {operator!r}" if operator else "composing the pipeline"
    message = f"{app_name} failed in {where}: {type(exc).__name__}: {exc}"
    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    if root is not exc:
        message += f" (root cause: {type(root).__name__}: {root})"
    return message


@dataclass(frozen=True)
class DicomInput:
    """The start of every example pipeline, made by :meth:`HounsfieldApp.compose_dicom_input`.

    ``selector`` emits ``study_selected_series_list`` (the CT series with the most instances) and
    ``to_volume`` emits ``image`` (its volume in HU, ``(z, y, x)``); the loader feeding them is wired.
    """

    app_context: AppContext
    model_file: Path
    output_folder: Path
    result_context: ResultContext
    selector: DICOMSeriesSelectorOperator
    to_volume: DICOMSeriesToVolumeOperator


class HounsfieldApp(Application):
    """An App SDK application with the worker's argv contract and readable failures.

    Attributes
    ----------
    app_name : str
        Program name (``argv[0]``), used in messages.
    model_name : str
        The model's folder in a model repository (``/opt/holoscan/models/<model_name>/``).
    """

    app_name = "hounsfield_app"
    model_name = "model"

    def __init__(self, argv: Sequence[str] | None = None, *args: Any, **kwargs: Any) -> None:
        """Create the application.

        Parameters
        ----------
        argv : sequence of str or None
            ``[program_name, *flags]`` (``-i``, ``-o``, ``-m``, ``-w``, ``-l``); ``None`` uses ``sys.argv``.

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
            message = f"Invalid arguments for {self.app_name}: {list(self.argv)!r} (argparse exit status {exc.code})."
            raise ValueError(message) from exc

    def compose_dicom_input(self) -> DicomInput:
        """Parse the arguments, read the result context, and add loader -> series selector -> volume.

        Returns
        -------
        DicomInput
            What the rest of the pipeline needs.
        """
        app_context: AppContext = Application.init_app_context(self.argv)
        model_file = resolve_model_file(app_context.model_path, self.model_name)
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
            rules=CT_SERIES_SELECTION_RULES,
            all_matched=True,
            sort_by_sop_instance_count=True,
            name="series_selector",
        )
        to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        return DicomInput(app_context, model_file, output_folder, result_context, selector, to_volume)

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
            raise PipelineError(_describe_failure(self.app_name, exc)) from exc
