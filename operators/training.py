"""What the example models' seeded training scripts share: digests of weights and files, deterministic runs,
and CPU kernels pinned to one instruction set so that another CPU trains the same weights."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

__all__ = [
    "PINNED_CPU_KERNELS",
    "cpu_kernel_record",
    "cpu_kernels_pinned",
    "deterministic_algorithms",
    "file_sha256",
    "rerun_with_pinned_cpu_kernels",
    "state_dict_sha256",
]

PINNED_CPU_KERNELS: Mapping[str, str] = {
    # oneDNN (convolutions, batch norm) picks its kernels by instruction set, and AVX-512 and AVX2
    # kernels round differently: over thousands of steps the weights diverge. AVX2 is on every x86-64
    # server CPU made since about 2013; the variable is a ceiling, so an older CPU still runs.
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # ATen's vectorised operators (reductions in the loss, activations, the optimiser's updates).
    "ATEN_CPU_CAPABILITY": "avx2",
    # MKL's conditional numerical reproducibility, for any BLAS call.
    "MKL_CBWR": "AVX2",
}
"""Environment read once, when torch first runs a kernel; :func:`rerun_with_pinned_cpu_kernels` sets it."""


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state: every tensor's name, dtype, shape and bytes, in name order.

    Equal for a trained module and for the TorchScript module saved from it, so it compares trained
    weights independently of how the file was serialised.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{values.dtype}:{tuple(values.shape)};".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Run with ``torch.use_deterministic_algorithms(True)``, restoring the previous setting after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def cpu_kernels_pinned(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default: this process's) holds every :data:`PINNED_CPU_KERNELS` value."""
    environ = os.environ if environ is None else environ
    return all(environ.get(name) == value for name, value in PINNED_CPU_KERNELS.items())


def rerun_with_pinned_cpu_kernels(module: str, argv: Sequence[str]) -> int | None:
    """Run ``python -m module argv`` again with :data:`PINNED_CPU_KERNELS` unless this process has them.

    The kernels are chosen when torch first runs one, from the environment the process started
    with, so a training script cannot pin them for itself: it calls this first thing in ``main``.

    Returns
    -------
    int or None
        The rerun's exit status, or None when this process is already pinned (train here).
    """
    if cpu_kernels_pinned():
        return None
    command = [sys.executable, "-m", module, *argv]
    return subprocess.run(command, env={**os.environ, **PINNED_CPU_KERNELS}, check=False).returncode


def cpu_kernel_record() -> dict[str, object]:
    """What a training report records about the CPU kernels its weights came from."""
    return {
        "pinned": cpu_kernels_pinned(),
        "environment": {name: os.environ.get(name) for name in PINNED_CPU_KERNELS},
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
