"""Time to result: from the sender's association release to the SEG and SR stored in the PACS.

Everything runs as ``hounsfield up`` runs it (listener, router, one Celery worker on a local
redis-server, the registry), with a local Orthanc as the PACS and dcmtk's ``storescu`` as the
modality. Per study size, ``--runs`` timed runs (after one warm-up run that is not counted):

* **time to result**: storescu returns (the association is released) -> both the SEG and the SR are
  in Orthanc (its REST API, polled every 20 ms);
* the job's own per-stage timings: completeness, queue wait, load (workspace and pre-flight),
  inference (the App SDK run), validate, export;
* **direct**: the same App SDK application run directly on the same study folder in this process
  (``CTLesionSegApp(argv).run()``, after a warm-up run as well), in the same run.

Platform overhead = time to result - direct. Targets: <= 1 s on the demo study (48 x 128 x 128),
<= 10 % of direct on a 300 x 512 x 512 CT. Throughput: 20 demo studies sent back to back, with one
and then two worker processes; jobs per minute from the first release to the last result in Orthanc.

    .venv/bin/python -m benchmarks.time_to_result --runs 5          # writes its section of docs/benchmarks.md
    .venv/bin/python -m benchmarks.time_to_result --quick --runs 1 --out /tmp/bench.md   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom

from benchmarks.report import write_section
from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.demo.stack import CT_LESION_DEPLOYMENT, CT_LESION_MODEL, HounsfieldStack
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
STAGES = ("completeness", "queue_wait", "load", "inference", "validate", "export")


@dataclass(frozen=True)
class Size:
    key: str
    label: str
    shape: tuple[int, int, int]
    target: str
    target_s: float | None = None
    """Overhead ceiling in seconds, or None for a ratio target."""
    target_ratio: float | None = None
    """Overhead ceiling as a fraction of direct."""


SIZES = (
    Size("demo", "demo CT, 48 x 128 x 128", (48, 128, 128), "overhead <= 1 s", target_s=1.0),
    Size("large", "CT, 300 x 512 x 512", (300, 512, 512), "overhead <= 10 % of direct", target_ratio=0.10),
)
QUICK = (Size("demo", "demo CT, 16 x 64 x 64 (quick)", (16, 64, 64), "overhead <= 1 s", target_s=1.0),)


@dataclass
class Run:
    time_to_result_s: float
    direct_s: float
    stages: dict[str, float]


@dataclass
class SizeResult:
    size: Size
    runs: list[Run] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(r, name) for r in self.runs)

    def stage(self, name: str) -> float:
        return statistics.median(r.stages.get(name, 0.0) for r in self.runs)

    @property
    def overhead_s(self) -> float:
        return statistics.median(r.time_to_result_s - r.direct_s for r in self.runs)

    @property
    def passed(self) -> bool:
        if self.size.target_s is not None:
            return self.overhead_s <= self.size.target_s
        assert self.size.target_ratio is not None
        return self.overhead_s <= self.size.target_ratio * self.median("direct_s")


def _study(folder: Path, size: Size, seed: int) -> tuple[str, list[Path]]:
    phantom = make_phantom(seed, shape_zyx=size.shape, n_lesions=2)
    files = write_dicom_series(phantom, folder, uid_seed=f"bench-ttr-{size.key}-{seed}")
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files


class _PacsWatch:
    """Waits for results in Orthanc by following its change log (``/changes``).

    One kept-alive connection, polled every 20 ms, asking only about new instances: the watching
    takes little of the machine's 2 cores from the job it times (a ``/tools/find`` on a fresh
    connection every 20 ms took a visible share of them).
    """

    def __init__(self, pacs: LocalOrthanc) -> None:
        self._client = httpx.Client(base_url=pacs.url)
        self._since = self._changes({"last": ""})["Last"]
        self._arrived: dict[str, int] = {}

    def wait(self, study_uids: list[str], timeout: float) -> float:
        """Wait until every study has its SEG and SR in Orthanc; returns when (monotonic)."""
        deadline = time.monotonic() + timeout
        while any(self._arrived.get(uid, 0) < 2 for uid in study_uids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no SEG and SR in the PACS within {timeout:.0f} s")
            time.sleep(0.02)
            changes = self._changes({"since": self._since, "limit": 1000})
            for change in changes["Changes"]:
                if change["ChangeType"] == "NewInstance":
                    tag = self._client.get(f"/instances/{change['ID']}/content/0020,000d")
                    uid = tag.raise_for_status().text.rstrip("\x00 ")
                    self._arrived[uid] = self._arrived.get(uid, 0) + 1
            self._since = changes["Last"]
        return time.monotonic()

    def _changes(self, params: dict[str, Any]) -> dict[str, Any]:
        response = self._client.get("/changes", params=params)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def _direct(files: list[Path], workdir: Path) -> float:
    """The App SDK application run directly on the study's folder, in this process."""
    from hounsfield_operators.ct_lesion_seg.app import CTLesionSegApp

    out, work = workdir / "output", workdir / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    argv = ["app", "-i", str(files[0].parent), "-o", str(out), "-m", str(CT_LESION_MODEL), "-w", str(work)]
    started = time.monotonic()
    CTLesionSegApp(argv).run()
    elapsed = time.monotonic() - started
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the App SDK set logging up for itself
    if len(list(out.rglob("*.dcm"))) != 2:
        raise RuntimeError("the direct run did not write a SEG and an SR")
    return elapsed


