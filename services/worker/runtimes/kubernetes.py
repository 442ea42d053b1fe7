"""The Kubernetes runtime: a MAP that declares a GPU or large memory runs as a Kubernetes Job.

:func:`build_job` turns one job into a ``batch/v1`` Job: the MAP's image and ``app.json`` command,
exactly the CPU, memory and GPU its ``pkg.json`` declares (requests and limits), the node selector
and tolerations of the installation, the job's input, output and work folders as sub-paths of the
study store's ReadWriteMany claim (where the worker made them), a memory-backed ``/dev/shm``, the
installation's image pull secrets, the MAP's timeout as ``activeDeadlineSeconds``, a non-root,
read-only container that drops every capability.

:class:`KubernetesRuntime` submits it with the official client when the worker runs in a cluster
and follows it to its end. There is no cluster where the tests run: they validate the generated
Jobs against the Kubernetes API schemas (kubernetes-validate); the submission path is exercised
only in a cluster.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hounsfield.catalog.manifests import MapManifests, parse_manifests
from hounsfield.config import KubernetesSettings
from hounsfield.worker.runtimes.base import ApplicationFailed, ApplicationRun, ApplicationTimedOut

__all__ = ["KubernetesRuntime", "build_job", "in_cluster", "needs_kubernetes"]

logger = logging.getLogger(__name__)

_MOUNT = "/var/holoscan"
_GIB = 2**30
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def in_cluster() -> bool:
    """Whether this process runs in a Kubernetes pod (the service account's environment is set)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _bytes(quantity: str) -> float:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]i?)?\s*", quantity)
    if match is None:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return float(match.group(1)) * _UNITS.get(match.group(2) or "", 1)


def needs_kubernetes(manifests: MapManifests, settings: KubernetesSettings) -> bool:
    """A MAP declaring a GPU, or at least ``large_memory_gib`` of memory, runs as a Job where it can."""
    resources = manifests.pkg.resources
    if (resources.gpu or 0) > 0:
        return True
    return resources.memory is not None and _bytes(resources.memory) >= settings.large_memory_gib * _GIB


def _resources(manifests: MapManifests) -> dict[str, Any]:
    declared = manifests.pkg.resources
    amounts: dict[str, Any] = {}
    if declared.cpu:
        amounts["cpu"] = f"{declared.cpu:g}"
    if declared.memory:
        amounts["memory"] = declared.memory
    if declared.gpu:
        amounts["nvidia.com/gpu"] = str(int(declared.gpu))
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _name(job_id: str) -> str:
    return f"hounsfield-job-{job_id.replace('-', '')[:24]}"


def build_job(
    *,
    job_id: str,
    deployment: str,
    image: str,
    manifests: MapManifests,
    workspace: Path,
    store_root: Path,
    timeout_s: float,
    settings: KubernetesSettings,
) -> dict[str, Any]:
    """The ``batch/v1`` Job that runs one job's MAP (see the module's docstring)."""
    labels = {
        "app.kubernetes.io/name": "hounsfield-map",
        "app.kubernetes.io/managed-by": "hounsfield",
        "hounsfield.io/job-id": job_id,
        "hounsfield.io/deployment": deployment,
    }
    relative = workspace.resolve().relative_to(store_root.resolve()).as_posix()
    mounts = [
        {"name": "store", "mountPath": f"{_MOUNT}/input", "subPath": f"{relative}/input", "readOnly": True},
        {"name": "store", "mountPath": f"{_MOUNT}/output", "subPath": f"{relative}/output"},
        {"name": "store", "mountPath": f"{_MOUNT}/work", "subPath": f"{relative}/work"},
        # The input folder holds hard links into the store's studies: the links resolve within the claim.
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    env = {str(k): str(v) for k, v in manifests.app.environment.items()}
    env.update(
        {
            "HOLOSCAN_INPUT_PATH": f"{_MOUNT}/input",
            "HOLOSCAN_OUTPUT_PATH": f"{_MOUNT}/output",
            "HOLOSCAN_WORKDIR": f"{_MOUNT}/work",
            "HOLOSCAN_MODEL_PATH": manifests.pkg.model_root.rstrip("/") or "/opt/holoscan/models",
        }
    )
    node_selector = {**settings.node_selector}
    if (manifests.pkg.resources.gpu or 0) > 0:
        node_selector.update(settings.gpu_node_selector)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "map",
                "image": image,
                "command": manifests.app.argv,
                "workingDir": f"{_MOUNT}/work",
                "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
                "resources": _resources(manifests),
                "volumeMounts": mounts,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [
            {"name": "store", "persistentVolumeClaim": {"claimName": settings.store_claim}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
        ],
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    if settings.tolerations:
        pod["tolerations"] = list(settings.tolerations)
    if settings.service_account:
        pod["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": _name(job_id), "namespace": settings.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(timeout_s)),
            "ttlSecondsAfterFinished": settings.ttl_after_finished_s,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


@dataclass(frozen=True)
class KubernetesRuntime:
    """Submits a job's MAP as a Kubernetes Job (in a cluster) and waits for its end."""

    name: ClassVar[str] = "kubernetes"

    settings: KubernetesSettings
    store_root: Path
    """The study store on this worker: the jobs' folders are mounted from the same claim, by sub-path."""

    def run(self, run: ApplicationRun) -> None:
        from kubernetes import client, config, watch  # imported where it runs: only workers in a cluster

        deployment, timeout_s = run.deployment, run.timeout_s
        if deployment.image is None or deployment.map_manifest is None:
            raise ApplicationFailed(f"deployment {deployment.name!r} has no image or MAP manifest for Kubernetes")
        manifests = parse_manifests(deployment.map_manifest["app"], deployment.map_manifest["pkg"])
        body = build_job(
            job_id=run.job_id, deployment=deployment.name, image=deployment.image, manifests=manifests,
            workspace=run.input_dir.parent, store_root=self.store_root, timeout_s=timeout_s or 3600,
            settings=self.settings,
        )  # fmt: skip
        config.load_incluster_config()
        batch = client.BatchV1Api()
        name, namespace = body["metadata"]["name"], self.settings.namespace
        batch.create_namespaced_job(namespace, body)
        logger.info("job %s submitted as Kubernetes Job %s/%s", run.job_id, namespace, name)
        try:
            stream = watch.Watch().stream(
                batch.list_namespaced_job, namespace, field_selector=f"metadata.name={name}",
                timeout_seconds=int((timeout_s or 3600) + 300),
            )  # fmt: skip
            for event in stream:  # the API server tells us each change of the Job: no polling
                for condition in event["object"].status.conditions or []:
                    if condition.status != "True":
                        continue
                    if condition.type == "Complete":
                        return
                    if condition.type == "Failed" and condition.reason == "DeadlineExceeded":
                        raise ApplicationTimedOut(f"Kubernetes stopped Job {name}: past its timeout of {timeout_s:g} s")
                    if condition.type == "Failed":
                        raise ApplicationFailed(
                            f"Kubernetes Job {name} failed: {condition.reason}: {condition.message}"
                        )
            raise ApplicationFailed(f"Kubernetes Job {name}: no end seen before the watch expired")
        finally:
            batch.delete_namespaced_job(name, namespace, propagation_policy="Background")

    def close(self) -> None:
        """Nothing is kept between runs (each Job is deleted when it ends)."""
