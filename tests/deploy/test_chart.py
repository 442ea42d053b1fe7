"""The Helm chart (helm/hounsfield), rendered by Helm's own library and checked against Kubernetes.

There is no cluster and no helm binary here: helm-python-sdk carries libhelm, which renders and
lints the chart exactly as `helm template` / `helm lint` do (values.schema.json included), and
kubernetes-validate checks every rendered manifest against the API schemas of a recent Kubernetes
release. What only a cluster can show (pods scheduled, probes passing on a node) is not claimed;
the readiness probe's command is run here against a real listener started from the rendered
configuration.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from hounsfield.catalog.manifests import parse_manifests
from hounsfield.config import DestinationSettings, FhirSettings, OIDCSettings, OutboundTLSSettings, load_settings
from hounsfield.db import Database
from hounsfield.demo.orthanc import free_port
from hounsfield.exporter.stowrs import store_once
from hounsfield.listener.server import Listener
from hounsfield.registry.app import create_app
from hounsfield.registry.auth import Authenticator
from hounsfield.supervisor import LocalRedis
from hounsfield.worker.runtimes.kubernetes import build_job
from tests.deploy.hounsfield_cli import check_cli
from tests.pki import make_pki
from tests.support import wait_for, write_study

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "hounsfield"
PRODUCTION = REPO / "helm" / "production-values.yaml"
INSTALL_GUIDE = REPO / "docs" / "install.md"
GPU_PKG = Path(__file__).with_name("data") / "gpu-map-pkg.json"
KUBERNETES = kubernetes_validate.utils.latest_version()
NAMESPACE = "radiology"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
"""Kinds from CRDs (KEDA, Prometheus Operator): kubernetes-validate has no schema for them; their links
to the chart's own objects are checked by the tests below instead."""


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def production_values() -> dict[str, Any]:
    """helm/production-values.yaml, with the GPU MAP's pkg.json given as `--set-file` would."""
    values: dict[str, Any] = yaml.safe_load(PRODUCTION.read_text())
    values["gpuWorker"]["mapPackage"] = GPU_PKG.read_text()
    return values


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values`` (an install of release "hf")."""
    rendered = chart.render(values, name="hf", namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def notes(chart: helm.Chart, values: dict[str, Any] | None = None) -> str:
    return chart.render(values, name="hf", namespace=NAMESPACE, is_install=True)["hounsfield/templates/NOTES.txt"]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workloads and the bare Pods (the `helm test` hooks)."""
    return [*workloads(objects), *(o for o in objects if o["kind"] == "Pod")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec(workload)["containers"])


def hounsfield_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(one(objects, "ConfigMap", "hf-hounsfield")["data"]["hounsfield.yaml"])
    return loaded


# -- rendering and validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", ["default", "production"])
def test_every_rendered_manifest_is_valid_kubernetes(chart: helm.Chart, values_file: str) -> None:
    values = production_values() if values_file == "production" else None
    objects = render(chart, values)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "Job", "NetworkPolicy"} <= kinds
    checked = 0
    for manifest in objects:
        if manifest["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)  # raises on any error
        checked += 1
    assert checked >= 20, f"only {checked} manifests validated"
    if values_file == "default":
        assert not kinds & CRD_KINDS, "the defaults need no CRD: KEDA and the ServiceMonitor are optional"
    else:
        assert {"ScaledObject", "ServiceMonitor", "Ingress", "PodDisruptionBudget"} <= kinds


@pytest.mark.parametrize("values_file", ["default", "production"])
def test_helm_lint_is_clean(values_file: str) -> None:
    values = production_values() if values_file == "production" else None
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_lint_reports_a_broken_template(tmp_path: Path) -> None:
    """The lint above can fail: a template with a syntax error is reported as an error."""
    broken = tmp_path / "hounsfield"
    helm.Chart.load(CHART).save_dir(tmp_path)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.nothing | nosuchfunction }}\n")
    report = helm.lint(broken, strict=True)
    assert any(m["severity"] == 3 for m in report["messages"]), report


# -- bad values fail at install with a clear message ------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": {"stat": {"replicas": -1}}}, "at '/workers/stat/replicas': minimum: got -1, want 0"),
        ({"listener": {"replicas": -2}}, "at '/listener/replicas': minimum"),
        ({"listener": {"aeTitle": "A_TITLE_LONGER_THAN_16"}}, "at '/listener/aeTitle': maxLength"),
        ({"listener": {"port": 70000}}, "at '/listener/port': maximum"),
        ({"listner": {"replicas": 2}}, "additional properties 'listner' not allowed"),
        ({"uidRoot": "1.2.3"}, "at '/uidRoot'"),
        (
            {"listener": {"replicas": 2}, "store": {"accessModes": ["ReadWriteOnce"]}},
            "store.accessModes must include ReadWriteMany",
        ),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "at '/podSecurityContext/runAsNonRoot'"),
        (
            {"postgresql": {"enabled": False}},
            "postgresql.enabled is false: set externalDatabase.existingSecret to a Secret holding the database URL",
        ),
        ({"redis": {"enabled": False}}, "redis.enabled is false: set externalRedis.existingSecret"),
        ({"listener": {"tls": {"enabled": True}}}, "listener.tls.enabled: set listener.tls.existingSecret"),
        (
            {"listener": {"tls": {"enabled": True, "existingSecret": "t", "requireClientCertificate": True}}},
            "requireClientCertificate needs listener.tls.clientCaKey",
        ),
        (
            {"listener": {"sources": {"ct": {"ae_title": "CT", "tls_client_names": ["ct.hospital.local"]}}}},
            "listener.sources.ct.tls_client_names needs listener.tls.enabled and listener.tls.clientCaKey",
        ),
        ({"gpuWorker": {"enabled": True, "mapPackage": "{not json"}}, "gpuWorker.mapPackage is not a MAP package"),
        (
            {"keda": {"enabled": True}, "redis": {"enabled": False}, "externalRedis": {"existingSecret": "r"}},
            "set externalRedis.address",
        ),
    ],
)
def test_a_bad_value_fails_rendering_with_a_clear_message(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError) as failure:
        chart.render(values, name="hf", namespace=NAMESPACE, is_install=True)
    assert message in str(failure.value)


