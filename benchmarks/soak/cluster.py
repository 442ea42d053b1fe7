"""The soak's installation: every service a process of its own, each one killable and restartable.

Unlike ``hounsfield up`` (which stops everything when one child dies), the soak runs PostgreSQL,
redis-server, Orthanc (the PACS), the listener, the registry and the workers separately, as a
cluster would, so that one of them can be killed or restarted while the others carry on: the
chaos (:mod:`benchmarks.soak.chaos`) does that, and :class:`Cluster` restarts what it killed.
Everything listens on loopback only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
import yaml

from hounsfield.access import DEV_TOKEN_FILE
from hounsfield.demo.orthanc import LocalOrthanc, free_port
from hounsfield.demo.stack import CT_LESION_DEPLOYMENT
from hounsfield.errors import HounsfieldError
from hounsfield.listener.echo import echo

__all__ = ["Cluster", "ClusterFailed", "DataVolume", "Process", "rss_mb"]

REPO = Path(__file__).resolve().parents[2]
PROBE_AE = "SOAK-PROBE"


class ClusterFailed(HounsfieldError, RuntimeError):
    """A service of the soak did not start, or did not come back after a fault."""


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of ``pid`` and all its descendants (MiB); None when it is not running."""
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def _wait(ready: Callable[[], bool], timeout: float, what: str, alive: Callable[[], bool] = lambda: True) -> float:
    """Poll ``ready`` until true; returns the seconds it took. :class:`ClusterFailed` after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not alive():
            raise ClusterFailed(f"{what} exited while starting")
        try:
            if ready():
                return time.monotonic() - start
        except Exception:
            pass
        time.sleep(0.2)
    raise ClusterFailed(f"{what} not ready after {timeout:.0f} s")


@dataclass
class Process:
    """One Hounsfield service (``hounsfield <command> --config ...``) as a child process."""

    name: str
    argv: list[str]
    log: Path
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def start(self, timeout: float = 120.0) -> float:
        """Start it and wait until it answers; returns the seconds until ready."""
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        popen = self.popen
        return _wait(self.ready, timeout, self.name, alive=lambda: popen.poll() is None)

    def kill(self) -> None:
        """kill -9, the process and its children (an application's warm process too)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            children = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()
        for child in children:  # orphans a real pod's end would take with it
            with contextlib.suppress(psutil.Error):
                child.kill()

    def stop(self, timeout: float = 40.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class PostgreSQL:
    """A PostgreSQL cluster of the soak's own (``initdb``; run as the ``postgres`` user under root).

    Durable as in production (fsync on): a restart mid-soak must lose no committed row.
    """

    def __init__(self) -> None:
        bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
        if not bindirs:
            raise ClusterFailed("PostgreSQL is not installed (Debian package postgresql)")
        self.bindir = bindirs[-1].parent
        # Its own folder under the system's temporary one: the postgres user must reach it, which a work
        # folder inside a private one (pytest's, mkdtemp's) does not let it.
        self.folder = Path(tempfile.mkdtemp(prefix="hounsfield-soak-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/hounsfield"
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "LC_ALL": "C"}
        # As root: run as the postgres user, with its group only (root's supplementary groups dropped).
        user: dict[str, Any] = (
            {} if self._user is None else {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        )
        return subprocess.run(args, env=env, cwd=self.folder, capture_output=True, check=check, **user)

    def init(self) -> None:
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        self._run(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "hounsfield"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        proc = self._run(
            str(self.bindir / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "log"),
            "-o",
            options,
            check=False,
        )
        if proc.returncode != 0:
            raise ClusterFailed(f"PostgreSQL did not start: {proc.stderr.decode(errors='replace')[-500:]}")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data), check=False)

    def remove(self, keep_log: Path | None = None) -> None:
        """Stop it and remove its folder (its server log copied to ``keep_log`` first)."""
        self.stop()
        if keep_log is not None and (self.folder / "log").exists():
            shutil.copyfile(self.folder / "log", keep_log)
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if psutil.pid_exists(pid) else None


class Redis:
    """redis-server as ``hounsfield up`` runs it (append-only file), on a port of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        with (self.folder / "redis.log").open("ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        popen = self.popen
        _wait(
            lambda: bool(redis.Redis(port=self.port, socket_timeout=1).ping()),
            30,
            "redis-server",
            lambda: popen.poll() is None,
        )

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()  # SIGTERM: redis writes its append-only file out before it exits
            self.popen.wait(timeout=30)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None


class DataVolume:
    """The data folder's own file system: an ext4 image, loop-mounted (root only).

    The disk-floor fault fills this file system, never the host's, so that nothing else on the machine
    runs short while the soak drives its data volume to the floor, as a hospital's data volume would be
    its own. ext4 on a loop device keeps fsync and a full disk real.
    """

    def __init__(self, image: Path, mountpoint: Path, size_mb: int) -> None:
        self.image, self.mountpoint, self.size_mb = image, mountpoint, size_mb
        self.mounted = False

    @staticmethod
    @functools.cache
    def possible() -> bool:
        """Whether this machine can loop-mount an image: tried for real, with a small one (root, mkfs.ext4 from
        e2fsprogs, loop devices: a container may have none)."""
        if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
            return False
        with tempfile.TemporaryDirectory(prefix="soak-volume-check-") as folder:
            trial = DataVolume(Path(folder) / "trial.img", Path(folder) / "mnt", 8)
            try:
                trial.mount()
            except (subprocess.CalledProcessError, OSError):
                return False
            finally:
                trial.unmount()
        return True

    def mount(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.image.open("wb") as image:
            image.truncate(self.size_mb * 2**20)  # sparse: the host's disk pays only for what is written
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)], check=True, capture_output=True)
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, capture_output=True)
            self.mounted = False
        self.image.unlink(missing_ok=True)


class Cluster:
    """PostgreSQL, Redis, Orthanc, listener, registry and ``workers`` workers, configured for the soak."""

    def __init__(
        self,
        folder: Path,
        *,
        data_dir: Path,
        sources: dict[str, str],
        workers: int = 2,
        floor_mb: int,
        quiet_period_s: float = 15.0,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.postgres = PostgreSQL()
        self.redis = Redis(folder / "redis")
        self.pacs = LocalOrthanc(folder / "orthanc", aet="SOAKPACS")
        self.listener_port, self.registry_port, self.listener_metrics_port = free_port(), free_port(), free_port()
        self.data_dir = data_dir
        self.floor_mb = floor_mb
        self.config: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "database_url": self.postgres.url,
            "redis_url": self.redis.url,
            "listener": {
                "host": "127.0.0.1",
                "port": self.listener_port,
                "metrics_port": self.listener_metrics_port,
                "quiet_period_s": quiet_period_s,
                "min_free_disk_mb": floor_mb,
                "sources": {
                    name: {"ae_title": ae, "networks": ["127.0.0.1/32"]}
                    for name, ae in {**sources, "soak-probe": PROBE_AE}.items()
                },
            },
            "registry": {"host": "127.0.0.1", "port": self.registry_port, "development": True},
            "destinations": {
                "pacs": {
                    "ae_title": self.pacs.aet,
                    "host": "127.0.0.1",
                    "port": self.pacs.dicom_port,
                    "retries": 2,
                    "retry_backoff_s": 1.0,
                }
            },
            # A killed worker's job is handed on after the visibility timeout: kept above the job's timeout
            # with room for its export (the rule in docs/architecture.md), or a job still running runs twice.
            "worker": {"export_retry_first_s": 2.0, "export_retry_max_s": 8.0, "visibility_timeout_s": 120.0},
            "deployments": [{**CT_LESION_DEPLOYMENT, "timeout_s": 45.0}],
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
        self.env |= {"TCP_NODELAY": "1", "PYTHONPATH": str(REPO)}
        self.services: dict[str, Process] = {}
        self.worker_metrics_ports = {f"worker-{n + 1}": free_port() for n in range(workers)}

    # -- configuration ------------------------------------------------------------------------------

    def _config_file(self, name: str, worker_metrics_port: int | None = None) -> Path:
        config = dict(self.config)
        if worker_metrics_port is not None:
            config["worker"] = {**config["worker"], "metrics_port": worker_metrics_port}
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _service(self, name: str, command: str, ready: Callable[[], bool], metrics_port: int | None = None) -> Process:
        config = self._config_file(name, metrics_port)
        argv = [sys.executable, "-m", "hounsfield.cli", command, "--config", str(config)]
        return Process(name, argv, self.folder / f"{name}.log", ready, env=self.env)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    @property
    def api_headers(self) -> dict[str, str]:
        token = (self.data_dir / DEV_TOKEN_FILE).read_text(encoding="utf-8").strip()
        return {"Authorization": f"Bearer {token}"}

    # -- readiness -----------------------------------------------------------------------------------

    def _listener_ready(self) -> bool:
        return echo("127.0.0.1", self.listener_port, called_ae="HOUNSFIELD", calling_ae=PROBE_AE).ok

    def _registry_ready(self) -> bool:
        return httpx.get(f"{self.api}/health", timeout=2).status_code == 200

    def _worker_ready(self, port: int) -> Callable[[], bool]:
        return lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.postgres.init()
        self.redis.start()
        self.pacs.start()
        subprocess.run(
            [sys.executable, "-m", "hounsfield.cli", "db", "upgrade", "--config", str(self._config_file("migrate"))],
            env=self.env,
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        self.services["registry"] = self._service("registry", "registry", self._registry_ready)
        self.services["listener"] = self._service("listener", "listener", self._listener_ready)
        for name, port in self.worker_metrics_ports.items():
            self.services[name] = self._service(name, "worker", self._worker_ready(port), port)
        for process in self.services.values():
            process.start(timeout=240)

    def stop(self) -> None:
        for process in reversed(list(self.services.values())):
            process.stop()
        self.pacs.stop()
        self.redis.stop()
        self.postgres.remove(keep_log=self.folder / "postgres.log")

    def pids(self) -> dict[str, int | None]:
        """Every process the soak watches: the Hounsfield services and the ones they depend on."""
        pids = {name: process.pid for name, process in self.services.items()}
        pacs = self.pacs.process
        pids["orthanc"] = pacs.pid if pacs is not None and pacs.poll() is None else None
        pids["redis"] = self.redis.pid
        pids["postgres"] = self.postgres.pid
        return pids
