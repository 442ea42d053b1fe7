"""Which runtime runs a deployment's jobs: every way of running an application keeps one protocol, and a
worker picks the way from what the MAP declares, what the worker has, and whether it runs in a cluster.
A MAP declaring GPUs that neither the worker nor a Kubernetes Job can give is refused with the reason,
never run on the CPU unasked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hounsfield.catalog import DeploymentSpec
from hounsfield.config import Settings
from hounsfield.db import Job, JobState
from hounsfield.worker.pipeline import execute_job
from hounsfield.worker.runtimes import ApplicationRun, ResourcesUnavailable, Runtime, Runtimes
from tests.services.catalog.test_manifests import spec_app, spec_pkg
from tests.support import EXAMPLE_MAP, REPO, application_run, routed_job

GPU_MAP = {"app": spec_app(), "pkg": spec_pkg()}  # declares 1 GPU
SMALL_MAP = {"app": spec_app(), "pkg": spec_pkg(resources={"cpu": 1, "memory": "2Gi"})}


def _deployment(tmp_path: Path, **fields: object) -> DeploymentSpec:
    return application_run(input_dir=tmp_path, output_dir=tmp_path, workdir=tmp_path, **fields).deployment


def _worker(settings: Settings, tmp_path: Path, **worker: Any) -> Runtimes:
    return Runtimes(settings.model_copy(update={"worker": settings.worker.model_copy(update=worker)}), tmp_path)


def test_every_runtime_keeps_the_protocol(settings: Settings, tmp_path: Path) -> None:
    runtimes = Runtimes(settings, tmp_path)
    kept = [runtimes.in_process, runtimes.subprocess, runtimes.container, runtimes.kubernetes]
    assert all(isinstance(runtime, Runtime) for runtime in kept)
    assert len({runtime.name for runtime in kept}) == 4, "logs tell the runtimes apart by name"
    runtimes.in_process.close()


def test_outside_a_cluster_a_gpu_map_runs_only_on_a_worker_with_gpus(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cpu_worker = Runtimes(settings, tmp_path)
    assert cpu_worker.for_deployment(_deployment(tmp_path)) is cpu_worker.in_process, "no MAP: nothing declared"
    assert cpu_worker.for_deployment(_deployment(tmp_path, runtime="subprocess")) is cpu_worker.subprocess
    assert cpu_worker.for_deployment(_deployment(tmp_path, map_manifest=SMALL_MAP)) is cpu_worker.in_process
    gpu = _deployment(tmp_path, image="maps/bleed:1.2.0", map_manifest=GPU_MAP)
    with pytest.raises(ResourcesUnavailable, match=r"declares 1 GPU\(s\); this worker has 0 .*outside a cluster"):
        cpu_worker.for_deployment(gpu)
    gpu_worker = _worker(settings, tmp_path, gpus=1)
    assert gpu_worker.for_deployment(gpu) is gpu_worker.in_process


def test_in_a_cluster_a_gpu_map_runs_as_a_kubernetes_job_unless_the_worker_has_the_gpus(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    runtimes = Runtimes(settings, tmp_path)
    gpu = _deployment(tmp_path, image="maps/bleed:1.2.0", map_manifest=GPU_MAP, runtime="subprocess")
    assert runtimes.for_deployment(gpu) is runtimes.kubernetes
    with pytest.raises(ResourcesUnavailable, match="no image"):
        runtimes.for_deployment(_deployment(tmp_path, map_manifest=GPU_MAP))
    small = _deployment(tmp_path, image="maps/small:1.0.0", map_manifest=SMALL_MAP)
    assert runtimes.for_deployment(small) is runtimes.in_process, "a small MAP stays in the worker"
    big = _deployment(
        tmp_path,
        image="maps/big:1.0.0",
        map_manifest={"app": spec_app(), "pkg": spec_pkg(resources={"memory": "64Gi"})},
    )
    assert runtimes.for_deployment(big) is runtimes.kubernetes, "large memory: a Job"
    gpu_worker = _worker(settings, tmp_path, gpus=2)
    assert gpu_worker.for_deployment(gpu) is gpu_worker.subprocess, "the GPU worker uses its own GPU"
    assert gpu_worker.for_deployment(big) is gpu_worker.kubernetes, "large memory, no GPU: a Job asking for none"
    switched_off = _worker(
        settings, tmp_path, kubernetes=settings.worker.kubernetes.model_copy(update={"enabled": False})
    )
    with pytest.raises(ResourcesUnavailable, match=r"worker\.kubernetes\.enabled is false"):
        switched_off.for_deployment(gpu)


def test_a_job_whose_map_needs_a_gpu_the_worker_lacks_fails_with_the_reason(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    gpu_map = tmp_path / "gpu-map"
    gpu_map.mkdir()
    (gpu_map / "app.json").write_text((EXAMPLE_MAP / "app.json").read_text())
    pkg = json.loads((EXAMPLE_MAP / "pkg.json").read_text())
    (gpu_map / "pkg.json").write_text(json.dumps({**pkg, "resources": {**pkg["resources"], "gpu": 1}}))
    isolated = {"runtime": "subprocess", "app": None, "map_path": gpu_map, "application_root": REPO, "destinations": []}
    context, job = routed_job(tmp_path, settings, 8, **isolated)
    assert execute_job(context, job.id) is JobState.FAILED
    with context.db.session() as session:
        stored = session.get(Job, job.id)
        assert stored is not None and stored.error is not None
        assert "declares 1 GPU(s); this worker has 0 (worker.gpus)" in stored.error
        assert "inference" not in stored.timings, "the application never ran"
    context.db.dispose()


def test_a_worker_holding_gpus_never_submits_a_job_that_asks_for_more(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU worker's Job would ask the cluster for GPUs while the worker holds its own idle, and wait for
    them where the worker's GPUs are the only ones. It runs every GPU MAP its GPUs cover itself, large
    memory or not, and refuses with the reason one that declares more; only CPU workers submit GPU Jobs."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    large_gpu = {"app": spec_app(), "pkg": spec_pkg(resources={"cpu": 4, "gpu": 1, "memory": "32Gi"})}
    two_gpus = {"app": spec_app(), "pkg": spec_pkg(resources={"cpu": 4, "gpu": 2, "memory": "8Gi"})}
    gpu_worker = _worker(settings, tmp_path, gpus=1)
    large = _deployment(tmp_path, image="maps/large:1.0.0", map_manifest=large_gpu)
    assert gpu_worker.for_deployment(large) is gpu_worker.in_process, "its own GPU, whatever the memory"
    with pytest.raises(ResourcesUnavailable, match=r"declares 2 GPU\(s\); this worker holds 1 .*submits no Job"):
        gpu_worker.for_deployment(_deployment(tmp_path, image="maps/two:1.0.0", map_manifest=two_gpus))
    cpu_worker = Runtimes(settings, tmp_path)
    for manifest in (large_gpu, two_gpus):
        deployment = _deployment(tmp_path, image="maps/any:1.0.0", map_manifest=manifest)
        assert cpu_worker.for_deployment(deployment) is cpu_worker.kubernetes, "a CPU worker submits GPU Jobs"


def test_a_container_gets_a_gpu_only_on_a_worker_with_one(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    image = "localhost/bleed@sha256:" + "ab" * 32
    gpu = _deployment(tmp_path, runtime="container", image=image, map_manifest=GPU_MAP)
    with pytest.raises(ResourcesUnavailable, match="1 GPU"):
        Runtimes(settings, tmp_path).for_deployment(gpu)
    gpu_worker = _worker(settings, tmp_path, gpus=1)
    runtime = gpu_worker.for_deployment(gpu)
    assert runtime is gpu_worker.container
    command = gpu_worker.container.command(ApplicationRun("job-1", gpu, tmp_path, tmp_path, tmp_path), "job")
    assert command[command.index("--device") + 1] == "nvidia.com/gpu=all"
    small = _deployment(tmp_path, runtime="container", image=image, map_manifest=SMALL_MAP)
    command = gpu_worker.container.command(ApplicationRun("job-2", small, tmp_path, tmp_path, tmp_path), "job")
    assert "--device" not in command, "no GPU for a MAP declaring none"
