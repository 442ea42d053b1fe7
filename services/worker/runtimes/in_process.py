"""The in-process runtime: an App SDK application imported once per worker, run in a warm, stoppable process.

The worker imports the application (and holoscan, torch, MONAI) once, before its first job. Its
jobs then run in an *application process* forked from the worker: it starts with every module
imported and serves the worker's jobs one after the other, so that what the first run warms
(torch's kernels, highdicom's tables of the standard, MONAI's lazy imports) stays warm for the next.
It is replaced by a fresh fork

* when a run passes its deployment's timeout: it is killed and the job reported :class:`ApplicationTimedOut`;
* when a run fails (:class:`ApplicationFailed`), or the process dies: nothing of a broken run is reused;
* after ``max_jobs`` runs (``worker.app_max_jobs``), so that memory an application leaks comes back
  (``1`` gives every job a fresh fork of its own).

The App SDK's logging set-up (it resets the root logger at every compose) stays in that process;
the worker's own logging is never touched. What a run writes to its standard output and error (the App
SDK's log, holoscan's lines) goes to ``application.log`` in the job's work folder, as with the other
runtimes: never into the worker's own log, whose every line is one of its records. The worker itself never
runs torch: a fork of a process whose OpenMP threads have started can hang in its first parallel region.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib
import io
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, ClassVar

from hounsfield.worker.runtimes.base import ApplicationFailed, ApplicationRun, ApplicationTimedOut
from hounsfield_operators.runtime_support import ensure_cuda_runtime_loadable

__all__ = ["InProcessRuntime"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl(2)


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


def _serve(app_class: Any, jobs: Connection, workers_end: Connection, parent: int) -> None:
    """The application process: run each argv the worker sends, answer ``None`` or the failure, until
    the worker says ``None`` or hangs up; leave without the worker's exit hooks."""
    workers_end.close()
    _die_with_parent()
    if os.getppid() != parent:  # the worker died before the request took effect
        os._exit(1)
    _silence()  # nothing but a run's output (to its application.log) leaves this process
    try:
        while True:
            # A Ctrl-C reaches the whole process group: the worker's warm shutdown lets the current run
            # finish. SIGTERM stops this process; neither the worker's handlers (inherited by the fork)
            # nor those holoscan installs during a run stay.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                request = jobs.recv()
            except EOFError:  # the worker is gone
                break
            if request is None:  # retired, or the worker is shutting down
                break
            argv, output = request
            try:
                with _output_to(output):
                    app_class(argv).run()
            except BaseException as exc:
                jobs.send(f"{type(exc).__name__}: {exc}")
            else:
                jobs.send(None)
    finally:
        jobs.close()
        logging.shutdown()
        os._exit(0)


@contextlib.contextmanager
def _output_to(path: str) -> Iterator[None]:
    """This process's standard output and error to ``path`` while a run lasts, to /dev/null between runs:
    its file descriptors (native code writes there) and Python's ``sys.stdout`` and ``sys.stderr`` (which the
    worker's Celery, or a test runner, may have replaced with objects of their own)."""
    saved = sys.stdout, sys.stderr
    for stream in saved:
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    text = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), errors="backslashreplace", line_buffering=True)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = text
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            text.flush()
        sys.stdout, sys.stderr = saved
        _silence()
        text.close()
        os.close(fd)


def _silence() -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


class _AppProcess:
    """One application's process, forked from the worker, and the pipe its jobs go through."""

    def __init__(self, app_class: Any) -> None:
        fork = multiprocessing.get_context("fork")
        self._jobs, theirs = fork.Pipe(duplex=True)
        self.process: BaseProcess = fork.Process(
            target=_serve, args=(app_class, theirs, self._jobs, os.getpid()), name="hounsfield-app", daemon=True
        )
        gc.freeze()  # the worker's objects out of the collector's reach: the child copies fewer pages
        self.process.start()
        theirs.close()
        self.runs = 0

    def run(self, argv: list[str], timeout_s: float | None, output: str) -> None:
        self.runs += 1
        started = time.monotonic()
        try:
            self._jobs.send((argv, output))
        except OSError:  # it died between two jobs
            self.process.join(5)
            raise ApplicationFailed(f"the application process had exited (code {self.process.exitcode})") from None
        if not self._jobs.poll(timeout_s):
            raise ApplicationTimedOut(
                f"stopped after {time.monotonic() - started:.0f} s: past its timeout of {timeout_s:g} s"
            )
        try:
            message = self._jobs.recv()
        except EOFError:  # the process died mid-run (killed, out of memory, a crash in native code)
            self.process.join(5)
            raise ApplicationFailed(f"the application exited with code {self.process.exitcode}") from None
        if message is not None:
            raise ApplicationFailed(message)

    def close(self, *, kill: bool = False) -> None:
        """Say goodbye (the process leaves when its run is over), or kill it at once.

        A goodbye, not only a closed pipe: application processes forked later hold copies of this
        end of it, so the process would never read the end of the file."""
        if kill and self.process.is_alive():
            self.process.kill()
        elif not kill:
            with contextlib.suppress(OSError):  # it is gone already
                self._jobs.send(None)
        self._jobs.close()
        self.process.join(None if kill else 30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class InProcessRuntime:
    """Imports each application once per worker process and runs its jobs in a warm process forked
    from the worker (see the module's docstring)."""

    name: ClassVar[str] = "in-process"

    def __init__(self, max_jobs: int = 200) -> None:
        self.max_jobs = max_jobs
        self._processes: dict[str, _AppProcess] = {}
        self._lock = threading.Lock()

    def warm(self, reference: str) -> None:
        """Import the application (and holoscan, torch) before the first job arrives."""
        _load_app_class(reference)

    def run(self, run: ApplicationRun) -> None:
        """Run the deployment's ``app`` on the job's folders; :class:`ApplicationTimedOut` past its timeout."""
        reference, timeout_s = run.deployment.app, run.timeout_s
        argv = ["app", "-i", str(run.input_dir), "-o", str(run.output_dir), "-m", str(run.model_path)]
        argv += ["-w", str(run.workdir)]
        with self._lock:  # one run at a time per application process
            process = self._processes.get(reference)
            if process is None or not process.process.is_alive():
                process = self._processes[reference] = _AppProcess(_load_app_class(reference))
            try:
                process.run(argv, timeout_s, str(run.workdir / "application.log"))
            except ApplicationFailed as failed:
                del self._processes[reference]
                process.close(kill=True)
                logger.info("application process of %s replaced after: %s", reference, type(failed).__name__)
                raise
            if process.runs >= self.max_jobs:
                del self._processes[reference]
                process.close()

    def close(self) -> None:
        """Stop every application process (each after its current run)."""
        with self._lock:
            processes, self._processes = list(self._processes.values()), {}
        for process in processes:
            process.close()
