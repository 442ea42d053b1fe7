"""Held-out accuracy of the committed CT lesion segmentation model, as docs/models.md states it.

The figures are read from the table in docs/models.md's lesion section and re-measured on the
held-out phantoms (evaluation on the CPU is deterministic), so the documentation, the training
report and the committed model cannot drift apart: each test names the figure that disagrees.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from hounsfield_operators.ct_lesion_seg.train import HELD_OUT_SEED_START, VOLUME_TOLERANCE, evaluate
from hounsfield_operators.training import PINNED_CPU_KERNELS, file_sha256, state_dict_sha256

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "operators" / "ct_lesion_seg" / "models"
MODEL_PATH = MODELS_DIR / "model.ts"
DOCS_PATH = ROOT / "docs" / "models.md"
LESION_SECTION = "## The example MAP: CT lesion segmentation"
HELD_OUT_SEEDS = tuple(range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + 20))


@dataclass(frozen=True)
class DocumentedFigures:
    """The held-out figures of docs/models.md's lesion table, as written there."""

    n_lesion_cases: int
    mean_dice: str
    global_dice: str
    volume_tolerance_percent: int
    within_percent: int
    n_within: int
    n_lesions: int
    false_positive_voxels: int


_ROWS = {
    "mean Dice": r"\| mean Dice over the (\d+) cases with lesions \| (\d+\.\d+) \|",
    "pooled Dice": r"\| Dice pooled over all cases \| (\d+\.\d+) \|",
    "volume agreement": r"\| lesions whose volume is within (\d+) % of the truth \| (\d+) % \((\d+) of (\d+)\) \|",
    "false positives": r"\| false-positive voxels on the lesion-free case \| (\d+) \|",
}


def _documented_figures() -> DocumentedFigures:
    text = DOCS_PATH.read_text(encoding="utf-8")
    assert LESION_SECTION in text, f"docs/models.md has no section {LESION_SECTION!r}"
    section = text.split(LESION_SECTION, 1)[1].split("\n## ", 1)[0]
    found = {}
    for figure, pattern in _ROWS.items():
        match = re.search(pattern, section)
        assert match, f"docs/models.md's lesion table has no {figure} row matching {pattern!r}"
        found[figure] = match.groups()
    n_lesion_cases, mean_dice = found["mean Dice"]
    tolerance, within_percent, n_within, n_lesions = found["volume agreement"]
    return DocumentedFigures(
        n_lesion_cases=int(n_lesion_cases),
        mean_dice=mean_dice,
        global_dice=found["pooled Dice"][0],
        volume_tolerance_percent=int(tolerance),
        within_percent=int(within_percent),
        n_within=int(n_within),
        n_lesions=int(n_lesions),
        false_positive_voxels=int(found["false positives"][0]),
    )


def _at_documented_rounding(measured: float, documented: str) -> str:
    """``measured`` written with as many decimals as the documented figure has."""
    return f"{measured:.{len(documented.split('.')[1])}f}"


@pytest.fixture(scope="module")
def documented() -> DocumentedFigures:
    return _documented_figures()


@pytest.fixture(scope="module")
def held_out() -> Iterator[dict[str, Any]]:
    """The committed model's evaluation on the held-out phantoms, run once for this module."""
    assert MODEL_PATH.is_file(), f"missing {MODEL_PATH}"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield evaluate(MODEL_PATH, HELD_OUT_SEEDS)
    finally:
        torch.set_num_threads(threads)


def test_held_out_seeds_are_those_reported_and_never_trained_on() -> None:
    report = json.loads((MODELS_DIR / "training_report.json").read_text())
    first_train, last_train = report["train_seeds"]
    assert not set(HELD_OUT_SEEDS) & set(range(first_train, last_train + 1)), "held-out seeds were trained on"
    assert tuple(report["held_out_seeds"]) == HELD_OUT_SEEDS, "training_report.json names other held-out seeds"


