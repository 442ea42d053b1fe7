"""How a job's application runs: one :class:`Runtime` protocol, one module per way, and the choice.

- :mod:`.in_process` (``in-process``, the default): the App SDK Application class, imported once per
  worker, each job in a warm process forked from it.
- :mod:`.map_process` (``subprocess``): the MAP's ``app.json`` command as a process of its own.
- :mod:`.container` (``container``): the MAP's image run with podman or docker on the worker's host.
- :mod:`.kubernetes`: a MAP that declares a GPU or large memory, run as a Kubernetes Job when the
  worker runs in a cluster and the deployment has an image.

:class:`Runtimes` holds one of each for a worker process and picks the one a deployment runs in; a
MAP that declares GPUs neither this worker nor a Kubernetes Job can give is refused
(:class:`ResourcesUnavailable`), never run on the CPU unasked.
"""

from __future__ import annotations

from pathlib import Path

from hounsfield.catalog.manifests import MapManifests, load_map, parse_manifests
from hounsfield.catalog.read_model import DeploymentSpec
from hounsfield.config import Settings
from hounsfield.errors import HounsfieldError
from hounsfield.worker.runtimes.base import ApplicationFailed, ApplicationRun, ApplicationTimedOut, Runtime
from hounsfield.worker.runtimes.container import ContainerRuntime
from hounsfield.worker.runtimes.in_process import InProcessRuntime
from hounsfield.worker.runtimes.kubernetes import KubernetesRuntime, in_cluster, needs_kubernetes
from hounsfield.worker.runtimes.map_process import SubprocessRuntime

__all__ = [
    "ApplicationFailed",
    "ApplicationRun",
    "ApplicationTimedOut",
    "ContainerRuntime",
    "InProcessRuntime",
    "KubernetesRuntime",
    "ResourcesUnavailable",
    "Runtime",
    "Runtimes",
    "SubprocessRuntime",
]


class ResourcesUnavailable(HounsfieldError):
    """The deployment's MAP declares GPUs this worker cannot give it, and it cannot run as a Kubernetes Job
    here either: the job is refused with the reason, never run on the CPU unasked."""


class Runtimes:
    """A worker process's runtimes; :meth:`for_deployment` says which one runs a deployment's jobs."""

    def __init__(self, settings: Settings, store_root: Path, *, in_process: InProcessRuntime | None = None) -> None:
        self._kubernetes_settings = settings.worker.kubernetes
        self._gpus = settings.worker.gpus
        self.in_process = in_process or InProcessRuntime(settings.worker.app_max_jobs)
        self.subprocess = SubprocessRuntime(settings.worker.application_environment)
        self.container = ContainerRuntime(settings.worker.container, gpus=settings.worker.gpus)
        self.kubernetes = KubernetesRuntime(settings.worker.kubernetes, store_root)

    def for_deployment(self, deployment: DeploymentSpec) -> Runtime:
        """Where a deployment's job runs, from what its MAP declares (``pkg.json#resources``):

        - GPUs this worker has (``worker.gpus``): here, in the deployment's runtime, whatever the memory;
        - more GPUs than a worker holding GPUs has: :class:`ResourcesUnavailable`. Its Job would ask the
          cluster for GPUs while the worker holds its own idle, and wait for ever where they are the only ones:
          only a worker without GPUs submits GPU Jobs;
        - GPUs (on a worker without them), or at least ``worker.kubernetes.large_memory_gib`` of memory: a
          Kubernetes Job, when the worker runs in a cluster, the runtime is enabled and the deployment has an image;
        - GPUs that neither can give: :class:`ResourcesUnavailable`;
        - otherwise (nothing special declared, or no MAP): here, in the deployment's runtime.
        """
        local: Runtime = self.in_process
        if deployment.runtime == "subprocess":
            local = self.subprocess
        elif deployment.runtime == "container":
            local = self.container
        manifests = (
            self.container.manifests(deployment) if deployment.runtime == "container" else _manifests(deployment)
        )
        if manifests is None:
            return local
        gpus = int(manifests.pkg.resources.gpu or 0)
        settings = self._kubernetes_settings
        if 0 < gpus <= self._gpus:
            return local
        if gpus and self._gpus:
            raise ResourcesUnavailable(
                f"{deployment.name}: its MAP declares {gpus} GPU(s); this worker holds {self._gpus} (worker.gpus) "
                "and submits no Job for more while it holds them: give the GPU worker as many "
                "(gpuWorker.mapPackage or gpuWorker.gpus)"
            )
        if needs_kubernetes(manifests, settings) and self._kubernetes_can_run(deployment):
            return self.kubernetes
        if gpus > self._gpus:
            raise ResourcesUnavailable(
                f"{deployment.name}: its MAP declares {gpus} GPU(s); this worker has {self._gpus} (worker.gpus), "
                f"and it cannot run as a Kubernetes Job here ({self._why_not_kubernetes(deployment)})"
            )
        return local

    def _kubernetes_can_run(self, deployment: DeploymentSpec) -> bool:
        return not self._why_not_kubernetes(deployment)

    def _why_not_kubernetes(self, deployment: DeploymentSpec) -> str:
        if not self._kubernetes_settings.enabled:
            return "worker.kubernetes.enabled is false"
        if not in_cluster():
            return "the worker runs outside a cluster"
        if not deployment.image or deployment.map_manifest is None:
            return "the deployment has no image of a registered MAP"
        return ""


def _manifests(deployment: DeploymentSpec) -> MapManifests | None:
    """The MAP manifests of a deployment: its catalog version's, else those in its MAP folder (subprocess)."""
    if deployment.map_manifest is not None:
        return parse_manifests(deployment.map_manifest["app"], deployment.map_manifest["pkg"])
    if deployment.map_path is not None:
        return load_map(deployment.map_path).manifests
    return None
