"""MAP images as model developers make them and single-host installations run them (podman, for real).

``hounsfield map package`` builds an application folder into an image with the MAP spec's layout and
labels; the worker's container runtime runs it with the job's folders mounted at the spec's paths, the
declared CPU and memory as limits, read-only, without network or the worker's environment, killed at its
timeout; ``hounsfield map run`` runs an image as a worker would; ``hounsfield map publish`` registers it
with its digest; and a study sent to Hounsfield comes back to Orthanc as SEG and SR from the example
application packaged by ``hounsfield map package`` and run in the container runtime.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from orthanc_api_client import OrthancApiClient

from hounsfield import containers
from hounsfield.catalog.manifests import load_map
from hounsfield.catalog.read_model import DeploymentSpec
from hounsfield.catalog.rules import compiled_rule
from hounsfield.config import ContainerSettings
from hounsfield.db.deployments import Stage
from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.demo.stack import CT_LESION_DEPLOYMENT, HounsfieldStack
from hounsfield.worker.runtimes import ApplicationFailed, ApplicationRun, ApplicationTimedOut, ContainerRuntime
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series
from tests.e2e.conftest import running_stack

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "operators" / "ct_lesion_seg"
BASE = "localhost/hounsfield-base:bookworm"
WORKER = "localhost/hounsfield-worker:test"
CLI = [sys.executable, "-m", "hounsfield.cli"]

if shutil.which("podman") is None:
    pytest.skip("podman is not installed here (`make system-deps` installs it; CI does)", allow_module_level=True)

pytestmark = pytest.mark.containers


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], env=containers.engine_environment(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc


def hounsfield(*args: str, timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False
    )


@pytest.fixture(scope="module")
def images() -> None:
    """The base and worker images: made by tests/deploy/test_containers.py earlier in the run, else here."""
    if not containers.image_exists(WORKER):
        proc = subprocess.run(
            [sys.executable, str(REPO / "deploy" / "images.py"), "images", "--tag", "test", "--target", "worker"],
            capture_output=True, text=True, timeout=3000, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    if not containers.image_exists(BASE):
        proc = subprocess.run(
            [sys.executable, str(REPO / "deploy" / "images.py"), "base-image"], capture_output=True, text=True
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


# --- a probe application: it reports what its container gives it ---------------------------------------------------

PROBE = r"""
import json, os, socket, sys, time
from pathlib import Path

def read(path):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None

report = {"uid": os.getuid(), "gid": os.getgid(), "environment": dict(os.environ), "argv": sys.argv}
report["interfaces"] = sorted(os.listdir("/sys/class/net"))
report["memory_limit"] = read("/sys/fs/cgroup/memory.max") or read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
quota = read("/sys/fs/cgroup/cpu.max")
if quota is None:
    quota = f"{read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us')} {read('/sys/fs/cgroup/cpu/cpu.cfs_period_us')}"
report["cpu_quota"] = quota
shm = os.statvfs("/dev/shm")
report["shm_bytes"] = shm.f_blocks * shm.f_frsize
inputs = Path(os.environ["HOLOSCAN_INPUT_PATH"])
report["inputs"] = sorted(p.name for p in inputs.iterdir())
for name, path in (("root", "/opt/holoscan/app/written"), ("input", inputs / "written"), ("tmp", "/tmp/written")):
    try:
        Path(path).write_text("x")
        report[f"{name}_writable"] = True
    except OSError:
        report[f"{name}_writable"] = False
report["context"] = json.loads(Path(os.environ["HOLOSCAN_WORKDIR"], "result_context.json").read_text())
report["models"] = sorted(os.listdir(os.environ["HOLOSCAN_MODEL_PATH"]))
report["config"] = read(os.environ["HOLOSCAN_CONFIG_PATH"])
if (inputs / "oom").exists():
    hog = bytearray(512 * 2**20)  # twice the declared memory, every page touched
    print("allocated", len(hog), flush=True)
if (inputs / "sleep").exists():
    print("sleeping", flush=True)
    time.sleep(3600)
