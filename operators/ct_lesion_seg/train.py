"""Seeded training and held-out evaluation of the CT lesion segmentation network.

Run ``python -m hounsfield_operators.ct_lesion_seg.train --out operators/ct_lesion_seg/models`` to train
a small 3D UNet on synthetic phantoms (:mod:`hounsfield_operators.ct_lesion_seg.phantom`), save it as
TorchScript (``model.ts``) and write ``training_report.json`` with held-out metrics.  Training
phantoms use seeds from :data:`TRAIN_SEED_START`; held-out phantoms use the disjoint range
from :data:`HELD_OUT_SEED_START`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import monai
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from scipy import ndimage

from hounsfield_operators.ct_lesion_seg.phantom import Phantom, make_phantom
from hounsfield_operators.ct_lesion_seg.preprocessing import (
    NUM_CLASSES,
    OVERLAP,
    ROI_SIZE,
    SW_BATCH_SIZE,
    network_input_from_zyx,
)
from hounsfield_operators.training import (
    cpu_kernel_record,
    deterministic_algorithms,
    file_sha256,
    rerun_with_pinned_cpu_kernels,
    state_dict_sha256,
)

__all__ = [
    "HELD_OUT_SEED_START",
    "TRAIN_SEED_START",
    "build_network",
    "evaluate",
    "export_torchscript",
    "fit",
    "main",
    "segment",
    "train",
    "training_phantoms",
]

logger = logging.getLogger(__name__)

TRAIN_SEED_START = 1000
"""First training phantom seed; training uses ``TRAIN_SEED_START + i``."""

HELD_OUT_SEED_START = 90000
"""First held-out phantom seed; never used for training."""
VALIDATION_SEED_START = 80000
"""First validation phantom seed: picks the decision threshold, never trained on, never reported."""
THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
VOLUME_TOLERANCE = 0.15
"""A lesion's measured volume agrees with the truth when its relative error is at most this."""

_LESION_CENTRED_FRACTION = 0.7
TRAIN_PATCH_SIZE = (48, 48, 32)
"""Training crops in ``(x, y, z)``; smaller than ROI_SIZE for speed (the network is fully convolutional)."""


def build_network() -> UNet:
    """Build the (untrained) segmentation network.

    Returns
    -------
    monai.networks.nets.UNet
        3D UNet, 1 input channel, :data:`NUM_CLASSES` output channels (logits).
    """
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=NUM_CLASSES,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
    )


def segment(model: torch.nn.Module, hu_zyx: np.ndarray) -> np.ndarray:
    """Segment one volume exactly as the deployed application does.

    Parameters
    ----------
    model : torch.nn.Module
        Network returning logits ``(N, NUM_CLASSES, x, y, z)``.
    hu_zyx : numpy.ndarray
        Volume in HU, ``(z, y, x)``.

    Returns
    -------
    numpy.ndarray
        ``uint8`` label map ``(z, y, x)``; 1 marks lesion voxels.
    """
    return _logits(model, hu_zyx).argmax(dim=0).numpy().astype(np.uint8).T


def _logits(model: torch.nn.Module, hu_zyx: np.ndarray) -> torch.Tensor:
    """Sliding-window logits ``(NUM_CLASSES, x, y, z)`` with the application's settings."""
    inputs = torch.from_numpy(network_input_from_zyx(hu_zyx))[None]
    with torch.no_grad():
        return sliding_window_inference(inputs, ROI_SIZE, SW_BATCH_SIZE, model, overlap=OVERLAP)[0]


