"""Ingest benchmark: Hounsfield's listener against dcmtk's storescp, on the same machine, in the same run.

Every scenario is sent with dcmtk's ``storescu`` (``TCP_NODELAY=1``) to both receivers in turn:

* ``storescp`` (dcmtk), the peer, in its best configuration for the scenario: bit-preserving (``+B``:
  it writes the dataset as received, as Hounsfield does), with ``--fork`` (a child process per
  association, so that concurrent associations are served at once) where the scenario has several
  associations, in its default single process otherwise (``Scenario.storescp_fork``;
  ``--storescp-both`` also measures the other configuration, to check the choice). It never fsyncs,
  and it writes each file before that instance's Success: the last Success is the end of its work.
* ``hounsfield listener``, started through the CLI with a configuration in the benchmark's folder,
  with its ingest journal (the default), one deployment that routes every study (CT) to a job on the
  stat queue, and a redis-server of its own as the broker (no worker runs: the jobs wait there).
  Before each Success the instance is durable in the journal (one ``fdatasync`` shared by concurrent
  associations; datasets spooled above 2 MiB: their file fsynced and renamed into the store); the
  journal's applier writes the files into the study store and commits their index rows right after;
  each association's release completes its study, which the router turns into a job on the broker.
  Hounsfield is timed three times: until the last Success, until every instance is indexed (all of
  its ingest work; the ratio against the peer uses it), and until every study's job is on the broker.
  The listener's own histogram (``hounsfield_router_queue_latency_seconds``) says how long each job
  took from its study being complete and indexed to the broker: the target is 100 ms.

Scenarios (targets are Hounsfield's throughput until indexed over storescp's, or a memory ceiling;
every study's job on the broker within 100 ms of its study being complete and indexed):

a. 300 CT slices of 512 x 512 x 16 bit, one association (target >= 0.8x)
b. 2,000 instances of 64 x 64 x 16 bit, one association (>= 0.5x)
c. 8 concurrent associations, each its own study of 400 such small instances, aggregate (>= 1.0x)
d. a 2 GiB study (8 multi-frame instances of 512 frames of 512 x 512 x 16 bit): the listener's
   resident memory stays under 300 MB while it receives

Each scenario runs ``--runs`` times (receivers alternate which goes first); medians are reported,
every run checks that each receiver stored every instance (the index's rows for Hounsfield; the
output folder for storescp, counted once its children have exited). No receiver's folder is removed
until every timed run is over (but the memory scenario's, last): ext4 passes over inodes freed within
the last minute when it allocates new ones, which made every receiver's file creations 2-4x slower
right after a removal. The table is printed and written to ``docs/benchmarks.md``, with the CPU the
senders, the receiver and idleness took in each run (where the time goes).

Run it from the repository root::

    .venv/bin/python -m benchmarks.ingest --runs 3
    .venv/bin/python -m benchmarks.ingest --quick --runs 1 --out /tmp/bench.md   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psutil
import pydicom
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from benchmarks.report import write_section
from hounsfield.db import Database, Instance
from hounsfield.queues import queue_depths
from hounsfield.store import fsync_folder
from hounsfield.supervisor import LocalRedis

__all__ = ["QUICK", "SCENARIOS", "Scenario", "main"]

REPO = Path(__file__).resolve().parents[1]
STORESCU, STORESCP, ECHOSCU = "/usr/bin/storescu", "/usr/bin/storescp", "/usr/bin/echoscu"
MB = 1_000_000
SETTLE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Scenario:
    """What is sent: ``associations`` concurrent storescu processes of ``instances`` files each."""

    key: str
    title: str
    associations: int
    instances: int
    rows: int
    columns: int
    frames: int = 1
    storescp_fork: bool = False
    """The peer's best configuration here: ``storescp --fork`` (a child per association) or one process."""
    min_ratio: float | None = None
    """Hounsfield's throughput until indexed over storescp's must reach this."""
    max_rss_mb: float | None = None
    """Hounsfield's peak resident memory while receiving must stay under this."""

    @property
    def total_instances(self) -> int:
        return self.associations * self.instances

    @property
    def target(self) -> str:
        if self.min_ratio is not None:
            return f">= {self.min_ratio:.1f}x"
        return f"RSS < {self.max_rss_mb:.0f} MB"


