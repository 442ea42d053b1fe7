"""Split a binary lesion mask into lesions and measure each one (framework-free).

Definitions (shared with the synthetic phantom ground truth in
``hounsfield_operators.ct_lesion_seg.phantom``):

* A lesion is a 3D connected component of the mask with full (26-) connectivity.
  Components smaller than :data:`MIN_LESION_VOLUME_ML` are dropped as noise.
* Volume is voxel count times voxel volume, in millilitres.
* Longest axial diameter is, over all axial slices, the largest distance between the
  centres of two boundary pixels of the lesion in that slice, plus one mean in-plane
  pixel spacing, i.e. the extent edge to edge (a single pixel measures one pixel).
* Mean attenuation is the mean HU over the lesion's voxels.

Lesions are numbered 1..N by decreasing volume (ties by raster order of first voxel),
so "Lesion 1" is the largest one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

__all__ = [
    "MIN_LESION_VOLUME_ML",
    "LesionMeasurement",
    "LesionSegmentation",
    "longest_axial_diameter_mm",
    "measure_lesions",
]

logger = logging.getLogger(__name__)

#: Components below this volume (mL) are treated as noise and dropped (0.1 mL = 100 mm^3, a few voxels at
#: typical CT resolution; below what a reader would report).
MIN_LESION_VOLUME_ML = 0.1

#: Above this many boundary points per slice, distances are taken between convex-hull vertices only.
_HULL_THRESHOLD = 256

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class LesionMeasurement:
    """Measurements of one lesion.

    Attributes
    ----------
    index : int
        Lesion number (1..N), also its value in :attr:`LesionSegmentation.labels`.
    voxel_count : int
        Number of voxels.
    volume_ml : float
        Volume in millilitres.
    longest_axial_diameter_mm : float
        Longest in-plane extent over all axial slices, in mm (see module docstring).
    longest_axial_diameter_slice : int
        Index (z) of the slice where the longest axial diameter was measured.
    mean_hu : float
        Mean attenuation in Hounsfield units.
    centroid_zyx_vox : tuple of float
        Centroid in voxel indices ``(z, y, x)``.
    centroid_zyx_mm : tuple of float
        Centroid in mm from the centre of voxel ``(0, 0, 0)`` along the array axes.
    """

    index: int
    voxel_count: int
    volume_ml: float
    longest_axial_diameter_mm: float
    longest_axial_diameter_slice: int
    mean_hu: float
    centroid_zyx_vox: tuple[float, float, float]
    centroid_zyx_mm: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class LesionSegmentation:
    """Lesions found in a mask.

    Attributes
    ----------
    labels : numpy.ndarray
        ``uint16`` array ``(z, y, x)``: 0 background (and dropped components), ``k`` lesion ``k``.
    lesions : tuple of LesionMeasurement
        One entry per lesion, ordered by index.
    spacing_zyx_mm : tuple of float
        Voxel spacing ``(z, y, x)`` in mm.
    """

    labels: np.ndarray
    lesions: tuple[LesionMeasurement, ...]
    spacing_zyx_mm: tuple[float, float, float]

    def mask(self, index: int) -> np.ndarray:
        """Boolean ``(z, y, x)`` mask of lesion ``index``."""
        return self.labels == index


def _slice_extent_mm(plane: np.ndarray, spacing_yx_mm: tuple[float, float]) -> float:
    """Largest centre-to-centre distance between boundary pixels of a 2D mask, in mm."""
    interior = ndimage.binary_erosion(plane, border_value=0)
    rows, cols = np.nonzero(plane & ~interior)
    if rows.size < 2:
        return 0.0
    points = np.column_stack([rows * spacing_yx_mm[0], cols * spacing_yx_mm[1]]).astype(np.float64)
    if len(points) > _HULL_THRESHOLD:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:
            logger.debug("Degenerate boundary (%d collinear points); using all points.", len(points))
    return float(pdist(points).max())


def longest_axial_diameter_mm(mask_zyx: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> tuple[float, int]:
    """Longest axial diameter of a binary mask.

    Parameters
    ----------
    mask_zyx : numpy.ndarray
        Boolean ``(z, y, x)`` mask of one lesion.
    spacing_zyx_mm : tuple of float
        Voxel spacing ``(z, y, x)`` in mm.

    Returns
    -------
    tuple of (float, int)
        The diameter in mm (centre-to-centre distance plus one mean in-plane pixel spacing;
        0.0 for an empty mask) and the slice index where it was found (-1 when empty).
    """
    mask = np.asarray(mask_zyx, dtype=bool)
    spacing_yx = (float(spacing_zyx_mm[1]), float(spacing_zyx_mm[2]))
    best, best_slice = -1.0, -1
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        extent = _slice_extent_mm(mask[z], spacing_yx)
        if extent > best:
            best, best_slice = extent, int(z)
    if best_slice < 0:
        return 0.0, -1
    return best + 0.5 * (spacing_yx[0] + spacing_yx[1]), best_slice


def measure_lesions(
    mask_zyx: np.ndarray,
    hu_zyx: np.ndarray,
    spacing_zyx_mm: tuple[float, float, float],
    *,
    min_volume_ml: float = MIN_LESION_VOLUME_ML,
) -> LesionSegmentation:
    """Split a lesion mask into 3D connected components and measure them.

    Parameters
    ----------
    mask_zyx : numpy.ndarray
        ``(z, y, x)`` mask; any non-zero voxel is lesion.
    hu_zyx : numpy.ndarray
        ``(z, y, x)`` volume in Hounsfield units, same shape as the mask.
    spacing_zyx_mm : tuple of float
        Voxel spacing ``(z, y, x)`` in mm, all positive.
    min_volume_ml : float
        Components smaller than this (mL) are dropped.

    Returns
    -------
    LesionSegmentation

    Raises
    ------
    ValueError
        When shapes differ, the arrays are not 3D, or a spacing is not positive.
    """
    mask = np.asarray(mask_zyx) != 0
    hu = np.asarray(hu_zyx)
    if mask.ndim != 3 or mask.shape != hu.shape:
        raise ValueError(f"Mask {mask.shape} and HU volume {hu.shape} must be 3D arrays of the same shape.")
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"Spacing must be three positive numbers, got {spacing_zyx_mm!r}.")
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0

    components, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    if count == 0:
        return LesionSegmentation(np.zeros(mask.shape, np.uint16), (), spacing)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    kept = [c for c in range(1, count + 1) if sizes[c] * voxel_ml >= min_volume_ml]
    dropped = count - len(kept)
    if dropped:
        logger.info("Dropped %d component(s) below %.3g mL.", dropped, min_volume_ml)
    kept.sort(key=lambda c: (-int(sizes[c]), c))

    labels = np.zeros(mask.shape, dtype=np.uint16)
    lesions = []
    for index, component in enumerate(kept, start=1):
        lesion = components == component
        labels[lesion] = index
        diameter, diameter_slice = longest_axial_diameter_mm(lesion, spacing)
        centroid = tuple(float(c) for c in np.argwhere(lesion).mean(axis=0))
        lesions.append(
            LesionMeasurement(
                index=index,
                voxel_count=int(sizes[component]),
                volume_ml=float(sizes[component] * voxel_ml),
                longest_axial_diameter_mm=diameter,
                longest_axial_diameter_slice=diameter_slice,
                mean_hu=float(hu[lesion].astype(np.float64).mean()),
                centroid_zyx_vox=centroid,  # type: ignore[arg-type]
                centroid_zyx_mm=tuple(c * s for c, s in zip(centroid, spacing, strict=True)),  # type: ignore[arg-type]
            )
        )
    return LesionSegmentation(labels=labels, lesions=tuple(lesions), spacing_zyx_mm=spacing)  # type: ignore[arg-type]
