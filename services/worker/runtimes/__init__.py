"""How a job's application runs: one :class:`Runtime` protocol, one module per way, and the choice.

- :mod:`.in_process` (``in-process``, the default): the App SDK Application class, imported once per
  worker, each job in a warm process forked from it.
- :mod:`.map_process` (``subprocess``): the MAP's ``app.json`` command as a process of its own.
- :mod:`.kubernetes`: a MAP that declares a GPU or large memory, run as a Kubernetes Job when the
  worker runs in a cluster and the deployment has an image.

:class:`Runtimes` holds one of each for a worker process and picks the one a deployment runs in.
"""

from __future__ import annotations

from pathlib import Path

from hounsfield.catalog.read_model import DeploymentSpec
from hounsfield.config import Settings
from hounsfield.worker.runtimes.base import ApplicationFailed, ApplicationRun, ApplicationTimedOut, Runtime
from hounsfield.worker.runtimes.in_process import InProcessRuntime
from hounsfield.worker.runtimes.kubernetes import KubernetesRuntime, runs_as_kubernetes_job
from hounsfield.worker.runtimes.map_process import SubprocessRuntime

__all__ = [
    "ApplicationFailed",
    "ApplicationRun",
    "ApplicationTimedOut",
    "InProcessRuntime",
    "KubernetesRuntime",
    "Runtime",
    "Runtimes",
    "SubprocessRuntime",
]


class Runtimes:
    """A worker process's runtimes; :meth:`for_deployment` says which one runs a deployment's jobs."""

    def __init__(self, settings: Settings, store_root: Path, *, in_process: InProcessRuntime | None = None) -> None:
        self._settings = settings.worker.kubernetes
        self.in_process = in_process or InProcessRuntime(settings.worker.app_max_jobs)
        self.subprocess = SubprocessRuntime(settings.worker.application_environment)
        self.kubernetes = KubernetesRuntime(settings.worker.kubernetes, store_root)

    def for_deployment(self, deployment: DeploymentSpec) -> Runtime:
        """A Kubernetes Job for a MAP declaring a GPU or large memory (in a cluster, with an image), else
        the deployment's own runtime."""
        if runs_as_kubernetes_job(deployment, self._settings):
            return self.kubernetes
        if deployment.runtime == "subprocess":
            return self.subprocess
        return self.in_process
