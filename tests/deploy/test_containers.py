"""The images built, and the chart's workloads run from them on this host, a study in and its results in a PACS.

`make images` builds the services and worker images (deploy/images.py; the base from Debian packages
when no public image can be pulled). The chart is rendered as a hospital would install it, with values
for one host, and `podman kube play` runs its workloads (tests/deploy/kube_play.py stands in for what
only a cluster has: Service names, the kubelet's secret variables, StatefulSet and Job controllers):
PostgreSQL and Redis (images made here from Debian's packages, as the public ones cannot be pulled), the
migrations Job, the listener, the registry and one worker. A PACS (Orthanc, from Debian's package, in a
container on the same base) receives the results. dcmtk's storescu sends a synthetic CT study to the
listener's container, and the SEG and SR must arrive in Orthanc, made by the model the chart deployed.

Runs wherever podman is installed (CI installs it); skipped, saying so, elsewhere.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import psycopg
import pydicom
import pytest
import yaml

from hounsfield.demo.orthanc import free_port
from tests.deploy.kube_play import for_podman, secret_values
from tests.deploy.test_chart import CHART, NAMESPACE, render
from tests.support import write_study

REPO = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).with_name("containers")
TAG = "test"
MODEL = "/opt/hounsfield/lib/python3.11/site-packages/hounsfield_operators/ct_lesion_seg/models/model.ts"
ENV = {**os.environ, "TCP_NODELAY": "1"}

if shutil.which("podman") is None:
    pytest.skip("podman is not installed here (`make system-deps` installs it; CI does)", allow_module_level=True)

pytestmark = pytest.mark.containers


def _images_module() -> Any:
    spec = importlib.util.spec_from_file_location("hounsfield_images", REPO / "deploy" / "images.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


IMAGES = _images_module()


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], env=IMAGES.engine_environment(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc


# --- building -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    report: dict[str, Any]
    build_s: float
    peers: dict[str, str]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`make images` (as the README's command runs it), then the stack's peers on the same base."""
    report = tmp_path_factory.mktemp("images") / "images.json"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "images.py"), "images", "--tag", TAG, "--report", str(report)],
        capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads(report.read_text())
    peers = {}
    for target in ("orthanc", "redis", "postgresql"):
        name = f"localhost/hounsfield-test-{target}:{TAG}"
        podman(
            "build", "--format", "docker", "--network", "host", "--file", str(PEERS / "Containerfile"),
            "--target", target, "--build-arg", f"BASE_IMAGE={summary['base']}", "--tag", name, str(PEERS),
            timeout=1200,
        )  # fmt: skip
        peers[target] = name
    return Built(summary, round(time.monotonic() - started, 1), peers)


def test_images_carry_what_their_jobs_need_and_an_sbom(built: Built) -> None:
    images = {item["target"]: item for item in built.report["images"]}
    services, worker = images["services"]["image"], images["worker"]["image"]
    probe = "import importlib.util as u; print(sorted(m for m in ('torch', 'monai', 'holoscan') if u.find_spec(m)))"
    found = podman(
        "run", "--rm", "--read-only", "--entrypoint", "/opt/hounsfield/bin/python", services, "-c", probe
    ).stdout
    assert found.strip() == "[]", "the listener and registry image carries no PyTorch, MONAI or holoscan"
    found = podman("run", "--rm", "--read-only", "--entrypoint", "/opt/hounsfield/bin/python", worker, "-c", probe)
    assert found.stdout.strip() == "['holoscan', 'monai', 'torch']"
    version = "import sys; print('%d.%d' % sys.version_info[:2])"
    for image in (services, worker):
        user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
        assert user == "10001:10001", image
        python = podman("run", "--rm", "--entrypoint", "/opt/hounsfield/bin/python", image, "-c", version).stdout
        assert python.strip() == "{}.{}".format(*sys.version_info[:2]), "the images run the Python the tests run on"
    for item in images.values():
        sbom = json.loads((REPO / item["sbom"]).read_text())
        names = {_normalized(component["name"]) for component in sbom["components"]}
        lock = (REPO / "deploy" / "locks" / f"{item['target']}.txt").read_text().splitlines()
        locked = {_normalized(line.split("==")[0]) for line in lock if "==" in line and not line.startswith(" ")}
        assert locked <= names, f"{item['image']}: locked but not in its SBOM: {sorted(locked - names)}"
        assert ("torch" in names) == (item["target"] == "worker"), item["image"]
        debian = (REPO / item["debian_packages"]).read_text()
        for package in ("dicom3tools ", "libpixelmed-java ", "default-jre-headless "):
            assert package in debian, f"{item['image']}: the validation gate's {package.strip()} is missing"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the stack ------------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    listener_port: int
    registry_port: int
    orthanc_dicom: int
    orthanc_http: int
    played: list[dict[str, Any]]

    def containers(self) -> list[str]:
        names = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
        return [name for name in names if name.startswith("hf-hounsfield-")]


