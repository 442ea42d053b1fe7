"""`hounsfield store status` and `hounsfield store purge [--dry-run]` on a store with an expired study."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from hounsfield.cli import app as cli
from hounsfield.db import StudyState
from tests.services.retention.conftest import Rig


def _invoke(rig: Rig, tmp_path: Path, *argv: str) -> tuple[int, str]:
    config = tmp_path / "hounsfield.yaml"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(rig.settings.data_dir),
                "database_url": rig.settings.sqlalchemy_url,
                "listener": {"min_free_disk_mb": 64},
                "retention": {"high_water_percent": 100, "floor_margin_mb": 0},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    result = CliRunner().invoke(cli, [*argv, "--config", str(config)], env=env)
    return result.exit_code, result.output


def test_a_dry_run_says_what_would_go_and_why_and_deletes_nothing(rig: Rig, tmp_path: Path) -> None:
    old, recent = rig.study(days_ago=40, calling_ae="CT01"), rig.study(days_ago=5)
    code, output = _invoke(rig, tmp_path, "store", "purge", "--dry-run")
    assert code == 0, output
    (line,) = [line for line in output.splitlines() if line.startswith(old.uid)]
    _, reason, source, last_job, _, keep, instances, size = line.split("\t")
    assert (reason, source, keep, instances, size) == ("expired", "CT01", "30 (default)", "3", str(3 * 4096))
    assert last_job.startswith("20")
    assert recent.uid not in output and "nothing deleted" in output
    assert all(path.exists() for path in old.files) and rig.state(old.uid) is StudyState.ROUTED

    code, output = _invoke(rig, tmp_path, "store", "purge")
    assert code == 0, output
    assert "purged 1 study(ies) (expired 1), 3 instance(s)" in output
    assert not any(path.exists() for path in old.files) and rig.state(old.uid) is StudyState.PURGED


def test_status_shows_usage_marks_floor_and_policy(rig: Rig, tmp_path: Path) -> None:
    rig.study(days_ago=40)
    code, output = _invoke(rig, tmp_path, "store", "status")
    assert code == 0, output
    assert "marks\thigh 100%, low 80%" in output
    assert "floor\t64 MiB (listener.min_free_disk_mb)" in output
    assert "retention\toff" in output and "results\tkept forever" in output and "audit\tkept forever" in output
    assert "purge now\t1 study(ies)" in output
