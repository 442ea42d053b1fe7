"""The Kubernetes runtime's Jobs, validated against the Kubernetes API schemas.

There is no cluster here: the generated Jobs are checked with kubernetes-validate (the schemas of a
recent Kubernetes release), and their fields against what the MAP's manifests declare. Submitting
and following a Job runs only in a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from hounsfield.catalog.manifests import parse_manifests
from hounsfield.config import KubernetesSettings
from hounsfield.worker.runtimes.kubernetes import build_job, needs_kubernetes
from tests.services.catalog.test_manifests import spec_app, spec_pkg
from tests.support import REPO

KUBERNETES = kubernetes_validate.utils.latest_version()
SETTINGS = KubernetesSettings(
    gpu_node_selector={"nvidia.com/gpu.present": "true"},
    node_selector={"hounsfield.io/pool": "inference"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    service_account="hounsfield-worker",
    image_pull_secrets=["hospital-registry", "vendor-maps"],
    shm_size="2Gi",
)


def _arguments(tmp_path: Path, pkg: dict[str, Any], **changes: Any) -> dict[str, Any]:
    workspace = tmp_path / "data" / "jobs" / "0b5c2d9e-1f0a-4c1e-9f5e-3a2b1c0d9e8f"
    return {
        "job_id": workspace.name, "deployment": "head-ct-bleed-v2", "image": "registry.local/maps/bleed:1.2.0",
        "manifests": parse_manifests(spec_app(), pkg), "workspace": workspace, "store_root": tmp_path / "data",
        "timeout_s": 300, "settings": SETTINGS, **changes,
    }  # fmt: skip


def _job(tmp_path: Path, pkg: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return build_job(**_arguments(tmp_path, pkg, **changes))


def test_which_maps_run_as_kubernetes_jobs() -> None:
    example = json.loads((REPO / "operators" / "ct_lesion_seg" / "pkg.json").read_text())
    app = json.loads((REPO / "operators" / "ct_lesion_seg" / "app.json").read_text())
    assert not needs_kubernetes(parse_manifests(app, example), SETTINGS), "1 CPU, 2 GiB, no GPU: in the worker"
    assert needs_kubernetes(parse_manifests(spec_app(), spec_pkg()), SETTINGS), "a GPU"
    big = spec_pkg(resources={"cpu": 4, "gpu": 0, "memory": "32Gi"})
    assert needs_kubernetes(parse_manifests(spec_app(), big), SETTINGS), "32 GiB of memory"
    assert not needs_kubernetes(parse_manifests(spec_app(), spec_pkg(resources={"memory": "8Gi"})), SETTINGS)


def test_a_gpu_maps_job_validates_and_requests_exactly_what_pkg_json_declares(tmp_path: Path) -> None:
    job = _job(tmp_path, spec_pkg())
    kubernetes_validate.validate(job, KUBERNETES, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    declared = {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}  # spec_pkg's resources
    assert container["resources"] == {"requests": declared, "limits": declared}
    assert job["spec"]["activeDeadlineSeconds"] == 300 and job["spec"]["backoffLimit"] == 0
    assert pod["nodeSelector"] == {"hounsfield.io/pool": "inference", "nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == SETTINGS.tolerations and pod["serviceAccountName"] == "hounsfield-worker"
    assert container["command"] == ["python3", "-u", "/opt/holoscan/app/main.py"]
    assert container["image"] == "registry.local/maps/bleed:1.2.0"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    sub = "jobs/0b5c2d9e-1f0a-4c1e-9f5e-3a2b1c0d9e8f"
    assert mounts["/var/holoscan/input"] == {
        "name": "store", "mountPath": "/var/holoscan/input", "subPath": f"{sub}/input", "readOnly": True,
    }  # fmt: skip
    assert mounts["/var/holoscan/output"]["subPath"] == f"{sub}/output"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HOLOSCAN_INPUT_PATH"] == "/var/holoscan/input" and env["HOLOSCAN_OUTPUT_PATH"] == "/var/holoscan/output"
    assert pod["volumes"][0] == {"name": "store", "persistentVolumeClaim": {"claimName": "hounsfield-store"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert len(job["metadata"]["name"]) <= 63


def test_a_cpu_only_large_memory_job_has_no_gpu_and_no_gpu_node_selector(tmp_path: Path) -> None:
    job = _job(tmp_path, spec_pkg(resources={"cpu": 8, "memory": "64Gi"}), timeout_s=7200)
    kubernetes_validate.validate(job, KUBERNETES, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "64Gi"}
    assert pod["nodeSelector"] == {"hounsfield.io/pool": "inference"}
    assert job["spec"]["activeDeadlineSeconds"] == 7200


def test_the_schema_check_does_fail_on_a_broken_job(tmp_path: Path) -> None:
    job = _job(tmp_path, spec_pkg())
    job["spec"]["backoffLimit"] = "none"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES, strict=True)
    job = _job(tmp_path, spec_pkg())
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1  # not a field of a Container
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES, strict=True)


def test_a_job_pulls_with_the_installations_secrets_and_has_a_memory_backed_dev_shm(tmp_path: Path) -> None:
    """A MAP image from the hospital's registry needs its pull secrets; PyTorch's DataLoader workers share
    tensors through /dev/shm, which a container runtime gives 64 MiB unless a memory volume is mounted."""
    job = _job(tmp_path, spec_pkg())
    kubernetes_validate.validate(job, KUBERNETES, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "hospital-registry"}, {"name": "vendor-maps"}]
    (container,) = pod["containers"]
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]
    plain = build_job(**{**_arguments(tmp_path, spec_pkg()), "settings": KubernetesSettings()})
    assert "imagePullSecrets" not in plain["spec"]["template"]["spec"], "none named: none asked for"
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in plain["spec"]["template"]["spec"][
        "volumes"
    ]
