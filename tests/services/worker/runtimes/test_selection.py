"""Which runtime runs a deployment's jobs: every way of running an application keeps one protocol, and a
worker picks the way from the deployment (and, for a MAP needing a GPU or large memory, from the cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hounsfield.catalog import DeploymentSpec
from hounsfield.config import Settings
from hounsfield.worker.runtimes import (
    Runtime,
    Runtimes,
)
from tests.services.catalog.test_manifests import spec_app, spec_pkg
from tests.support import application_run


def _deployment(tmp_path: Path, **fields: object) -> DeploymentSpec:
    return application_run(input_dir=tmp_path, output_dir=tmp_path, workdir=tmp_path, **fields).deployment


def test_every_runtime_keeps_the_protocol(settings: Settings, tmp_path: Path) -> None:
    runtimes = Runtimes(settings, tmp_path)
    kept = [runtimes.in_process, runtimes.subprocess, runtimes.kubernetes]
    assert all(isinstance(runtime, Runtime) for runtime in kept)
    assert len({runtime.name for runtime in kept}) == 3, "logs tell the runtimes apart by name"
    runtimes.in_process.close()


def test_a_deployment_runs_in_its_own_runtime_out_of_a_cluster(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    runtimes = Runtimes(settings, tmp_path)
    gpu_map = {"app": spec_app(), "pkg": spec_pkg()}  # declares a GPU
    assert runtimes.for_deployment(_deployment(tmp_path)) is runtimes.in_process
    assert runtimes.for_deployment(_deployment(tmp_path, runtime="subprocess")) is runtimes.subprocess
    outside = _deployment(tmp_path, image="maps/bleed:1.2.0", map_manifest=gpu_map)
    assert runtimes.for_deployment(outside) is runtimes.in_process, "no cluster: no Kubernetes Job"


def test_in_a_cluster_a_map_needing_a_gpu_runs_as_a_kubernetes_job(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    runtimes = Runtimes(settings, tmp_path)
    gpu_map = {"app": spec_app(), "pkg": spec_pkg()}
    small_map = {"app": spec_app(), "pkg": spec_pkg(resources={"cpu": 1, "memory": "2Gi"})}
    gpu = _deployment(tmp_path, image="maps/bleed:1.2.0", map_manifest=gpu_map, runtime="subprocess")
    assert runtimes.for_deployment(gpu) is runtimes.kubernetes
    assert runtimes.for_deployment(_deployment(tmp_path, map_manifest=gpu_map)) is runtimes.in_process, "no image"
    small = _deployment(tmp_path, image="maps/small:1.0.0", map_manifest=small_map)
    assert runtimes.for_deployment(small) is runtimes.in_process, "a small MAP stays in the worker"
    kubernetes_off = settings.worker.kubernetes.model_copy(update={"enabled": False})
    off = settings.model_copy(update={"worker": settings.worker.model_copy(update={"kubernetes": kubernetes_off})})
    switched_off = Runtimes(off, tmp_path)
    assert switched_off.for_deployment(gpu) is switched_off.subprocess, "the Kubernetes runtime switched off"
