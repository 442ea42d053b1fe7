"""Hounsfield started as ``hounsfield up`` in a child process, and a modality that sends to it.

Used by ``hounsfield demo`` and by the end-to-end tests: everything real (redis-server, the
Celery worker, the pynetdicom listener, dcmtk ``storescu``), nothing mocked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

import hounsfield_operators.ct_lesion_seg as ct_lesion_seg
from hounsfield.access import DEV_TOKEN_FILE
from hounsfield.demo.orthanc import LocalOrthanc, free_port
from hounsfield.errors import HounsfieldError
from hounsfield.listener.echo import echo

__all__ = ["CT_LESION_DEPLOYMENT", "HounsfieldStack", "StackFailed", "storescu"]

CT_LESION_MODEL = Path(ct_lesion_seg.__file__).parent / "models" / "model.ts"
CT_LESION_DEPLOYMENT: dict[str, Any] = {
    "name": "ct-lesion-seg",
    "app": "hounsfield_operators.ct_lesion_seg.app:CTLesionSegApp",
    "model_path": str(CT_LESION_MODEL),
    "model_name": "CT lesion segmentation",
    "model_version": "1.0.0",
    "mode": "research",
    "queue": "routine",
    "rule": {
        "kind": "all",
        "rules": [
            {"kind": "modality", "in": ["CT"]},
            {"kind": "instance_count", "min": 8},
            {"kind": "not", "rule": {"kind": "series_description", "regex": "(?i)scout|localizer|topogram"}},
        ],
    },
    "destinations": ["pacs"],
}


_FINISHED = ("done", "failed", "timed_out", "superseded")


class StackFailed(HounsfieldError, RuntimeError):
    """The stack did not start or did not answer in time."""


def storescu(
    files: Sequence[Path], *, host: str, port: int, called_ae: str, calling_ae: str, required_only: bool = False
) -> float:
    """Send files with dcmtk's ``storescu`` as a modality would; returns the seconds it took.

    ``required_only`` proposes just the files' own SOP classes (``-R``): storescu's default list leaves
    out some classes, Segmentation Storage among them.
    """
    env = {**os.environ, "TCP_NODELAY": "1"}
    options = ["-R"] if required_only else []
    argv = ["/usr/bin/storescu", *options, "-aet", calling_ae, "-aec", called_ae, host, str(port), *map(str, files)]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise StackFailed(f"storescu failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


class HounsfieldStack:
    """``hounsfield up`` with a generated configuration, sending results to ``pacs``."""

    def __init__(
        self,
        folder: Path,
        pacs: LocalOrthanc,
        *,
        deployments: list[dict[str, Any]] | None = None,
        quiet_period_s: float = 5.0,
        extra_env: dict[str, str] | None = None,
        database_url: str | None = None,
        overrides: dict[str, Any] | None = None,
        dashboard: dict[str, Any] | None = None,
        sources: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.folder = folder
        self.extra_env = extra_env or {}
        self.pacs = pacs
        self.listener_port = free_port()
        self.registry_port = free_port()
        self.redis_port = free_port()
        self.listener_metrics_port = free_port()
        self.worker_metrics_port = free_port()
        self.config_path = folder / "hounsfield.yaml"
        self.config: dict[str, Any] = {
            "data_dir": str(folder / "data"),
            "local_redis_port": self.redis_port,
            "listener": {
                "host": "127.0.0.1",
                "port": self.listener_port,
                "metrics_port": self.listener_metrics_port,
                "quiet_period_s": quiet_period_s,
                "min_free_disk_mb": 64,  # a demo on a small disk still runs
                # Only known callers may send: the demo modality, the readiness probe, and the MR scanner
                # the end-to-end tests send from.
                "sources": {
                    "demo-ct": {"ae_title": "DEMO-CT", "networks": ["127.0.0.1/32"]},
                    "demo-mr": {"ae_title": "MR-SCANNER", "networks": ["127.0.0.1/32"]},
                    "probe": {"ae_title": "HF-PROBE", "networks": ["127.0.0.1/32"]},
                    **(sources or {}),  # more senders (listener.sources entries)
                },
            },
            # A demo installation: the registry makes its own admin token (data_dir/registry-admin-token).
            "registry": {"port": self.registry_port, "development": True},
            "destinations": {
                "pacs": {
                    "ae_title": pacs.aet,
                    "host": "127.0.0.1",
                    "port": pacs.dicom_port,
                    "retries": 3,
                    "retry_backoff_s": 1.0,
                }
            },
            "deployments": deployments if deployments is not None else [CT_LESION_DEPLOYMENT],
        }
        if database_url is not None:  # else SQLite in the data folder
            self.config["database_url"] = database_url
        if dashboard is not None:
            self.config["registry"]["dashboard"] = dashboard
        self.config.update(overrides or {})  # top-level sections replaced whole (e.g. worker)
        self.config["worker"] = {"metrics_port": self.worker_metrics_port, **self.config.get("worker", {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    @property
    def metrics_urls(self) -> dict[str, str]:
        """Each process's ``/metrics``: the listener's, the worker's, and the registry's (on its API port)."""
        worker_port = self.config["worker"]["metrics_port"]
        ports = {"listener": self.listener_metrics_port, "worker": worker_port, "registry": self.registry_port}
        return {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}

    def start(self, timeout: float = 240.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")} | self.extra_env
        log = (self.folder / "hounsfield.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hounsfield.cli", "up", "--config", str(self.config_path)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        checks = {"registry": self._registry_up, "listener": self._listener_up, "worker": self._worker_up}
        while checks and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackFailed(
                    f"hounsfield up exited ({self.process.returncode}); see {self.folder / 'hounsfield.log'}"
                )
            for name in [n for n, check in checks.items() if check()]:
                del checks[name]
            time.sleep(0.5)
        if checks:
            raise StackFailed(
                f"not ready after {timeout:.0f} s: {', '.join(checks)}; see {self.folder / 'hounsfield.log'}"
            )

    def _registry_up(self) -> bool:
        try:
            return httpx.get(f"{self.api}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _listener_up(self) -> bool:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", self.listener_port)) != 0:
                return False  # not listening yet; spare pynetdicom's connection-refused errors
        return echo("127.0.0.1", self.listener_port, called_ae="HOUNSFIELD", calling_ae="HF-PROBE").ok

    def _worker_up(self) -> bool:
        from celery import Celery

        app = Celery(broker=f"redis://127.0.0.1:{self.redis_port}/0")
        try:
            return bool(app.control.ping(timeout=1.0))
        except Exception:  # the broker itself may still be starting
            return False
        finally:
            app.close()

    def send(self, files: Sequence[Path], calling_ae: str = "DEMO-CT", *, required_only: bool = False) -> float:
        return storescu(
            files, host="127.0.0.1", port=self.listener_port, called_ae="HOUNSFIELD", calling_ae=calling_ae,
            required_only=required_only,
        )  # fmt: skip

    @property
    def api_headers(self) -> dict[str, str]:
        """Bearer headers with the admin token the registry made at its start (development mode)."""
        token = (Path(self.config["data_dir"]) / DEV_TOKEN_FILE).read_text(encoding="utf-8").strip()
        return {"Authorization": f"Bearer {token}"}

    def study(self, study_uid: str) -> dict[str, Any] | None:
        response = httpx.get(f"{self.api}/studies/{study_uid}", headers=self.api_headers, timeout=10)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    def wait_for_study(self, study_uid: str, *, timeout: float = 300.0) -> dict[str, Any]:
        """Wait until the study is routed and each of its jobs has finished (done or failed)."""
        deadline = time.monotonic() + timeout
        study: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            study = self.study(study_uid)
            done = study is not None and study["state"] in ("routed", "no_route")
            if study is not None and done and all(job["state"] in _FINISHED for job in study["jobs"]):
                return study
            time.sleep(0.5)
        raise StackFailed(f"study not finished within {timeout:.0f} s (last seen: {study and study['state']})")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
