"""The time-to-result benchmark runs end to end at smoke size: correctness only, no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_time_to_result_reports_its_section_and_keeps_the_others(tmp_path: Path) -> None:
    report, raw = tmp_path / "benchmarks.md", tmp_path / "ttr.json"
    report.write_text("# Benchmarks\n\n<!-- benchmark:ingest -->\nthe ingest table\n<!-- /benchmark:ingest -->\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.time_to_result", "--quick", "--runs", "1", "--out", str(report),
         "--json", str(raw)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a target missed, which a smoke run may
    numbers = json.loads(raw.read_text())
    (run,) = numbers["sizes"]["demo"]
    assert run["time_to_result_s"] > 0 and run["direct_s"] > 0
    assert {"queue_wait", "inference", "validate", "export"} <= set(run["stages"])
    assert set(numbers["jobs_per_minute"]) == {"1", "2"} and all(v > 0 for v in numbers["jobs_per_minute"].values())
    text = report.read_text()
    assert "the ingest table" in text, "the other benchmark's section is kept"
    assert "<!-- benchmark:time-to-result -->" in text and "| demo CT, 16 x 64 x 64 (quick) |" in text
