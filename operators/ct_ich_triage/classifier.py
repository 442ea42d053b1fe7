"""The haemorrhage classifier: network, input preparation and the deployed (TorchScript) form.

Shared by training (:mod:`hounsfield_operators.ct_ich_triage.train`) and the application
(:mod:`hounsfield_operators.ct_ich_triage.app`), so both prepare a volume the same way.

Axis order: the App SDK's ``DICOMSeriesToVolumeOperator`` gives a ``(z, y, x)`` array; the network
takes ``(N, 1, x, y, z)`` as the lesion model does (:func:`network_input_from_zyx`). There is no
resampling: the model is trained on phantoms of varied spacing and runs at the native grid. The
network ends in a global max pool, so any volume of at least 8 voxels along each axis is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

__all__ = [
    "BONE_HU",
    "CHANNELS",
    "HU_WINDOW",
    "HaemorrhageNet",
    "TriageClassifier",
    "network_input_from_zyx",
    "volume_logit",
]

HU_WINDOW: tuple[float, float] = (0.0, 100.0)
"""Intensity window in HU (CSF to fresh blood), clipped and scaled linearly to [0, 1]."""

BONE_HU: float = 120.0
"""Voxels above this, and their 26 neighbours, are bone or its partial volume: set to 0 (skull stripping)."""

CHANNELS: tuple[int, ...] = (8, 16, 32, 64)
"""Feature channels of the network's convolution stages."""


def network_input_from_zyx(hu_zyx: np.ndarray) -> np.ndarray:
    """Convert a ``(z, y, x)`` HU volume to the network's input layout.

    Skull stripping first: bone (above :data:`BONE_HU`) and every voxel touching it become 0, so that
    neither the skull's partial volume nor calcifications look like blood; then the brain window
    :data:`HU_WINDOW` is clipped and scaled to [0, 1].

    Parameters
    ----------
    hu_zyx : numpy.ndarray
        Volume in Hounsfield units, ``(z, y, x)``.

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``(1, x, y, z)`` in [0, 1].
    """
    hu = np.asarray(hu_zyx, dtype=np.float32).T
    bone = ndimage.binary_dilation(hu > BONE_HU, structure=np.ones((3, 3, 3), dtype=bool))
    lo, hi = HU_WINDOW
    scaled = np.clip((hu - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    scaled[bone] = 0.0
    return np.ascontiguousarray(scaled[None], dtype=np.float32)


class HaemorrhageNet(nn.Module):
    """A small 3D CNN that maps a volume to a coarse map of haemorrhage logits.

    Conv-BN-ReLU stages: the first strides 2 in-plane only (slices are thick, pixels are not), the
    next two stride 2 along every axis, the last keeps the size; a 1x1x1 convolution gives one logit
    per cell of 8 x 8 x 4 voxels. Training supervises the map with the phantoms' bleed masks and the
    volume's logit, the map's maximum (:func:`volume_logit`), with the label: a detector, where one
    bright focus anywhere decides the volume.

    Parameters
    ----------
    channels : sequence of int
        Output channels of each stage.
    """

    def __init__(self, channels: Sequence[int] = CHANNELS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for stage, width in enumerate(channels):
            stride = (2, 2, 1) if stage == 0 else (2 if stage < len(channels) - 1 else 1)
            conv = nn.Conv3d(previous, width, 3, stride=stride, padding=1, bias=False)
            layers += [conv, nn.BatchNorm3d(width), nn.ReLU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv3d(previous, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logit map ``(N, 1, x', y', z')`` of haemorrhage for inputs ``(N, 1, x, y, z)``."""
        return self.head(self.features(x))


def volume_logit(logit_map: torch.Tensor) -> torch.Tensor:
    """The volume's haemorrhage logit ``(N,)``: the largest of its map ``(N, 1, x', y', z')``."""
    return torch.amax(logit_map, dim=(1, 2, 3, 4))


class TriageClassifier(nn.Module):
    """The deployed model: the network's probability, with its operating threshold on board.

    ``forward`` returns the probability of haemorrhage ``(N,)``; the buffer
    ``operating_threshold`` (chosen on validation phantoms) is the probability at or above which
    the application reports haemorrhage present. Both survive ``torch.jit.script``, ``torch.jit.freeze``
    (with ``preserved_attrs=["operating_threshold"]``) and ``torch.jit.save``.
    """

    def __init__(self, network: nn.Module, threshold: float) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"The operating threshold must lie strictly between 0 and 1, got {threshold}.")
        self.network = network
        self.register_buffer("operating_threshold", torch.tensor(float(threshold), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities of haemorrhage ``(N,)`` for inputs ``(N, 1, x, y, z)``."""
        return torch.sigmoid(volume_logit(self.network(x)))
