"""Seeded training and held-out evaluation of the head CT haemorrhage classifier.

Run ``python -m hounsfield_operators.ct_ich_triage.train --out operators/ct_ich_triage/models`` to
train :class:`~hounsfield_operators.ct_ich_triage.classifier.HaemorrhageNet` on synthetic head
phantoms (:mod:`hounsfield_operators.ct_ich_triage.phantom`), choose its operating threshold on
validation phantoms, save it as TorchScript (``model.ts``) and write ``training_report.json`` with
held-out figures. Three disjoint seed ranges: training from :data:`TRAIN_SEED_START`, validation
(the threshold) from :data:`VALIDATION_SEED_START`, held-out (the reported figures, never used for
anything else) from :data:`HELD_OUT_SEED_START`.

Deterministic: torch's deterministic algorithms, a fixed thread count (2 by default) and seeded
generators make the same command give the same weights (``weights_sha256`` in the report, from
:func:`hounsfield_operators.training.state_dict_sha256`) and, with the same torch version on the same
kind of CPU, the same file (``model_sha256``): the TorchScript module is frozen before it is saved
(see :func:`train`).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hounsfield_operators.ct_ich_triage.classifier import (
    BONE_HU,
    CHANNELS,
    HU_WINDOW,
    HaemorrhageNet,
    TriageClassifier,
    network_input_from_zyx,
    volume_logit,
)
from hounsfield_operators.ct_ich_triage.phantom import BLEED_KINDS, make_head_phantom
from hounsfield_operators.training import (
    cpu_kernel_record,
    file_sha256,
    rerun_with_pinned_cpu_kernels,
    state_dict_sha256,
)

__all__ = [
    "HELD_OUT_SEED_START",
    "N_HELD_OUT",
    "TRAIN_SEED_START",
    "VALIDATION_SEED_START",
    "choose_threshold",
    "evaluate",
    "main",
    "predict",
    "roc_auc",
    "train",
]

logger = logging.getLogger(__name__)

TRAIN_SEED_START = 1000
"""First training phantom seed; training uses ``TRAIN_SEED_START + i``."""
VALIDATION_SEED_START = 80000
"""First validation phantom seed: picks the operating threshold, never trained on, never reported."""
HELD_OUT_SEED_START = 90000
"""First held-out phantom seed: the reported figures; never trained on, never used for the threshold."""
N_HELD_OUT = 150
"""Number of held-out phantoms the report (and the test) measure."""

_MAP_POSITIVE_WEIGHT = 20.0
_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))


def roc_auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic; ties count one half).

    Parameters
    ----------
    labels : sequence of bool
        True for a positive case.
    scores : sequence of float
        Higher means more likely positive.

    Returns
    -------
    float
        The probability that a random positive scores above a random negative.

    Raises
    ------
    ValueError
        When there is no positive or no negative case.
    """
    truth = np.asarray(labels, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    positives, negatives = values[truth], values[~truth]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("ROC AUC needs at least one positive and one negative case.")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


def _sensitivity_specificity(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    called = scores >= threshold
    return float(called[labels].mean()), float((~called[~labels]).mean())


def choose_threshold(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> dict:
    """The operating threshold: the grid value (0.05 ... 0.95) with the largest Youden index.

    Youden's J is sensitivity + specificity - 1; among equal J the lowest threshold wins (a
    triage tool would rather flag a normal head than miss a bleed).

    Returns
    -------
    dict
        ``threshold`` and the ``sweep`` (per threshold: sensitivity, specificity).
    """
    truth = np.asarray(labels, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    sweep = {}
    for threshold in _THRESHOLDS:
        sensitivity, specificity = _sensitivity_specificity(truth, values, threshold)
        sweep[str(threshold)] = {"sensitivity": sensitivity, "specificity": specificity}
    best = max(_THRESHOLDS, key=lambda t: (round(sum(sweep[str(t)].values()) - 1.0, 9), -t))
    return {"threshold": best, "criterion": "largest Youden index, lowest threshold on ties", "sweep": sweep}


def predict(model: torch.nn.Module, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Probabilities of haemorrhage for the phantoms of ``seeds``, as the application computes them.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`~hounsfield_operators.ct_ich_triage.classifier.TriageClassifier` (or its scripted
        form) returning probabilities.
    seeds : sequence of int
        Phantom seeds.

    Returns
    -------
    tuple
        Labels (bool array), probabilities (float array) and the bleed kind of each case (``None``
        for a normal head).
    """
    labels: list[bool] = []
    probabilities: list[float] = []
    kinds: list[str | None] = []
    with torch.no_grad():
        for seed in seeds:
            phantom = make_head_phantom(int(seed))
            inputs = torch.from_numpy(network_input_from_zyx(phantom.hu))[None]
            probabilities.append(float(model(inputs)[0]))
            labels.append(phantom.has_bleed)
            kinds.append(phantom.bleed.kind if phantom.bleed is not None else None)
    return np.asarray(labels, dtype=bool), np.asarray(probabilities, dtype=np.float64), kinds


def evaluate(model_path: Path, seeds: Sequence[int]) -> dict:
    """Evaluate a saved model on the phantoms of ``seeds`` at its own operating threshold.

    Parameters
    ----------
    model_path : pathlib.Path
        TorchScript file, as written by :func:`train`.
    seeds : sequence of int
        Phantom seeds (disjoint from training and validation seeds for an honest estimate).

    Returns
    -------
    dict
        ``auc``, ``threshold``, ``sensitivity``, ``specificity``, case counts, sensitivity per
        bleed kind and ``cases`` (seed, label, kind, probability).
    """
    model = torch.jit.load(str(model_path), map_location="cpu").eval()
    threshold = float(model.operating_threshold)
    labels, probabilities, kinds = predict(model, seeds)
    sensitivity, specificity = _sensitivity_specificity(labels, probabilities, threshold)
    by_kind = {}
    for kind in BLEED_KINDS:
        picked = np.array([k == kind for k in kinds])
        if picked.any():
            by_kind[kind] = {"n": int(picked.sum()), "sensitivity": float((probabilities[picked] >= threshold).mean())}
    return {
        "auc": roc_auc(labels, probabilities),
        "threshold": threshold,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "n_bleed": int(labels.sum()),
        "n_normal": int((~labels).sum()),
        "sensitivity_by_kind": by_kind,
        "cases": [
            {"seed": int(s), "bleed": bool(b), "kind": k, "probability": round(float(p), 6)}
            for s, b, k, p in zip(seeds, labels, kinds, probabilities, strict=True)
        ],
    }


def _batch(
    rng: np.random.Generator, pool: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network inputs and bleed masks (both ``(N, 1, x, y, z)``) with random left-right and front-back
    flips, and the labels ``(N,)``."""
    chosen = rng.integers(len(pool), size=size)
    images, masks = [], []
    for index in chosen:
        image, mask = pool[index]
        for axis in (1, 2):  # x (left-right), y (front-back)
            if rng.uniform() < 0.5:
                image, mask = np.flip(image, axis=axis), np.flip(mask, axis=axis)
        images.append(np.ascontiguousarray(image))
        masks.append(np.ascontiguousarray(mask))
    return (
        torch.from_numpy(np.stack(images)),
        torch.from_numpy(np.stack(masks).astype(np.float32)),
        torch.from_numpy(labels[chosen].astype(np.float32)),
    )


def train(
    out_dir: Path,
    *,
    n_train: int = 400,
    steps: int = 600,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    seed: int = 0,
    n_validation: int = 100,
    n_held_out: int = N_HELD_OUT,
) -> dict:
    """Train the classifier, save ``model.ts`` and ``training_report.json`` in ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Output directory (created if needed).
    n_train : int
        Number of training phantoms (seeds ``TRAIN_SEED_START ...``; about half hold a bleed).
    steps : int
        Optimisation steps.
    batch_size : int
        Volumes per step.
    learning_rate : float
        Initial Adam learning rate (cosine-annealed to zero).
    seed : int
        Seed of the batch sampler and of torch.
    n_validation : int
        Validation phantoms (seeds ``VALIDATION_SEED_START ...``) that choose the threshold.
    n_held_out : int
        Held-out phantoms (seeds ``HELD_OUT_SEED_START ...``) for the report; 0 skips them.

    Returns
    -------
    dict
        The training report.
    """
    if n_train > VALIDATION_SEED_START - TRAIN_SEED_START or n_validation > HELD_OUT_SEED_START - VALIDATION_SEED_START:
        raise ValueError("training, validation and held-out seeds must be disjoint")
    train_seeds = range(TRAIN_SEED_START, TRAIN_SEED_START + n_train)
    validation_seeds = range(VALIDATION_SEED_START, VALIDATION_SEED_START + n_validation)
    held_out_seeds = range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + n_held_out)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()

    pool, bleeds = [], []
    for phantom_seed in train_seeds:
        phantom = make_head_phantom(phantom_seed)
        pool.append((network_input_from_zyx(phantom.hu), np.ascontiguousarray(phantom.bleed_mask.T)[None]))
        bleeds.append(phantom.has_bleed)
    labels = np.array(bleeds)
    logger.info(
        "generated %d training phantoms (%d with a bleed) in %.1f s",
        n_train,
        labels.sum(),
        time.perf_counter() - started,
    )

    network = HaemorrhageNet()
    loss_function = torch.nn.BCEWithLogitsLoss()
    # Few cells bleed: their errors weigh as much as those of the many that do not.
    map_loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(_MAP_POSITIVE_WEIGHT))
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    network.train()
    running = 0.0
    for step in range(1, steps + 1):
        images, masks, targets = _batch(rng, pool, labels, batch_size)
        optimizer.zero_grad()
        logit_map = network(images)
        # The map learns where blood is (a cell is positive when any of its voxels bleeds), the
        # volume's logit whether there is any.
        cells = torch.nn.functional.adaptive_max_pool3d(masks, logit_map.shape[2:])
        loss = map_loss(logit_map, cells) + loss_function(volume_logit(logit_map), targets)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += loss.item()
        if step % 50 == 0:
            logger.info("step %d/%d loss %.4f (%.0f s)", step, steps, running / 50, time.perf_counter() - started)
            running = 0.0
    train_seconds = time.perf_counter() - started

    network.eval()
    validation_labels, validation_scores, _ = predict(TriageClassifier(network, 0.5), validation_seeds)
    calibration = choose_threshold(validation_labels, validation_scores)
    logger.info("operating threshold %.2f", calibration["threshold"])
    deployed = TriageClassifier(network, calibration["threshold"]).eval()
    model_path = out_dir / "model.ts"
    buffer = io.BytesIO()
    # Frozen: weights become constants and the module's Python-side constant sets (whose order
    # follows the string hash seed) leave the archive, so the file's bytes are reproducible.
    frozen = torch.jit.freeze(torch.jit.script(deployed), preserved_attrs=["operating_threshold"])
    torch.jit.save(frozen, buffer)
    model_path.write_bytes(buffer.getvalue())
    report = {
        "model": f"hounsfield_operators.ct_ich_triage.classifier.HaemorrhageNet(channels={CHANNELS}) "
        "in TriageClassifier (sigmoid of the logit map's maximum, operating_threshold buffer)",
        "loss": f"BCE of the logit map against the bleed mask max-pooled to its cells (positive weight "
        f"{_MAP_POSITIVE_WEIGHT}) + BCE of the volume logit",
        "parameters": sum(p.numel() for p in network.parameters()),
        "input_layout": f"(N, 1, x, y, z); skull stripped (> {BONE_HU} HU and neighbours set to 0); HU window "
        f"{HU_WINDOW} clipped and scaled to [0, 1]; no resampling",
        "train_seeds": [TRAIN_SEED_START, TRAIN_SEED_START + n_train - 1],
        "n_train_phantoms": n_train,
        "n_train_with_bleed": int(labels.sum()),
        "validation_seeds": [VALIDATION_SEED_START, VALIDATION_SEED_START + n_validation - 1],
        "held_out_seeds": [HELD_OUT_SEED_START, HELD_OUT_SEED_START + n_held_out - 1],
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "torch_seed": seed,
        "train_wall_time_s": round(train_seconds, 1),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        # The weights depend on the CPU kernels used (oneDNN picks them by instruction set).
        "cpu_kernels": cpu_kernel_record(),
        "calibration": {
            **calibration,
            "validation_auc": roc_auc(validation_labels, validation_scores)
            if 0 < validation_labels.sum() < len(validation_labels)
            else None,
        },
        "weights_sha256": state_dict_sha256(deployed),
        "model_sha256": file_sha256(model_path),
    }
    if n_held_out:
        report["held_out"] = evaluate(model_path, held_out_seeds)
    report["total_wall_time_s"] = round(time.perf_counter() - started, 1)
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: train, save, and print the held-out summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models", help="output directory")
    parser.add_argument("--n-train", type=int, default=400, help="number of training phantoms")
    parser.add_argument("--steps", type=int, default=600, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-validation", type=int, default=100, help="validation phantoms (threshold)")
    parser.add_argument("--n-held-out", type=int, default=N_HELD_OUT, help="held-out phantoms (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    # Kernels of one instruction set on every CPU, so that the weights do not depend on the machine.
    if (status := rerun_with_pinned_cpu_kernels("hounsfield_operators.ct_ich_triage.train", arguments)) is not None:
        raise SystemExit(status)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    report = train(
        args.out,
        n_train=args.n_train,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        n_validation=args.n_validation,
        n_held_out=args.n_held_out,
    )
    summary = f"model sha256 {report['model_sha256']}; training {report['train_wall_time_s']:.0f} s"
    if "held_out" in report:
        held_out = report["held_out"]
        summary = (
            f"held-out AUC {held_out['auc']:.4f} ({held_out['n_bleed']} bleeds, {held_out['n_normal']} normal); "
            f"at threshold {held_out['threshold']:.2f}: sensitivity {held_out['sensitivity']:.3f}, "
            f"specificity {held_out['specificity']:.3f}; {summary}"
        )
    print(summary)


if __name__ == "__main__":
    main()
