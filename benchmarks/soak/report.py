"""The soak's report: markdown with the run's figures and checks, and PNG plots over time.

Plots (matplotlib, Agg): instances acknowledged and indexed per second, queue depth, time to result
(p50/p95/p99 of the jobs finished in the last 60 s) and each process's resident memory; every plot
shades the faults, labelled by kind, so that a dip can be read against its cause.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["markdown", "plots"]

_FAULT_COLOURS = {
    "worker-kill": "#d62728",
    "listener-kill": "#9467bd",
    "redis-restart": "#ff7f0e",
    "disk-floor": "#8c564b",
    "postgres-restart": "#1f77b4",
    "orthanc-restart": "#2ca02c",
}


def _shade(axes: Any, faults: Sequence[Mapping[str, Any]], load_end: float | None = None) -> None:
    if load_end:
        axes.axvline(load_end, color="#444444", ls=":", lw=1)
        axes.annotate(
            "load ends",
            (load_end, 1),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            ha="left",
            va="top",
            xytext=(3, -3),
            textcoords="offset points",
        )
    for fault in faults:
        colour = _FAULT_COLOURS.get(fault["kind"], "#7f7f7f")
        axes.axvspan(fault["start"], max(fault["end"], fault["start"] + 0.5), color=colour, alpha=0.15, lw=0)


def _legend_for_faults(axes: Any, faults: Sequence[Mapping[str, Any]]) -> None:
    from matplotlib.patches import Patch

    kinds = sorted({f["kind"] for f in faults})
    handles = [Patch(color=_FAULT_COLOURS.get(k, "#7f7f7f"), alpha=0.3, label=k) for k in kinds]
    existing, _ = axes.get_legend_handles_labels()
    axes.legend(handles=[*existing, *handles], fontsize=7, loc="upper left", ncol=2)


def _rate(samples: Sequence[Mapping[str, Any]], key: str, window_s: float = 10.0) -> tuple[list[float], list[float]]:
    """Per-second rate of a cumulative counter, over a trailing window."""
    points = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
    times, rates = [], []
    start = 0
    for t, value in points:
        while points[start][0] < t - window_s:
            start += 1
        t0, v0 = points[start]
        if t > t0:
            times.append(t)
            rates.append(max(0.0, (value - v0) / (t - t0)))
    return times, rates


def _percentiles(finished: Sequence[Sequence[float]], end: float, window_s: float = 60.0) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"t": [], "p50": [], "p95": [], "p99": []}
    step = max(5.0, end / 200)
    t = step
    while t <= end + step:
        latest = [lat for at, lat in finished if t - window_s < at <= t]
        if len(latest) >= 2:
            q = statistics.quantiles(latest, n=100, method="inclusive")
            out["t"].append(t)
            out["p50"].append(q[49])
            out["p95"].append(q[94])
            out["p99"].append(q[98])
        t += step
    return out


def plots(run: Mapping[str, Any], folder: Path, prefix: str = "soak") -> list[Path]:
    """Write the run's four plots into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    samples, faults = run["samples"], run["faults"]
    end = samples[-1]["t"] if samples else 0.0
    written = []

    def finish(fig: Any, axes: Any, title: str, ylabel: str, name: str) -> None:
        _shade(axes, faults, run.get("load_s"))
        axes.set_xlabel("seconds since the start")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        _legend_for_faults(axes, faults)
        written.append(_save(fig, folder / f"{prefix}-{name}.png"))

    fig, axes = plt.subplots(figsize=(9, 3.2))
    for key, label in (("acked", "acknowledged (Success)"), ("indexed", "indexed")):
        times, rates = _rate(samples, key)
        axes.plot(times, rates, label=f"instances {label} / s", lw=1.2)
    finish(fig, axes, "Throughput", "instances / s (10 s window)", "throughput")

    fig, axes = plt.subplots(figsize=(9, 3.2))
    for queue in ("stat", "routine", "batch"):
        points = [(s["t"], s["queue_depth"][queue]) for s in samples if "queue_depth" in s]
        if any(depth for _, depth in points):
            axes.plot([t for t, _ in points], [d for _, d in points], label=f"{queue} queue", lw=1.2)
    points = [(s["t"], s["jobs"].get("queued", 0)) for s in samples if "jobs" in s]
    axes.plot([t for t, _ in points], [d for _, d in points], label="jobs queued (database)", lw=1, ls="--")
    finish(fig, axes, "Queue depth", "messages / jobs", "queue-depth")

    fig, axes = plt.subplots(figsize=(9, 3.2))
    pct = _percentiles(run["finished"], end)
    for key in ("p50", "p95", "p99"):
        axes.plot(pct["t"], pct[key], label=key, lw=1.2, marker=".", ms=3)
    title = "Time to result (last instance received to job done; jobs of the last 60 s)"
    finish(fig, axes, title, "seconds", "latency")

    fig, axes = plt.subplots(figsize=(9, 3.6))
    for name in sorted({name for s in samples for name in s["rss_mb"]}):
        points = [(s["t"], s["rss_mb"][name]) for s in samples if s["rss_mb"].get(name) is not None]
        axes.plot([t for t, _ in points], [m for _, m in points], label=name, lw=1)
    finish(fig, axes, "Resident memory", "MiB (process and its children)", "memory")
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(run: Mapping[str, Any], images: Sequence[Path], out: Path) -> str:
    """The report for ``out`` (image links relative to it)."""
    result = run["reconciliation"]
    totals = result["totals"]
    verdict = "passed" if result["passed"] else "FAILED"
    faults = run["faults"]
    finished = [lat for _, lat in run["finished"]]
    lines = [
        "# Soak and chaos run",
        "",
        "<!-- Written by `make soak MINUTES=N` (benchmarks/soak); do not edit by hand. -->",
        "",
        f"The last run: **{run['minutes']:g} minutes** of load on {run['machine']}, started {run['started_at']}; "
        f"reconciliation **{verdict}**, **{result['losses']} lost**.",
        "",
        "Eight simulated modalities sent a day's mix (CT, compressed CT, MR, CR, multi-frame) to the listener "
        "over DICOM (dcmtk's storescu and pynetdicom) and to the registry over STOW-RS, each resending what "
        "was not acknowledged, while the faults below were injected one after another. Every service ran "
        "as a process of its own (PostgreSQL, redis-server, Orthanc as the PACS, the listener, the registry, "
        f"{run['workers']} workers), on loopback.",
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| Instances acknowledged (Success) | {totals['instances_acknowledged']} |",
        f"| Instances indexed | {totals['instances_indexed']} |",
        f"| Studies sent (in full) | {totals['studies']} ({totals['studies_sent_in_full']}) |",
        f"| Studies routed to a model | {totals['studies_routed']} |",
        f"| Jobs | {totals['jobs']} |",
        f"| Result sets in the PACS | {totals['result_sets_in_pacs']} |",
        f"| Refusals with a status and reason (DICOM, HTTP) | {totals['refusals']} |",
        f"| Associations or requests cut by a fault (resent) | {totals['interruptions']} |",
        f"| Faults injected | {totals['faults']} |",
        f"| **Losses** | **{result['losses']}** |",
    ]
    if finished:
        q = statistics.quantiles(finished, n=100, method="inclusive") if len(finished) > 1 else [finished[0]] * 99
        lines.append(f"| Time to result, p50 / p95 / p99 (s) | {q[49]:.1f} / {q[94]:.1f} / {q[98]:.1f} |")
    lines += ["", "## Checks", "", "| Check | Result | Detail |", "|---|---|---|"]
    for check in result["checks"]:
        mark = "passed" if check["passed"] else "**failed**: " + "; ".join(check["failures"][:3])
        lines.append(f"| {check['name']} | {mark} | {check['detail']} |")
    lines += [
        "",
        "## Faults",
        "",
        "| Start (s) | End (s) | Fault | Target | Back after (s) | Detail |",
        "|---|---|---|---|---|---|",
    ]
    for fault in faults:
        lines.append(
            f"| {fault['start']:.0f} | {fault['end']:.0f} | {fault['kind']} | {fault['target']} | "
            f"{fault['recovered_s']:.1f} | {fault['detail']} |"
        )
    refusals = run.get("refusals_by_status", {})
    if refusals:
        lines += ["", "## Refusals", "", "| Protocol | Status | Reason (first seen) | Count |", "|---|---|---|---|"]
        for entry in refusals:
            lines.append(f"| {entry['protocol']} | {entry['status']} | {entry['reason']} | {entry['count']} |")
    lines += ["", "## Over time", ""]
    for image in images:
        lines.append(f"![{image.stem}]({_relative(image, out.parent)})")
        lines.append("")
    lines += [
        "## Running it",
        "",
        "```",
        "make soak MINUTES=60          # an hour; writes this page and its plots",
        ".venv/bin/python -m benchmarks.soak --minutes 5 --out /tmp/soak.md --images /tmp/soak-images",
        "```",
        "",
        "See [benchmarks/README.md](../benchmarks/README.md#soak-and-chaos-soak) for what each check means and "
        "the options.",
        "",
    ]
    return "\n".join(lines)


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)
