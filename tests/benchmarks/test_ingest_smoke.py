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
        [sys.executable, "-m", "benchmarks.ingest", "--quick", "--runs", "1", "--storescp-both",
         "--out", str(report), "--json", str(raw), "--workdir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads(raw.read_text())
    assert [r["scenario"]["key"] for r in results] == ["a", "b", "c", "d"]
    for result in results:
        expected = result["scenario"]["associations"] * result["scenario"]["instances"]
        for receiver in ("storescp", "storescp-other-mode", "hounsfield"):
            (run,) = result["runs"][receiver]
            assert (run["stored"], run["expected"], run["sender_failures"]) == (expected, expected, 0), receiver
            assert 0 < run["seconds"] <= run["done_s"], receiver
        assert result["all_stored"] and result["bytes_sent"] > 0 and result["peak_rss_mb"] > 0
        # Hounsfield is timed until its last Success and until every instance is indexed; the ratio uses the latter.
        until_success, until_indexed = result["hounsfield_until_last_success_s"], result["hounsfield_until_indexed_s"]
        assert 0 < until_success <= until_indexed
        assert result["ratio"] == pytest.approx(result["peer"]["seconds"] / until_indexed)
        # Every study (one per association) was routed to one job on the broker, after it was indexed.
        assert until_indexed <= result["hounsfield_until_routed_s"]
        (hounsfield,) = result["runs"]["hounsfield"]
        assert hounsfield["jobs"] == result["scenario"]["associations"]
        assert 0 <= hounsfield["queued_within_100ms"] <= hounsfield["jobs"]
        assert result["queued_in_time"] == (hounsfield["queued_within_100ms"] == hounsfield["jobs"])
        for receiver in ("storescp", "hounsfield"):
            (run,) = result["runs"][receiver]
            assert run["sender_cpu_s"] > 0 and run["machine_busy_s"] > 0, receiver
        assert result["ratio_until_last_success"] == pytest.approx(result["peer"]["seconds"] / until_success)

    # The peer runs in its best configuration: storescp --fork for the concurrent associations of (c), and
    # (with --storescp-both) in the other configuration beside it.
    peers = {r["scenario"]["key"]: r for r in results}
    assert peers["c"]["scenario"]["associations"] > 1 and peers["c"]["peer"]["mode"] == "--fork"
    assert peers["c"]["runs"]["storescp"][0]["command"].startswith("storescp --fork +B ")
    assert "--fork" not in peers["c"]["runs"]["storescp-other-mode"][0]["command"]
    for key in "abd":
        assert "--fork" not in peers[key]["runs"]["storescp"][0]["command"]
        assert "--fork" in peers[key]["runs"]["storescp-other-mode"][0]["command"]

    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Scenario |") and len(rows) == 1 + 4
    assert all(f"| {key}. " in "\n".join(rows) for key in "abcd")
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    for key, row in zip("abcd", rows[1:], strict=True):
        cells = dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
        assert float(cells["Hounsfield s until last Success"]) <= float(cells["Hounsfield s until indexed"])
        assert float(cells["Hounsfield s until indexed"]) <= float(cells["Hounsfield s until routed"])
        assert cells["Ratio until indexed"].endswith("x") and cells["Ratio until last Success"].endswith("x")
        assert cells["storescp"] == ("--fork" if key == "c" else "single process")
    text = report.read_text()
    assert "<!-- benchmark:ingest -->\n## Ingest benchmark" in text and rows[0] in text and "quick smoke sizes" in text
    assert "hounsfield (until last Success / until indexed / until routed)" in text
    assert "### Where the time goes" in text and "| c | hounsfield |" in text
    assert "### storescp's two configurations" in text
    # What the cores allow: Hounsfield's busy CPU over the cores, and the ratio that caps, for each scenario
    # with a ratio target.
    section = text.split("### What the machine's cores allow", 1)[1].split("###", 1)[0]
    ceilings = {
        row.split("|")[1].strip(): [cell.strip() for cell in row.strip("|").split("|")]
        for row in section.splitlines()
        if row.startswith("| ") and not row.startswith("| Scenario")
    }
    assert sorted(ceilings) == ["a", "b", "c"]
    cores = len(os.sched_getaffinity(0))
    for key, cells in ceilings.items():
        (run,) = peers[key]["runs"]["hounsfield"]
        assert float(cells[1]) == pytest.approx(run["machine_busy_s"] / cores, abs=0.006)
        best = run["machine_busy_s"] / cores
        assert float(cells[2].rstrip("x")) == pytest.approx(peers[key]["peer"]["seconds"] / best, abs=0.006)
    assert not (tmp_path / "work").exists(), "the work folder is removed unless --keep"