# storescp's configuration per scenario is the faster one measured on the reference machine (2 cores;
# see docs/benchmarks.md, and rerun with --storescp-both to check it elsewhere).
SCENARIOS = {
    "a": Scenario("a", "300 x 512x512 CT, 1 association", 1, 300, 512, 512, min_ratio=0.8),
    "b": Scenario("b", "2,000 x 64x64, 1 association", 1, 2000, 64, 64, min_ratio=0.5),
    "c": Scenario("c", "8 associations x 400 x 64x64, concurrent", 8, 400, 64, 64, storescp_fork=True, min_ratio=1.0),
    "d": Scenario("d", "2 GiB study: 8 x 512 frames of 512x512", 1, 8, 512, 512, frames=512, max_rss_mb=300),
}
QUICK = {
    "a": Scenario("a", "10 x 128x128 CT, 1 association (quick)", 1, 10, 128, 128, min_ratio=0.8),
    "b": Scenario("b", "40 x 32x32, 1 association (quick)", 1, 40, 32, 32, min_ratio=0.5),
    "c": Scenario("c", "3 associations x 15 x 32x32 (quick)", 3, 15, 32, 32, storescp_fork=True, min_ratio=1.0),
    "d": Scenario("d", "2 x 16 frames of 128x128 (quick)", 1, 2, 128, 128, frames=16, max_rss_mb=300),
}
PEER, PEER_OTHER, HOUNSFIELD = "storescp", "storescp-other-mode", "hounsfield"
"""Keys of :attr:`ScenarioResult.runs`: the peer in the scenario's configuration, in the other one
(``--storescp-both`` only), and Hounsfield."""


@dataclass
class Measurement:
    """One receiver, one run of one scenario."""

    seconds: float
    """From starting the senders until the last exits: until the last Success (and its release)."""
    stored: int
    expected: int
    peak_rss_mb: float
    sender_failures: int = 0
    settle_s: float = 0.0
    """From the last sender's exit until the receiver held every instance: Hounsfield, until its index
    had every row (the applier writes an instance's file into the store before it commits the row);
    storescp, until its folder had every file (written before each Success: at once)."""
    command: str = ""
    """How the receiver was started, with its folders and port as placeholders."""
    routed_s: float = 0.0
    """Hounsfield: from starting the senders until every study's job was on the broker (0: storescp)."""
    studies: int = 0
    """Hounsfield: the studies sent (one per association), each to be routed to one job."""
    jobs: int = 0
    """Hounsfield: jobs the listener saw the broker take (its histogram's count; one per study)."""
    queued_within_100ms: int = 0
    """Hounsfield: of those, how many reached the broker within 100 ms of their study's last index row
    (the listener's ``hounsfield_router_queue_latency_seconds`` histogram)."""
    queue_latency_mean_s: float = 0.0
    """Hounsfield: the mean of that histogram (study's last index row -> job on the broker)."""
    sender_cpu_s: float = 0.0
    """CPU seconds (user + system) the storescu senders used."""
    machine_busy_s: float = 0.0
    """CPU seconds the whole machine was busy (both cores) from starting the senders until the receiver
    held every instance (Hounsfield: until routed); less the senders' own, what receiving cost."""
    machine_idle_s: float = 0.0
    """CPU seconds left idle (or waiting for the disk) in that time."""

    @property
    def done_s(self) -> float:
        """From starting the senders until the receiver held every instance (Hounsfield: indexed)."""
        return self.seconds + self.settle_s

    @property
    def complete(self) -> bool:
        return self.stored == self.expected and not self.sender_failures

    @property
    def all_queued_in_time(self) -> bool:
        """Every study's job reached the broker, each within 100 ms of its study being complete and indexed."""
        return self.jobs == self.studies > 0 and self.queued_within_100ms == self.jobs


@dataclass
class ScenarioResult:
    scenario: Scenario
    bytes_sent: int
    runs: dict[str, list[Measurement]] = field(default_factory=lambda: {PEER: [], HOUNSFIELD: []})

    def median_s(self, receiver: str) -> float:
        """Median time until the last Success."""
        return statistics.median(m.seconds for m in self.runs[receiver])

    @property
    def peer_s(self) -> float:
        """storescp's median time: until its last Success, which ends its work (its files are written)."""
        return self.median_s(PEER)

    @property
    def indexed_s(self) -> float:
        """Hounsfield's median time until every instance was indexed: all of its work."""
        return statistics.median(m.done_s for m in self.runs[HOUNSFIELD])

    @property
    def routed_s(self) -> float:
        """Hounsfield's median time until every study's job was on the broker."""
        return statistics.median(m.routed_s for m in self.runs[HOUNSFIELD])

    @property
    def queued_in_time(self) -> bool:
        """In every run, every study's job reached the broker within 100 ms of its last index row."""
        return all(m.all_queued_in_time for m in self.runs[HOUNSFIELD])

    @property
    def settle_s(self) -> float:
        """Hounsfield's median time from the last sender's exit until every instance was indexed."""
        return statistics.median(m.settle_s for m in self.runs[HOUNSFIELD])

    def mb_per_s(self, seconds: float) -> float:
        return self.bytes_sent / MB / seconds

    @property
    def ratio(self) -> float:
        """Hounsfield's throughput until indexed over storescp's: what the target is judged on."""
        return self.peer_s / self.indexed_s

    @property
    def ratio_at_last_success(self) -> float:
        """The same, with Hounsfield timed only until its last Success (its indexing lag left out)."""
        return self.peer_s / self.median_s(HOUNSFIELD)

    @property
    def peer_mode(self) -> str:
        return _storescp_mode(self.scenario.storescp_fork)

    @property
    def peak_rss_mb(self) -> float:
        return max(m.peak_rss_mb for m in self.runs[HOUNSFIELD])

    @property
    def all_stored(self) -> bool:
        return all(m.complete for ms in self.runs.values() for m in ms)

    @property
    def passed(self) -> bool:
        if not self.all_stored or not self.queued_in_time:
            return False
        if self.scenario.min_ratio is not None:
            return self.ratio >= self.scenario.min_ratio
        assert self.scenario.max_rss_mb is not None
        return self.peak_rss_mb < self.scenario.max_rss_mb


