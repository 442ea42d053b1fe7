"""An App SDK application that says its patient's name, ID and birth date everywhere it can, then fails.

Its words reach its own output (``application.log`` in the job's work folder) and the job's error in the
registry; the end-to-end test of the logs holds that none of them reaches a line of the services' logs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pydicom
from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec

logger = logging.getLogger(__name__)


class QuotingOperator(Operator):
    def __init__(self, fragment: Any, *args: Any, input_folder: Path, **kwargs: Any) -> None:
        self.input_folder = input_folder
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        pass

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        first = sorted(p for p in self.input_folder.rglob("*") if p.is_file())[0]
        ds = pydicom.dcmread(first, stop_before_pixels=True)
        said = f"{ds.PatientName} (ID {ds.PatientID}, born {ds.PatientBirthDate})"
        print(f"reading the study of {said}", flush=True)
        sys.stderr.write(f"stderr: {said}\n")
        logger.error("the App SDK's logging: %s", said)
        raise ValueError(f"cannot segment the study of {said}")


class QuotingApp(Application):
    def __init__(self, argv: list[str] | None = None) -> None:
        super().__init__(None if argv is None else [sys.executable, *argv])

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        self.add_operator(QuotingOperator(self, CountCondition(self, 1), input_folder=Path(context.input_path)))