def _values(ports: dict[str, int], peers: dict[str, str]) -> dict[str, Any]:
    def image(name: str) -> dict[str, str]:
        repository, tag = name.rsplit(":", 1)
        return {"repository": repository, "tag": tag}

    routine = {"enabled": True, "replicas": 1, "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}
    return {
        "image": {**image(f"localhost/hounsfield:{TAG}"), "pullPolicy": "Never"},
        "workerImage": image(f"localhost/hounsfield-worker:{TAG}"),
        "postgresql": {"image": image(peers["postgresql"]), "port": ports["postgresql"]},
        "redis": {"image": image(peers["redis"]), "port": ports["redis"]},
        "listener": {
            "port": ports["listener"],
            "metricsPort": ports["metrics"],
            "quietPeriodSeconds": 5,
            "sources": {"modality": {"ae_title": "MODALITY"}},
        },
        "registry": {"port": ports["registry"], "metricsPort": ports["registry_metrics"]},
        "workers": {"stat": {"enabled": False}, "batch": {"enabled": False}, "routine": routine},
        "config": {
            "destinations": {
                "pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": ports["orthanc_dicom"], "clinical": True}
            },
            "deployments": [
                {
                    "name": "ct-lesion-seg",
                    "app": "hounsfield_operators.ct_lesion_seg.app:CTLesionSegApp",
                    "model_path": MODEL,
                    "model_name": "CT lesion segmentation",
                    "model_version": "1.0.0",
                    "mode": "research",
                    "queue": "routine",
                    "destinations": ["pacs"],
                    "rule": {"kind": "modality", "in": ["CT"]},
                }
            ],
        },
    }


def _play(objects: list[dict[str, Any]], folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    podman("kube", "play", str(path), timeout=300)
    return path


def _wait(what: str, check, timeout: float) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # what is awaited is not up yet
            result, last = None, exc
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:.0f} s: last {last!r}")


def _logs(names: list[str]) -> str:
    return "\n".join(
        f"--- {name}\n{podman('logs', '--tail', '40', name, check=False).stderr[-3000:]}" for name in names
    )


@pytest.fixture(scope="module")
def stack(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("stack")
    names = (
        "listener",
        "metrics",
        "registry",
        "registry_metrics",
        "postgresql",
        "redis",
        "orthanc_dicom",
        "orthanc_http",
    )
    ports = {name: free_port() for name in names}
    objects = render(helm.Chart.load(CHART), _values(ports, built.peers))
    played = for_podman(objects, folder / "scratch", namespace=NAMESPACE)
    for claim in (o["metadata"]["name"] for o in played if o["kind"] == "PersistentVolumeClaim"):
        podman("volume", "rm", "--force", claim, check=False)  # what an earlier run may have left
    secrets = secret_values(objects)
    played_files: list[Path] = []
    orthanc = "hf-test-orthanc"
    config = folder / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "hf-test-pacs", "DicomAet": "ORTHANC", "DicomPort": ports["orthanc_dicom"],
        "HttpPort": ports["orthanc_http"], "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False, "StorageDirectory": "/tmp/orthanc", "IndexDirectory": "/tmp/orthanc",
    }))  # fmt: skip
    try:
        podman(
            "run", "--detach", "--name", orthanc, "--network", "host", "--user", "999:999", "--read-only",
            "--volume", f"{config}:/etc/orthanc-test.json:ro", built.peers["orthanc"], "/etc/orthanc-test.json",
        )  # fmt: skip

        def named(*kinds: str, prefix: str = "") -> list[dict[str, Any]]:
            return [o for o in played if o["kind"] in kinds and o["metadata"]["name"].startswith(prefix)]

        # What the others need first: the configuration, the volumes, the database and the broker.
        # podman reads a pod's ConfigMaps from the file that plays it: each file carries them.
        base = named("ConfigMap", "PersistentVolumeClaim") + named("Deployment", prefix="hf-hounsfield-postgresql")
        base += named("Deployment", prefix="hf-hounsfield-redis")
        played_files.append(_play(base, folder, "base"))
        password = secrets["hf-hounsfield-postgresql"]["password"]
        dsn = f"host=127.0.0.1 port={ports['postgresql']} dbname=hounsfield user=hounsfield password={password}"
        _wait("PostgreSQL answering", lambda: psycopg.connect(dsn, connect_timeout=2).close() or True, 120)
        # The migrations Job (a pre-install hook in a cluster), to its end.
        (migrate,) = named("Pod")
        played_files.append(_play([*named("ConfigMap"), migrate], folder, "migrate"))
        container = f"{migrate['metadata']['name']}-{migrate['spec']['containers'][0]['name']}"
        code = podman("wait", container, timeout=300).stdout.strip()
        assert code == "0", f"the migrations ended {code}:\n{_logs([container])}"
        # The services.
        services = [o for o in named("Deployment") if o not in base]
        played_files.append(_play([*named("ConfigMap"), *services], folder, "services"))
        stack = Stack(ports["listener"], ports["registry"], ports["orthanc_dicom"], ports["orthanc_http"], played)
        try:
            _wait(
                "the registry's /health",
                lambda: httpx.get(f"http://127.0.0.1:{ports['registry']}/health").status_code == 200,
                180,
            )
            echo = ["/usr/bin/echoscu", "-aet", "MODALITY", "-aec", "HOUNSFIELD", "127.0.0.1", str(ports["listener"])]
            _wait(
                "the listener's C-ECHO",
                lambda: subprocess.run(echo, env=ENV, capture_output=True, check=False).returncode == 0,
                180,
            )
            workers = [name for name in stack.containers() if "worker" in name and "infra" not in name]
            _wait(
                "the worker ready",
                lambda: all(
                    podman("exec", name, "test", "-f", "/tmp/worker-ready", check=False).returncode == 0
                    for name in workers
                ),
                300,
            )
            _wait(
                "Orthanc", lambda: httpx.get(f"http://127.0.0.1:{ports['orthanc_http']}/system").status_code == 200, 60
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_logs(stack.containers())}") from None
        yield stack
    finally:
        for path in reversed(played_files):
            podman("kube", "down", str(path), check=False, timeout=300)
        podman("rm", "--force", orthanc, check=False)
        for claim in (o["metadata"]["name"] for o in played if o["kind"] == "PersistentVolumeClaim"):
            podman("volume", "rm", "--force", claim, check=False)


