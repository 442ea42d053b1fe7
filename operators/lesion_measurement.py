"""Split a binary lesion mask into lesions and measure each one (framework-free).

Definitions (shared with the synthetic phantom ground truth in
``hounsfield_operators.ct_lesion_seg.phantom``):

* A lesion is a 3D connected component of the mask with full (26-) connectivity.
  Components smaller than :data:`MIN_LESION_VOLUME_ML` are dropped as noise.
* Volume is voxel count times voxel volume, in millilitres.
* Longest axial diameter is, over all axial slices, the largest distance between the
  centres of two boundary pixels of the lesion in that slice, plus one mean in-plane
  pixel spacing, i.e. the extent edge to edge (a single pixel measures one pixel). Its
  end points (:attr:`LesionMeasurement.long_axis_rc`) are those two pixel centres, each
  moved a quarter of the summed pixel spacings outwards along the line, so that the line
  drawn between them is as long as the reported diameter.
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
from scipy.spatial.distance import pdist, squareform

__all__ = [
    "MIN_LESION_VOLUME_ML",
    "LesionMeasurement",
    "LesionSegmentation",
    "LongAxis",
    "long_axis",
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
    long_axis_rc : tuple of two (row, column) tuples
        End points of that diameter on that slice, in pixel indices (a pixel's centre is its
        integer index), drawn edge to edge (see module docstring).
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
    long_axis_rc: tuple[tuple[float, float], tuple[float, float]]
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


@dataclass(frozen=True)
class LongAxis:
    """The longest axial diameter of a lesion and where it lies.

    Attributes
    ----------
    length_mm : float
        Edge-to-edge length in mm (see module docstring).
    slice_index : int
        Index (z) of the slice it lies on.
    start_rc, end_rc : tuple of float
        End points ``(row, column)`` in pixel indices, edge to edge.
    """

    length_mm: float
    slice_index: int
    start_rc: tuple[float, float]
    end_rc: tuple[float, float]


def _slice_chord(plane: np.ndarray, spacing_yx_mm: tuple[float, float]) -> tuple[float, np.ndarray, np.ndarray]:
    """Longest centre-to-centre distance between boundary pixels of a 2D mask (mm), and its two pixels."""
    interior = ndimage.binary_erosion(plane, border_value=0)
    pixels = np.argwhere(plane & ~interior).astype(np.float64)
    if len(pixels) < 2:
        return 0.0, pixels[0] if len(pixels) else np.zeros(2), pixels[0] if len(pixels) else np.zeros(2)
    points = pixels * np.asarray(spacing_yx_mm, dtype=np.float64)
    if len(points) > _HULL_THRESHOLD:
        try:
            hull = ConvexHull(points).vertices
            pixels, points = pixels[hull], points[hull]
        except QhullError:
            # Collinear: the two ends are the point farthest from any point, and the one farthest from it.
            logger.debug("Degenerate boundary (%d collinear points).", len(points))
            end = int(np.argmax(np.linalg.norm(points - points[0], axis=1)))
            distances_from_end = np.linalg.norm(points - points[end], axis=1)
            other = int(np.argmax(distances_from_end))
            return float(distances_from_end[other]), pixels[end], pixels[other]
    distances = squareform(pdist(points))
    first, second = (int(i) for i in np.unravel_index(int(np.argmax(distances)), distances.shape))
    return float(distances[first, second]), pixels[first], pixels[second]


def long_axis(mask_zyx: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> LongAxis | None:
    """The longest axial diameter of a binary mask, with its slice and end points.

    Parameters
    ----------
    mask_zyx : numpy.ndarray
        Boolean ``(z, y, x)`` mask of one lesion.
    spacing_zyx_mm : tuple of float
        Voxel spacing ``(z, y, x)`` in mm.

    Returns
    -------
    LongAxis or None
        None for an empty mask. The first slice wins a tie.
    """
    mask = np.asarray(mask_zyx, dtype=bool)
    spacing_yx = (float(spacing_zyx_mm[1]), float(spacing_zyx_mm[2]))
    best: tuple[float, int, np.ndarray, np.ndarray] | None = None
    for index in np.flatnonzero(mask.any(axis=(1, 2))):
        extent, start, end = _slice_chord(mask[index], spacing_yx)
        if best is None or extent > best[0]:
            best = (extent, int(index), start, end)
    if best is None:
        return None
    extent, z, start, end = best
    margin_mm = 0.25 * (spacing_yx[0] + spacing_yx[1])
    direction_mm = (end - start) * spacing_yx
    # margin_mm along the line, in pixels; a lone pixel is drawn along its row
    step = direction_mm / extent * margin_mm / spacing_yx if extent > 0 else np.array([0.0, margin_mm / spacing_yx[1]])
    start, end = start - step, end + step
    return LongAxis(
        length_mm=extent + 2 * margin_mm,
        slice_index=z,
        start_rc=(float(start[0]), float(start[1])),
        end_rc=(float(end[0]), float(end[1])),
    )


def longest_axial_diameter_mm(mask_zyx: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> tuple[float, int]:
    """:func:`long_axis`'s length (mm) and slice index; ``(0.0, -1)`` for an empty mask."""
    axis = long_axis(mask_zyx, spacing_zyx_mm)
    return (0.0, -1) if axis is None else (axis.length_mm, axis.slice_index)


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
        axis = long_axis(lesion, spacing)
        assert axis is not None  # a kept component has voxels
        centroid = tuple(float(c) for c in np.argwhere(lesion).mean(axis=0))
        lesions.append(
            LesionMeasurement(
                index=index,
                voxel_count=int(sizes[component]),
                volume_ml=float(sizes[component] * voxel_ml),
                longest_axial_diameter_mm=axis.length_mm,
                longest_axial_diameter_slice=axis.slice_index,
                long_axis_rc=(axis.start_rc, axis.end_rc),
                mean_hu=float(hu[lesion].astype(np.float64).mean()),
                centroid_zyx_vox=centroid,  # type: ignore[arg-type]
                centroid_zyx_mm=tuple(c * s for c, s in zip(centroid, spacing, strict=True)),  # type: ignore[arg-type]
            )
        )
    return LesionSegmentation(labels=labels, lesions=tuple(lesions), spacing_zyx_mm=spacing)  # type: ignore[arg-type]
