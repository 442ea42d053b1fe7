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
import gc
import importlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from operators.runtime_support import ensure_cuda_runtime_loadable
from services.registry.map_manifest import load_map

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
        gc.freeze()  # the worker's objects out of the collector's reach: the child copies fewer pages
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