def test_a_study_sent_to_the_listener_container_comes_back_as_seg_and_sr_in_the_pacs(
    stack: Stack, tmp_path: Path
) -> None:
    study_uid, files = write_study(tmp_path / "ct", seed=1616, shape=(16, 64, 64))
    send = ["/usr/bin/storescu", "-aet", "MODALITY", "-aec", "HOUNSFIELD", "127.0.0.1", str(stack.listener_port)]
    proc = subprocess.run([*send, *map(str, files)], env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pacs = f"http://127.0.0.1:{stack.orthanc_http}"

    def results() -> dict[str, str] | None:
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
        found = httpx.post(f"{pacs}/tools/find", json=query, timeout=10).json()
        series = {}
        for instance in found:
            modality = (
                httpx.get(f"{pacs}/instances/{instance['ID']}/simplified-tags", timeout=10).json().get("Modality")
            )
            series[modality] = instance["ID"]
        return series if {"SEG", "SR"} <= set(series) else None

    try:
        found = _wait("the SEG and SR in Orthanc", results, 600)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_logs(stack.containers())}") from None
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    for kind in ("SEG", "SR"):
        data = httpx.get(f"{pacs}/instances/{found[kind]}/file", timeout=30).content
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.StudyInstanceUID == study_uid and ds.PatientID == source.PatientID, kind
        (algorithm,) = [
            item for item in ds.ContributingEquipmentSequence
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"  # IHE AIR: Processing Algorithm
        ]  # fmt: skip
        assert (
            algorithm.ManufacturerModelName == "CT lesion segmentation" and str(algorithm.SoftwareVersions) == "1.0.0"
        )
    seg = pydicom.dcmread(io.BytesIO(httpx.get(f"{pacs}/instances/{found['SEG']}/file", timeout=30).content))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def test_the_stack_runs_as_the_chart_says(stack: Stack) -> None:
    """Non-root, read-only root file systems, the chart's images: as the pods declare, not as podman defaults."""
    checked = 0
    for name in stack.containers():
        if name.endswith("-infra"):
            continue
        info = json.loads(podman("inspect", name).stdout)[0]
        user = info["Config"]["User"]
        assert user and not user.startswith("0") and user != "root", f"{name} runs as {user!r}"
        assert info["HostConfig"]["ReadonlyRootfs"], f"{name}'s root file system is writable"
        checked += 1
    assert checked >= 5, "postgresql, redis, migrations, listener, registry and a worker ran"
