"""`hounsfield models drift` and `drift-reference`: a version's input drift, and its reference window set
from the command line (audited as the CLI's administrator)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from hounsfield.cli import app as cli
from hounsfield.config import Settings
from hounsfield.db import Database, utcnow
from hounsfield.db.access import AuditEntry
from tests.services.drift.profiled import SMALL_WINDOWS, ProfiledJobs


def test_drift_is_shown_and_the_reference_window_set(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"drift": SMALL_WINDOWS})
    db = Database(settings.sqlalchemy_url)
    db.create_schema()
    jobs = ProfiledJobs(settings, db)
    jobs.run(40)
    start = utcnow()
    jobs.run(30, intensity_mean=-300.0)
    end = utcnow()
    config = tmp_path / "hounsfield.yaml"
    config.write_text(
        json.dumps({"data_dir": str(settings.data_dir), "database_url": settings.sqlalchemy_url,
                    "drift": SMALL_WINDOWS.model_dump()})
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    runner = CliRunner()

    def hounsfield(*argv: str) -> tuple[int, str]:
        done = runner.invoke(cli, [*argv, "--config", str(config)], env=env)
        return done.exit_code, done.stdout

    code, shown = hounsfield("models", "drift")
    assert code == 0 and "ct-lesion-seg 1.0.0\tdrifting\treference first jobs (40 jobs)\trecent 30 jobs" in shown
    assert "  intensity_mean\tdrifting\tks 1.000 (threshold 0.3)" in shown
    code, shown = hounsfield("models", "drift", "ct-lesion-seg", "1.0.0", "--json")
    assert code == 0 and json.loads(shown)[0]["status"] == "drifting"
    assert hounsfield("models", "drift", "ct-lesion-seg", "9.9.9")[0] == 1

    assert hounsfield("models", "drift-reference", "ct-lesion-seg", "1.0.0")[0] == 2  # neither window nor --clear
    assert (
        hounsfield("models", "drift-reference", "ct-lesion-seg", "1.0.0", "--start", "yesterday", "--end", "x")[0] == 2
    )
    code, shown = hounsfield(
        "models", "drift-reference", "ct-lesion-seg", "1.0.0", "--start", start.isoformat(), "--end", end.isoformat()
    )
    assert code == 0 and "ct-lesion-seg 1.0.0: reference window (30 jobs), not_enough_data" in shown
    code, shown = hounsfield("models", "drift-reference", "ct-lesion-seg", "1.0.0", "--clear")
    assert code == 0 and "reference first_jobs (40 jobs), drifting" in shown
    with db.session() as session:
        trail = session.scalars(select(AuditEntry).where(AuditEntry.action == "model_version.drift_reference")).all()
        assert [(e.actor.startswith("cli:"), e.after["start"] is None) for e in trail] == [(True, False), (True, True)]
    db.dispose()
