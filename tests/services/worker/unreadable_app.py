"""An App SDK application that writes a result the validation gate cannot read as DICOM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec


class UnreadableResultOperator(Operator):
    def __init__(self, fragment: Any, *args: Any, output: Path, **kwargs: Any) -> None:
        self.output = output
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        pass

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "result.dcm").write_bytes(b"not a DICOM file")


class UnreadableResultApp(Application):
    def __init__(self, argv: list[str] | None = None) -> None:
        super().__init__(None if argv is None else [sys.executable, *argv])

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        output = Path(context.output_path)
        self.add_operator(UnreadableResultOperator(self, CountCondition(self, 1), output=output))