def test_an_external_database_comes_from_the_named_secret(chart: helm.Chart) -> None:
    objects = render(chart, {"postgresql": {"enabled": False}, "externalDatabase": {"existingSecret": "site-db"}})
    assert not [o for o in objects if o["metadata"]["name"] == "hf-hounsfield-postgresql"], "nothing bundled"
    for workload in workloads(objects):
        for container in containers(workload):
            env = {e["name"]: e for e in container.get("env", [])}
            if "HOUNSFIELD_DATABASE_URL" in env:
                assert env["HOUNSFIELD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
                    "name": "site-db",
                    "key": "database-url",
                }


# -- the GPU worker requests what its MAP declares --------------------------------------------------------


def test_the_gpu_worker_requests_exactly_what_the_maps_pkg_json_declares(chart: helm.Chart, tmp_path: Path) -> None:
    objects = render(chart, production_values())
    worker = one(objects, "Deployment", "hf-hounsfield-worker-gpu")
    (container,) = containers(worker)
    declared = json.loads(GPU_PKG.read_text())["resources"]
    amounts = {"cpu": str(declared["cpu"]), "memory": declared["memory"], "nvidia.com/gpu": str(declared["gpu"])}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    assert container["image"] == "registry.hospital.local/hounsfield/hounsfield-worker:0.1.0-cuda"
    pod = worker["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["HOUNSFIELD_WORKER__QUEUES"]) == ["stat", "routine"]
    assert env["HOUNSFIELD_WORKER__GPUS"] == str(declared["gpu"]), "it gives applications the GPUs it has"
    for queue in ("stat", "routine", "batch"):
        (cpu,) = containers(one(objects, "Deployment", f"hf-hounsfield-worker-{queue}"))
        assert {e["name"]: e.get("value") for e in cpu["env"]}["HOUNSFIELD_WORKER__GPUS"] == "0"

    # The same MAP run as a Kubernetes Job by a CPU worker (services/worker/runtimes/kubernetes.py), with the
    # settings the chart wrote: the same resources, the same GPU node selector, the chart's claim.
    settings = load_settings(_written(hounsfield_config(objects), tmp_path))
    app_json = {"command": "python3 -m app", "input": {"formats": ["diagnostic"]}, "output": {"format": {}}}
    manifests = parse_manifests(app_json, json.loads(GPU_PKG.read_text()))
    workspace = settings.data_dir / "jobs" / "0b5c2d9e-1f0a-4c1e-9f5e-3a2b1c0d9e8f"
    job = build_job(
        job_id=workspace.name, deployment="liver-v2", image="registry.hospital.local/maps/liver:2.1.0",
        manifests=manifests, workspace=workspace, store_root=settings.data_dir, timeout_s=600,
        settings=settings.worker.kubernetes,
    )  # fmt: skip
    kubernetes_validate.validate(job, KUBERNETES, strict=True)
    job_pod = job["spec"]["template"]["spec"]
    assert job_pod["containers"][0]["resources"] == container["resources"]
    assert job["metadata"]["namespace"] == NAMESPACE
    assert (
        job_pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
        == one(objects, "PersistentVolumeClaim", "hf-hounsfield-store")["metadata"]["name"]
    )
    assert job_pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert job_pod["serviceAccountName"] == "hf-hounsfield"
    assert job_pod["imagePullSecrets"] == pod["imagePullSecrets"] == [{"name": "hospital-registry"}]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in job_pod["volumes"]


def test_without_a_map_manifest_the_gpu_worker_gets_its_values_and_gpus(chart: helm.Chart) -> None:
    objects = render(chart, {"gpuWorker": {"enabled": True, "gpus": 2}})
    (container,) = containers(one(objects, "Deployment", "hf-hounsfield-worker-gpu"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {e["name"]: e.get("value") for e in container["env"]}["HOUNSFIELD_WORKER__GPUS"] == "2"
    assert container["image"] == "ghcr.io/hounsfield/hounsfield-worker:0.1.0-cuda"


# -- what the pods run --------------------------------------------------------------------------------------


def _written(config: dict[str, Any], tmp_path: Path, **changes: Any) -> Path:
    config = {**config, "data_dir": str(tmp_path / "data"), **changes}
    path = tmp_path / "hounsfield.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


SECRET_CONTENTS = {
    "HOUNSFIELD_DATABASE_URL": "postgresql+psycopg://hounsfield:made-up@db.hospital.local:5432/hounsfield",
    "HOUNSFIELD_REDIS_URL": "rediss://:made-up@redis.hospital.local:6380/0",
}
"""What the named Secrets of an external database and Redis would hold (made up)."""


def _pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's HOUNSFIELD_* variables as the pod would see them (Secret values made up)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        value = item.get("value", SECRET_CONTENTS.get(item["name"], "made-up-secret-value"))
        env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), value)
    return {k: v for k, v in env.items() if k.startswith("HOUNSFIELD_") and k != "HOUNSFIELD_CONFIG"}


@pytest.mark.parametrize("values_file", ["default", "production"])
def test_every_pod_gets_a_configuration_hounsfield_accepts(
    chart: helm.Chart, values_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's hounsfield.yaml and each container's HOUNSFIELD_* variables load with the
    services' own settings (unknown keys are refused there), and the command is a real one."""
    objects = render(chart, production_values() if values_file == "production" else None)
    path = _written(hounsfield_config(objects), tmp_path)
    ran = set()
    for workload in workloads(objects):
        for container in containers(workload):
            if not container["image"].split("/")[-1].startswith("hounsfield"):
                continue  # the bundled Redis and PostgreSQL
            check_cli(container["args"])
            command = container["args"][0]
            ran.add(command)
            with monkeypatch.context() as patch:
                for name, value in _pod_environment(container).items():
                    patch.setenv(name, value)
                settings = load_settings(path)
            assert settings.database_url and settings.database_url.startswith("postgresql+psycopg://")
            assert settings.redis_url and settings.redis_url.startswith(("redis://", "rediss://"))
            if command == "worker" and settings.fhir and settings.fhir.token_env:
                named = {e["name"] for e in container["env"]}
                assert settings.fhir.token_env in named, "the variable fhir.token_env names reaches the workers"
            if command == "worker":
                queues = json.loads(_pod_environment(container)["HOUNSFIELD_WORKER__QUEUES"])
                assert settings.worker.queues == queues
                assert workload["metadata"]["labels"]["hounsfield.io/queues"] == ".".join(queues)
    assert ran == {"listener", "registry", "worker", "db"}


def test_one_worker_deployment_per_queue(chart: helm.Chart) -> None:
    objects = render(chart)
    names = sorted(
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("hf-hounsfield-worker")
    )
    assert names == ["hf-hounsfield-worker-batch", "hf-hounsfield-worker-routine", "hf-hounsfield-worker-stat"]
    objects = render(chart, {"workers": {"batch": {"enabled": False, "replicas": 0}}})
    assert "hf-hounsfield-worker-batch" not in {o["metadata"]["name"] for o in objects}


def test_the_readiness_probe_is_a_c_echo_the_listener_answers(chart: helm.Chart, tmp_path: Path) -> None:
    """The listener pod's readiness command, run against a listener started from the rendered configuration."""
    port, metrics = free_port(), free_port()
    objects = render(chart, {"listener": {"port": port, "metricsPort": metrics}})
    (container,) = containers(one(objects, "Deployment", "hf-hounsfield-listener"))
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["hounsfield", "echo"]
    check_cli(probe[1:])
    config = hounsfield_config(objects)
    config["listener"]["host"] = "127.0.0.1"
    settings = load_settings(_written(config, tmp_path))
    argv = [str(Path(sys.executable).with_name("hounsfield")), *probe[1:]]
    listener = Listener(settings, [].append)
    listener.start()
    try:
        ready = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert ready.returncode == 0, ready.stdout + ready.stderr
        # A stranger is still refused: the probe's AE title is the only addition, from loopback only.
        stranger = [*argv[:-1], "--calling-ae=STRANGER", "--timeout=5"]
        refused = subprocess.run(stranger, capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 1 and "is STRANGER a source it accepts" in refused.stdout + refused.stderr
    finally:
        listener.stop()
    not_ready = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert not_ready.returncode == 1, "a stopped listener is not ready"
    assert config["listener"]["sources"]["readiness-probe"]["networks"] == ["127.0.0.1/32", "::1/128"]


@pytest.mark.parametrize(("workload", "journal"), [("Deployment", False), ("StatefulSet", True)])
def test_the_ingest_journal_is_on_only_where_pod_names_last(chart: helm.Chart, workload: str, journal: bool) -> None:
    """A journal is replayed by the pod of the same name: a StatefulSet's, never a Deployment's."""
    objects = render(chart, {"listener": {"workload": workload}})
    assert one(objects, workload, "hf-hounsfield-listener")["kind"] == workload
    assert hounsfield_config(objects)["listener"]["journal"] is journal


def test_the_listener_service_faces_the_hospital_with_dicom_and_tls_ports(chart: helm.Chart) -> None:
    values = {
        "listener": {
            "tls": {"enabled": True, "existingSecret": "dicom-tls", "clientCaKey": "ca.crt"},
            "service": {"type": "NodePort", "nodePort": 31112, "tlsNodePort": 32762},
        }
    }
    objects = render(chart, values)
    service = one(objects, "Service", "hf-hounsfield-listener")
    ports = {p["name"]: (p["port"], p.get("nodePort")) for p in service["spec"]["ports"]}
    assert ports == {"dicom": (11112, 31112), "dicom-tls": (2762, 32762)}
    assert service["spec"]["externalTrafficPolicy"] == "Local", "the sender's address reaches the AE check"
    tls = hounsfield_config(objects)["listener"]["tls"]
    assert tls["client_ca"] == "/etc/hounsfield/tls/ca.crt" and tls["port"] == 2762
    listener = one(objects, "Deployment", "hf-hounsfield-listener")
    (container,) = containers(listener)
    assert {"name": "tls", "mountPath": "/etc/hounsfield/tls", "readOnly": True} in container["volumeMounts"]
    # Each key named: a Secret without one of them stops the pod before it starts, with the key's name
    # in its events, instead of a listener that cannot read its client CA and restarts without end.
    (volume,) = [v for v in pod_spec(listener)["volumes"] if v["name"] == "tls"]
    assert [item["key"] for item in volume["secret"]["items"]] == ["tls.crt", "tls.key", "ca.crt"]


def test_migrations_run_once_as_a_hook_before_upgrades(chart: helm.Chart) -> None:
    job = one(render(chart), "Job", "hf-hounsfield-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,pre-upgrade"
    (container,) = containers(job)
    assert container["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert "parallelism" not in job["spec"] or job["spec"]["parallelism"] == 1


# -- security ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", ["default", "production"])
def test_every_pod_is_non_root_read_only_and_bounded(chart: helm.Chart, values_file: str) -> None:
    everything = {"tests": {"echo": {"networks": ["10.0.0.0/8"]}}, "trustedCA": {"configMap": "hospital-ca"}}
    objects = render(chart, production_values() if values_file == "production" else everything)
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "Pod"} >= {"hf-hounsfield-test-health"}
    assert [c["name"] for w in pods(objects) for c in pod_spec(w).get("initContainers", [])], "init containers too"
    for workload in pods(objects):
        name = workload["metadata"]["name"]
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert container["resources"]["limits"].get("memory"), name
            if workload["kind"] not in ("Job", "Pod") and container in pod["containers"]:
                assert "readinessProbe" in container, name
        token = pod.get("automountServiceAccountToken")
        uses_api = name.startswith("hf-hounsfield-worker")
        assert token is uses_api, f"{name}: only the workers (MAP Jobs) get a service account token"


def test_no_secret_value_is_in_the_values_and_generated_ones_differ(chart: helm.Chart) -> None:
    """Secrets come from existing Secrets, or are generated at install (never a value in the chart)."""
    values_text = (CHART / "values.yaml").read_text()
    for line in values_text.splitlines():
        key, _, value = line.split("#", 1)[0].partition(":")
        if re.search(r"password|token|secret", key, re.IGNORECASE) and not key.strip().endswith(("Key", "key")):
            assert value.strip() in ("", '""', "[]", "true", "false"), f"a secret value in values.yaml: {line.strip()}"
    first = {o["metadata"]["name"]: o["data"] for o in render(chart) if o["kind"] == "Secret"}
    second = {o["metadata"]["name"]: o["data"] for o in render(chart) if o["kind"] == "Secret"}
    assert set(first) == {"hf-hounsfield-admin-token", "hf-hounsfield-postgresql", "hf-hounsfield-redis"}
    for name in first:
        assert first[name] != second[name], f"{name} must be random, not fixed in the chart"
    for secret in render(chart):
        if secret["kind"] == "Secret":
            assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not [o for o in render(chart, production_values()) if o["kind"] == "Secret"], "production names its own"


def test_network_policies_let_only_the_listener_and_the_api_in(chart: helm.Chart) -> None:
    objects = render(chart)
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    deny = policies.pop("hf-hounsfield-default-deny")
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny, "everything else is denied"
    for pod in workloads(objects):
        labels = pod["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in deny["podSelector"]["matchLabels"].items()), "every pod is covered"
    open_to_all = {name for name, spec in policies.items() if any("from" not in rule for rule in spec["ingress"])}
    assert open_to_all == {"hf-hounsfield-listener", "hf-hounsfield-registry", "hf-hounsfield-workers"}
    worker_ports = [p["port"] for rule in policies["hf-hounsfield-workers"]["ingress"] for p in rule["ports"]]
    assert worker_ports == [9472], "a worker takes nothing but a scrape of its metrics"
    listener_ports = [p["port"] for rule in policies["hf-hounsfield-listener"]["ingress"] for p in rule["ports"]]
    assert listener_ports == [11112, 9470]
    for inner in ("hf-hounsfield-redis", "hf-hounsfield-postgresql"):
        (rule,) = policies[inner]["ingress"]
        release = {"app.kubernetes.io/instance": "hf", "app.kubernetes.io/part-of": "hounsfield"}
        assert rule["from"] == [{"podSelector": {"matchLabels": release}}]


# -- optional parts: KEDA, ServiceMonitor --------------------------------------------------------------


def test_keda_scales_each_worker_on_its_own_queue(chart: helm.Chart) -> None:
    objects = render(chart, production_values())
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    assert len(scaled) == 4
    auth = one(objects, "TriggerAuthentication", "hf-hounsfield-keda-redis")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": "hounsfield-redis", "key": "password"}]
    for item in scaled:
        target = deployments[item["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "KEDA owns the replica count"
        queues = target["metadata"]["labels"]["hounsfield.io/queues"].split(".")
        assert [t["metadata"]["listName"] for t in item["spec"]["triggers"]] == queues
        for trigger in item["spec"]["triggers"]:
            assert trigger["type"] == "redis" and trigger["metadata"]["address"] == "redis.hospital.local:6379"
            assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


def test_the_service_monitor_scrapes_the_listener_the_workers_and_the_registry(chart: helm.Chart) -> None:
    objects = render(chart, production_values())
    monitor = one(objects, "ServiceMonitor", "hf-hounsfield")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = {
        o["metadata"]["name"]: {p["name"] for p in o["spec"]["ports"]}
        for o in objects
        if o["kind"] == "Service" and all(o["metadata"]["labels"].get(k) == v for k, v in selector.items())
    }
    workers = [
        o["metadata"]["name"] for o in objects if o["kind"] == "Deployment" and "worker" in o["metadata"]["name"]
    ]
    assert "hf-hounsfield-worker-gpu" in workers and "hf-hounsfield-worker-stat" in workers, workers
    expected = {f"{name}-metrics" for name in ["hf-hounsfield-listener", "hf-hounsfield-registry", *workers]}
    assert scraped == {key: {"metrics"} for key in expected}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_each_worker_serves_its_metrics_to_the_monitoring_namespace_alone(chart: helm.Chart) -> None:
    objects = render(chart, production_values())
    config = hounsfield_config(objects)["worker"]
    assert (config["metrics_port"], config["metrics_host"]) == (9472, "0.0.0.0"), "a pod's IP, not loopback"
    workers = [o for o in objects if o["kind"] == "Deployment" and "worker" in o["metadata"]["name"]]
    policy = one(objects, "NetworkPolicy", "hf-hounsfield-workers")["spec"]
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert policy["ingress"] == [{"ports": [{"port": 9472, "protocol": "TCP"}], "from": monitoring}]
    for worker in workers:
        (container,) = containers(worker)
        assert container["ports"] == [{"name": "metrics", "containerPort": 9472}]
        labels = worker["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items()), "the policy applies"
        service = one(objects, "Service", f"{worker['metadata']['name']}-metrics")
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items()), "the Service finds its pods"


# -- NOTES.txt ------------------------------------------------------------------------------------------


def test_the_notes_tell_it_how_to_point_a_pacs_at_the_listener(chart: helm.Chart) -> None:
    text = notes(chart, {"listener": {"aeTitle": "HF_RADIOLOGY", "sources": {"pacs": {"ae_title": "PACS"}}}})
    assert "AE title:  HF_RADIOLOGY" in text
    assert "kubectl get svc hf-hounsfield-listener -n radiology" in text and "nodePort" in text
    pinned = notes(chart, {"listener": {"service": {"nodePort": 31112}}})
    assert "Port:      31112 (the node port; 11112 inside the cluster)" in pinned
    assert "echoscu -v -aet <CALLING_AE> -aec HF_RADIOLOGY <host> <port>" in text
    assert "Senders allowed (calling AE titles): PACS (pacs)" in text
    assert "No sender is listed yet" in notes(chart)
    balanced = notes(chart, {"listener": {"service": {"type": "LoadBalancer"}, "openMode": True}})
    assert "Port:      11112" in balanced and "OPEN MODE is on" in balanced


def test_tls_only_leaves_no_plain_dicom_port_outside_the_pod(chart: helm.Chart) -> None:
    """The production values require client certificates; a plain port open to the network would sidestep them."""
    objects = render(chart, production_values())
    assert hounsfield_config(objects)["listener"]["tls"]["only"] is True
    service = one(objects, "Service", "hf-hounsfield-listener")
    assert [p["name"] for p in service["spec"]["ports"]] == ["dicom-tls"]
    policy = one(objects, "NetworkPolicy", "hf-hounsfield-listener")
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert 11112 not in ports and 2762 in ports
    (container,) = containers(one(objects, "StatefulSet", "hf-hounsfield-listener"))
    assert container["startupProbe"]["tcpSocket"]["port"] == "metrics"
    assert container["livenessProbe"]["tcpSocket"]["port"] == "metrics"
    assert container["readinessProbe"]["exec"]["command"][:2] == ["hounsfield", "echo"], "C-ECHO over loopback"
    default = render(chart)
    assert "only" not in hounsfield_config(default)["listener"].get("tls", {})
    (plain,) = containers(one(default, "Deployment", "hf-hounsfield-listener"))
    assert plain["livenessProbe"]["tcpSocket"]["port"] == "dicom"


# -- the production guide creates what the production values read ------------------------------------------


def _made_by_the_guide() -> dict[tuple[str, str], set[str]]:
    """What the `kubectl create secret|configmap` commands of docs/install.md's production section make:
    (kind, name) -> keys."""
    made: dict[tuple[str, str], set[str]] = {}
    section = INSTALL_GUIDE.read_text().split("\n## Production")[1].split("\n## ")[0]
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words[:2] != ["kubectl", "create"] or len(words) < 4 or words[2] not in ("secret", "configmap"):
                continue
            kind, variant, name = ("Secret", *words[3:5]) if words[2] == "secret" else ("ConfigMap", "", words[3])
            keys = {"tls": {"tls.crt", "tls.key"}, "docker-registry": {".dockerconfigjson"}}.get(variant, set())
            for word in words:
                flag, _, value = word.partition("=")
                if flag in ("--from-literal", "--from-file"):
                    key, _, path = value.partition("=")
                    keys.add(key if path else Path(key).name)
            made.setdefault((kind, name), set()).update(keys)
    return made


def _read_by(objects: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """Every Secret and ConfigMap the rendered objects read and the chart does not make, with the keys read."""
    read: dict[tuple[str, str], set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        found: list[tuple[str, str, list[str]]] = []
        if "secretKeyRef" in node:
            found.append(("Secret", node["secretKeyRef"]["name"], [node["secretKeyRef"]["key"]]))
        if isinstance(node.get("secret"), dict):
            found.append(("Secret", node["secret"]["secretName"], [i["key"] for i in node["secret"].get("items", [])]))
        if isinstance(node.get("configMap"), dict):
            found.append(
                ("ConfigMap", node["configMap"]["name"], [i["key"] for i in node["configMap"].get("items", [])])
            )
        found += [("Secret", ref["name"], [".dockerconfigjson"]) for ref in node.get("imagePullSecrets") or []]
        found += [("Secret", ref["name"], [ref["key"]]) for ref in node.get("secretTargetRef") or []]
        found += [("Secret", ref["secretRef"]["name"], []) for ref in node.get("envFrom") or [] if "secretRef" in ref]
        for kind, name, keys in found:
            read.setdefault((kind, name), set()).update(keys)
        for value in node.values():
            walk(value)

    walk([o for o in objects if o["kind"] not in ("Secret", "ConfigMap")])
    made_here = {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in ("Secret", "ConfigMap")}
    return {ref: keys for ref, keys in read.items() if ref not in made_here}


def test_the_production_guide_creates_every_secret_and_key_the_production_values_read(chart: helm.Chart) -> None:
    """A Secret without a key the chart names stops its pods (or, read as a file, crash-loops the listener):
    the guide's commands make each one the production values name, with every key."""
    needed = _read_by(render(chart, production_values()))
    assert needed[("Secret", "hounsfield-dicom-tls")] == {"tls.crt", "tls.key", "ca.crt"}, "the client CA too"
    made = _made_by_the_guide()
    for (kind, name), keys in sorted(needed.items()):
        assert (kind, name) in made, f"docs/install.md never creates the {kind} {name}"
        missing = keys - made[(kind, name)]
        assert not missing, f"docs/install.md creates the {kind} {name} without {sorted(missing)}"


def test_the_guides_sizing_table_quotes_the_default_requests_and_limits() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = re.findall(r"^\| [^|]+ \| `([\w.]+)` \| ([^|]+) \| ([^|]+) \|$", INSTALL_GUIDE.read_text(), re.MULTILINE)
    assert len(rows) == 10, rows
    for path, requests, limits in rows:
        resources = values
        for key in path.split("."):
            resources = resources[key]
        for kind, quoted in (("requests", requests), ("limits", limits)):
            assert quoted.strip() == f"{resources[kind]['cpu']} CPU, {resources[kind]['memory']}", (path, kind)


# -- NOTES and docs: where a NodePort answers ---------------------------------------------------------------


def test_a_local_node_port_is_named_on_the_nodes_that_run_a_listener(chart: helm.Chart) -> None:
    """With externalTrafficPolicy Local (the default: the sender's address reaches the AE check) a node
    without a listener pod drops the connection; only Cluster makes every node answer."""
    local = notes(chart)
    assert "any node" not in local
    assert "a node that runs a listener pod (externalTrafficPolicy: Local" in local
    selector = "app.kubernetes.io/instance=hf,app.kubernetes.io/component=listener"
    assert f"kubectl get pods -n radiology -l {selector} -o wide" in local
    cluster = notes(chart, {"listener": {"service": {"externalTrafficPolicy": "Cluster"}}})
    assert "the address of any node" in cluster
    guide = INSTALL_GUIDE.read_text()
    assert "only the nodes that run a listener pod answer" in guide


# -- the hospital's own certificate authority ---------------------------------------------------------------

TRUST_BUNDLE = "/etc/hounsfield/trust/ca-bundle.crt"


def _hounsfield_pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [w for w in workloads(objects) if containers(w)[0]["image"].split("/")[-1].startswith("hounsfield")]


def test_a_trusted_ca_is_added_to_the_public_ones_in_every_hounsfield_container(chart: helm.Chart) -> None:
    objects = render(chart, {"trustedCA": {"configMap": "hospital-ca"}, "gpuWorker": {"enabled": True}})
    checked = set()
    for workload in _hounsfield_pods(objects):
        pod = pod_spec(workload)
        (init,) = pod["initContainers"]
        (container,) = pod["containers"]
        assert init["name"] == "trust-bundle" and init["image"] == container["image"], "the image's own public CAs"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == TRUST_BUNDLE, "httpx, urllib, ssl; requests"
        assert {"name": "trust", "mountPath": "/etc/hounsfield/trust", "readOnly": True} in container["volumeMounts"]
        assert {"name": "trust", "mountPath": "/etc/hounsfield/trust"} in init["volumeMounts"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["trust"] == {"name": "trust", "emptyDir": {"sizeLimit": "16Mi"}}
        assert volumes["trusted-ca"]["configMap"] == {
            "name": "hospital-ca",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        checked.add(container["args"][0])
    assert checked == {"listener", "registry", "worker", "db"}
    assert not [c for w in pods(render(chart)) for c in pod_spec(w).get("initContainers", [])], "none unasked"
    with pytest.raises(helm.HelmError, match="trustedCA: set existingSecret or configMap, not both"):
        render(chart, {"trustedCA": {"configMap": "a", "existingSecret": "b"}})


class _HttpsPeer(ThreadingHTTPServer):
    """An https server answering as an OIDC provider's key URL (GET), a FHIR server and a STOW-RS service
    (POST), with the certificate ``cert``."""

    def __init__(self, cert: Path, key: Path, jwks: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _PeerHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.jwks = jwks
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server_address[1]}"


class _PeerHandler(BaseHTTPRequestHandler):
    server: _HttpsPeer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict[str, Any], content_type: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200, self.server.jwks, "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.endswith("/DiagnosticReport"):
            self._answer(201, {"resourceType": "DiagnosticReport", "id": "report-1"}, "application/fhir+json")
        else:
            self._answer(200, {}, "application/dicom+json")


@pytest.fixture
def https_peers(tmp_path: Path) -> Iterator[tuple[Path, Path, _HttpsPeer, _HttpsPeer]]:
    """The hospital's CA, a stand-in for the image's public CAs, and a peer with a certificate from each."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    pki = make_pki(tmp_path / "pki")
    jwk = {**ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True), "kid": "k1"}
    hospital = _HttpsPeer(pki.server_cert, pki.server_key, {"keys": [jwk]})
    public = _HttpsPeer(pki.rogue_server_cert, pki.rogue_server_key, {"keys": [jwk]})
    yield pki.ca, pki.rogue_ca, hospital, public
    for peer in (hospital, public):
        peer.shutdown()
        peer.server_close()


def _reach_over_https(peer: _HttpsPeer, tmp_path: Path) -> list[str]:
    """Each https client Hounsfield has, against ``peer``: what failed (empty when all got through)."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from hounsfield.access import SignInImpossible
    from hounsfield.exporter.errors import ExportFailed
    from hounsfield.exporter.fhir import AnnouncementFailed, post_report

    failed = []
    report = DiagnosticReport.model_validate(
        {"status": "final", "code": {"text": "AI"}, "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2"}]}
    )
    try:  # httpx (FHIR)
        assert post_report(report, FhirSettings(url=f"{peer.url}/fhir")) == "report-1"
    except AnnouncementFailed:
        failed.append("fhir")
    _, files = write_study(tmp_path / "study", seed=3, shape=(1, 8, 8))
    try:  # requests through dicomweb-client (STOW-RS)
        store_once(files, DestinationSettings(protocol="stow-rs", url=f"{peer.url}/dicom-web"))
    except (ConnectionError, ExportFailed):
        failed.append("stow-rs")
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    try:  # urllib through PyJWT (the OIDC provider's keys)
        Authenticator(db, OIDCSettings(issuer=peer.url, audience="hounsfield", jwks_url=f"{peer.url}/jwks"))
    except SignInImpossible:
        failed.append("oidc")
    finally:
        db.dispose()
    context, name = OutboundTLSSettings().tls_args("localhost")
    try:  # ssl's default context: DICOM TLS to a destination without a tls.ca_bundle of its own
        with socket.create_connection(("127.0.0.1", peer.server_address[1]), timeout=10) as connection:
            context.wrap_socket(connection, server_hostname=name).close()
    except ssl.SSLError:
        failed.append("dicom-tls")
    return failed


def test_the_bundle_the_init_container_writes_lets_every_https_client_trust_both(
    chart: helm.Chart, https_peers: tuple[Path, Path, _HttpsPeer, _HttpsPeer], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The init container's own command, run here with the container's paths under a folder of the test:
    the image's bundle (a throw-away "public" CA stands in for it) and the hospital's CA, joined; with the
    variables the chart sets, the FHIR, STOW-RS and OIDC key clients, and DICOM TLS without a CA bundle of its
    own, reach a peer certified by either."""
    hospital_ca, public_ca, hospital, public = https_peers
    objects = render(chart, {"trustedCA": {"existingSecret": "hospital-ca", "key": "root.pem"}})
    worker = pod_spec(one(objects, "Deployment", "hf-hounsfield-worker-routine"))
    (init,) = worker["initContainers"]
    root = tmp_path / "container"

    def here(path: str) -> Path:
        return root / path.lstrip("/")

    init_env = {e["name"]: e["value"] for e in init["env"]}
    assert init_env["SYSTEM_CA_BUNDLE"] == "/etc/ssl/certs/ca-certificates.crt"
    assert init_env["SYSTEM_CA_BUNDLE"] in (REPO / "deploy" / "Dockerfile").read_text(), "the image has it"
    assert init_env["TRUSTED_CA"] == "/etc/hounsfield/trusted-ca/root.pem" and init_env["SSL_CERT_FILE"] == TRUST_BUNDLE
    here(init_env["SYSTEM_CA_BUNDLE"]).parent.mkdir(parents=True)
    shutil.copy(public_ca, here(init_env["SYSTEM_CA_BUNDLE"]))
    here(init_env["TRUSTED_CA"]).parent.mkdir(parents=True)
    shutil.copy(hospital_ca, here(init_env["TRUSTED_CA"]))
    here(TRUST_BUNDLE).parent.mkdir(parents=True)
    moved = {name: str(here(value)) for name, value in init_env.items()}
    subprocess.run(init["command"], env={"PATH": os.environ["PATH"], **moved}, check=True, timeout=30)

    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    assert _reach_over_https(hospital, tmp_path) == ["fhir", "stow-rs", "oidc", "dicom-tls"], "refused by each"
    (container,) = worker["containers"]
    for item in container["env"]:
        if item["name"] in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            monkeypatch.setenv(item["name"], str(here(item["value"])))
    assert _reach_over_https(hospital, tmp_path) == [], "the hospital's CA is trusted"
    assert _reach_over_https(public, tmp_path) == [], "the public CAs stay trusted"


# -- workers: /dev/shm, and time to end a job when told to stop ----------------------------------------------


def test_workers_have_a_memory_dev_shm_and_time_to_end_their_longest_job(chart: helm.Chart) -> None:
    """KEDA's scale-in, an upgrade or a node drain sends SIGTERM: Celery's warm shutdown ends the running job
    first (tests/services/worker/test_worker_faults.py), which the grace period must leave time for."""
    slow = {"name": "slow", "timeout_s": 7200}
    values = {"config": {"deployments": [slow]}, "gpuWorker": {"enabled": True}, "keda": {"enabled": True}}
    for given, grace in ((None, 3600 + 300), (values, 7200 + 300)):
        objects = render(chart, given)
        workers = [o for o in objects if o["kind"] == "Deployment" and "worker" in o["metadata"]["name"]]
        assert len(workers) == (4 if given else 3)
        for worker in workers:
            pod = pod_spec(worker)
            assert pod["terminationGracePeriodSeconds"] == grace, worker["metadata"]["name"]
            assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]
            (container,) = pod["containers"]
            assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    pulled = render(
        chart, {"imagePullSecrets": [{"name": "site"}], "mapJobs": {"imagePullSecrets": [{"name": "maps"}]}}
    )
    jobs = hounsfield_config(pulled)["worker"]["kubernetes"]
    assert jobs["image_pull_secrets"] == ["site", "maps"] and jobs["shm_size"] == "1Gi"


# -- the registry's metrics: off the Ingress, open to Prometheus ---------------------------------------------


def test_the_registrys_metrics_are_off_the_ingress_and_open_to_the_monitoring_namespace(chart: helm.Chart) -> None:
    objects = render(chart, production_values())
    config = hounsfield_config(objects)["registry"]
    assert (config["port"], config["metrics_port"]) == (8470, 9471), "/metrics answers 404 on the API's port"
    (container,) = containers(one(objects, "Deployment", "hf-hounsfield-registry"))
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8470, "metrics": 9471}
    ingress = one(objects, "Ingress", "hf-hounsfield-registry")
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends == [{"name": "hf-hounsfield-registry", "port": {"name": "http"}}]
    assert [p["name"] for p in one(objects, "Service", "hf-hounsfield-registry")["spec"]["ports"]] == ["http"]
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    for name, metrics_port in (("hf-hounsfield-registry", 9471), ("hf-hounsfield-listener", 9470)):
        policy = one(objects, "NetworkPolicy", name)["spec"]
        (rule,) = [r for r in policy["ingress"] if [p["port"] for p in r["ports"]] == [metrics_port]]
        assert rule["from"] == monitoring, name


# -- secrets the chart generates --------------------------------------------------------------------------------


def test_rendering_without_a_cluster_can_be_told_to_generate_no_secret(chart: helm.Chart) -> None:
    """`lookup` reads nothing under `helm template` (Argo CD, a GitOps pipeline), so generated Secrets would
    change at every rendering: generateSecrets false names each Secret to bring instead."""
    with pytest.raises(helm.HelmError) as failure:
        render(chart, {"generateSecrets": False})
    for key in ("registry.adminToken.existingSecret", "postgresql.existingSecret", "redis.existingSecret"):
        assert key in str(failure.value)
    named = {
        "generateSecrets": False,
        "registry": {"adminToken": {"existingSecret": "site-admin-token"}},
        "postgresql": {"existingSecret": "site-postgresql"},
        "redis": {"existingSecret": "site-redis"},
    }
    assert not [o for o in render(chart, named) if o["kind"] == "Secret"]
    guide = INSTALL_GUIDE.read_text()
    for phrase in ("generateSecrets: false", "registry.adminToken.existingSecret", "postgresql.existingSecret"):
        assert phrase in guide


# -- `helm test` ------------------------------------------------------------------------------------------------


def test_helm_test_hooks_are_pods_the_policies_let_in(chart: helm.Chart) -> None:
    echo_values = {"tests": {"echo": {"networks": ["10.244.0.0/16"]}}}
    narrowed = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    values = {**echo_values, "networkPolicy": {"listener": {"from": narrowed}, "registry": {"from": narrowed}}}
    objects = render(chart, values)
    hooks = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Pod"}
    assert set(hooks) == {"hf-hounsfield-test-health", "hf-hounsfield-test-echo"}
    for hook in hooks.values():
        assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert hook["spec"]["restartPolicy"] == "Never"
        kubernetes_validate.validate(hook, KUBERNETES, strict=True)
    source = hounsfield_config(objects)["listener"]["sources"]["helm-test"]
    assert source == {"ae_title": "HF_HELM_TEST", "networks": ["10.244.0.0/16"]}
    for name, port, hook in (("listener", 11112, "echo"), ("registry", 8470, "health")):
        labels = hooks[f"hf-hounsfield-test-{hook}"]["metadata"]["labels"]
        (rule,) = [
            r
            for r in one(objects, "NetworkPolicy", f"hf-hounsfield-{name}")["spec"]["ingress"]
            if port in [p["port"] for p in r["ports"]]
        ]
        assert rule["from"][: len(narrowed)] == narrowed
        peers = [peer["podSelector"]["matchLabels"] for peer in rule["from"] if set(peer) == {"podSelector"}]
        assert any(all(labels.get(k) == v for k, v in peer.items()) for peer in peers), f"{hook} reaches {name}"
    default = render(chart)
    assert [o["metadata"]["name"] for o in default if o["kind"] == "Pod"] == ["hf-hounsfield-test-health"]
    assert "helm-test" not in hounsfield_config(default)["listener"]["sources"], "no AE title open by default"
    tls_only = {"enabled": True, "existingSecret": "t", "clientCaKey": "ca.crt", "only": True}
    with pytest.raises(helm.HelmError, match=r"tests\.echo\.networks: the C-ECHO test needs the plain DICOM port"):
        render(chart, {**echo_values, "listener": {"tls": tls_only}})


def test_the_echo_hook_gets_success_from_a_listener_run_from_the_rendered_configuration(
    chart: helm.Chart, tmp_path: Path
) -> None:
    port, metrics = free_port(), free_port()
    values = {"listener": {"port": port, "metricsPort": metrics}, "tests": {"echo": {"networks": ["127.0.0.1/32"]}}}
    objects = render(chart, values)
    (container,) = containers(one(objects, "Pod", "hf-hounsfield-test-echo"))
    check_cli(container["args"])
    assert "--host=hf-hounsfield-listener" in container["args"], "the Service, as senders reach it"
    argv = [str(Path(sys.executable).with_name("hounsfield"))]
    argv += ["--host=127.0.0.1" if a.startswith("--host=") else a for a in container["args"]]
    config = hounsfield_config(objects)
    config["listener"]["host"] = "127.0.0.1"
    listener = Listener(load_settings(_written(config, tmp_path)), [].append)
    listener.start()
    try:
        answered = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    finally:
        listener.stop()
    assert answered.returncode == 0, answered.stdout + answered.stderr


def test_the_health_hook_passes_only_while_the_database_and_the_broker_answer(
    chart: helm.Chart, settings: Any, tmp_path: Path
) -> None:
    import uvicorn

    (container,) = containers(one(render(chart), "Pod", "hf-hounsfield-test-health"))
    assert container["command"][-1] == "http://hf-hounsfield-registry:8470/health"
    redis = LocalRedis(tmp_path, free_port())
    redis.start()
    registry = settings.registry.model_copy(update={"development": True, "stow_enabled": False})
    app = create_app(settings.model_copy(update={"redis_url": redis.url, "registry": registry}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    argv = [sys.executable, *container["command"][1:-1], f"http://127.0.0.1:{port}/health"]
    try:
        wait_for(lambda: server.started)
        healthy = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        redis.stop()
        no_broker = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert no_broker.returncode == 1 and "'broker': 'unreachable'" in no_broker.stdout
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        redis.stop()
