"""Held-out accuracy of the committed CT lesion segmentation model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hounsfield_operators.ct_lesion_seg.train import HELD_OUT_SEED_START, evaluate

MODELS_DIR = Path(__file__).resolve().parents[2] / "operators" / "ct_lesion_seg" / "models"
MODEL_PATH = MODELS_DIR / "model.ts"
HELD_OUT_SEEDS = tuple(range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + 20))
MIN_MEAN_DICE = 0.85


def test_committed_model_reaches_dice_on_held_out_phantoms(capsys: pytest.CaptureFixture[str]) -> None:
    assert MODEL_PATH.is_file(), f"missing {MODEL_PATH}"
    first_train, last_train = json.loads((MODELS_DIR / "training_report.json").read_text())["train_seeds"]
    assert not set(HELD_OUT_SEEDS) & set(range(first_train, last_train + 1)), "held-out seeds were trained on"
    torch.set_num_threads(2)
    metrics = evaluate(MODEL_PATH, HELD_OUT_SEEDS)
    summary = (
        f"held-out mean Dice over {metrics['n_lesion_cases']} lesion cases: {metrics['mean_dice_lesion_cases']:.4f}, "
        f"global Dice {metrics['global_dice']:.4f}, per case "
        + ", ".join(f"{c['seed']}:{c['dice']:.3f}" for c in metrics["cases"])
    )
    with capsys.disabled():  # the measured figure belongs in every test log, not only failing ones
        print(f"\n{summary}")
    assert metrics["n_lesion_cases"] >= 15, summary
    assert metrics["mean_dice_lesion_cases"] >= MIN_MEAN_DICE, summary