def test_mean_dice_over_lesion_cases_is_as_documented(
    held_out: dict[str, Any], documented: DocumentedFigures, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = (
        f"held-out mean Dice over {held_out['n_lesion_cases']} lesion cases: {held_out['mean_dice_lesion_cases']:.4f}, "
        f"pooled Dice {held_out['global_dice']:.4f}, lesion volumes within 15 %: "
        f"{held_out['n_lesion_volumes_within_15_percent']} of {held_out['n_lesions']}, false-positive voxels on "
        f"{held_out['n_lesion_free_cases']} lesion-free case(s): "
        f"{held_out['false_positive_voxels_lesion_free_cases']}; "
        "per case " + ", ".join(f"{c['seed']}:{c['dice']:.3f}" for c in held_out["cases"])
    )
    with capsys.disabled():  # the measured figures belong in every test log, not only failing ones
        print(f"\n{summary}")
    assert held_out["n_lesion_cases"] == documented.n_lesion_cases, (
        f"number of held-out cases with lesions: measured {held_out['n_lesion_cases']}, "
        f"docs/models.md says {documented.n_lesion_cases}"
    )
    measured = _at_documented_rounding(held_out["mean_dice_lesion_cases"], documented.mean_dice)
    assert measured == documented.mean_dice, (
        f"mean Dice over the lesion cases: measured {held_out['mean_dice_lesion_cases']:.4f}, "
        f"docs/models.md says {documented.mean_dice}"
    )


def test_pooled_dice_is_as_documented(held_out: dict[str, Any], documented: DocumentedFigures) -> None:
    measured = _at_documented_rounding(held_out["global_dice"], documented.global_dice)
    assert measured == documented.global_dice, (
        f"Dice pooled over all cases: measured {held_out['global_dice']:.4f}, "
        f"docs/models.md says {documented.global_dice}"
    )


def test_lesion_volume_agreement_is_as_documented(held_out: dict[str, Any], documented: DocumentedFigures) -> None:
    assert documented.volume_tolerance_percent == round(100 * VOLUME_TOLERANCE), (
        f"docs/models.md counts lesions within {documented.volume_tolerance_percent} %, "
        f"evaluate() within {100 * VOLUME_TOLERANCE:g} %"
    )
    measured = (held_out["n_lesion_volumes_within_15_percent"], held_out["n_lesions"])
    assert measured == (documented.n_within, documented.n_lesions), (
        f"lesions whose volume is within 15 % of the truth: measured {measured[0]} of {measured[1]}, "
        f"docs/models.md says {documented.n_within} of {documented.n_lesions}"
    )
    assert round(100 * documented.n_within / documented.n_lesions) == documented.within_percent, (
        f"docs/models.md's volume agreement: {documented.n_within} of {documented.n_lesions} is not "
        f"{documented.within_percent} %"
    )


def test_no_false_positive_voxels_on_the_lesion_free_case(
    held_out: dict[str, Any], documented: DocumentedFigures
) -> None:
    assert held_out["n_lesion_free_cases"] == 1, (
        f"docs/models.md speaks of one lesion-free held-out case; there are {held_out['n_lesion_free_cases']}"
    )
    assert held_out["false_positive_voxels_lesion_free_cases"] == documented.false_positive_voxels, (
        f"false-positive voxels on the lesion-free case: measured "
        f"{held_out['false_positive_voxels_lesion_free_cases']}, docs/models.md says {documented.false_positive_voxels}"
    )


def test_training_report_records_the_documented_figures(documented: DocumentedFigures) -> None:
    recorded = json.loads((MODELS_DIR / "training_report.json").read_text())["held_out"]
    errors = recorded["lesion_volume_errors"]
    within = sum(abs(error) <= VOLUME_TOLERANCE for error in errors)
    assert recorded["n_lesion_cases"] == documented.n_lesion_cases, "training_report.json: lesion case count"
    assert _at_documented_rounding(recorded["mean_dice_lesion_cases"], documented.mean_dice) == documented.mean_dice, (
        f"training_report.json's mean Dice {recorded['mean_dice_lesion_cases']:.4f} is not the documented "
        f"{documented.mean_dice}"
    )
    assert _at_documented_rounding(recorded["global_dice"], documented.global_dice) == documented.global_dice, (
        f"training_report.json's pooled Dice {recorded['global_dice']:.4f} is not the documented "
        f"{documented.global_dice}"
    )
    assert (within, len(errors)) == (documented.n_within, documented.n_lesions), (
        f"training_report.json's volume agreement {within} of {len(errors)} is not the documented "
        f"{documented.n_within} of {documented.n_lesions}"
    )
    assert recorded["false_positive_voxels_lesion_free_cases"] == documented.false_positive_voxels, (
        "training_report.json's false-positive voxels on the lesion-free case differ from docs/models.md"
    )


def test_the_committed_model_is_the_documented_reproducible_one() -> None:
    """The committed file and weights are those docs/models.md says two runs of the training command made,
    with the CPU kernels pinned, and the training report says the same."""
    section = DOCS_PATH.read_text(encoding="utf-8").split(LESION_SECTION, 1)[1].split("\n## ", 1)[0]
    file_digest = re.search(r"\| file sha256 \| `([0-9a-f]{64})` \|", section)
    weights_digest = re.search(r"\| weights \(`state_dict_sha256`\) \| `([0-9a-f]{64})` \|", section)
    assert file_digest and weights_digest, "docs/models.md's reproduction table names no file or weights digest"
    report = json.loads((MODELS_DIR / "training_report.json").read_text())
    assert file_sha256(MODEL_PATH) == file_digest.group(1) == report["model_sha256"]
    weights = state_dict_sha256(torch.jit.load(str(MODEL_PATH), map_location="cpu"))
    assert weights == weights_digest.group(1) == report["state_dict_sha256"]
    assert report["cpu_kernels"]["pinned"] and report["cpu_kernels"]["environment"] == dict(PINNED_CPU_KERNELS)