def _job_stages(stack: HounsfieldStack, study_uid: str) -> dict[str, float]:
    (job,) = stack.wait_for_study(study_uid)["jobs"]
    if job["state"] != "done":
        raise RuntimeError(f"job {job['state']}: {job['error']}")
    return {k: float(v) for k, v in job["timings"].items() if k in STAGES}


def measure_size(stack: HounsfieldStack, watch: _PacsWatch, size: Size, runs: int, work: Path) -> SizeResult:
    result = SizeResult(size)
    for run in range(runs + 1):  # run 0 warms both paths up
        study_uid, files = _study(work / f"{size.key}-{run}", size, seed=9100 + run)
        stack.send(files)
        released = time.monotonic()
        arrived = watch.wait([study_uid], timeout=1800)
        stages = _job_stages(stack, study_uid)
        direct = _direct(files, work / f"{size.key}-{run}-direct")
        print(f"  {size.key} run {run}: {arrived - released:.2f} s to result, direct {direct:.2f} s", flush=True)
        if run:
            result.runs.append(Run(arrived - released, direct, stages))
    return result


def throughput(stack: HounsfieldStack, watch: _PacsWatch, size: Size, studies: int, workers: int, work: Path) -> float:
    """Jobs per minute over ``studies`` studies sent back to back with ``workers`` worker processes."""
    extra = []
    for i in range(workers - 1):
        log = (work / f"worker-{workers}-{i}.log").open("wb")
        env = {**os.environ, "HOUNSFIELD_CONFIG": str(stack.config_path), "TCP_NODELAY": "1"}
        extra.append(
            subprocess.Popen(
                [sys.executable, "-m", "hounsfield.cli", "worker"], env=env, stdout=log, stderr=log, cwd=REPO
            )
        )
    try:
        time.sleep(8.0 if extra else 0.0)  # let the extra worker import its application
        made = [_study(work / f"tp{workers}-{i}", size, seed=9300 + 100 * workers + i) for i in range(studies)]
        started = time.monotonic()
        for _, files in made:
            stack.send(files)
        finished = watch.wait([uid for uid, _ in made], timeout=3600)
    finally:
        for process in extra:
            process.terminate()
            process.wait(timeout=30)
    return studies / ((finished - started) / 60)


