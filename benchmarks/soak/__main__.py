"""``python -m benchmarks.soak --minutes N``: load, faults, reconciliation and the report.

See benchmarks/README.md ("Soak and chaos") for what it does and proves; ``make soak MINUTES=N`` runs it
and writes docs/soak.md with its plots in docs/images/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.soak.chaos import KINDS, Chaos
from benchmarks.soak.cluster import Cluster, DataVolume
from benchmarks.soak.modalities import MODALITIES, Ledger, ModalityThread
from benchmarks.soak.monitor import Monitor
from benchmarks.soak.reconcile import pacs_holdings, read_holdings, reconcile
from benchmarks.soak.report import markdown, plots

logger = logging.getLogger("benchmarks.soak")

REPO = Path(__file__).resolve().parents[2]
MEMORY_LIMITS_MB = {
    "listener": 1024.0,
    "registry": 1024.0,
    "orthanc": 1024.0,
    "redis": 256.0,
    "postgres": 2048.0,
    "worker": 3072.0,
}
"""Each process's bound (resident memory of it and its children); ``worker`` applies to every worker."""


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    parser.add_argument("--fault-every-s", type=float, default=20.0, help="seconds between faults (default 20)")
    parser.add_argument(
        "--study-interval-s",
        type=float,
        default=6.0,
        help="pause between studies of the MR, CR and STOW-RS senders (default 6)",
    )
    parser.add_argument(
        "--ct-interval-s",
        type=float,
        default=30.0,
        help="pause between studies of the CT modalities, whose studies run a model (default 30)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quiet-period-s", type=float, default=20.0, help="the listener's study quiet period")
    parser.add_argument("--drain-timeout-s", type=float, default=420.0, help="how long the end may take to settle")
    parser.add_argument(
        "--volume-mb",
        type=int,
        default=0,
        help="size of the data volume (an ext4 image, loop-mounted; root only); default 1 GiB + 100 MiB a minute",
    )
    parser.add_argument("--floor-mb", type=int, default=256, help="the listener's floor on the data volume")
    parser.add_argument(
        "--headroom-mb",
        type=int,
        default=6144,
        help="without root (no volume of its own): the floor is set this far below the free space",
    )
    parser.add_argument(
        "--memory-limit",
        action="append",
        default=[],
        metavar="NAME=MB",
        help=f"a process's memory bound (defaults: {MEMORY_LIMITS_MB})",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "soak.md", help="the markdown report")
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images", help="where the plots go")
    parser.add_argument("--json", type=Path, default=REPO / "build" / "soak.json", help="the raw figures")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data)")
    return parser.parse_args(argv)


def _machine() -> str:
    return f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _floor_mb(folder: Path, headroom_mb: int) -> int:
    stat = os.statvfs(folder)
    free_mb = stat.f_bavail * stat.f_frsize // 2**20
    if free_mb < headroom_mb + 256:
        raise SystemExit(f"the soak needs {headroom_mb + 256} MiB free under {folder}; {free_mb} MiB are")
    return int(free_mb - headroom_mb)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    limits = dict(MEMORY_LIMITS_MB)
    for item in args.memory_limit:
        name, _, value = item.partition("=")
        limits[name] = float(value)
    volume: DataVolume | None = None
    if DataVolume.possible():
        size_mb = args.volume_mb or int(1024 + 100 * args.minutes)
        volume = DataVolume(workdir / "data-volume.img", workdir / "data", size_mb)
        volume.mount()
        floor_mb = args.floor_mb
    else:
        logger.warning(
            "not root: the data folder shares the work folder's file system, and the disk-floor "
            "fault fills that file system to %d MiB below its free space",
            args.headroom_mb,
        )
        floor_mb = _floor_mb(workdir, args.headroom_mb)
    sources = {m.name: m.ae_title for m in MODALITIES}
    cluster = Cluster(
        workdir / "cluster",
        data_dir=workdir / "data",
        sources=sources,
        workers=args.workers,
        floor_mb=floor_mb,
        quiet_period_s=args.quiet_period_s,
    )
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    logger.info("starting the cluster in %s (listener floor %d MiB)", workdir, floor_mb)
    ledger = Ledger()
    stop_load, stop_chaos, stop_monitor = threading.Event(), threading.Event(), threading.Event()
    try:
        cluster.start()
        t0, t0_epoch = time.monotonic(), time.time()
        senders = [
            ModalityThread(
                modality,
                host="127.0.0.1",
                port=cluster.listener_port,
                called_ae="HOUNSFIELD",
                stow_url=f"{cluster.api}/dicomweb/studies",
                stow_headers=cluster.api_headers,
                workdir=workdir / "modalities",
                ledger=ledger,
                stop=stop_load,
                seed=args.seed * 1000 + n,
                study_interval_s=args.ct_interval_s if modality.name.startswith("ct-") else args.study_interval_s,
            )
            for n, modality in enumerate(MODALITIES)
        ]
        monitor = Monitor(cluster, ledger, t0, t0_epoch, stop_monitor)
        chaos = Chaos(cluster, t0=t0, stop=stop_chaos, every_s=args.fault_every_s)
        monitor.start()
        for sender in senders:
            sender.start()
        chaos.start()
        time.sleep(args.minutes * 60)
        load_s = time.monotonic() - t0
        logger.info("load time over: stopping the faults and the modalities")
        stop_chaos.set()
        chaos.join()
        stop_load.set()
        died = _restart_the_dead(cluster)
        deadline = time.monotonic() + args.drain_timeout_s
        for sender in senders:
            sender.join(timeout=max(1.0, deadline - time.monotonic()))
        if any(sender.is_alive() for sender in senders):
            for sender in senders:
                sender.abandon.set()
            for sender in senders:
                sender.join(timeout=30)
        drained = _drain(cluster, ledger, deadline)
        load_end = time.monotonic() - t0
        time.sleep(2)  # the last sample sees the settled state
        stop_monitor.set()
        monitor.join()
        monitor.close()
        holdings = read_holdings(cluster.postgres.url, cluster.data_dir)
        pacs = pacs_holdings(cluster.pacs.url, ledger.studies)
        memory = _peaks(monitor.samples)
        worker_limits = {name: limits["worker"] for name in memory if name.startswith("worker-")}
        faults = [fault.as_dict() for fault in chaos.faults]
        answers = [{"at": a.at, "status": a.status, "reason": a.reason} for a in monitor.http_answers]
        errors = list(chaos.errors) + [f"{name} exited without a fault and was started again" for name in died]
        if not drained:
            errors.append(f"the end did not settle within {args.drain_timeout_s:.0f} s")
        result = reconcile(
            ledger,
            holdings,
            pacs,
            patient_ids={uid: record.patient_id for uid, record in ledger.studies.items()},
            memory=memory,
            memory_limits_mb={**limits, **worker_limits},
            http_answers=answers,
            faults=faults,
            fault_kinds=KINDS,
            fault_errors=errors,
            modalities=[modality.name for modality in MODALITIES],
            processes=list(cluster.pids()),
            samples=len(monitor.samples),
            http_probes=monitor.http_probes,
        )
    finally:
        stop_chaos.set()
        stop_load.set()
        stop_monitor.set()
        cluster.stop()
        if volume is not None:
            volume.unmount()
    return {
        "started_at": started_at,
        "minutes": args.minutes,
        "machine": _machine(),
        "workers": args.workers,
        "floor_mb": floor_mb,
        "data_volume_mb": volume.size_mb if volume is not None else None,
        "load_s": round(load_s, 1),
        "settled_s": round(load_end, 1),
        "samples": monitor.samples,
        "finished": monitor.finished,
        "faults": faults,
        "http_answers": answers,
        "http_probes": monitor.http_probes,
        "refusals_by_status": _refusal_table(ledger, answers),
        "ledger": ledger.snapshot(),
        "reconciliation": result.as_dict(),
    }