# --- Test data ---------------------------------------------------------------------------------


def _write_series(folder: Path, scenario: Scenario, association: int) -> None:
    """One study per association: ``scenario.instances`` files of the scenario's image size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(association)
    pixels = rng.integers(0, 4096, (scenario.frames, scenario.rows, scenario.columns), dtype=np.uint16).tobytes()
    study_uid, series_uid = generate_uid(), generate_uid()
    for number in range(1, scenario.instances + 1):
        ds = Dataset()
        ds.SOPClassUID = EnhancedCTImageStorage if scenario.frames > 1 else CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID = "Bench^Ingest", f"BENCH{association:02d}"
        ds.StudyDate, ds.AccessionNumber, ds.Modality = "20240115", f"B{association:04d}", "CT"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 1, number, "ingest benchmark"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(number)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = (
            scenario.rows, scenario.columns, 1, "MONOCHROME2"
        )  # fmt: skip
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        if scenario.frames > 1:
            ds.NumberOfFrames = scenario.frames
        ds.PixelData = pixels
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        pydicom.dcmwrite(folder / f"{number:05d}.dcm", ds, enforce_file_format=True)


def generate(scenario: Scenario, cache: Path) -> list[Path]:
    """The scenario's folders (one per association), written once and reused within the cache."""
    s = scenario
    root = cache / f"{s.key}-{s.associations}x{s.instances}-{s.rows}x{s.columns}x{s.frames}"
    folders = [root / f"assoc{i}" for i in range(scenario.associations)]
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        for index, folder in enumerate(folders):
            _write_series(folder, scenario, index)
        (root / ".complete").touch()
    return folders


def _folder_bytes(folders: Sequence[Path]) -> int:
    return sum(p.stat().st_size for folder in folders for p in folder.glob("*.dcm"))


