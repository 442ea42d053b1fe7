"""The CT lesion training is deterministic: the same seed gives bitwise identical weights and file.

A short run of the real training loop (:func:`fit`, a few steps on two phantoms) and of the real
export (:func:`export_torchscript`) stands in for the 19-minute training that made
``models/model.ts``. It runs twice: in this process and in a fresh one that first moves every global
random generator (torch, numpy, ``random``) and hashes strings with another ``PYTHONHASHSEED``, so
only the training's own seeding and the export's fixed hash seed can make the two agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from hounsfield_operators.ct_lesion_seg.train import (
    TRAIN_SEED_START,
    CalibratedSegmenter,
    export_torchscript,
    fit,
    training_phantoms,
)
from hounsfield_operators.training import state_dict_sha256

SHORT_RUN = {
    "phantom_seeds": [TRAIN_SEED_START, TRAIN_SEED_START + 1],
    "steps": 3,
    "batch_size": 2,
    "learning_rate": 2e-3,
    "seed": 0,
    "threshold": 0.3,
}
THREADS = 2
"""Torch CPU threads, as the documented training uses."""

_FRESH_RUN_SCRIPT = """
import json, random, sys
import numpy as np
import torch
from hounsfield_operators.ct_lesion_seg.train import export_torchscript, fit, training_phantoms
from hounsfield_operators.training import state_dict_sha256

run, out, threads = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
random.seed(12345)
np.random.seed(12345)
torch.manual_seed(12345)
network = fit(
    training_phantoms(run["phantom_seeds"]),
    steps=run["steps"],
    batch_size=run["batch_size"],
    learning_rate=run["learning_rate"],
    seed=run["seed"],
)
export_torchscript(network, run["threshold"], out)
print(state_dict_sha256(torch.jit.load(out)))
"""


@dataclass(frozen=True)
class ShortRuns:
    """What the short runs produced."""

    fresh_weights: str
    fresh_file: bytes
    weights: str
    file: bytes
    other_seed_weights: str
    deterministic_mode_before: bool
    deterministic_mode_after: bool


def _short_run(phantoms: list, seed: int) -> torch.nn.Module:
    return fit(
        phantoms,
        steps=SHORT_RUN["steps"],
        batch_size=SHORT_RUN["batch_size"],
        learning_rate=SHORT_RUN["learning_rate"],
        seed=seed,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> ShortRuns:
    """The short run in a fresh process and, meanwhile, in this one; then with another seed here."""
    fresh_out = tmp_path_factory.mktemp("fresh") / "model.ts"
    out = tmp_path_factory.mktemp("here") / "model.ts"
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    fresh = subprocess.Popen(
        [sys.executable, "-c", _FRESH_RUN_SCRIPT, json.dumps(SHORT_RUN), str(fresh_out), str(THREADS)],
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        deterministic_mode_before = torch.are_deterministic_algorithms_enabled()
        phantoms = training_phantoms(SHORT_RUN["phantom_seeds"])
        network = _short_run(phantoms, SHORT_RUN["seed"])
        deterministic_mode_after = torch.are_deterministic_algorithms_enabled()
        export_torchscript(network, SHORT_RUN["threshold"], out)
        other = _short_run(phantoms, SHORT_RUN["seed"] + 1)
    finally:
        torch.set_num_threads(threads)
        stdout, stderr = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, f"the short training run in a fresh process failed:\n{stderr[-3000:]}"
    return ShortRuns(
        fresh_weights=stdout.strip().splitlines()[-1],
        fresh_file=fresh_out.read_bytes(),
        weights=state_dict_sha256(CalibratedSegmenter(network, SHORT_RUN["threshold"])),
        file=out.read_bytes(),
        other_seed_weights=state_dict_sha256(CalibratedSegmenter(other, SHORT_RUN["threshold"])),
        deterministic_mode_before=deterministic_mode_before,
        deterministic_mode_after=deterministic_mode_after,
    )


def test_same_seed_trains_identical_weights_in_a_fresh_process(runs: ShortRuns) -> None:
    assert runs.weights == runs.fresh_weights, (
        f"two short trainings with the same seed gave different weights: {runs.weights} here, "
        f"{runs.fresh_weights} in a fresh process"
    )


def test_same_weights_export_to_an_identical_torchscript_file(runs: ShortRuns) -> None:
    digests = [hashlib.sha256(data).hexdigest() for data in (runs.file, runs.fresh_file)]
    assert digests[0] == digests[1], f"two short runs saved different TorchScript files (here, fresh): {digests}"


def test_another_seed_trains_other_weights(runs: ShortRuns) -> None:
    assert runs.other_seed_weights != runs.weights, "the weights do not depend on the seed: is the digest blind?"


def test_fit_leaves_torch_deterministic_mode_as_it_found_it(runs: ShortRuns) -> None:
    assert runs.deterministic_mode_after == runs.deterministic_mode_before, "fit() changed torch's deterministic mode"
