"""A short soak (`make soak` at CI size): three minutes of load from eight modalities while every kind of
fault is injected, then the reconciliation. It must lose nothing and pass every check; the report and
its plots are written (to a temporary folder here, not docs/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.soak.chaos import KINDS
from benchmarks.soak.cluster import DataVolume

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1800)
@pytest.mark.skipif(not DataVolume.possible(), reason="the soak's data volume is a loop-mounted ext4 image: root only")
def test_a_short_soak_with_every_fault_loses_nothing(tmp_path: Path) -> None:
    report, images, raw = tmp_path / "soak.md", tmp_path / "images", tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--minutes", "3", "--out", str(report), "--images", str(images),
         "--json", str(raw), "--workdir", str(tmp_path / "work"), "--drain-timeout-s", "300"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1700, check=False,
    )  # fmt: skip
    assert raw.exists(), proc.stderr[-5000:]
    run = json.loads(raw.read_text())
    result = run["reconciliation"]
    failed = {c["name"]: c["failures"] for c in result["checks"] if not c["passed"]}
    assert proc.returncode == 0 and result["passed"], (failed, proc.stdout[-3000:])
    assert result["losses"] == 0

    # The faults happened and were felt: each kind injected; refusals at the disk's floor, cut associations.
    assert set(Counter(fault["kind"] for fault in run["faults"])) == set(KINDS)
    statuses = {(entry["protocol"], entry["status"]) for entry in run["refusals_by_status"]}
    assert ("dicom", "0xA700") in statuses, statuses
    totals = result["totals"]
    assert totals["interruptions"] > 0, "the listener's kill -9 cut no association"
    # Real load, and results for every routed study.
    assert totals["instances_acknowledged"] >= 300 and totals["studies_routed"] >= 5, totals
    assert totals["result_sets_in_pacs"] == totals["studies_routed"], totals
    assert len(run["finished"]) >= totals["studies_routed"]

    text = report.read_text()
    assert "reconciliation **passed**, **0 lost**" in text
    pngs = sorted(images.glob("soak-*.png"))
    assert [p.name for p in pngs] == [
        "soak-latency.png",
        "soak-memory.png",
        "soak-queue-depth.png",
        "soak-throughput.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all(f"images/{p.name}" in text for p in pngs)
