"""``hounsfield logs study-id``: the id a study's log lines carry, from its UID and the installation's key."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

from typer.testing import CliRunner

from hounsfield.cli import app as cli
from hounsfield.logs import DEFAULT_CORRELATION_KEY, setup_logging, study_correlation_id

UID = "1.2.826.0.1.3680043.10.1392.42"


def test_study_id_prints_the_id_of_the_studys_lines_under_the_installations_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    config = tmp_path / "hounsfield.yaml"
    config.write_text(json.dumps({"data_dir": str(tmp_path), "log_correlation_key_env": "HF_TEST_LOG_KEY"}))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    runner = CliRunner()
    try:
        default = runner.invoke(cli, ["logs", "study-id", UID], env=env)
        keyed = runner.invoke(
            cli, ["logs", "study-id", UID, "--config", str(config)], env={**env, "HF_TEST_LOG_KEY": "k" * 24}
        )
    finally:
        setup_logging("INFO", "cli", stream=io.StringIO(), correlation_key=DEFAULT_CORRELATION_KEY)
        root.handlers[:], root.level = handlers, level
        logging.captureWarnings(False)
    assert default.exit_code == 0 and default.stdout.strip() == study_correlation_id(UID, DEFAULT_CORRELATION_KEY)
    assert keyed.exit_code == 0 and keyed.stdout.strip() == study_correlation_id(UID, b"k" * 24)
    assert keyed.stdout.strip() != default.stdout.strip()
