"""Synthetic abdominal CT phantoms with known lesions, and a DICOM series writer.

Every phantom is derived solely from ``numpy.random.default_rng(seed)``: the same seed
(and the same keyword arguments) always gives a bitwise identical phantom.  The phantom
is an elliptical body of soft tissue with a subcutaneous fat layer in air, a liver-like
organ, a vertebra, an aorta and 0-3 hypo- or hyperdense lesions inside the organ.

Array convention and the series writer: :mod:`hounsfield_operators.synthetic_ct`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hounsfield_operators import synthetic_ct
from hounsfield_operators.synthetic_ct import HU_MAX, HU_MIN, ellipsoid_mask, gaussian_filter_fft, hu_to_mr

__all__ = [
    "LesionTruth",
    "Phantom",
    "hu_to_mr",
    "longest_axial_diameter_mm",
    "make_phantom",
    "write_dicom_series",
]

logger = logging.getLogger(__name__)

_LESION_COUNT_PROBABILITIES = (0.1, 0.3, 0.3, 0.3)


@dataclass(frozen=True)
class LesionTruth:
    """Ground truth of one synthetic lesion.

    Attributes
    ----------
    index : int
        Label value of the lesion in :attr:`Phantom.lesion_labels` (1..n).
    center_zyx_mm : tuple of float
        Centre of the generating ellipsoid in mm, measured from the centre of voxel
        ``(0, 0, 0)`` along the array axes (z, y, x).
    radii_zyx_mm : tuple of float
        Semi-axes of the generating ellipsoid in mm (z, then the two in-plane axes before
        the in-plane rotation is applied).
    mean_hu : float
        Mean HU of the lesion voxels in the generated (noisy) image.
    volume_ml : float
        Voxel count times voxel volume, in millilitres.
    longest_axial_diameter_mm : float
        Longest in-plane extent of the label mask, see :func:`longest_axial_diameter_mm`.
    """

    index: int
    center_zyx_mm: tuple[float, float, float]
    radii_zyx_mm: tuple[float, float, float]
    mean_hu: float
    volume_ml: float
    longest_axial_diameter_mm: float


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic CT volume with its lesion ground truth.

    Attributes
    ----------
    hu : numpy.ndarray
        ``int16`` array ``(z, y, x)`` of Hounsfield units.
    lesion_labels : numpy.ndarray
        ``uint8`` array ``(z, y, x)``; 0 is background, ``k`` is lesion ``k``.
    spacing_zyx_mm : tuple of float
        Slice spacing (= thickness) in z, then row (y) and column (x) pixel spacing, in mm.
    lesions : tuple of LesionTruth
        One entry per lesion, ordered by index.
    """

    hu: np.ndarray
    lesion_labels: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    lesions: tuple[LesionTruth, ...]

    @property
    def lesion_mask(self) -> np.ndarray:
        """numpy.ndarray: Boolean ``(z, y, x)`` mask of all lesion voxels."""
        return self.lesion_labels > 0


def longest_axial_diameter_mm(mask_zyx: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> float:
    """Longest in-plane extent of a binary mask.

    Parameters
    ----------
    mask_zyx : numpy.ndarray
        Boolean ``(z, y, x)`` mask.
    spacing_zyx_mm : tuple of float
        Voxel spacing ``(z, y, x)`` in mm.

    Returns
    -------
    float
        Over all axial slices, the largest Euclidean distance in mm between the centres of
        two mask voxels of the same slice, plus one mean in-plane pixel spacing (so that a
        single voxel measures one pixel, edge to edge).  0.0 for an empty mask.
    """
    mask = np.asarray(mask_zyx, dtype=bool)
    if not mask.any():
        return 0.0
    _, sy, sx = spacing_zyx_mm
    longest = 0.0
    for axial in mask[mask.any(axis=(1, 2))]:
        interior = axial.copy()
        interior[1:, :] &= axial[:-1, :]
        interior[:-1, :] &= axial[1:, :]
        interior[:, 1:] &= axial[:, :-1]
        interior[:, :-1] &= axial[:, 1:]
        rows, cols = np.nonzero(axial & ~interior)
        points = np.stack([rows * sy, cols * sx], axis=1)
        distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1))
        longest = max(longest, float(distances.max()))
    return longest + 0.5 * (sy + sx)


