"""The CT lesion training is deterministic: the same seed gives bitwise identical weights and file.

A short run of the real training loop (:func:`fit`, a few steps on two phantoms) and of the real
export (:func:`export_torchscript`) stands in for the 19-minute training that made
``models/model.ts``. It runs in two fresh processes with the CPU kernels pinned as the training
command pins them (:data:`PINNED_CPU_KERNELS`); one of them first moves every global random
generator (torch, numpy, ``random``), and they hash strings with different ``PYTHONHASHSEED``s, so
only the training's own seeding and the export's fixed hash seed can make the two agree. In this
process, unpinned, it runs again with the same seed (the kernels' instruction set matters) and with
another (the seed matters).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hounsfield_operators.ct_lesion_seg.train import (
    TRAIN_SEED_START,
    CalibratedSegmenter,
    fit,
    training_phantoms,
)
from hounsfield_operators.training import PINNED_CPU_KERNELS, cpu_kernels_pinned, state_dict_sha256

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

run, out, threads, move_generators = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
torch.set_num_threads(threads)
if move_generators:
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)
    torch.rand(1000)
network = fit(
    training_phantoms(run["phantom_seeds"]),
    steps=run["steps"],
    batch_size=run["batch_size"],
    learning_rate=run["learning_rate"],
    seed=run["seed"],
)
export_torchscript(network, run["threshold"], out)
print(torch.backends.cpu.get_cpu_capability(), state_dict_sha256(torch.jit.load(out)))
"""


@dataclass(frozen=True)
class ShortRuns:
    """What the short runs produced."""

    pinned_weights: tuple[str, str]
    pinned_files: tuple[bytes, bytes]
    pinned_capabilities: tuple[str, str]
    weights: str
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


def _fresh_run(out: Path, hash_seed: str, *, move_generators: bool) -> subprocess.Popen:
    arguments = [json.dumps(SHORT_RUN), str(out), str(THREADS), str(int(move_generators))]
    return subprocess.Popen(
        [sys.executable, "-c", _FRESH_RUN_SCRIPT, *arguments],
        env={**os.environ, **PINNED_CPU_KERNELS, "PYTHONHASHSEED": hash_seed},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> ShortRuns:
    """The short run in two fresh pinned processes, one after the other; in this one with two seeds."""
    outs = [tmp_path_factory.mktemp(name) / "model.ts" for name in ("first", "second")]
    results = []
    for out, hash_seed, move in zip(outs, ("1", "2"), (True, False), strict=True):
        process = _fresh_run(out, hash_seed, move_generators=move)
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"the short training run in a fresh process failed:\n{stderr[-3000:]}"
        capability, weights = stdout.strip().splitlines()[-1].split()
        results.append((capability, weights, out.read_bytes()))
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        deterministic_mode_before = torch.are_deterministic_algorithms_enabled()
        phantoms = training_phantoms(SHORT_RUN["phantom_seeds"])
        network = _short_run(phantoms, SHORT_RUN["seed"])
        deterministic_mode_after = torch.are_deterministic_algorithms_enabled()
        other = _short_run(phantoms, SHORT_RUN["seed"] + 1)
    finally:
        torch.set_num_threads(threads)
    return ShortRuns(
        pinned_weights=(results[0][1], results[1][1]),
        pinned_files=(results[0][2], results[1][2]),
        pinned_capabilities=(results[0][0], results[1][0]),
        weights=state_dict_sha256(CalibratedSegmenter(network, SHORT_RUN["threshold"])),
        other_seed_weights=state_dict_sha256(CalibratedSegmenter(other, SHORT_RUN["threshold"])),
        deterministic_mode_before=deterministic_mode_before,
        deterministic_mode_after=deterministic_mode_after,
    )


def test_same_seed_trains_identical_weights_in_fresh_processes(runs: ShortRuns) -> None:
    first, second = runs.pinned_weights
    assert first == second, f"two short trainings with the same seed gave different weights: {first}, {second}"


def test_same_weights_export_to_an_identical_torchscript_file(runs: ShortRuns) -> None:
    digests = [hashlib.sha256(data).hexdigest() for data in runs.pinned_files]
    assert digests[0] == digests[1], f"two short runs saved different TorchScript files: {digests}"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the pinned instruction set is x86-64's AVX2")
def test_pinned_processes_run_avx2_kernels(runs: ShortRuns) -> None:
    assert runs.pinned_capabilities == ("AVX2", "AVX2")


@pytest.mark.skipif(
    cpu_kernels_pinned() or torch.backends.cpu.get_cpu_capability() != "AVX512",
    reason="shows the pin's effect only where this process runs unpinned AVX-512 kernels",
)
def test_unpinned_avx512_kernels_train_other_weights(runs: ShortRuns) -> None:
    """Why the training pins its kernels: here, AVX-512 kernels round otherwise than AVX2 ones."""
    assert runs.weights not in runs.pinned_weights


def test_another_seed_trains_other_weights(runs: ShortRuns) -> None:
    assert runs.other_seed_weights != runs.weights, "the weights do not depend on the seed: is the digest blind?"


def test_fit_leaves_torch_deterministic_mode_as_it_found_it(runs: ShortRuns) -> None:
    assert runs.deterministic_mode_after == runs.deterministic_mode_before, "fit() changed torch's deterministic mode"
