"""Pre- and post-processing shared by training, evaluation and the MONAI Deploy application.

Axis order: the App SDK's ``DICOMSeriesToVolumeOperator`` stacks slices into a ``(z, y, x)``
array, and the SDK's ``InMemImageReader`` transposes it, so after ``EnsureChannelFirstd`` the
network sees ``(1, x, y, z)``.  Training and evaluation use the same order through
:func:`network_input_from_zyx`.  There is no resampling: the model is trained on phantoms of
varied spacing and runs at the native voxel grid.
"""

from __future__ import annotations

import numpy as np
from monai.data import ImageReader
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    ScaleIntensityRanged,
)

__all__ = [
    "HU_WINDOW",
    "NUM_CLASSES",
    "OVERLAP",
    "ROI_SIZE",
    "SW_BATCH_SIZE",
    "inference_post_transforms",
    "inference_pre_transforms",
    "network_input_from_zyx",
]

HU_WINDOW: tuple[float, float] = (-150.0, 250.0)
"""Intensity window in HU, clipped and scaled linearly to [0, 1]."""

ROI_SIZE: tuple[int, int, int] = (64, 64, 32)
"""Sliding-window (and training patch) size in ``(x, y, z)`` voxels."""

SW_BATCH_SIZE: int = 4
"""Number of sliding windows evaluated per network call."""

OVERLAP: float = 0.25
"""Fractional overlap of neighbouring sliding windows."""

NUM_CLASSES: int = 2
"""Network output channels: 0 background, 1 lesion."""


def network_input_from_zyx(hu_zyx: np.ndarray) -> np.ndarray:
    """Convert a ``(z, y, x)`` HU volume to the network input layout.

    Equivalent to :func:`inference_pre_transforms` applied to an App SDK ``Image`` holding
    ``hu_zyx``.

    Parameters
    ----------
    hu_zyx : numpy.ndarray
        Volume in Hounsfield units, ``(z, y, x)``.

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``(1, x, y, z)`` with HU clipped to :data:`HU_WINDOW` and scaled
        to [0, 1].
    """
    lo, hi = HU_WINDOW
    scaled = (np.asarray(hu_zyx, dtype=np.float32).T - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(scaled, 0.0, 1.0)[None].astype(np.float32)


def inference_pre_transforms(reader: ImageReader, key: str = "image") -> Compose:
    """Pre-transforms for ``MonaiSegInferenceOperator``.

    Parameters
    ----------
    reader : monai.data.ImageReader
        The reader that loads the in-memory image, i.e. the SDK's ``InMemImageReader``.
    key : str
        Dictionary key of the image (the operator uses ``"image"``).

    Returns
    -------
    monai.transforms.Compose
        Load, channel-first, HU window to [0, 1], ensure tensor type.
    """
    lo, hi = HU_WINDOW
    return Compose(
        [
            LoadImaged(keys=key, reader=reader),  # type: ignore[arg-type]  # MONAI also takes reader instances
            EnsureChannelFirstd(keys=key),
            ScaleIntensityRanged(keys=key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
            EnsureTyped(keys=key),
        ]
    )


def inference_post_transforms(key: str = "pred") -> Compose:
    """Post-transforms for ``MonaiSegInferenceOperator``.

    Parameters
    ----------
    key : str
        Dictionary key of the prediction (the operator uses ``"pred"``).

    Returns
    -------
    monai.transforms.Compose
        Softmax then argmax with the channel kept, giving a ``(1, x, y, z)`` label map
        (0 background, 1 lesion), which the operator squeezes and transposes back to
        ``(z, y, x)``.
    """
    return Compose(
        [
            Activationsd(keys=key, softmax=True),
            AsDiscreted(keys=key, argmax=True),
        ]
    )
