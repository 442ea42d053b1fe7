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
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from hounsfield.catalog.manifests import parse_manifests
from hounsfield.config import load_settings
from hounsfield.demo.orthanc import free_port
from hounsfield.listener.server import Listener
from hounsfield.worker.runtimes.kubernetes import build_job
from tests.deploy.hounsfield_cli import check_cli

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "hounsfield"
PRODUCTION = REPO / "helm" / "production-values.yaml"
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


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(workload["spec"]["template"]["spec"]["containers"])


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
    names = sorted(o["metadata"]["name"] for o in objects if o["metadata"]["name"].startswith("hf-hounsfield-worker"))
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
    (container,) = containers(one(objects, "Deployment", "hf-hounsfield-listener"))
    assert {"name": "tls", "mountPath": "/etc/hounsfield/tls", "readOnly": True} in container["volumeMounts"]


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
    objects = render(chart, production_values() if values_file == "production" else None)
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert container["resources"]["limits"].get("memory"), name
            if workload["kind"] != "Job":
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
            assert value.strip() in ("", '""', "[]"), f"a secret value in values.yaml: {line.strip()}"
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
    assert open_to_all == {"hf-hounsfield-listener", "hf-hounsfield-registry"}
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


def test_the_service_monitor_scrapes_the_listener_and_registry(chart: helm.Chart) -> None:
    objects = render(chart, production_values())
    monitor = one(objects, "ServiceMonitor", "hf-hounsfield")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = {
        o["metadata"]["name"]: {p["name"] for p in o["spec"]["ports"]}
        for o in objects
        if o["kind"] == "Service" and all(o["metadata"]["labels"].get(k) == v for k, v in selector.items())
    }
    assert scraped == {"hf-hounsfield-listener-metrics": {"metrics"}, "hf-hounsfield-registry": {"http"}}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "http"}


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
