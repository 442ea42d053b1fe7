"""The container runtime: a MAP's image run with podman (or docker) on the worker's host, without Kubernetes.

For single-host installations: the job's folders are mounted at the MAP spec's paths (input read-only
at ``/var/holoscan/input``, output at ``/var/holoscan/output``, the job's work folder with its
``result_context.json`` at ``/var/holoscan/work``), ``HOLOSCAN_*`` point there, and the image's
``app.json`` command runs with:

- the CPU and memory ``pkg.json`` declares as limits (``cpuLimit``/``memoryLimit`` where given),
  its ``sharedMemory`` as ``/dev/shm``, a process limit;
- a read-only root file system, a memory-backed ``/tmp``, every capability dropped, no privilege
  escalation, a user that is not root;
- no network unless the deployment allows it (``network: true``);
- no variable of the worker's environment: only the MAP's own ``app.json#environment`` and the job's
  paths (the worker's environment holds the database URL and the destinations' credentials);
- the deployment's timeout: past it the container is killed and removed (:class:`ApplicationTimedOut`).

The image's manifests come from the catalog version (``map_manifest``) when the deployment's version is
registered, else from the image itself (read once per image, nothing in it run).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

from hounsfield import containers
from hounsfield.catalog.manifests import MapManifests, load_map, memory_bytes, parse_manifests
from hounsfield.catalog.read_model import DeploymentSpec
from hounsfield.config import ContainerSettings
from hounsfield.worker.runtimes.base import ApplicationFailed, ApplicationRun, ApplicationTimedOut

__all__ = ["ContainerRuntime"]

logger = logging.getLogger(__name__)

INPUT = "/var/holoscan/input"
OUTPUT = "/var/holoscan/output"
WORK = "/var/holoscan/work"
_CONTROLLED = frozenset(
    {
        "HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH", "HOLOSCAN_WORKDIR", "HOLOSCAN_LOGS_PATH",
        "HOLOSCAN_MODEL_PATH",
    }
)  # fmt: skip
"""Set by the runtime for each job, whatever the MAP's environment says."""


