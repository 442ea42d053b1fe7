"""The chart's workloads as `podman kube play` runs them on one host (import as ``tests.deploy.kube_play``).

There is no Kubernetes API server here. podman runs Pods, Deployments, ConfigMaps and PersistentVolumeClaims
from Kubernetes YAML, but not what a cluster adds around them; :func:`for_podman` stands in for that, and
for nothing else:

* **Services** (cluster DNS): every pod runs on the host's network, and a Service's name in an environment
  variable or the ConfigMap is replaced by the host's loopback address; the Services, NetworkPolicies,
  PodDisruptionBudgets and other cluster objects are left out (the chart's tests validate them).
* **The kubelet's variable handling**: ``secretKeyRef`` values are read from the rendered Secrets and
  ``$(NAME)`` references to earlier variables expanded, as the kubelet does (podman 4.3 does neither for
  Kubernetes Secrets).
* **The kubelet's emptyDir**: podman 4.3 makes an emptyDir a named volume shared by every pod that
  uses the same name, owned by root, and ignores ``fsGroup``; each emptyDir becomes a folder of its own
  under ``scratch`` (mode 1777: writable by the pod's user, as ``fsGroup`` makes it in a cluster).
* **subPath**: podman 4.3 mounts a ConfigMap's ``subPath`` as a folder; the key's content is written to a
  file under ``scratch`` and that file mounted, read-only, where the chart mounts it.
* **Port mappings**: on the host's network a container's ports are the host's own, so the ``ports``
  lists are dropped (podman refuses mappings there) and probes name their ports by number.
* **Controllers podman lacks**: a StatefulSet runs as a one-replica Deployment with the claims its
  ``volumeClaimTemplates`` would make; a Job (the migrations hook) runs as a Pod that does not restart.

Images are local (``imagePullPolicy: Never``). Everything else (images, commands, users, read-only root
file systems, volumes, probes) is what the chart rendered.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["LEFT_TO_THE_CLUSTER", "for_podman", "secret_values"]

LEFT_TO_THE_CLUSTER = frozenset(
    {
        "Service", "NetworkPolicy", "PodDisruptionBudget", "ServiceAccount", "Role", "RoleBinding", "Ingress",
        "ServiceMonitor", "ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler", "Secret",
    }
)  # fmt: skip
"""Kinds podman does not run: validated by the chart's tests, stood in for here."""

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def secret_values(objects: Iterable[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Secret name -> key -> value, from ``data`` (base64) and ``stringData``."""
    secrets: dict[str, dict[str, str]] = {}
    for obj in objects:
        if obj.get("kind") != "Secret":
            continue
        values = {key: base64.b64decode(value).decode() for key, value in (obj.get("data") or {}).items()}
        values.update(obj.get("stringData") or {})
        secrets[obj["metadata"]["name"]] = values
    return secrets


def _service_names(objects: Iterable[dict[str, Any]], namespace: str) -> list[str]:
    names = []
    for obj in objects:
        if obj.get("kind") == "Service":
            name = obj["metadata"]["name"]
            names += [f"{name}.{namespace}.svc.cluster.local", f"{name}.{namespace}.svc", f"{name}.{namespace}", name]
    return sorted(names, key=len, reverse=True)  # the longest first: a short name is part of a long one


def _resolve_hosts(text: str, services: list[str], address: str) -> str:
    for name in services:
        text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?=[:/]|$)", address, text)
    return text


def _container(
    container: dict[str, Any], secrets: dict[str, dict[str, str]], services: list[str], address: str
) -> None:
    resolved: dict[str, str] = {}
    env = []
    for source in container.pop("envFrom", None) or []:
        if "secretRef" in source:
            for key, value in secrets[source["secretRef"]["name"]].items():
                env.append({"name": key, "value": value})
        else:
            raise ValueError(f"envFrom {source} is not supported here")
    for item in container.get("env") or []:
        if "valueFrom" in item:
            ref = item["valueFrom"].get("secretKeyRef")
            if ref is None:
                raise ValueError(f"{item['name']}: only secretKeyRef is supported here")
            value = secrets[ref["name"]][ref["key"]]
        else:
            value = _REFERENCE.sub(lambda m: resolved.get(m[1], m[0]), str(item.get("value", "")))
        value = _resolve_hosts(value, services, address)
        resolved[item["name"]] = value
        env.append({"name": item["name"], "value": value})
    container["env"] = env
    for key in ("args", "command"):
        if key in container:
            container[key] = [_resolve_hosts(_REFERENCE.sub(lambda m: resolved.get(m[1], m[0]), arg), services, address)
                              for arg in container[key]]  # fmt: skip
    container["imagePullPolicy"] = "Never"
    # On the host's network a container's ports are the host's: podman takes no port mappings there,
    # and a probe names the port by number.
    numbers = {port["name"]: port["containerPort"] for port in container.pop("ports", []) if "name" in port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        for action in ("tcpSocket", "httpGet"):
            target = (container.get(probe) or {}).get(action)
            if target and isinstance(target.get("port"), str):
                target["port"] = numbers[target["port"]]


def _pod_spec(
    spec: dict[str, Any],
    secrets: dict[str, dict[str, str]],
    services: list[str],
    address: str,
    scratch: Path,
    pod: str,
    configmaps: dict[str, dict[str, str]],
) -> None:
    spec["hostNetwork"] = True
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for mount in container.get("volumeMounts", []):
            source = volumes.get(mount["name"], {}).get("configMap")
            if "subPath" in mount and source is not None:
                key = mount.pop("subPath")
                path = scratch / f"{pod}-{mount['name']}-{key}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(configmaps[source["name"]][key])
                name = f"{mount['name']}-{key}".replace(".", "-").lower()
                spec["volumes"].append({"name": name, "hostPath": {"path": str(path), "type": "File"}})
                mount["name"] = name
    for volume in spec.get("volumes", []):
        if "emptyDir" in volume:
            folder = scratch / f"{pod}-{volume['name']}"
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o1777)
            del volume["emptyDir"]
            volume["hostPath"] = {"path": str(folder), "type": "Directory"}
    spec.pop("serviceAccountName", None)
    spec.pop("automountServiceAccountToken", None)
    spec.pop("imagePullSecrets", None)
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        _container(container, secrets, services, address)


def for_podman(
    objects: list[dict[str, Any]], scratch: Path, *, namespace: str = "default", address: str = "127.0.0.1"
) -> list[dict[str, Any]]:
    """The rendered chart as `podman kube play` documents (see the module docstring), in rendering order."""
    secrets = secret_values(objects)
    services = _service_names(objects, namespace)
    configmaps = {
        o["metadata"]["name"]: {k: _resolve_hosts(v, services, address) for k, v in (o.get("data") or {}).items()}
        for o in objects
        if o.get("kind") == "ConfigMap"
    }
    played: list[dict[str, Any]] = []
    for original in objects:
        kind = original.get("kind")
        if kind in LEFT_TO_THE_CLUSTER or kind is None:
            continue
        hook = (original["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
        if "test" in hook.split(","):
            continue  # `helm test` pods: the chart's tests run their commands against real servers
        obj = copy.deepcopy(original)
        obj["metadata"].pop("annotations", None)  # hook annotations: the test runs the Job first itself
        if kind == "ConfigMap":
            obj["data"] = {key: _resolve_hosts(value, services, address) for key, value in obj.get("data", {}).items()}
        elif kind in ("Deployment", "StatefulSet"):
            template = obj["spec"]["template"]
            _pod_spec(template["spec"], secrets, services, address, scratch, obj["metadata"]["name"], configmaps)
            obj["spec"]["replicas"] = 1
            if kind == "StatefulSet":
                name = obj["metadata"]["name"]
                for claim in obj["spec"].pop("volumeClaimTemplates", []):
                    claim_name = f"{claim['metadata']['name']}-{name}-0"
                    played.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                   "metadata": {"name": claim_name}, "spec": claim["spec"]})  # fmt: skip
                    template["spec"].setdefault("volumes", []).append(
                        {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}}
                    )
                for key in (
                    "serviceName",
                    "podManagementPolicy",
                    "updateStrategy",
                    "persistentVolumeClaimRetentionPolicy",
                ):
                    obj["spec"].pop(key, None)
                obj["kind"] = "Deployment"
        elif kind == "Job":
            pod_spec = obj["spec"]["template"]["spec"]
            _pod_spec(pod_spec, secrets, services, address, scratch, obj["metadata"]["name"], configmaps)
            pod_spec["restartPolicy"] = "Never"
            obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": obj["metadata"]["name"],
                   "labels": obj["spec"]["template"]["metadata"].get("labels", {})}, "spec": pod_spec}  # fmt: skip
        elif kind == "Pod":
            _pod_spec(obj["spec"], secrets, services, address, scratch, obj["metadata"]["name"], configmaps)
        elif kind not in ("PersistentVolumeClaim",):
            raise ValueError(f"{kind} {original['metadata']['name']}: not handled for podman")
        played.append(obj)
    return played
