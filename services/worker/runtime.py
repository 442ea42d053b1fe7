"""Runs an App SDK application for a job: imported once per worker, each run in a fork of the worker.

The worker imports the application (and holoscan, torch, MONAI) once, before its first job. Each
job then runs in a child forked from the worker: it starts warm, with every module imported, and
it can be stopped. A run past its deployment's timeout is killed and reported as
:class:`AppTimedOut`; the App SDK's logging set-up (it resets the root logger at every compose)
stays in the child, so the worker's own logging is never touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import logging
import multiprocessing
import os
import signal
import time
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from operators.runtime_support import ensure_cuda_runtime_loadable

__all__ = ["AppFailed", "AppTimedOut", "InProcessRuntime"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl(2)


class AppFailed(RuntimeError):
    """The application raised or exited badly; the message is the application's own."""


class AppTimedOut(AppFailed):
    """The application ran past its timeout and was stopped."""


@cache
def _load_app_class(reference: str) -> Any:
    ensure_cuda_runtime_loadable()
    module_name, _, class_name = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when the worker dies (kill -9 included), so that no orphaned
    run writes into a workspace that another worker now owns."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker's own shutdown still stops its children
        logger.debug("cannot ask to die with the worker on this platform")


def _run_child(app_class: Any, argv: list[str], report: Connection, parent: int) -> None:
    """The forked child: run the application, report its failure, and leave without the parent's exit hooks."""
    _die_with_parent()
    if os.getppid() != parent:  # the worker died before the request took effect
        os._exit(1)
    code = 0
    try:
        app_class(argv).run()
    except BaseException as exc:
        report.send(f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        report.close()
        logging.shutdown()
        os._exit(code)


class InProcessRuntime:
    """Imports each application once per worker process and runs it per job in a fork of the worker."""

    def warm(self, reference: str) -> None:
        """Import the application (and holoscan, torch) before the first job arrives."""
        _load_app_class(reference)

    def run(
        self,
        reference: str,
        *,
        input_dir: Path,
        output_dir: Path,
        model_path: Path,
        workdir: Path,
        timeout_s: float | None = None,
    ) -> None:
        """Run the application on one job's folders; :class:`AppTimedOut` past ``timeout_s``."""
        app_class = _load_app_class(reference)
        argv = ["app", "-i", str(input_dir), "-o", str(output_dir), "-m", str(model_path), "-w", str(workdir)]
        fork = multiprocessing.get_context("fork")
        reader, writer = fork.Pipe(duplex=False)
        child = fork.Process(
            target=_run_child, args=(app_class, argv, writer, os.getpid()), name="hounsfield-app", daemon=True
        )
        started = time.monotonic()
        child.start()
        writer.close()
        child.join(timeout_s)
        if child.is_alive():
            child.kill()
            child.join()
            raise AppTimedOut(f"stopped after {time.monotonic() - started:.0f} s: past its timeout of {timeout_s:g} s")
        try:
            message = reader.recv() if reader.poll() else None
        except EOFError:  # the child closed the pipe without a word: it succeeded (or died, see its exit code)
            message = None
        reader.close()
        if message is not None:
            raise AppFailed(message)
        if child.exitcode != 0:
            raise AppFailed(f"the application exited with code {child.exitcode}")