def _table(results: list[SizeResult]) -> str:
    lines = [
        "| Study | Time to result s | Direct s | Overhead s | Ratio | "
        + " | ".join(s.replace("_", " ") for s in STAGES)
        + " | Target | Result |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(STAGES) + "---|---|",
    ]
    for r in results:
        stages = " | ".join(f"{r.stage(s):.2f}" for s in STAGES)
        ratio = r.median("time_to_result_s") / r.median("direct_s")
        lines.append(
            f"| {r.size.label} | {r.median('time_to_result_s'):.2f} | {r.median('direct_s'):.2f} | "
            f"{r.overhead_s:.2f} | {ratio:.2f}x | {stages} | {r.size.target} | {'pass' if r.passed else 'FAIL'} |"
        )
    return "\n".join(lines)


def markdown(results: list[SizeResult], rates: dict[int, float], runs: int, studies: int) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    every = [
        f"- {r.size.key}: " + ", ".join(f"{x.time_to_result_s:.2f}/{x.direct_s:.2f}" for x in r.runs) for r in results
    ]
    return "\n".join(
        [
            "## Time to result (`time_to_result.py`)",
            "",
            f"Generated on {when} on {os.cpu_count()} cores; medians of {runs} run(s) after a warm-up run.",
            "",
            "From the sender's association release (dcmtk `storescu` returns) to the SEG and SR both in",
            "Orthanc, through `hounsfield up` (listener, router, one worker, redis-server, registry) on this",
            "machine. *Direct* is the same App SDK application run on the same study folder in the",
            "benchmark's own process; overhead = time to result - direct. Stage columns are the job's own",
            "timings (seconds, medians): completeness runs from the study's first index row to its",
            "completion (the ingest journal indexes a burst as it ends, so it is near 0 for one",
            "association); inference is the whole App SDK run in the worker's warm application process",
            "(forked from the worker, it serves job after job). The benchmark watches Orthanc's change",
            "log every 20 ms on one kept-alive connection, so that watching takes little of the cores.",
            "",
            _table(results),
            "",
            f"Throughput, {studies} demo studies sent back to back: "
            + ", ".join(f"{w} worker(s): {rate:.1f} jobs/min" for w, rate in sorted(rates.items()))
            + (f" ({rates[2] / rates[1]:.2f}x with two)." if 1 in rates and 2 in rates else ".")
            + f" The workers share this machine's {os.cpu_count()} cores with the listener, Orthanc and each"
            " other, and one job's inference already uses every core.",
            "",
            "Every run (time to result / direct, seconds):",
            "",
            *every,
            "",
            "Rerun: `.venv/bin/python -m benchmarks.time_to_result --runs 5`.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a small study only, and 4 studies for throughput")
    parser.add_argument("--size", choices=[s.key for s in SIZES], action="append", help="only these sizes")
    parser.add_argument("--studies", type=int, default=20, help="studies for the throughput measurement")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="raw numbers")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else tuple(s for s in SIZES if not args.size or s.key in args.size)
    studies = 4 if args.quick else args.studies
    demo = QUICK[0] if args.quick else SIZES[0]  # throughput is measured on demo studies
    with tempfile.TemporaryDirectory(prefix="hounsfield-ttr-") as tmp:
        work = Path(tmp)
        pacs = LocalOrthanc(work / "orthanc", aet="BENCHPACS")
        pacs.start()
        stack = HounsfieldStack(work / "hounsfield", pacs, deployments=[CT_LESION_DEPLOYMENT], quiet_period_s=30.0)
        try:
            stack.start()
            watch = _PacsWatch(pacs)
            results = []
            for size in sizes:
                print(f"{size.label}:", flush=True)
                results.append(measure_size(stack, watch, size, args.runs, work))
            rates = {}
            for workers in (1, 2):
                rates[workers] = throughput(stack, watch, demo, studies, workers, work)
                print(f"throughput with {workers} worker(s): {rates[workers]:.1f} jobs/min", flush=True)
        finally:
            stack.stop()
            pacs.stop()
    text = markdown(results, rates, args.runs, studies)
    print(text)
    write_section(args.out, "time-to-result", text)
    if args.json:
        raw = {r.size.key: [vars(x) for x in r.runs] for r in results}
        args.json.write_text(json.dumps({"sizes": raw, "jobs_per_minute": rates}, indent=2), encoding="utf-8")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