def _restart_the_dead(cluster: Cluster) -> list[str]:
    """Services that exited on their own (no fault killed them last): started again, and named."""
    died = []
    for name, process in cluster.services.items():
        if process.pid is None:
            logger.error("%s is not running at the end of the load; starting it again", name)
            died.append(name)
            process.start(timeout=180)
    return died


def _drain(cluster: Cluster, ledger: Ledger, deadline: float) -> bool:
    """Wait until every acknowledged instance is indexed, every study settled and every job finished."""
    while time.monotonic() < deadline:
        try:
            holdings = read_holdings(cluster.postgres.url, cluster.data_dir)
        except Exception:
            time.sleep(2)
            continue
        indexed = all(sop in holdings.indexed for sop in ledger.acknowledged)
        settled = all(
            holdings.study_states.get(uid) in ("routed", "no_route")
            for uid, record in ledger.studies.items()
            if record.completed_at is not None
        )
        finished = all(job["state"] in ("done", "failed", "timed_out", "superseded") for job in holdings.jobs)
        if indexed and settled and finished:
            return True
        time.sleep(2)
    return False


def _peaks(samples: Sequence[dict[str, Any]]) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for sample in samples:
        for name, value in sample["rss_mb"].items():
            if value is not None:
                peaks[name] = max(peaks.get(name, 0.0), value)
    return peaks


def _refusal_table(ledger: Ledger, answers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: Counter[tuple[str, str]] = Counter()
    reasons: dict[tuple[str, str], str] = {}
    for refusal in ledger.refusals:
        dicom_status = refusal.status is not None and (refusal.protocol == "dicom" or refusal.status >= 600)
        status = f"0x{refusal.status:04X}" if dicom_status else str(refusal.status)  # STOW-RS FailureReason: DICOM
        key = (refusal.protocol, status)
        counts[key] += 1
        reasons.setdefault(key, refusal.reason)
    for answer in answers:
        key = ("http (registry)", str(answer["status"]))
        counts[key] += 1
        reasons.setdefault(key, answer["reason"])
    return [
        {"protocol": p, "status": s, "reason": reasons[(p, s)].replace("|", "/"), "count": n}
        for (p, s), n in sorted(counts.items())
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "pynetdicom"):  # a line per probe and per association otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hounsfield-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run_figures = run(args, workdir)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(run_figures, indent=1, default=str))
    images = plots(run_figures, args.images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(run_figures, images, args.out))
    result = run_figures["reconciliation"]
    for check in result["checks"]:
        print(f"{'PASS' if check['passed'] else 'FAIL'}  {check['name']}: {check['detail']}")
        for failure in check["failures"]:
            print(f"        {failure}")
    print(f"losses: {result['losses']}; report: {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
