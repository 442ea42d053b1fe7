"""The subprocess runtime: a MAP's ``app.json`` command as a process of its own, for applications that
must be isolated from the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from hounsfield.catalog.manifests import load_map
from hounsfield.worker.runtimes.base import ApplicationFailed, ApplicationRun, ApplicationTimedOut

__all__ = ["SubprocessRuntime"]


class SubprocessRuntime:
    """Runs a MAP's ``app.json`` command as a process of its own, for applications that must be isolated.

    The deployment names the MAP (``map_path``: its ``app.json`` and ``pkg.json``) and where its
    ``applicationRoot`` is on this host (``application_root``, default ``map_path``). The MAP's
    container roots are mapped to folders of this host: ``pkg.json#applicationRoot`` to the
    application root (in every environment value, e.g. ``PYTHONPATH``, and in the command), ``modelRoot`` to the
    deployment's model path, and the ``HOLOSCAN_*`` input, output, model and work paths to the job's
    folders. ``HOLOSCAN_CONFIG_PATH`` points at the MAP's ``app.yaml`` when it has one. The command
    finds its interpreter on this worker's ``PATH`` (its virtual environment first). Past the timeout
    the process group is killed (:class:`ApplicationTimedOut`); a non-zero exit is
    :class:`ApplicationFailed` with the end of what the application printed.
    """

    name: ClassVar[str] = "subprocess"

    def __init__(self, allowed_environment: Sequence[str] = ("PATH",)) -> None:
        """``allowed_environment``: the worker's variables the application may see (``NAME`` or ``PREFIX*``)."""
        self._exact = frozenset(name for name in allowed_environment if not name.endswith("*"))
        self._prefixes = tuple(name[:-1] for name in allowed_environment if name.endswith("*"))

    def _passed(self, name: str) -> bool:
        return name in self._exact or name.startswith(self._prefixes)

    def environment(self, run: ApplicationRun) -> dict[str, str]:
        """The process's environment: the worker's allowed variables, the MAP's own (container roots mapped),
        and the job's paths; no other variable of the worker (its database URL, passwords, tokens)."""
        map_path, application_root = _locations(run)
        manifests = load_map(map_path).manifests
        env = {name: value for name, value in os.environ.items() if self._passed(name)}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
        for key, value in manifests.app.environment.items():
            env[key] = _on_host(str(value), run)
        env["HOLOSCAN_APPLICATION"] = str(application_root)
        env["HOLOSCAN_INPUT_PATH"] = str(run.input_dir)
        env["HOLOSCAN_OUTPUT_PATH"] = str(run.output_dir)
        env["HOLOSCAN_MODEL_PATH"] = str(run.model_path)
        env["HOLOSCAN_WORKDIR"] = str(run.workdir)
        config = map_path / "app.yaml"
        if config.is_file():
            env["HOLOSCAN_CONFIG_PATH"] = str(config)
        return env

    def run(self, run: ApplicationRun) -> None:
        """Run the MAP's command on one job's folders; its output goes to ``application.log`` in the workdir."""
        map_path, _ = _locations(run)
        argv = [_on_host(item, run) for item in load_map(map_path).manifests.app.argv]
        log = run.workdir / "application.log"
        timeout_s = run.timeout_s
        started = time.monotonic()
        with log.open("wb") as output:
            process = subprocess.Popen(
                argv, cwd=run.workdir, env=self.environment(run), stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout stops everything it started
            )  # fmt: skip
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise ApplicationTimedOut(
                    f"stopped after {time.monotonic() - started:.0f} s: past its timeout of {timeout_s:g} s"
                ) from None
        if code != 0:
            tail = log.read_bytes()[-1500:].decode(errors="replace").strip().splitlines()[-8:]
            raise ApplicationFailed(f"{argv[0]} exited with code {code}: " + " | ".join(tail))

    def close(self) -> None:
        """Nothing is kept between runs."""


def _on_host(text: str, run: ApplicationRun) -> str:
    """``text`` (an environment value or an argument) with the MAP's container roots mapped to this host's
    folders: ``applicationRoot`` to the application root, ``modelRoot`` to the deployment's model path."""
    map_path, application_root = _locations(run)
    pkg = load_map(map_path).manifests.pkg
    roots = [
        (pkg.application_root.rstrip("/"), str(application_root)),
        (pkg.model_root.rstrip("/"), str(run.model_path)),
    ]
    for container, host in roots:
        text = text.replace(container, host)
    return text


def _locations(run: ApplicationRun) -> tuple[Path, Path]:
    """The MAP's folder and its application root on this host (validated with the deployment)."""
    deployment = run.deployment
    if deployment.map_path is None:
        raise ApplicationFailed(f"deployment {deployment.name!r} runs as a subprocess but names no map_path")
    return deployment.map_path, deployment.application_root or deployment.map_path
