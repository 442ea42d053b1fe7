"""What the example models' seeded training scripts share: digests of weights and files, deterministic runs."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["deterministic_algorithms", "file_sha256", "state_dict_sha256"]


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
