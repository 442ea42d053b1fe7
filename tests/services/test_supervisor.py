"""``hounsfield up``: every service in the foreground, and a clean stop on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import yaml

from hounsfield.config import load_settings
from hounsfield.demo.orthanc import free_port
from hounsfield.demo.stack import HounsfieldStack


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_runs_everything_and_ctrl_c_stops_it_cleanly(tmp_path: Path) -> None:
    ports = {"listener": free_port(), "registry": free_port(), "redis": free_port()}
    config = tmp_path / "hounsfield.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "local_redis_port": ports["redis"],
                "listener": {"host": "127.0.0.1", "port": ports["listener"]},
                "registry": {"port": ports["registry"], "development": True},  # it makes its own admin token
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    up = subprocess.Popen(
        [sys.executable, "-m", "hounsfield.cli", "up", "--config", str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(_port_open(p) for p in ports.values()):
            assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
            time.sleep(0.3)
        assert all(_port_open(p) for p in ports.values()), "listener, registry and redis-server all listen"
        assert httpx.get(f"http://127.0.0.1:{ports['registry']}/health", timeout=5).json()["broker"] == "ok"
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 4  # redis-server, worker, listener, registry

        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert up.wait(timeout=60) == 0
        time.sleep(0.5)
        assert not any(_port_open(p) for p in ports.values())
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def test_the_demo_stack_gives_each_process_a_metrics_port(tmp_path: Path) -> None:
    pacs = SimpleNamespace(aet="ORTHANC", dicom_port=free_port())
    stack = HounsfieldStack(tmp_path, pacs, overrides={"worker": {"queues": ["stat"]}})  # type: ignore[arg-type]
    path = tmp_path / "hounsfield.yaml"
    path.write_text(yaml.safe_dump(stack.config))
    settings = load_settings(path)
    assert settings.worker.queues == ["stat"], "a worker section given is kept"
    assert settings.metrics_urls == stack.metrics_urls
    assert {name: url is not None for name, url in settings.metrics_urls.items()} == dict.fromkeys(
        ("listener", "worker", "registry"), True
    )