Path(os.environ["HOLOSCAN_OUTPUT_PATH"], "probe.json").write_text(json.dumps(report))
print("probe done", flush=True)
"""


def _probe_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "probe.py").write_text(PROBE)
    env = {
        "HOLOSCAN_APPLICATION": "/opt/holoscan/app", "HOLOSCAN_INPUT_PATH": "/var/holoscan/input",
        "HOLOSCAN_OUTPUT_PATH": "/var/holoscan/output", "HOLOSCAN_WORKDIR": "/var/holoscan",
        "HOLOSCAN_MODEL_PATH": "/opt/holoscan/models", "HOLOSCAN_CONFIG_PATH": "/var/holoscan/app.yaml",
        "HOLOSCAN_APP_MANIFEST_PATH": "/etc/holoscan/app.json", "HOLOSCAN_PKG_MANIFEST_PATH": "/etc/holoscan/pkg.json",
        "HOLOSCAN_DOCS_PATH": "/opt/holoscan/docs", "HOLOSCAN_LOGS_PATH": "/var/holoscan/logs",
    }  # fmt: skip
    app = {
        "apiVersion": "1.0.0", "command": "python3 -u /opt/holoscan/app/probe.py", "environment": env,
        "input": {"path": "input/", "formats": ["diagnostic"]},
        "output": {"path": "output/", "format": {"mediaType": "application/json"}},
        "sdk": "monai-deploy", "sdkVersion": "4.0.0", "timeout": 60, "version": "0.2.0",
        "workingDirectory": "/var/holoscan",
    }  # fmt: skip
    pkg = {
        "apiVersion": "1.0.0", "applicationRoot": "/opt/holoscan/app", "modelRoot": "/opt/holoscan/models",
        "models": [{"name": "probe", "path": "/opt/holoscan/models/probe"}],
        "resources": {"cpu": 0.5, "gpu": 0, "memory": "256Mi", "sharedMemory": "32Mi"}, "version": "0.2.0",
    }  # fmt: skip
    (folder / "app.json").write_text(json.dumps(app, indent=2))
    (folder / "pkg.json").write_text(json.dumps(pkg, indent=2))
    (folder / "app.yaml").write_text("application:\n  title: Container probe\n  version: 0.2.0\n")
    (folder / "requirements.txt").write_text("")
    (folder / "README.md").write_text("# Container probe\n\nReports what its container gives it.\n")
    (folder / "models" / "probe").mkdir(parents=True)
    (folder / "models" / "probe" / "weights.txt").write_text("not a real model\n")
    (folder / "tests").mkdir()
    (folder / "tests" / "test_nothing.py").write_text("# not packaged\n")
    return folder


@dataclasses.dataclass(frozen=True)
class Probe:
    folder: Path
    image: str
    digest: str
    archive: Path
    output: str


@pytest.fixture(scope="module")
def probe(images: None, tmp_path_factory: pytest.TempPathFactory) -> Probe:
    """The probe packaged by `hounsfield map package` on the plain Debian base (a venv made in the image)."""
    folder = _probe_folder(tmp_path_factory.mktemp("probe") / "container_probe")
    archive = tmp_path_factory.mktemp("archive") / "probe.oci.tar"
    proc = hounsfield("map", "package", str(folder), "--base", BASE, "--oci-archive", str(archive))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = "localhost/container_probe:0.2.0"
    digest = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("digest "))
    return Probe(folder, image, digest, archive, proc.stdout)


def test_package_makes_the_spec_layout_with_labels_and_digest(probe: Probe, tmp_path: Path) -> None:
    assert probe.digest == containers.image_digest(probe.image), "the digest printed is the image's"
    assert f"localhost/container_probe@{probe.digest}" in probe.output.splitlines()
    containers.extract(probe.image, ["/etc/holoscan", "/opt/holoscan", "/var/holoscan/app.yaml"], tmp_path)
    assert json.loads((tmp_path / "etc/holoscan/app.json").read_text()) == json.loads(
        (probe.folder / "app.json").read_text()
    )
    assert (tmp_path / "etc/holoscan/pkg.json").read_bytes() == (probe.folder / "pkg.json").read_bytes()
    assert (tmp_path / "opt/holoscan/app/probe.py").read_text() == PROBE
    assert not (tmp_path / "opt/holoscan/app/tests").exists(), "tests are not packaged"
    assert not (tmp_path / "opt/holoscan/app/models").exists(), "models go to the model root, not the code"
    assert (tmp_path / "opt/holoscan/models/probe/weights.txt").read_text() == "not a real model\n"
    assert (tmp_path / "opt/holoscan/docs/README.md").is_file()
    assert (tmp_path / "var/holoscan/app.yaml").read_text().startswith("application:")
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", probe.image).stdout)
    loaded = load_map(tmp_path)  # the MAP as the image holds it
    assert loaded.manifests.pkg_raw == json.loads((probe.folder / "pkg.json").read_text())
    assert labels["org.monai.deploy.map.content-digest"] == loaded.content_digest
    assert labels["org.monai.deploy.map.models-digest"] == loaded.models_digest
    assert labels["org.opencontainers.image.title"] == "Container probe"
    assert labels["org.opencontainers.image.version"] == "0.2.0"
    assert labels["org.opencontainers.image.base.name"] == BASE
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", probe.image).stdout)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["python3", "-u", "/opt/holoscan/app/probe.py"]
    # The OCI archive for an air-gapped site: an OCI image layout whose index names the same manifest.
    with tarfile.open(probe.archive) as archive:
        names = set(archive.getnames())
        assert {"oci-layout", "index.json"} <= names
        (entry,) = json.load(archive.extractfile("index.json"))["manifests"]  # type: ignore[arg-type]
        manifest = json.load(archive.extractfile(f"blobs/sha256/{entry['digest'].split(':')[1]}"))  # type: ignore[arg-type]
    # Saving recompresses the layers (a new manifest digest); the image's configuration, its ID, is the same.
    image_id = podman("image", "inspect", "--format", "{{.Id}}", probe.image).stdout.strip()
    assert manifest["config"]["digest"] == f"sha256:{image_id}"


def test_package_refuses_an_invalid_folder_with_the_reason(images: None, tmp_path: Path) -> None:
    folder = _probe_folder(tmp_path / "broken_probe")
    shutil.rmtree(folder / "models" / "probe")
    proc = hounsfield("map", "package", str(folder), "--base", BASE)
    assert proc.returncode == 1
    assert "models" in proc.stderr and "probe" in proc.stderr, proc.stderr
    assert not containers.image_exists("localhost/broken_probe:0.2.0"), "nothing was built"


def _spec(image: str, **changes: Any) -> DeploymentSpec:
    spec = DeploymentSpec(
        name="probe", model_name="probe", model_version="0.2.0", display_name="Container probe", device_uid=None,
        stage=Stage.RESEARCH, rule_name="r", rule=compiled_rule({"kind": "instance_count", "min": 1}),
        destinations=(), queue="routine", app="", model_path=Path("/opt/holoscan/models"), manufacturer="Hounsfield",
        timeout_s=120, runtime="container", image=image,
    )  # fmt: skip
    return dataclasses.replace(spec, **changes)


def _job(tmp_path: Path, spec: DeploymentSpec, *, sleep: bool = False, oom: bool = False) -> ApplicationRun:
    run = ApplicationRun("job-1234", spec, tmp_path / "input", tmp_path / "output", tmp_path / "work")
    for folder in (run.input_dir, run.output_dir, run.workdir):
        folder.mkdir()
    (run.input_dir / "000000.dcm").write_bytes(b"not read by the probe")
    if sleep:
        (run.input_dir / "sleep").write_text("")
    if oom:
        (run.input_dir / "oom").write_text("")
    (run.workdir / "result_context.json").write_text(json.dumps({"model_name": "Container probe"}))
    return run


def test_container_runtime_confines_the_application(
    probe: Probe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOUNSFIELD_DATABASE_URL", "postgresql://hounsfield:secret@db/hounsfield")
    monkeypatch.setenv("PACS_PASSWORD", "secret")
    run = _job(tmp_path, _spec(f"localhost/container_probe@{probe.digest}"))
    ContainerRuntime(ContainerSettings()).run(run)
    report = json.loads((run.output_dir / "probe.json").read_text())
    assert (report["uid"], report["gid"]) == ((10001, 10001) if os.geteuid() == 0 else (os.geteuid(), os.getegid()))
    assert report["interfaces"] == ["lo"], "no network unless the deployment allows one"
    assert not any("secret" in value for value in report["environment"].values()), "no worker variable reaches it"
    assert {"HOUNSFIELD_DATABASE_URL", "PACS_PASSWORD"}.isdisjoint(report["environment"])
    assert report["environment"]["HOLOSCAN_INPUT_PATH"] == "/var/holoscan/input"
    assert report["environment"]["HOLOSCAN_OUTPUT_PATH"] == "/var/holoscan/output"
    assert report["inputs"] == ["000000.dcm"] and report["input_writable"] is False
    assert report["root_writable"] is False and report["tmp_writable"] is True
    assert report["context"] == {"model_name": "Container probe"}, "the job's result context is at HOLOSCAN_WORKDIR"
    assert report["models"] == ["probe"], "the models in the image, at HOLOSCAN_MODEL_PATH"
    assert report["config"].startswith("application:"), "app.yaml at HOLOSCAN_CONFIG_PATH"
    assert int(report["memory_limit"]) == 256 * 2**20, "pkg.json's memory as the limit"
    quota, period = report["cpu_quota"].split()
    assert int(quota) / int(period) == 0.5, "pkg.json's cpu as the limit"
    assert report["shm_bytes"] == 32 * 2**20, "pkg.json's sharedMemory as /dev/shm"
    assert "probe done" in (run.workdir / "application.log").read_text()


def test_container_runtime_gives_a_network_only_when_the_deployment_allows_it(probe: Probe, tmp_path: Path) -> None:
    run = _job(tmp_path, _spec(probe.image, network=True))
    ContainerRuntime(ContainerSettings(network="host")).run(run)
    interfaces = json.loads((run.output_dir / "probe.json").read_text())["interfaces"]
    assert set(interfaces) > {"lo"}, interfaces


def test_container_runtime_kills_and_removes_the_container_at_the_timeout(probe: Probe, tmp_path: Path) -> None:
    run = _job(tmp_path, _spec(probe.image, timeout_s=8), sleep=True)
    started = time.monotonic()
    with pytest.raises(ApplicationTimedOut, match="past its timeout of 8 s"):
        ContainerRuntime(ContainerSettings()).run(run)
    assert time.monotonic() - started < 60
    assert "sleeping" in (run.workdir / "application.log").read_text(), "it had started"
    names = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    assert "hounsfield-job-job1234" not in names, "its container is gone"


def test_an_application_over_its_memory_is_killed_and_its_job_fails(probe: Probe, tmp_path: Path) -> None:
    run = _job(tmp_path, _spec(probe.image), oom=True)
    with pytest.raises(ApplicationFailed, match="exited with code 137"):
        ContainerRuntime(ContainerSettings()).run(run)
    assert not (run.output_dir / "probe.json").exists()


# --- the example application as a MAP image ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lesion_map(images: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The example application packaged by `hounsfield map package` on the worker image; its pinned reference."""
    proc = hounsfield("map", "package", str(EXAMPLE), "--base", WORKER, "--tag", "localhost/ct-lesion-seg-map:test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_map_run_runs_an_image_as_a_worker_would(lesion_map: str, tmp_path: Path) -> None:
    write_dicom_series(make_phantom(20261127), tmp_path / "in")
    proc = hounsfield("map", "run", lesion_map, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "container runtime" in proc.stdout
    assert "  | " in proc.stdout, "the application's own output is shown as it runs"
    for stage in ("prepare:", "application:", "validation gate:"):
        assert stage in proc.stdout
    passed = sorted(line.split("(")[1].split(",")[0].rstrip(")") for line in proc.stdout.splitlines()
                    if line.startswith("passed the gate:"))  # fmt: skip
    assert passed == ["SEG", "SR"]
    owners = {path.stat().st_uid for path in (tmp_path / "out", *(tmp_path / "out").iterdir())}
    assert owners == {os.getuid()}, "the results belong to who ran it, not to the application's user"
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    equipment = _algorithm(seg)
    assert (equipment.ManufacturerModelName, equipment.SoftwareVersions) == ("ct_lesion_seg", "1.0.0")
    assert "NOT FOR DIAGNOSTIC USE" in seg.SeriesDescription


def test_map_run_fails_a_result_for_another_patient(lesion_map: str, tmp_path: Path) -> None:
    """The gate is the worker's: here an input of two studies is refused before anything runs."""
    write_dicom_series(make_phantom(1), tmp_path / "in" / "a", uid_seed="a")
    write_dicom_series(make_phantom(2), tmp_path / "in" / "b", uid_seed="b")
    proc = hounsfield("map", "run", lesion_map, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "holds 2 studies" in proc.stderr, proc.stderr


def _algorithm(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The Contributing Equipment item of the algorithm (IHE AIR: Purpose of Reference Newcode1, 99IHE)."""
    (item,) = [
        item for item in ds.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    ]  # fmt: skip
    return item


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    orthanc = LocalOrthanc(tmp_path_factory.mktemp("orthanc"), aet="TESTPACS")
    orthanc.start()
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def stack(
    lesion_map: str, pacs: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[HounsfieldStack]:
    """`hounsfield up` whose one deployment runs the packaged example in the container runtime."""
    deployment = {key: value for key, value in CT_LESION_DEPLOYMENT.items() if key not in ("app", "model_path")}
    deployment |= {"runtime": "container", "image": lesion_map, "timeout_s": 300}
    with running_stack(tmp_path_factory, pacs, request, deployments=[deployment]) as running:
        yield running


def test_a_study_in_comes_back_as_seg_and_sr_from_the_container(
    stack: HounsfieldStack, pacs: LocalOrthanc, lesion_map: str, tmp_path: Path
) -> None:
    files = write_dicom_series(make_phantom(4242, n_lesions=1), tmp_path / "ct", uid_seed="container-4242")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    stack.send(files)
    study = stack.wait_for_study(study_uid, timeout=400)
    (job,) = study["jobs"]
    assert job["state"] == "done", job["error"]
    assert sorted(r["kind"] for r in job["results"]) == ["SEG", "SR"]
    orthanc = OrthancApiClient(pacs.url)
    stored = [
        pydicom.dcmread(io.BytesIO(orthanc.instances.get_file(instance)))
        for instance in orthanc.studies.get_instances_ids(orthanc.studies.lookup(study_uid))
    ]
    assert sorted(ds.Modality for ds in stored) == ["SEG", "SR"], "SEG and SR arrived in Orthanc"
    for ds in stored:
        equipment = _algorithm(ds)
        assert (equipment.ManufacturerModelName, equipment.SoftwareVersions) == ("CT lesion segmentation", "1.0.0")
    log = (stack.folder / "hounsfield.log").read_text()
    assert "runs in the container runtime" in log


def test_publish_registers_the_image_by_digest(stack: HounsfieldStack, lesion_map: str, tmp_path: Path) -> None:
    card = tmp_path / "card.yaml"
    card.write_text(
        "display_name: CT lesion segmentation (MAP)\nintended_use: Research on synthetic phantoms.\n"
        "use_cases: [scheduled]\nmodality: CT\nregulatory_status: research-only\nowner: Hounsfield tests\n"
    )
    token = stack.api_headers["Authorization"].split()[1]
    args = ["map", "publish", lesion_map.split("@")[0] + ":test", "--model", "ct-lesion-map", "--card", str(card)]
    proc = hounsfield(*args, "--registry", stack.api, env={"HOUNSFIELD_TOKEN": token})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    versions = httpx.get(f"{stack.api}/models/ct-lesion-map/versions", headers=stack.api_headers, timeout=10).json()
    assert [(v["version"], v["image"]) for v in versions] == [("1.0.0", lesion_map)]
    again = hounsfield(*args, "--registry", stack.api, env={"HOUNSFIELD_TOKEN": token})
    assert again.returncode == 0 and "already registered" in again.stdout, again.stdout + again.stderr