def make_phantom(
    seed: int,
    *,
    shape_zyx: tuple[int, int, int] = (48, 128, 128),
    n_lesions: int | None = None,
    spacing_zyx_mm: tuple[float, float, float] | None = None,
) -> Phantom:
    """Generate a synthetic abdominal CT phantom.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``; everything is derived from it.
    shape_zyx : tuple of int
        Volume shape ``(z, y, x)``.
    n_lesions : int or None
        Number of lesions to place (0-3 recommended).  ``None`` draws 0, 1, 2 or 3 with
        probabilities 0.1, 0.3, 0.3, 0.3.  Fewer are placed if the organ has no room.
    spacing_zyx_mm : tuple of float or None
        Voxel spacing in mm.  ``None`` draws z in [1.5, 3] mm and an isotropic in-plane
        spacing in [1.5, 3.0] mm (rounded to 0.01 mm); the anatomy scales with the
        field of view.

    Returns
    -------
    Phantom
        The generated phantom.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    if spacing_zyx_mm is None:
        pixel = round(float(rng.uniform(1.5, 3.0)), 2)
        spacing = (round(float(rng.uniform(1.5, 3.0)), 2), pixel, pixel)
    else:
        spacing = (float(spacing_zyx_mm[0]), float(spacing_zyx_mm[1]), float(spacing_zyx_mm[2]))
    if n_lesions is None:
        n_lesions = int(rng.choice(len(_LESION_COUNT_PROBABILITIES), p=_LESION_COUNT_PROBABILITIES))

    sz, sy, sx = spacing
    fov = np.array([nz * sz, ny * sy, nx * sx])
    gz = (np.arange(nz) * sz)[:, None, None]
    gy = (np.arange(ny) * sy)[None, :, None]
    gx = (np.arange(nx) * sx)[None, None, :]
    grid = (gz, gy, gx)
    center = (fov - np.array([sz, sy, sx])) / 2.0

    # Body: elliptic cylinder with a subcutaneous fat layer.
    body_y = fov[1] * rng.uniform(0.30, 0.38)
    body_x = fov[2] * rng.uniform(0.40, 0.46)
    fat = min(body_y, body_x) * rng.uniform(0.06, 0.12)
    inner_y, inner_x = body_y - fat, body_x - fat
    ry = (gy - center[1]) / body_y
    rx = (gx - center[2]) / body_x
    body = np.broadcast_to(ry**2 + rx**2 <= 1.0, shape_zyx)
    inner = np.broadcast_to(((gy - center[1]) / inner_y) ** 2 + ((gx - center[2]) / inner_x) ** 2 <= 1.0, shape_zyx)

    clean = np.full(shape_zyx, -1000.0)
    clean[body] = rng.uniform(-115.0, -90.0)
    clean[inner] = rng.uniform(35.0, 45.0)

    # Vertebra (cortical ring, cancellous core) and aorta: bright structures outside the organ.
    spine_c = np.array([center[1] + 0.62 * inner_y, center[2]])
    spine_r = 0.14 * inner_y
    spine_d2 = (gy - spine_c[0]) ** 2 + (gx - spine_c[1]) ** 2
    clean[np.broadcast_to(spine_d2 <= spine_r**2, shape_zyx)] = rng.uniform(600.0, 900.0)
    clean[np.broadcast_to(spine_d2 <= (0.7 * spine_r) ** 2, shape_zyx)] = rng.uniform(180.0, 300.0)
    aorta_c = np.array([spine_c[0] - 1.6 * spine_r, center[2] + 0.9 * spine_r])
    aorta_d2 = (gy - aorta_c[0]) ** 2 + (gx - aorta_c[1]) ** 2
    clean[np.broadcast_to(aorta_d2 <= (0.55 * spine_r) ** 2, shape_zyx)] = rng.uniform(40.0, 200.0)

    # Liver-like organ on the patient's right (image left).
    organ_center = np.array(
        [
            center[0] + rng.uniform(-0.08, 0.08) * fov[0],
            center[1] - rng.uniform(0.05, 0.15) * inner_y,
            center[2] - rng.uniform(0.38, 0.45) * inner_x,
        ]
    )
    organ_radii = np.array(
        [
            rng.uniform(0.32, 0.42) * fov[0],
            rng.uniform(0.50, 0.62) * inner_y,
            rng.uniform(0.42, 0.50) * inner_x,
        ]
    )
    organ_hu = rng.uniform(55.0, 70.0)
    organ = ellipsoid_mask(grid, organ_center, organ_radii) & inner
    clean[organ] = organ_hu

    # Lesions inside the organ, not touching each other.
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    placed: list[tuple[np.ndarray, np.ndarray, float]] = []
    # At least four pixels in-plane: smaller lesions are below what this phantom's noise allows.
    min_radius = max(6.0, 4.0 * spacing[1])
    max_radius = max(min_radius, min(20.0, 0.45 * float(organ_radii.min())))
    for _ in range(n_lesions):
        for _attempt in range(100):
            base = rng.uniform(min_radius, max_radius)
            radii = base * rng.uniform(0.8, 1.2, size=3)
            angle = rng.uniform(0.0, np.pi)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            offset = direction * rng.uniform(0.0, 1.0) ** (1.0 / 3.0)
            lesion_center = organ_center + offset * np.maximum(organ_radii - radii.max(), 0.0)
            if any(np.linalg.norm(lesion_center - c) < radii.max() + r.max() + 3.0 for c, r, _ in placed):
                continue
            lesion = ellipsoid_mask(grid, lesion_center, radii, angle)
            if lesion.sum() < 8 or (lesion & ~organ).any():
                continue
            lesion_hu = rng.uniform(-10.0, 15.0) if rng.uniform() < 0.6 else rng.uniform(115.0, 165.0)
            clean[lesion] = lesion_hu
            labels[lesion] = len(placed) + 1
            placed.append((lesion_center, radii, angle))
            break
        else:
            logger.debug("seed %d: no room for lesion %d, placing %d", seed, len(placed) + 1, len(placed))
            break

    # Partial volume, smooth intensity inhomogeneity inside the body, correlated noise.
    image = gaussian_filter_fft(clean, (0.3, 0.6, 0.6))
    bias_amplitude = rng.uniform(0.0, 10.0)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=2)
    bias = (
        bias_amplitude
        * np.cos(np.pi * (gy - center[1]) / fov[1] + phase[0])
        * np.cos(np.pi * (gx - center[2]) / fov[2] + phase[1])
    )
    image += np.where(body, bias, 0.0)
    noise_sigma = rng.uniform(10.0, 20.0)
    corr = rng.uniform(0.5, 1.0)
    noise = gaussian_filter_fft(rng.normal(size=shape_zyx), (0.3, corr, corr))
    image += noise * (noise_sigma / noise.std())
    hu = np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)

    truths = []
    for index, (lesion_center, radii, _angle) in enumerate(placed, start=1):
        lesion = labels == index
        truths.append(
            LesionTruth(
                index=index,
                center_zyx_mm=(float(lesion_center[0]), float(lesion_center[1]), float(lesion_center[2])),
                radii_zyx_mm=(float(radii[0]), float(radii[1]), float(radii[2])),
                mean_hu=float(hu[lesion].mean()),
                volume_ml=float(lesion.sum() * sz * sy * sx / 1000.0),
                longest_axial_diameter_mm=longest_axial_diameter_mm(lesion, spacing),
            )
        )
    return Phantom(hu=hu, lesion_labels=labels, spacing_zyx_mm=spacing, lesions=tuple(truths))


def write_dicom_series(phantom: Phantom, out_dir: Path, **kwargs: Any) -> list[Path]:
    """Write an abdominal phantom as a CT (or MR) series: :func:`hounsfield_operators.synthetic_ct.write_dicom_series`.

    ``series_description`` defaults to "Phantom abdomen" and ``body_part_examined`` to "ABDOMEN";
    every other keyword argument is passed on.
    """
    kwargs.setdefault("series_description", "Phantom abdomen")
    kwargs.setdefault("body_part_examined", "ABDOMEN")
    return synthetic_ct.write_dicom_series(phantom, out_dir, **kwargs)
