"""The committed haemorrhage triage model: its held-out figures are the documented ones, and training is
deterministic.

``docs/models.md`` states the held-out AUC, sensitivity and specificity and the model file's sha256;
these tests re-measure them on the held-out phantoms (never trained on, never used for the threshold)
and compare with what the document says, to its rounding.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hounsfield_operators.ct_ich_triage.train import (
    HELD_OUT_SEED_START,
    N_HELD_OUT,
    VALIDATION_SEED_START,
    evaluate,
)
from hounsfield_operators.training import file_sha256

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "operators" / "ct_ich_triage" / "models"
MODEL_PATH = MODELS_DIR / "model.ts"
DOC = REPO / "docs" / "models.md"
SECTION = "## The second example MAP: head CT haemorrhage triage"
HELD_OUT_SEEDS = tuple(range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + N_HELD_OUT))
MIN_AUC = 0.95


def _documented() -> dict[str, str]:
    """The figures of the model's section of docs/models.md, as written there."""
    text = DOC.read_text()
    assert SECTION in text, f"docs/models.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    figures = {}
    for key, pattern in {
        "auc": r"\| held-out AUC[^|]*\| ([0-9.]+) \|",
        "sensitivity": r"\| sensitivity[^|]*\| ([0-9.]+) [^|]*\|",
        "specificity": r"\| specificity[^|]*\| ([0-9.]+) [^|]*\|",
        "threshold": r"operating threshold ([0-9.]+)",
        "sha256": r"sha256 `([0-9a-f]{64})`",
    }.items():
        found = re.search(pattern, section)
        assert found is not None, f"docs/models.md states no {key} in the model's section"
        figures[key] = found.group(1)
    return figures


def test_committed_model_reaches_the_documented_auc_on_held_out_phantoms(capsys: pytest.CaptureFixture[str]) -> None:
    assert MODEL_PATH.is_file(), f"missing {MODEL_PATH}"
    report = json.loads((MODELS_DIR / "training_report.json").read_text())
    first_train, last_train = report["train_seeds"]
    first_validation, last_validation = report["validation_seeds"]
    assert last_train < VALIDATION_SEED_START <= first_validation <= last_validation < HELD_OUT_SEED_START
    assert not set(HELD_OUT_SEEDS) & set(range(first_train, last_validation + 1)), "held-out seeds were seen"
    torch.set_num_threads(2)
    metrics = evaluate(MODEL_PATH, HELD_OUT_SEEDS)
    summary = (
        f"held-out AUC {metrics['auc']:.4f} on {metrics['n_bleed']} bleeds and {metrics['n_normal']} normal heads; "
        f"threshold {metrics['threshold']:.2f}: sensitivity {metrics['sensitivity']:.4f}, specificity "
        f"{metrics['specificity']:.4f}; by kind {metrics['sensitivity_by_kind']}"
    )
    with capsys.disabled():  # the measured figure belongs in every test log, not only failing ones
        print(f"\n{summary}")
    assert metrics["n_bleed"] >= 0.3 * N_HELD_OUT and metrics["n_normal"] >= 0.3 * N_HELD_OUT, summary
    assert metrics["auc"] >= MIN_AUC, summary
    documented = _documented()
    for key in ("auc", "sensitivity", "specificity", "threshold"):
        decimals = len(documented[key].split(".")[1])
        assert round(metrics[key], decimals) == pytest.approx(float(documented[key])), f"{key}: {summary}"
        assert metrics[key] == pytest.approx(report["held_out"][key]), f"{key} differs from training_report.json"


def test_committed_model_file_is_the_documented_one() -> None:
    digest = file_sha256(MODEL_PATH)
    assert digest == _documented()["sha256"]
    assert digest == json.loads((MODELS_DIR / "training_report.json").read_text())["model_sha256"]


def _train_command(out: Path, *extra: str) -> dict:
    """Run the documented training command (a short run) in a process of its own; return its report."""
    short = ["--n-train", "6", "--steps", "3", "--batch-size", "2", "--n-validation", "6", "--n-held-out", "0"]
    command = [sys.executable, "-m", "hounsfield_operators.ct_ich_triage.train", "--out", str(out), *short, *extra]
    subprocess.run(command, check=True, capture_output=True, timeout=300, cwd=REPO)
    return json.loads((out / "training_report.json").read_text())


def test_training_is_deterministic(tmp_path: Path) -> None:
    """Two short runs of the training command give the same weights and the same file; another seed does not.

    Each run is a process of its own, as the documented command is: TorchScript numbers the classes it
    compiles again within one process, which would change the file (not the weights).
    """
    first = _train_command(tmp_path / "a")
    second = _train_command(tmp_path / "b")
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["model_sha256"] == second["model_sha256"] == file_sha256(tmp_path / "b" / "model.ts")
    assert (tmp_path / "a" / "model.ts").read_bytes() == (tmp_path / "b" / "model.ts").read_bytes()
    # The command reran itself with the CPU kernels pinned (see hounsfield_operators.training).
    assert first["cpu_kernels"]["pinned"], first["cpu_kernels"]
    if platform.machine() == "x86_64":
        assert first["cpu_kernels"]["aten_cpu_capability"] == "AVX2", first["cpu_kernels"]
    other = _train_command(tmp_path / "c", "--seed", "1")
    assert other["weights_sha256"] != first["weights_sha256"]
    assert other["model_sha256"] != first["model_sha256"]