class ContainerRuntime:
    """Runs a deployment's MAP image with the container engine; see the module docstring."""

    name: ClassVar[str] = "container"

    def __init__(self, settings: ContainerSettings, *, gpus: int = 0) -> None:
        self._settings = settings
        self._gpus = gpus
        self._manifests: dict[str, MapManifests] = {}
        self._lock = threading.Lock()

    # --- what a job's container is ----------------------------------------------------------------------------

    def manifests(self, deployment: DeploymentSpec) -> MapManifests:
        """The MAP's manifests: the catalog version's, else read from the image (cached per image)."""
        if deployment.map_manifest is not None:
            return parse_manifests(deployment.map_manifest["app"], deployment.map_manifest["pkg"])
        image = _image(deployment)
        with self._lock:
            if image not in self._manifests:
                with tempfile.TemporaryDirectory(prefix="hounsfield-map-") as folder:
                    containers.extract(image, ["/etc/holoscan/app.json", "/etc/holoscan/pkg.json"], Path(folder))
                    self._manifests[image] = load_map(Path(folder)).manifests
            return self._manifests[image]

    def user(self) -> str:
        """``uid:gid`` the application runs as: the worker's own, or ``worker.container.user`` for a root worker."""
        if os.geteuid() != 0:
            return f"{os.geteuid()}:{os.getegid()}"
        return self._settings.user

    def command(self, run: ApplicationRun, container_name: str) -> list[str]:
        """The engine's ``run`` command for one job (see the module docstring)."""
        manifests = self.manifests(run.deployment)
        resources = manifests.pkg.resources
        settings = self._settings
        argv = manifests.app.argv
        cpus = resources.cpu_limit or resources.cpu
        memory = memory_bytes(resources.memory_limit or resources.memory)
        command = [containers.engine(), "run", "--rm", "--name", container_name, f"--pull={settings.pull}"]
        command += ["--read-only", "--tmpfs", f"/tmp:rw,size={memory_bytes(settings.tmp_size)},mode=1777"]
        command += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", self.user()]
        command += ["--cpus", f"{cpus:g}", "--memory", str(memory), "--memory-swap", str(memory)]
        command += ["--shm-size", str(memory_bytes(resources.shared_memory)), "--pids-limit", str(settings.pids_limit)]
        command += ["--network", settings.network if run.deployment.network else "none"]
        if resources.gpu:
            command += ["--device", settings.gpu_device]
        command += ["--volume", f"{run.input_dir}:{INPUT}:ro"]
        command += ["--volume", f"{run.output_dir}:{OUTPUT}:rw", "--volume", f"{run.workdir}:{WORK}:rw"]
        for key, value in self.environment(run, manifests).items():
            command += ["--env", f"{key}={value}"]
        command += ["--workdir", WORK, "--entrypoint", argv[0], _image(run.deployment), *argv[1:]]
        return command

    @staticmethod
    def environment(run: ApplicationRun, manifests: MapManifests) -> dict[str, str]:
        """The container's environment: the MAP's own and the job's paths, nothing of the worker's."""
        env = {key: str(value) for key, value in manifests.app.environment.items() if key not in _CONTROLLED}
        env["HOLOSCAN_INPUT_PATH"] = INPUT
        env["HOLOSCAN_OUTPUT_PATH"] = OUTPUT
        env["HOLOSCAN_WORKDIR"] = WORK
        env["HOLOSCAN_LOGS_PATH"] = f"{WORK}/logs"
        env["HOLOSCAN_MODEL_PATH"] = manifests.pkg.model_root
        return env

    # --- running ----------------------------------------------------------------------------------------------

    def run(self, run: ApplicationRun) -> None:
        """Run the job's container to its end; its output goes to ``application.log`` in the workdir."""
        name = f"hounsfield-job-{run.job_id.replace('-', '')[:24]}"
        command = self.command(run, name)
        self._give_folders(run)
        log = run.workdir / "application.log"
        timeout_s = run.timeout_s
        started = time.monotonic()
        env = containers.engine_environment()
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._remove(name, env)
                process.wait()
                raise ApplicationTimedOut(
                    f"stopped after {time.monotonic() - started:.0f} s: past its timeout of {timeout_s:g} s "
                    "(its container killed and removed)"
                ) from None
            except BaseException:
                self._remove(name, env)  # the worker stops: its job's container does not outlive it
                raise
        if code != 0:
            tail = log.read_bytes()[-1500:].decode(errors="replace").strip().splitlines()[-8:]
            why = "the engine could not run it" if code in (125, 126, 127) else f"exited with code {code}"
            raise ApplicationFailed(f"{_image(run.deployment)} {why}: " + " | ".join(tail))

    def _give_folders(self, run: ApplicationRun) -> None:
        """A root worker gives the job's output and work folders to the application's user."""
        if os.geteuid() != 0:
            return
        uid, gid = (int(part) for part in self.user().split(":"))
        (run.workdir / "logs").mkdir(exist_ok=True)
        for folder in (run.output_dir, run.workdir, run.workdir / "logs"):
            os.chown(folder, uid, gid)
        for path in run.workdir.iterdir():
            if path.is_file():
                os.chmod(path, path.stat().st_mode | 0o044)  # result_context.json: readable by the application

    def _remove(self, name: str, env: dict[str, str]) -> None:
        engine = containers.engine()
        for argv in ([engine, "kill", "--signal", "KILL", name], [engine, "rm", "--force", name]):
            subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)

    def close(self) -> None:
        """Nothing is kept between runs but the manifests read from images."""
        with self._lock:
            self._manifests.clear()


def _image(deployment: DeploymentSpec) -> str:
    if not deployment.image:
        raise ApplicationFailed(f"deployment {deployment.name!r} runs in a container but names no image")
    return deployment.image
