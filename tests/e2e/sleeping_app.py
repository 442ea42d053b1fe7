"""An App SDK application whose model never finishes in time: the worker must stop it at its timeout."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

MARKER = "sleeping-app-started"
"""Written into the work folder when the model starts, so a test can tell the run began."""


class SleepingModelOperator(Operator):
    def __init__(self, fragment: Any, workdir: Path) -> None:
        self.workdir = workdir
        super().__init__(fragment)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("dicom_study_list")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        op_input.receive("dicom_study_list")
        (self.workdir / MARKER).write_text("started")
        time.sleep(3600)


class SleepingApp(Application):
    def __init__(self, argv: list[str] | None = None) -> None:
        super().__init__(None if argv is None else [sys.executable, *argv])

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(context.input_path))
        sleeper = SleepingModelOperator(self, Path(context.workdir))
        self.add_flow(loader, sleeper, {("dicom_study_list", "dicom_study_list")})
