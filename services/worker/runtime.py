"""Runs an App SDK application inside the worker process, warm, once per job."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from operators.runtime_support import ensure_cuda_runtime_loadable

__all__ = ["AppFailed", "InProcessRuntime", "preserved_logging"]

logger = logging.getLogger(__name__)


class AppFailed(RuntimeError):
    """The application raised; the message is the application's own."""


@contextmanager
def preserved_logging() -> Iterator[None]:
    """Undo the App SDK's ``logging.config.dictConfig`` (it resets the root logger each compose)."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers), list(root.filters))
    manager = logging.Logger.manager
    saved = {
        name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
        for name, lg in manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    try:
        yield
    finally:
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        root.filters[:] = saved_root[2]
        for name, (level, handlers, propagate, disabled) in saved.items():
            lg = logging.getLogger(name)
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled


@cache
def _load_app_class(reference: str) -> Any:
    ensure_cuda_runtime_loadable()
    module_name, _, class_name = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)


class InProcessRuntime:
    """Builds the application class once per process and runs a fresh instance per job."""

    def warm(self, reference: str) -> None:
        """Import the application (and holoscan, torch) before the first job arrives."""
        _load_app_class(reference)

    def run(self, reference: str, *, input_dir: Path, output_dir: Path, model_path: Path, workdir: Path) -> None:
        app_class = _load_app_class(reference)
        argv = ["app", "-i", str(input_dir), "-o", str(output_dir), "-m", str(model_path), "-w", str(workdir)]
        with preserved_logging():
            try:
                app_class(argv).run()
            except Exception as exc:
                raise AppFailed(f"{type(exc).__name__}: {exc}") from exc
