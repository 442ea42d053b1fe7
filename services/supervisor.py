"""``hounsfield up``: every service as a child process in the foreground; Ctrl-C stops them in order."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from hounsfield.catalog import open_database
from hounsfield.config import Settings

__all__ = ["LocalRedis", "Supervisor", "run_up"]

logger = logging.getLogger(__name__)


class LocalRedis:
    """A redis-server of our own, for single-host installs with no Redis URL configured."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.dir = data_dir / "redis"
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server), and no redis_url is set")
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir.resolve()),
            "--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "yes",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=(self.dir / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {self.dir / 'redis.log'}")
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                logger.info("local redis-server on port %d", self.port)
                return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class Supervisor:
    """Starts child processes, stops them all when one dies or a signal arrives."""

    env: dict[str, str]
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, argv: Sequence[str]) -> None:
        self.children[name] = subprocess.Popen(list(argv), env=self.env)
        logger.info("started %s (pid %d)", name, self.children[name].pid)

    def wait(self, stop: threading.Event) -> int:
        """Block until ``stop`` is set or a child exits; returns the exit code for ``up``."""
        while not stop.wait(0.5):
            for name, child in self.children.items():
                if child.poll() is not None:
                    logger.error("%s exited with code %s; stopping everything", name, child.returncode)
                    return 1
        return 0

    def stop_all(self, timeout: float = 20.0) -> None:
        for child in reversed(list(self.children.values())):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, child in self.children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time; killing it", name)
                child.kill()
                child.wait()


def run_up(settings: Settings, config_path: Path | None, stop: threading.Event) -> int:
    """Run listener, worker and registry (and redis-server when needed) until ``stop``."""
    open_database(settings).dispose()  # migrated, seeded and synced before the services start
    env = dict(os.environ)
    if config_path is not None:
        env["HOUNSFIELD_CONFIG"] = str(config_path.resolve())
    local_redis = None
    if settings.redis_url is None:
        local_redis = LocalRedis(settings.data_dir, settings.local_redis_port)
        local_redis.start()
        env["HOUNSFIELD_REDIS_URL"] = local_redis.url
    supervisor = Supervisor(env)
    command = [sys.executable, "-m", "hounsfield.cli"]
    try:
        for service in ("worker", "listener", "registry"):
            supervisor.spawn(service, [*command, service])
        for service, url in settings.metrics_urls.items():
            if url is None:
                logger.info("%s: no Prometheus metrics (set %s.metrics_port)", service, service)
            else:
                logger.info("%s: Prometheus metrics at %s", service, url)
        code = supervisor.wait(stop)
    finally:
        supervisor.stop_all()
        if local_redis is not None:
            local_redis.stop()
    logger.info("all services stopped")
    return code
