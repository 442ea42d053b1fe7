"""An App SDK application whose model raises: the worker must record the failure and go on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

MESSAGE = "model exploded: synthetic failure for testing"


class ExplodingModelOperator(Operator):
    def setup(self, spec: OperatorSpec) -> None:
        spec.input("dicom_study_list")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        op_input.receive("dicom_study_list")
        raise RuntimeError(MESSAGE)


class RaisingApp(Application):
    def __init__(self, argv: list[str] | None = None) -> None:
        import sys

        super().__init__(None if argv is None else [sys.executable, *argv])

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(context.input_path))
        self.add_flow(loader, ExplodingModelOperator(self), {("dicom_study_list", "dicom_study_list")})