# --- Processes -----------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    env["TCP_NODELAY"] = "1"
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_echo(port: int, called_ae: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{called_ae} exited with {proc.returncode} before it answered C-ECHO")
        echo = subprocess.run(
            [ECHOSCU, "-aet", "BENCHECHO", "-aec", called_ae, "-to", "2", "127.0.0.1", str(port)],
            env=_env(), capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        if echo.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{called_ae} did not answer C-ECHO within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _storescp_mode(fork: bool) -> str:
    return "--fork" if fork else "single process"


class Receiver:
    """A storage SCP under test: started fresh for every run, on its own empty folder."""

    called_ae = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.command = ""
        """The command line, its folders and port replaced by placeholders (for the report)."""

    def start(self) -> None:
        raise NotImplementedError(f"Subclass {type(self).__name__} must implement start")

    def stored(self) -> int:
        """How many instances it holds now."""
        raise NotImplementedError(f"Subclass {type(self).__name__} must implement stored")

    def finish(self, timeout: float) -> None:
        """Wait, after the senders are done, for whatever the receiver still runs on its own."""

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


class StoreSCP(Receiver):
    """dcmtk's storescp, bit-preserving; with ``fork``, a child process per association."""

    called_ae = "STORESCP"

    def __init__(self, folder: Path, *, fork: bool) -> None:
        super().__init__(folder)
        self.fork = fork

    def start(self) -> None:
        self.output = self.folder / "received"
        self.output.mkdir(parents=True)
        options = ["--fork"] if self.fork else []
        options += ["+B", "-od", "DIR", "-aet", self.called_ae, "-ta", "600"]
        self.command = " ".join(["storescp", *options, "PORT"])
        argv = [STORESCP, *(str(self.output) if o == "DIR" else o for o in options), str(self.port)]
        with (self.folder / "storescp.log").open("wb") as log:
            self.proc = subprocess.Popen(argv, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        _wait_for_echo(self.port, self.called_ae, self.proc)

    def stored(self) -> int:
        return sum(1 for p in self.output.iterdir() if p.is_file())

    def finish(self, timeout: float) -> None:
        """With ``--fork``, wait until every association's child has exited: they write the files."""
        if self.proc is None or not self.fork:
            return
        parent = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = []
            for child in parent.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if child.status() != psutil.STATUS_ZOMBIE:
                        live.append(child)
            if not live:
                return
            time.sleep(0.02)
        raise RuntimeError(f"storescp's association children did not exit within {timeout:.0f} s")


BENCH_DEPLOYMENT = {
    "name": "ingest-bench",
    "app": "hounsfield_operators.ct_lesion_seg.app:CTLesionSegApp",
    "model_path": "/nonexistent/model.ts",  # no worker runs: the job is only queued
    "model_name": "Ingest benchmark",
    "model_version": "1.0.0",
    "mode": "shadow",
    "queue": "stat",
    "rule": {"kind": "modality", "in": ["CT"]},
}
"""Routes every benchmark study (CT) to one job on the stat queue, as an emergency study would be."""


class Hounsfield(Receiver):
    """``hounsfield listener`` with a generated configuration: SQLite index, ingest journal, one deployment
    that routes every study, and a redis-server of its own as the broker (no worker: jobs wait there)."""

    called_ae = "HOUNSFIELD"
    _db: Database | None = None
    _redis: LocalRedis | None = None

    def start(self) -> None:
        self.data_dir = self.folder / "data"
        self._redis = LocalRedis(self.folder, _free_port())
        self._redis.start()
        self.metrics_port = _free_port()
        config = {
            "data_dir": str(self.data_dir),
            "log_level": "WARNING",
            "local_redis_port": self._redis.port,
            "listener": {
                "host": "127.0.0.1",
                "port": self.port,
                "ae_title": self.called_ae,
                "open_mode": True,
                "quiet_period_s": 3600.0,  # an association's release completes its study
                "min_free_disk_mb": 256,
                "metrics_port": self.metrics_port,
            },
            "deployments": [BENCH_DEPLOYMENT],
        }
        path = self.folder / "hounsfield.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.command = "hounsfield listener --config CONFIG"
        argv = [sys.executable, "-m", "hounsfield.cli", "listener", "--config", str(path)]
        with (self.folder / "listener.log").open("wb") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        _wait_for_echo(self.port, self.called_ae, self.proc)
        self.stored()  # opens the polling connection now, outside the timed part

    def stored(self) -> int:
        """Rows in its index (one connection kept for the polling, closed by :meth:`stop`)."""
        if self._db is None:
            self._db = Database(f"sqlite:///{self.data_dir.resolve() / 'hounsfield.db'}")
        with self._db.session() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)

    def routed(self) -> int:
        """Jobs waiting on the broker (every queue)."""
        assert self._redis is not None
        client = redis.Redis(port=self._redis.port)
        try:
            return sum(queue_depths(client).values())
        finally:
            client.close()

    def queue_latency(self) -> tuple[int, int, float]:
        """(jobs observed, of which within 100 ms, the mean in seconds): the listener's histogram of a
        study's last index row to its job on the broker."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        count = within = total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name != "hounsfield_router_queue_latency_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    count += sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 0.1:
                    within += sample.value
        return int(count), int(within), total / count if count else 0.0

    def stop(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None
        super().stop()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None


class RssSampler:
    """Peak resident memory of one process, sampled every 20 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def send(folders: Sequence[Path], called_ae: str, port: int) -> tuple[float, int]:
    """storescu, one process per folder, all at once; (seconds until the last exits, failures)."""
    started = time.perf_counter()
    procs = []
    for index, folder in enumerate(folders):
        argv = [STORESCU, "-aet", f"BENCH{index}", "-aec", called_ae, "-ta", "600", "+sd"]
        argv += ["127.0.0.1", str(port), str(folder)]
        procs.append(subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    failures = 0
    for proc in procs:
        _, stderr = proc.communicate(timeout=3600)
        if proc.returncode != 0 or b"E: " in stderr or b"F: " in stderr:
            failures += 1
            print(f"storescu failed ({proc.returncode}): {stderr.decode(errors='replace')[-400:]}", file=sys.stderr)
    return time.perf_counter() - started, failures


def measure(receiver: Receiver, folders: Sequence[Path], expected: int) -> Measurement:
    """Send, then time until the receiver holds every instance (Hounsfield: and until every study's job is
    on the broker); count them once it has finished."""
    receiver.start()
    try:
        assert receiver.proc is not None
        with RssSampler(receiver.proc.pid) as rss:
            cpu_before, senders_before = psutil.cpu_times(), resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            seconds, failures = send(folders, receiver.called_ae, receiver.port)
            ended = time.perf_counter()
            senders_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the senders, waited for in send()
            stored = receiver.stored()
            while stored < expected and time.perf_counter() - ended < SETTLE_TIMEOUT_S:
                time.sleep(0.02)
                stored = receiver.stored()
            settle = time.perf_counter() - ended
            routed = 0.0
            if isinstance(receiver, Hounsfield):  # one study per folder, one job per study
                while receiver.routed() < len(folders) and time.perf_counter() - ended < SETTLE_TIMEOUT_S:
                    time.sleep(0.005)
                routed = time.perf_counter() - started
            cpu_after = psutil.cpu_times()
        receiver.finish(SETTLE_TIMEOUT_S)
        stored = receiver.stored()
        measurement = Measurement(seconds, stored, expected, rss.peak / MB, failures, settle, receiver.command)
        measurement.machine_idle_s = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("idle", "iowait"))
        busy = ("user", "nice", "system", "irq", "softirq")  # guest time is in user; steal is no one's here
        measurement.machine_busy_s = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in busy)
        measurement.sender_cpu_s = (senders_after.ru_utime - senders_before.ru_utime) + (
            senders_after.ru_stime - senders_before.ru_stime
        )
        if isinstance(receiver, Hounsfield):
            measurement.routed_s, measurement.studies = routed, len(folders)
            measurement.jobs, measurement.queued_within_100ms, measurement.queue_latency_mean_s = (
                receiver.queue_latency()
            )
        return measurement
    finally:
        receiver.stop()


def run_scenario(
    scenario: Scenario,
    runs: int,
    workdir: Path,
    *,
    storescp_both: bool = False,
    progress: bool = True,
    trash: list[Path] | None = None,
) -> ScenarioResult:
    """``runs`` runs of each receiver; with ``storescp_both``, storescp in its other configuration too.

    Each run's folder is removed after the run only for a memory scenario (few, large files); the others'
    go to ``trash``, to be removed once every timed run is over (without ``trash``: after the run). A
    removal slows the file creations that follow it: ext4 passes over inodes freed within the last
    minute when it allocates new ones, which cost every receiver 2-4x in the runs after a removal
    (storescp --fork: 0.6 s on a quiet disk, 2.4-3.0 s right after a run's folder was removed).
    """
    folders = generate(scenario, workdir / "cache")
    result = ScenarioResult(scenario, _folder_bytes(folders))
    receivers: dict[str, Callable[[Path], Receiver]] = {
        PEER: functools.partial(StoreSCP, fork=scenario.storescp_fork),
        HOUNSFIELD: Hounsfield,
    }
    if storescp_both:
        receivers[PEER_OTHER] = functools.partial(StoreSCP, fork=not scenario.storescp_fork)
        result.runs[PEER_OTHER] = []
    for run in range(runs):
        order = list(receivers) if run % 2 == 0 else list(reversed(receivers))
        for name in order:
            folder = Path(tempfile.mkdtemp(prefix=f"{scenario.key}-{name}-", dir=workdir))
            # Start every run with no dirty pages left by the previous one: storescp never fsyncs,
            # and without this its writeback (and that of the removed folder) lands on the next
            # receiver's fsyncs. Outside the timed part.
            os.sync()
            try:
                measurement = measure(receivers[name](folder), folders, scenario.total_instances)
            finally:
                if trash is None or scenario.max_rss_mb is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                else:
                    trash.append(folder)
            result.runs[name].append(measurement)
            if progress:
                print(
                    f"  ({scenario.key}) run {run + 1}/{runs} {name:<19} {measurement.seconds:8.2f} s "
                    f"(held all after {measurement.done_s:.2f} s)  stored {measurement.stored}/{measurement.expected}"
                    f"  peak RSS {measurement.peak_rss_mb:.0f} MB  [{measurement.command}]",
                    file=sys.stderr,
                    flush=True,
                )
    return result


# --- Report --------------------------------------------------------------------------------------


TABLE_HEADER = (
    "| Scenario | Instances | MB sent | storescp | storescp s | Hounsfield s until last Success "
    "| Hounsfield s until indexed | Hounsfield s until routed | storescp MB/s | Hounsfield MB/s until indexed "
    "| Ratio until indexed | Ratio until last Success | Jobs on the broker <= 100 ms after the last index row "
    "| Hounsfield peak RSS | Target | Stored (both) | Result |"
)


def table(results: Sequence[ScenarioResult]) -> str:
    """One row per scenario; the target is judged on the ratio until indexed (and every job queued in time)."""
    lines = [TABLE_HEADER, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|"]
    for r in results:
        s = r.scenario
        stored = "all" if r.all_stored else "MISSING"
        runs = r.runs[HOUNSFIELD]
        queued = f"{sum(m.queued_within_100ms for m in runs)}/{sum(m.jobs for m in runs)}"
        mean_ms = statistics.mean(m.queue_latency_mean_s for m in runs) * 1000
        lines.append(
            f"| {s.key}. {s.title} | {s.total_instances} | {r.bytes_sent / MB:.1f} | {r.peer_mode} "
            f"| {r.peer_s:.2f} | {r.median_s(HOUNSFIELD):.2f} | {r.indexed_s:.2f} | {r.routed_s:.2f} "
            f"| {r.mb_per_s(r.peer_s):.1f} | {r.mb_per_s(r.indexed_s):.1f} | {r.ratio:.2f}x "
            f"| {r.ratio_at_last_success:.2f}x | {queued} (mean {mean_ms:.0f} ms) | {r.peak_rss_mb:.0f} MB "
            f"| {s.target} | {stored} | {'pass' if r.passed else 'FAIL'} |"
        )
    return "\n".join(lines)


def _time_lines(results: Sequence[ScenarioResult]) -> list[str]:
    """Where the time goes: the machine's CPU per receiver (medians), and Hounsfield's stages."""
    lines = [
        "### Where the time goes",
        "",
        "The machine's two cores from starting the senders until the receiver held every instance (Hounsfield:",
        "until every study's job was on the broker), medians: CPU seconds the storescu senders used, CPU",
        "seconds the rest of the machine used (the receiver, its database and broker, the kernel's work for",
        "them), and CPU seconds left idle (or waiting for the disk).",
        "",
        "| Scenario | Receiver | Wall s | Senders CPU s | Receiving CPU s | Idle CPU s "
        "| Receiving CPU ms per instance |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for receiver, measurements in r.runs.items():
            if not measurements or all(m.machine_busy_s == 0 for m in measurements):
                continue
            hounsfield = receiver == HOUNSFIELD
            wall = statistics.median(m.routed_s if hounsfield and m.routed_s else m.done_s for m in measurements)
            senders = statistics.median(m.sender_cpu_s for m in measurements)
            receiving = statistics.median(max(0.0, m.machine_busy_s - m.sender_cpu_s) for m in measurements)
            idle = statistics.median(m.machine_idle_s for m in measurements)
            per_instance = receiving / r.scenario.total_instances * 1000
            name = "hounsfield" if hounsfield else f"storescp {_storescp_mode(r.scenario.storescp_fork)}"
            if receiver == PEER_OTHER:
                name = f"storescp {_storescp_mode(not r.scenario.storescp_fork)}"
            lines.append(
                f"| {r.scenario.key} | {name} | {wall:.2f} | {senders:.2f} | {receiving:.2f} | {idle:.2f} "
                f"| {per_instance:.2f} |"
            )
    lines += ["", "Hounsfield's stages (medians, seconds from starting the senders):", ""]
    for r in results:
        runs = r.runs[HOUNSFIELD]
        latency = statistics.mean(m.queue_latency_mean_s for m in runs) * 1000
        lines.append(
            f"- ({r.scenario.key}) last Success {r.median_s(HOUNSFIELD):.2f}; every instance indexed "
            f"{r.indexed_s:.2f} (the applier's lag after the last Success: {r.settle_s:.2f}); every study's job on "
            f"the broker {r.routed_s:.2f} (each job {latency:.0f} ms on average after its study was complete and "
            "indexed)."
        )
    return [*lines, ""]


def _ceiling_lines(results: Sequence[ScenarioResult], cores: int) -> list[str]:
    """What the machine's cores allow: Hounsfield's time with no CPU left idle, and the receiving CPU per
    instance the target needs when the peer's senders use what they used beside the peer."""
    rows = []
    for r in results:
        hounsfield, peer = r.runs[HOUNSFIELD], r.runs[PEER]
        if r.scenario.min_ratio is None or not hounsfield or not peer or any(m.machine_busy_s == 0 for m in hounsfield):
            continue
        busy = statistics.median(m.machine_busy_s for m in hounsfield)
        receiving = statistics.median(max(0.0, m.machine_busy_s - m.sender_cpu_s) for m in hounsfield)
        best_s = busy / cores
        allowed_s = r.peer_s / r.scenario.min_ratio
        peer_senders = statistics.median(m.sender_cpu_s for m in peer)
        needed_ms = max(0.0, cores * allowed_s - peer_senders) / r.scenario.total_instances * 1000
        rows.append(
            f"| {r.scenario.key} | {best_s:.2f} | {r.peer_s / best_s:.2f}x | {r.scenario.target} "
            f"| {needed_ms:.2f} | {receiving / r.scenario.total_instances * 1000:.2f} |"
        )
    if not rows:
        return []
    return [
        "### What the machine's cores allow",
        "",
        "With no CPU left idle, Hounsfield's work and its senders' (the machine's busy CPU seconds until every",
        f"job was on the broker, medians of its runs) would take their CPU seconds over the {cores} cores: about",
        "the least any arrangement of Hounsfield's work (threads, processes) could take at its CPU per",
        "instance, and the ratio about the most it could reach (anything else busy on the machine lowers",
        "it). To reach the target, Hounsfield would have to finish within storescp's time over the target",
        "ratio, with the senders using what they used beside storescp: the receiving CPU per instance that",
        "leaves.",
        "",
        "| Scenario | Hounsfield s with no idle CPU | Ratio at most | Target | Receiving CPU ms per instance "
        "the target leaves | Hounsfield's receiving CPU ms per instance |",
        "|---|---:|---:|---|---:|---:|",
        *rows,
        "",
    ]


def _other_mode_lines(results: Sequence[ScenarioResult]) -> list[str]:
    """With ``--storescp-both``: storescp's two configurations side by side, per scenario."""
    checked = [r for r in results if r.runs.get(PEER_OTHER)]
    if not checked:
        return []
    lines = ["### storescp's two configurations (`--storescp-both`)", ""]
    for r in checked:
        other = _storescp_mode(not r.scenario.storescp_fork)
        used, alternative = r.peer_s, r.median_s(PEER_OTHER)
        change = (alternative - used) / used * 100
        verdict = "slower" if change > 0 else "faster"
        lines.append(
            f"- ({r.scenario.key}) {r.peer_mode} (used): {used:.2f} s; {other}: {alternative:.2f} s "
            f"({abs(change):.0f} % {verdict}; medians)."
        )
    return [*lines, ""]


def _first_line(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
        return next((line.strip("$ ") for line in out.splitlines() if line.strip()), "")
    return "unknown"


def machine() -> dict[str, str]:
    import pynetdicom

    import hounsfield

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")), "",
        )  # fmt: skip
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu or platform.processor() or "unknown",
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "hounsfield": hounsfield.__version__,
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": _first_line([STORESCP, "--version"]).removeprefix("dcmtk: "),
        "load average at start (1 min)": f"{os.getloadavg()[0]:.2f}",
    }


def fsync_floor_ms(folder: Path, files: int = 200, size: int = 8192) -> float:
    """Milliseconds per file for the durable write alone (write, fsync, rename, fsync of the folder).

    What a receiver that writes each instance as its own durable file pays on this disk (the
    listener without its journal, and STOW-RS); storescp skips it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)
    started = time.perf_counter()
    for index in range(files):
        temporary = folder / f".tmp-{index}"
        with temporary.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, folder / f"{index}.dcm")
        fsync_folder(folder)
    elapsed = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed / files * 1000


def journal_floor_ms(folder: Path, records: int = 200, size: int = 512 * 1024) -> float:
    """Milliseconds per record for the listener's durable step alone: an ingest-journal append and its fdatasync.

    The part of each Success that no Python work can shorten; storescp skips it.
    """
    from hounsfield.listener.journal import Journal  # the listener's own code: its floor, not an imitation

    journal = Journal(folder, segment_bytes=64 << 20, initial_segments=2)
    journal.open()
    payload = os.urandom(size)
    os.sync()
    started = time.perf_counter()
    for index in range(records):
        seq, _ = journal.append({"index": index}, (payload,))
        journal.wait_durable(seq)
        if index % 100 == 99:
            journal.checkpoint(seq)
    elapsed = time.perf_counter() - started
    journal.close()
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed / records * 1000


def markdown(results: Sequence[ScenarioResult], runs: int, quick: bool, info: dict[str, str]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    per_run = []
    for r in results:
        for receiver, measurements in r.runs.items():
            if receiver == HOUNSFIELD:
                times = ", ".join(f"{m.seconds:.2f} / {m.done_s:.2f} / {m.routed_s:.2f}" for m in measurements)
                per_run.append(
                    f"- ({r.scenario.key}) hounsfield (until last Success / until indexed / until routed): {times} s"
                )
            else:
                times = ", ".join(f"{m.seconds:.2f}" for m in measurements)
                mode = _storescp_mode(r.scenario.storescp_fork != (receiver == PEER_OTHER))
                per_run.append(f"- ({r.scenario.key}) storescp {mode}: {times} s")
    return "\n".join(
        [
            "## Ingest benchmark",
            "",
            f"Generated by `benchmarks/ingest.py` on {when}{' (quick smoke sizes)' if quick else ''}; "
            f"medians of {runs} run(s) per scenario and receiver. Do not edit by hand: rerun it.",
            "",
            "### Machine",
            "",
            *(f"- {key}: {value}" for key, value in info.items()),
            "",
            "### Results",
            "",
            table(results),
            "",
            "Ratio until indexed: storescp's median time over Hounsfield's median time until every instance was",
            "in its index (all of its work); the target is judged on it. Ratio until last Success: the same with",
            "Hounsfield timed only until its sender's last Success, leaving out the index's lag behind it.",
            "",
            "Every run of every scenario is checked: each receiver stored every instance (Hounsfield's index rows,",
            "storescp's output files, counted once its association processes have exited).",
            "",
            *_time_lines(results),
            *_ceiling_lines(results, len(os.sched_getaffinity(0))),
            *_other_mode_lines(results),
            "### Every run (seconds)",
            "",
            *per_run,
            "",
            "### How it is measured",
            "",
            "- Same machine, same run: for each scenario both receivers get the same files from dcmtk `storescu`",
            "  (one process per association, all started at once), with `TCP_NODELAY=1` for every dcmtk tool.",
            "  Which receiver goes first alternates between runs. *Until last Success*: from starting the",
            "  senders until the last exits (after its last Success and its release).",
            "- storescp, the peer, in its best configuration per scenario (the *storescp* column):",
            "  `storescp [--fork] +B -od DIR -aet STORESCP -ta 600 PORT`, bit-preserving (writes the dataset as",
            "  received, as Hounsfield does). `--fork` (a child process per association) where associations are",
            "  concurrent; its default single process where there is one association. It writes each file",
            "  before that instance's Success, so its last Success ends its work; dcmtk has no option to fsync",
            "  the files it writes: its numbers do not include durable storage.",
            "- Hounsfield: `hounsfield listener` with a generated configuration (SQLite index, ingest journal on",
            "  as by default, one deployment routing every CT study to the stat queue, a redis-server of its own",
            "  as the broker, no worker). Each Success is sent once the instance is durable in the",
            "  listener's ingest journal: a record holding its Part 10 file and what its index row needs, on",
            "  stable storage after one `fdatasync` of a preallocated segment, shared by concurrent associations",
            "  (datasets above 2 MiB, as in (d), are spooled: that file is fsynced and renamed into the store",
            "  before the Success). The index row is not committed before the Success: the journal's applier",
            "  writes the files into the study store and commits their index rows right after (it defers while",
            "  instances keep arriving, up to 1 s, and runs at each association's end). *Until indexed*: from",
            "  starting the senders until the index held every instance (polled every 20 ms after the last",
            "  sender exits; a row is committed only after its file is in the store, so the journal's drain into",
            "  the store is done too). Not counted: the applier's `syncfs` of the store and journal checkpoint",
            "  after a second of quiet (the instances are already durable in the journal). *Until routed*: until",
            "  the broker held one job per study (each association's release completes its study; polled every",
            "  5 ms). *Jobs on the broker <= 100 ms*: from the listener's `hounsfield_router_queue_latency_seconds`",
            "  histogram, per job, from its study being complete and indexed (the release's completion, which",
            "  follows the study's last index row) to the broker taking the job.",
            "- No receiver's folder is removed until every timed run is over (the memory scenario's excepted,",
            "  which runs last): ext4 passes over inodes freed within the last minute when it allocates new",
            "  ones, and every receiver's file creations were 2-4x slower right after a run's folder was",
            "  removed (storescp `--fork` in (c): 0.6 s on a quiet file system, 2.4-3.0 s after a removal).",
            "- Peak RSS: the listener process's resident memory, sampled every 20 ms while it receives and",
            "  until it has indexed everything.",
            "",
            "### Rerun",
            "",
            "```",
            ".venv/bin/python -m benchmarks.ingest --runs 3            # all scenarios, writes docs/benchmarks.md",
            ".venv/bin/python -m benchmarks.ingest --scenario d        # one scenario",
            ".venv/bin/python -m benchmarks.ingest --storescp-both     # also storescp's other configuration",
            ".venv/bin/python -m benchmarks.ingest --quick --runs 1 --out /tmp/bench.md   # smoke run",
            "```",
            "",
        ]
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario and receiver (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="only these (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="markdown report")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument("--workdir", type=Path, help="folder for test data and receivers (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (generated data is reused)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed, not only on loss")
    parser.add_argument(
        "--storescp-both", action="store_true",
        help="also run storescp in its other configuration (with or without --fork) and report it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


@contextlib.contextmanager
def _workdir(path: Path | None, keep: bool) -> Iterator[Path]:
    folder = path or Path(tempfile.mkdtemp(prefix="hounsfield-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    for tool in (STORESCU, STORESCP, ECHOSCU):
        if not Path(tool).exists():
            print(f"{tool} is missing: install dcmtk", file=sys.stderr)
            return 2
    catalogue = QUICK if args.quick else SCENARIOS
    keys = args.scenario or sorted(catalogue)
    results = []
    info = machine()
    trash: list[Path] = []
    with _workdir(args.workdir, args.keep) as workdir:
        # The memory scenario (d) last: its runs' folders are removed as it goes.
        for key in sorted(keys, key=lambda k: (catalogue[k].max_rss_mb is not None, k)):
            print(f"scenario {key}: {catalogue[key].title}", file=sys.stderr, flush=True)
            results.append(
                run_scenario(catalogue[key], args.runs, workdir, storescp_both=args.storescp_both, trash=trash)
            )
        count = 20 if args.quick else 200
        info["durable file floor (8 KB new file: write, fsync, rename, fsync folder)"] = (
            f"{fsync_floor_ms(workdir / 'fsync-floor', count):.2f} ms per file"
        )
        info["durable file floor (512 KiB, a CT slice)"] = (
            f"{fsync_floor_ms(workdir / 'fsync-floor', count, size=512 * 1024):.2f} ms per file"
        )
        info["ingest journal floor (512 KiB record: append, fdatasync)"] = (
            f"{journal_floor_ms(workdir / 'journal-floor', count):.2f} ms per record"
        )
        info["load average at end (1 min)"] = f"{os.getloadavg()[0]:.2f}"
        for folder in trash:
            shutil.rmtree(folder, ignore_errors=True)
    report = table(results)
    print(report)
    write_section(args.out, "ingest", markdown(results, args.runs, args.quick, info))
    if args.json:
        payload = [
            {
                "scenario": asdict(r.scenario),
                "bytes_sent": r.bytes_sent,
                "runs": {k: [{**asdict(m), "done_s": m.done_s} for m in ms] for k, ms in r.runs.items()},
                "peer": {"mode": r.peer_mode, "command": r.runs[PEER][0].command, "seconds": r.peer_s},
                "hounsfield_until_last_success_s": r.median_s(HOUNSFIELD),
                "hounsfield_until_indexed_s": r.indexed_s,
                "hounsfield_until_routed_s": r.routed_s,
                "queued_in_time": r.queued_in_time,
                "ratio": r.ratio,
                "ratio_until_last_success": r.ratio_at_last_success,
                "peak_rss_mb": r.peak_rss_mb,
                "all_stored": r.all_stored,
                "passed": r.passed,
            }
            for r in results
        ]
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    if not all(r.all_stored for r in results):
        print("instances were lost or refused: see the Stored column", file=sys.stderr)
        return 1
    return 1 if args.strict and not all(r.passed for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
