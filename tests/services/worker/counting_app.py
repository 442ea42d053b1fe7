"""An App SDK application that says which process ran it and how many runs that process has made.

It writes ``app-process.json`` (``pid``, ``run``) into the work folder. A work folder holding
``please-fail`` makes it raise instead, one holding ``please-hang`` makes it sleep for an hour, so
that a test can fail or time out one run among others.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec

REPORT = "app-process.json"
FAIL_FLAG = "please-fail"
HANG_FLAG = "please-hang"

_runs = 0


class CountingOperator(Operator):
    def __init__(self, fragment: Any, *args: Any, workdir: Path, **kwargs: Any) -> None:
        self.workdir = workdir
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        pass

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        global _runs
        _runs += 1
        if (self.workdir / FAIL_FLAG).exists():
            raise RuntimeError("asked to fail")
        if (self.workdir / HANG_FLAG).exists():
            time.sleep(3600)
        (self.workdir / REPORT).write_text(json.dumps({"pid": os.getpid(), "run": _runs}))


class CountingApp(Application):
    def __init__(self, argv: list[str] | None = None) -> None:
        super().__init__(None if argv is None else [sys.executable, *argv])

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        self.add_operator(CountingOperator(self, CountCondition(self, 1), workdir=Path(context.workdir)))