class CalibratedSegmenter(torch.nn.Module):
    """The network with its lesion decision threshold folded into the logits.

    ``argmax`` over the returned logits picks lesion exactly when the lesion probability exceeds
    ``threshold``, so the application's softmax + argmax post-transforms apply it unchanged.
    """

    def __init__(self, network: torch.nn.Module, threshold: float) -> None:
        super().__init__()
        self.network = network
        offset = float(np.log(threshold / (1.0 - threshold)))
        self.register_buffer("background_offset", torch.tensor([offset, 0.0]).reshape(1, 2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) + self.background_offset


_EXPORT_SCRIPT = """
import sys
import torch
from hounsfield_operators.ct_lesion_seg.train import CalibratedSegmenter, build_network
network = build_network()
network.load_state_dict(torch.load(sys.argv[1], weights_only=True))
torch.jit.script(CalibratedSegmenter(network, float(sys.argv[2]))).save(sys.argv[3])
"""


def export_torchscript(network: torch.nn.Module, threshold: float, path: Path) -> None:
    """Save ``network`` with its decision threshold folded in as the application's TorchScript model.

    TorchScript writes a module's constants in the iteration order of a Python ``set`` of their
    names, which follows the interpreter's string hash seed; the scripting therefore runs in a fresh
    interpreter with ``PYTHONHASHSEED=0``, so the same weights give the same file whoever calls
    this. The file's bytes still depend on the source the code was compiled from (TorchScript keeps
    debug source ranges: the absolute paths of ``train.py`` and of monai's and torch's modules, and
    their line numbers) and on the file's name (the archive's top folder); :func:`state_dict_sha256`
    identifies the weights alone.

    Parameters
    ----------
    network : torch.nn.Module
        A trained network as :func:`build_network` makes it.
    threshold : float
        Lesion probability threshold folded into the logits (see :class:`CalibratedSegmenter`).
    path : pathlib.Path
        TorchScript file to write.
    """
    with tempfile.TemporaryDirectory(prefix="lesion_export_") as folder:
        weights = Path(folder) / "weights.pt"
        torch.save(network.state_dict(), weights)
        command = [sys.executable, "-c", _EXPORT_SCRIPT, str(weights), repr(float(threshold)), str(path)]
        result = subprocess.run(
            command, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(f"TorchScript export to {path} failed:\n{result.stderr[-3000:]}")
    saved = torch.jit.load(str(path), map_location="cpu")
    if state_dict_sha256(saved) != state_dict_sha256(CalibratedSegmenter(network, threshold)):
        raise RuntimeError(f"TorchScript export to {path} changed the weights")


def calibrate(model: torch.nn.Module, seeds: Sequence[int]) -> dict:
    """Choose the lesion probability threshold whose lesion volumes are closest to the truth.

    Networks trained with Dice+CE under-segment small structures at 0.5. The report states
    lesion volumes, so the threshold minimises the mean absolute relative volume error per lesion
    on validation phantoms, disjoint from both training and held-out seeds.
    """
    errors: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    scores: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    for seed in seeds:
        phantom = make_phantom(int(seed))
        if not phantom.lesions:
            continue
        probability = torch.softmax(_logits(model, phantom.hu), dim=0)[1].numpy().T
        for threshold in THRESHOLDS:
            prediction = probability > threshold
            errors[threshold] += _lesion_volume_errors(prediction, phantom)
            scores[threshold].append(_dice(prediction, phantom.lesion_mask))
    table = {
        str(t): {
            "mean_abs_volume_error": float(np.mean(np.abs(errors[t]))),
            "fraction_within_15_percent": float(np.mean(np.abs(errors[t]) <= VOLUME_TOLERANCE)),
            "mean_dice": float(np.mean(scores[t])),
        }
        for t in THRESHOLDS
    }
    best = min(THRESHOLDS, key=lambda t: np.mean(np.abs(errors[t])))
    return {
        "threshold": best,
        "criterion": "mean absolute lesion volume error",
        "validation_seeds": [int(s) for s in seeds],
        "sweep": table,
    }


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    denominator = int(prediction.sum()) + int(truth.sum())
    return 1.0 if denominator == 0 else 2.0 * int((prediction & truth).sum()) / denominator


def _lesion_volume_errors(prediction: np.ndarray, phantom: Phantom) -> list[float]:
    """Relative volume error per true lesion, against the predicted components that touch it."""
    components, _ = ndimage.label(prediction, structure=np.ones((3, 3, 3)))
    errors = []
    for lesion in phantom.lesions:
        truth = phantom.lesion_labels == lesion.index
        touching = np.unique(components[truth])
        predicted = np.isin(components, touching[touching > 0]).sum()
        errors.append(float(predicted) / float(truth.sum()) - 1.0)
    return errors


def evaluate(model_path: Path, seeds: Sequence[int]) -> dict:
    """Evaluate a TorchScript model on phantoms generated from ``seeds``.

    Parameters
    ----------
    model_path : pathlib.Path
        TorchScript file, as written by :func:`train`.
    seeds : sequence of int
        Phantom seeds (must not overlap the training seeds for an honest estimate).

    Returns
    -------
    dict
        ``cases`` (per seed: lesion count, truth and predicted voxels, Dice),
        ``mean_dice_lesion_cases`` (mean Dice over cases with lesions), ``global_dice``
        (Dice of all cases pooled), ``false_positive_voxels_lesion_free_cases`` (predicted
        voxels summed over cases without lesions), ``n_lesion_cases`` / ``n_lesion_free_cases``,
        and the volume agreement per true lesion: ``lesion_volume_errors`` (predicted volume of the
        components touching the lesion over its true volume, minus 1), ``n_lesions``,
        ``n_lesion_volumes_within_15_percent`` (``|error| <= VOLUME_TOLERANCE``) and
        ``fraction_lesion_volumes_within_15_percent``.
    """
    model = torch.jit.load(str(model_path), map_location="cpu").eval()
    cases = []
    volume_errors: list[float] = []
    intersection = total = 0
    for seed in seeds:
        phantom = make_phantom(int(seed))
        prediction = segment(model, phantom.hu) > 0
        truth = phantom.lesion_mask
        volume_errors += _lesion_volume_errors(prediction, phantom)
        intersection += int((prediction & truth).sum())
        total += int(prediction.sum()) + int(truth.sum())
        cases.append(
            {
                "seed": int(seed),
                "n_lesions": len(phantom.lesions),
                "truth_voxels": int(truth.sum()),
                "predicted_voxels": int(prediction.sum()),
                "dice": _dice(prediction, truth),
            }
        )
    within = int(np.sum(np.abs(volume_errors) <= VOLUME_TOLERANCE))
    lesion_cases = [case for case in cases if case["n_lesions"] > 0]
    free_cases = [case for case in cases if case["n_lesions"] == 0]
    return {
        "cases": cases,
        "n_lesion_cases": len(lesion_cases),
        "n_lesion_free_cases": len(free_cases),
        "mean_dice_lesion_cases": float(np.mean([c["dice"] for c in lesion_cases])) if lesion_cases else float("nan"),
        "global_dice": 2.0 * intersection / total if total else 1.0,
        "false_positive_voxels_lesion_free_cases": int(sum(c["predicted_voxels"] for c in free_cases)),
        "lesion_volume_errors": [round(e, 4) for e in volume_errors],
        "n_lesions": len(volume_errors),
        "n_lesion_volumes_within_15_percent": within,
        "fraction_lesion_volumes_within_15_percent": within / len(volume_errors) if volume_errors else float("nan"),
    }


def _random_patch(
    rng: np.random.Generator, image: np.ndarray, label: np.ndarray, lesion_voxels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a TRAIN_PATCH_SIZE patch (biased to lesions) with random flips from a ``(1, x, y, z)`` image."""
    shape = np.array(label.shape)
    roi = np.array(TRAIN_PATCH_SIZE)
    pad = np.maximum(roi - shape, 0)
    if pad.any():
        widths = [(0, int(p)) for p in pad]
        image = np.pad(image, [(0, 0), *widths], constant_values=0.0)
        label = np.pad(label, widths)
        shape = np.array(label.shape)
    if len(lesion_voxels) and rng.uniform() < _LESION_CENTRED_FRACTION:
        centre = lesion_voxels[rng.integers(len(lesion_voxels))] + rng.integers(-roi // 4, roi // 4 + 1)
        start = np.clip(centre - roi // 2, 0, shape - roi)
    else:
        start = np.array([rng.integers(0, s - r + 1) for s, r in zip(shape, roi, strict=True)])
    window = tuple(slice(int(a), int(a + r)) for a, r in zip(start, roi, strict=True))
    image_patch, label_patch = image[(slice(None), *window)], label[window]
    for axis in range(3):
        if rng.uniform() < 0.5:
            image_patch = np.flip(image_patch, axis=axis + 1)
            label_patch = np.flip(label_patch, axis=axis)
    return np.ascontiguousarray(image_patch), np.ascontiguousarray(label_patch)


TrainingPhantom = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Network input ``(1, x, y, z)``, lesion label ``(x, y, z)`` and the lesion voxels' ``(x, y, z)`` indices."""


def training_phantoms(seeds: Sequence[int]) -> list[TrainingPhantom]:
    """Generate the training phantoms for ``seeds`` in the network's layout.

    Parameters
    ----------
    seeds : sequence of int
        Phantom seeds (see :func:`~hounsfield_operators.ct_lesion_seg.phantom.make_phantom`).

    Returns
    -------
    list of tuple
        Per seed: network input ``(1, x, y, z)`` float32, label ``(x, y, z)`` int64 and the
        ``(n, 3)`` indices of its lesion voxels.
    """
    phantoms = []
    for phantom_seed in seeds:
        phantom = make_phantom(int(phantom_seed))
        label = np.ascontiguousarray(phantom.lesion_mask.T).astype(np.int64)
        phantoms.append((network_input_from_zyx(phantom.hu), label, np.argwhere(label > 0)))
    return phantoms


def fit(
    phantoms: Sequence[TrainingPhantom],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> UNet:
    """Optimise a freshly initialised network on random patches of ``phantoms``.

    Deterministic: the network's initialisation (torch's global generator) and the patch sampler
    (a numpy generator) are seeded with ``seed`` and torch runs deterministic algorithms, so the
    same arguments on the same torch build, CPU and thread count give bitwise identical weights.

    Parameters
    ----------
    phantoms : sequence of tuple
        As returned by :func:`training_phantoms`.
    steps : int
        Optimisation steps.
    batch_size : int
        Patches per step.
    learning_rate : float
        Initial Adam learning rate (cosine-annealed to zero over ``steps``).
    seed : int
        Seed of the patch sampler and of torch.

    Returns
    -------
    monai.networks.nets.UNet
        The trained network, in evaluation mode.
    """
    with deterministic_algorithms():
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        started = time.perf_counter()
        model = build_network()
        loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        model.train()
        running = 0.0
        for step in range(1, steps + 1):
            patches = [_random_patch(rng, *phantoms[int(rng.integers(len(phantoms)))]) for _ in range(batch_size)]
            images = torch.from_numpy(np.stack([p[0] for p in patches]))
            labels = torch.from_numpy(np.stack([p[1] for p in patches]))[:, None]
            optimizer.zero_grad()
            loss = loss_function(model(images), labels)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
            if step % 50 == 0:
                logger.info("step %d/%d loss %.4f (%.0f s)", step, steps, running / 50, time.perf_counter() - started)
                running = 0.0
    return model.eval()


def train(
    out_dir: Path,
    *,
    n_train: int = 120,
    steps: int = 4000,
    batch_size: int = 4,
    learning_rate: float = 2e-3,
    seed: int = 0,
    held_out: Sequence[int] = tuple(range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + 20)),
    validation: Sequence[int] = tuple(range(VALIDATION_SEED_START, VALIDATION_SEED_START + 24)),
) -> dict:
    """Train the network, save ``model.ts`` and ``training_report.json`` in ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Output directory (created if needed).
    n_train : int
        Number of training phantoms (seeds ``TRAIN_SEED_START ...``).
    steps : int
        Optimisation steps.
    batch_size : int
        Patches per step.
    learning_rate : float
        Initial Adam learning rate (cosine-annealed to zero).
    seed : int
        Seed of the patch sampler and of torch.
    held_out : sequence of int
        Seeds of the held-out evaluation phantoms.

    Returns
    -------
    dict
        The training report.
    """
    train_seeds = list(range(TRAIN_SEED_START, TRAIN_SEED_START + n_train))
    if set(train_seeds) & set(held_out) or set(validation) & (set(train_seeds) | set(held_out)):
        raise ValueError("training, validation and held-out seeds must be disjoint")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with deterministic_algorithms():
        started = time.perf_counter()
        phantoms = training_phantoms(train_seeds)
        logger.info("generated %d training phantoms in %.1f s", n_train, time.perf_counter() - started)
        model = fit(phantoms, steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
        train_seconds = time.perf_counter() - started

        calibration = calibrate(model, validation)
        logger.info("decision threshold %.2f (validation sweep %s)", calibration["threshold"], calibration["sweep"])
        model_path = out_dir / "model.ts"
        export_torchscript(model, calibration["threshold"], model_path)
        metrics = evaluate(model_path, held_out)
    report = {
        "model": "monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, "
        "channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)",
        "input_layout": "(N, 1, x, y, z); HU window clipped and scaled to [0, 1]; no resampling",
        "roi_size_xyz": list(ROI_SIZE),
        "overlap": OVERLAP,
        "sw_batch_size": SW_BATCH_SIZE,
        "train_seeds": [train_seeds[0], train_seeds[-1]],
        "n_train_phantoms": n_train,
        "held_out_seeds": [int(s) for s in held_out],
        "steps": steps,
        "batch_size": batch_size,
        "epochs_equivalent": steps * batch_size / n_train,
        "learning_rate": learning_rate,
        "torch_seed": seed,
        "train_wall_time_s": round(train_seconds, 1),
        "total_wall_time_s": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
        "monai_version": monai.__version__,
        "numpy_version": np.__version__,
        "model_sha256": file_sha256(model_path),
        "state_dict_sha256": state_dict_sha256(torch.jit.load(str(model_path), map_location="cpu")),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        # The weights depend on the CPU kernels used (oneDNN picks them by instruction set).
        "cpu_kernels": cpu_kernel_record(),
        "calibration": calibration,
        "held_out": metrics,
    }
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: train, save, and print the held-out summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models", help="output directory")
    parser.add_argument("--n-train", type=int, default=120, help="number of training phantoms")
    parser.add_argument("--steps", type=int, default=4000, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    # Kernels of one instruction set on every CPU, so that the weights do not depend on the machine.
    if (status := rerun_with_pinned_cpu_kernels("hounsfield_operators.ct_lesion_seg.train", arguments)) is not None:
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
    )
    held_out = report["held_out"]
    print(
        f"held-out mean Dice (lesion cases, n={held_out['n_lesion_cases']}): {held_out['mean_dice_lesion_cases']:.4f}; "
        f"global Dice {held_out['global_dice']:.4f}; false-positive voxels on "
        f"{held_out['n_lesion_free_cases']} lesion-free cases: {held_out['false_positive_voxels_lesion_free_cases']}; "
        f"training {report['train_wall_time_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
