"""The ingest benchmark runs end to end at smoke sizes: correctness only, no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path("/usr/bin/storescp").exists(), reason="dcmtk is not installed")


def test_quick_benchmark_stores_everything_and_reports_every_scenario(tmp_path: Path) -> None:
    report, raw = tmp_path / "benchmarks.md", tmp_path / "benchmarks.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ingest", "--quick", "--runs", "1",
         "--out", str(report), "--json", str(raw), "--workdir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads(raw.read_text())
    assert [r["scenario"]["key"] for r in results] == ["a", "b", "c", "d"]
    for result in results:
        expected = result["scenario"]["associations"] * result["scenario"]["instances"]
        for receiver in ("storescp", "hounsfield"):
            (run,) = result["runs"][receiver]
            assert (run["stored"], run["expected"], run["sender_failures"]) == (expected, expected, 0), receiver
            assert run["seconds"] > 0
        assert result["all_stored"] and result["bytes_sent"] > 0 and result["peak_rss_mb"] > 0

    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Scenario |") and len(rows) == 1 + 4
    assert all(f"| {key}. " in "\n".join(rows) for key in "abcd")
    text = report.read_text()
    assert "<!-- benchmark:ingest -->\n## Ingest benchmark" in text and rows[0] in text and "quick smoke sizes" in text
    assert not (tmp_path / "work").exists(), "the work folder is removed unless --keep"
