"""Runs an App SDK application for a job: imported once per worker, run in a warm process that can be stopped.

The worker imports the application (and holoscan, torch, MONAI) once, before its first job. Its
jobs then run in an *application process* forked from the worker: it starts with every module
imported and serves the worker's jobs one after the other, so that what the first run warms
(torch's kernels, highdicom's tables of the standard, MONAI's lazy imports) stays warm for the next.
It is replaced by a fresh fork

* when a run passes its deployment's timeout: it is killed and the job reported :class:`AppTimedOut`;
* when a run fails (:class:`AppFailed`), or the process dies: nothing of a broken run is reused;
* after ``max_jobs`` runs (``worker.app_max_jobs``), so that memory an application leaks comes back
  (``1`` gives every job a fresh fork of its own).

The App SDK's logging set-up (it resets the root logger at every compose) stays in that process;
the worker's own logging is never touched. The worker itself never runs torch: a fork of a process
whose OpenMP threads have started can hang in its first parallel region.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from hounsfield.registry.map_manifest import load_map
from hounsfield_operators.runtime_support import ensure_cuda_runtime_loadable

__all__ = ["AppFailed", "AppTimedOut", "InProcessRuntime", "SubprocessRuntime"]

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


def _serve(app_class: Any, jobs: Connection, workers_end: Connection, parent: int) -> None:
    """The application process: run each argv the worker sends, answer ``None`` or the failure, until
    the worker says ``None`` or hangs up; leave without the worker's exit hooks."""
    workers_end.close()
    _die_with_parent()
    if os.getppid() != parent:  # the worker died before the request took effect
        os._exit(1)
    try:
        while True:
            # A Ctrl-C reaches the whole process group: the worker's warm shutdown lets the current run
            # finish. SIGTERM stops this process; neither the worker's handlers (inherited by the fork)
            # nor those holoscan installs during a run stay.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                argv = jobs.recv()
            except EOFError:  # the worker is gone
                break
            if argv is None:  # retired, or the worker is shutting down
                break
            try:
                app_class(argv).run()
            except BaseException as exc:
                jobs.send(f"{type(exc).__name__}: {exc}")
            else:
                jobs.send(None)
    finally:
        jobs.close()
        logging.shutdown()
        os._exit(0)


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

    def run(self, argv: list[str], timeout_s: float | None) -> None:
        self.runs += 1
        started = time.monotonic()
        try:
            self._jobs.send(argv)
        except OSError:  # it died between two jobs
            self.process.join(5)
            raise AppFailed(f"the application process had exited (code {self.process.exitcode})") from None
        if not self._jobs.poll(timeout_s):
            raise AppTimedOut(f"stopped after {time.monotonic() - started:.0f} s: past its timeout of {timeout_s:g} s")
        try:
            message = self._jobs.recv()
        except EOFError:  # the process died mid-run (killed, out of memory, a crash in native code)
            self.process.join(5)
            raise AppFailed(f"the application exited with code {self.process.exitcode}") from None
        if message is not None:
            raise AppFailed(message)

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

    def __init__(self, max_jobs: int = 200) -> None:
        self.max_jobs = max_jobs
        self._processes: dict[str, _AppProcess] = {}
        self._lock = threading.Lock()

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
        argv = ["app", "-i", str(input_dir), "-o", str(output_dir), "-m", str(model_path), "-w", str(workdir)]
        with self._lock:  # one run at a time per application process
            process = self._processes.get(reference)
            if process is None or not process.process.is_alive():
                process = self._processes[reference] = _AppProcess(_load_app_class(reference))
            try:
                process.run(argv, timeout_s)
            except AppFailed as failed:
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


_JOB_PATHS = {
    "HOLOSCAN_INPUT_PATH": "input_dir",
    "HOLOSCAN_OUTPUT_PATH": "output_dir",
    "HOLOSCAN_MODEL_PATH": "model_path",
    "HOLOSCAN_WORKDIR": "workdir",
}


@dataclass(frozen=True)
class SubprocessRuntime:
    """Runs a MAP's ``app.json`` command as a process of its own, for applications that must be isolated.

    The MAP's container roots are mapped to folders of this host: ``pkg.json#applicationRoot`` to
    ``application_root`` (in every environment value, e.g. ``PYTHONPATH``), ``modelRoot`` to the
    deployment's model path, and the ``HOLOSCAN_*`` input, output, model and work paths to the job's
    folders. ``HOLOSCAN_CONFIG_PATH`` points at the MAP's ``app.yaml`` when it has one. The command
    finds its interpreter on this worker's ``PATH`` (its virtual environment first). Past the timeout
    the process group is killed (:class:`AppTimedOut`); a non-zero exit is :class:`AppFailed` with
    the end of what the application printed.
    """

    map_path: Path
    """The folder with the MAP's ``app.json`` and ``pkg.json`` (a build context, or a MAP's file system)."""
    application_root: Path
    """What ``applicationRoot`` is on this host (where the application's code is)."""

    def environment(self, folders: dict[str, Path]) -> dict[str, str]:
        manifests = load_map(self.map_path).manifests
        roots = [
            (manifests.pkg.application_root.rstrip("/"), str(self.application_root)),
            (manifests.pkg.model_root.rstrip("/"), str(folders["model_path"])),
        ]
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for key, value in manifests.app.environment.items():
            text = str(value)
            for container, host in roots:
                text = text.replace(container, host)
            env[key] = text
        env["HOLOSCAN_APPLICATION"] = str(self.application_root)
        for key, name in _JOB_PATHS.items():
            env[key] = str(folders[name])
        config = self.map_path / "app.yaml"
        if config.is_file():
            env["HOLOSCAN_CONFIG_PATH"] = str(config)
        return env

    def run(
        self,
        reference: str | None = None,
        *,
        input_dir: Path,
        output_dir: Path,
        model_path: Path,
        workdir: Path,
        timeout_s: float | None = None,
    ) -> None:
        """Run the MAP's command on one job's folders (``reference``, the in-process class, is not used)."""
        folders = {"input_dir": input_dir, "output_dir": output_dir, "model_path": model_path, "workdir": workdir}
        argv = load_map(self.map_path).manifests.app.argv
        log = workdir / "application.log"
        started = time.monotonic()
        with log.open("wb") as output:
            process = subprocess.Popen(
                argv, cwd=workdir, env=self.environment(folders), stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout stops everything it started
            )  # fmt: skip
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AppTimedOut(
                    f"stopped after {time.monotonic() - started:.0f} s: past its timeout of {timeout_s:g} s"
                ) from None
        if code != 0:
            tail = log.read_bytes()[-1500:].decode(errors="replace").strip().splitlines()[-8:]
            raise AppFailed(f"{argv[0]} exited with code {code}: " + " | ".join(tail))
