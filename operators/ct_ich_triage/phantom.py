"""Synthetic non-contrast head CT phantoms, with or without an intracranial haemorrhage.

Every phantom is derived solely from ``numpy.random.default_rng(seed)``: the same seed (and the
same keyword arguments) always gives a bitwise identical phantom. The head is an ellipsoid, shifted
and rotated in-plane, of layers: scalp (soft tissue), skull (cortical bone, 700-1500 HU), a thin
subarachnoid CSF layer, cortical grey matter (33-40 HU) around white matter (24-30 HU), two lateral
ventricles of CSF (0-10 HU) whose size varies, sometimes a slightly hyperdense falx and
calcifications (choroid plexus, pineal; 150-400 HU) that a classifier must not mistake for blood.

A bleed, when present, is acute blood (50-90 HU) of one of three kinds:

* ``intraparenchymal``: an irregular blob (two overlapping ellipsoids) in the white or grey matter,
  sometimes with a hypodense oedema rim;
* ``subdural``: a crescent between the inner table of the skull and the brain, over a sector of
  the convexity and a range of slices;
* ``intraventricular``: blood layering in the dependent (posterior) part of a lateral ventricle.

Array convention as :mod:`hounsfield_operators.synthetic_ct`: ``(z, y, x)``, rows anterior to
posterior, columns right to left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hounsfield_operators import synthetic_ct
from hounsfield_operators.synthetic_ct import HU_MAX, HU_MIN, ellipsoid_mask, gaussian_filter_fft

__all__ = [
    "BLEED_KINDS",
    "DEFAULT_SHAPE_ZYX",
    "BleedKind",
    "BleedTruth",
    "HeadPhantom",
    "make_head_phantom",
    "write_dicom_series",
]

BleedKind = Literal["intraparenchymal", "subdural", "intraventricular"]

BLEED_KINDS: tuple[BleedKind, ...] = ("intraparenchymal", "subdural", "intraventricular")
"""The kinds of bleed, in the order their probabilities are given."""

_BLEED_KIND_PROBABILITIES = (0.5, 0.35, 0.15)

DEFAULT_SHAPE_ZYX: tuple[int, int, int] = (32, 96, 96)
"""Volume shape ``(z, y, x)`` of the phantoms the model is trained and tested on."""

_BLEED_PROBABILITY = 0.5
_MIN_BLEED_VOXELS = 6
_Z_PAD = 4


@dataclass(frozen=True)
class BleedTruth:
    """Ground truth of a synthetic haemorrhage.

    Attributes
    ----------
    kind : {"intraparenchymal", "subdural", "intraventricular"}
        What bled where.
    volume_ml : float
        Voxel count times voxel volume, in millilitres.
    blood_hu : float
        HU of the blood before blur and noise.
    mean_hu : float
        Mean HU of the bleed voxels in the generated (noisy) image.
    """

    kind: BleedKind
    volume_ml: float
    blood_hu: float
    mean_hu: float


@dataclass(frozen=True, eq=False)
class HeadPhantom:
    """A synthetic head CT volume and its haemorrhage ground truth.

    Attributes
    ----------
    hu : numpy.ndarray
        ``int16`` array ``(z, y, x)`` of Hounsfield units.
    bleed_mask : numpy.ndarray
        Boolean ``(z, y, x)`` mask of the bleed (all false without one).
    spacing_zyx_mm : tuple of float
        Slice spacing (= thickness) in z, then row (y) and column (x) pixel spacing, in mm.
    bleed : BleedTruth or None
        The bleed, or ``None`` for a normal head.
    """

    hu: np.ndarray
    bleed_mask: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    bleed: BleedTruth | None

    @property
    def has_bleed(self) -> bool:
        """bool: Whether the phantom holds a haemorrhage (the classification label)."""
        return self.bleed is not None


@dataclass(frozen=True)
class _Head:
    """Head coordinates: broadcastable grids in mm along the head's own axes, and its shells."""

    dz: np.ndarray
    du: np.ndarray
    """Anterior-posterior, along the head's rotated axis (positive = posterior)."""
    dv: np.ndarray
    """Right-left, along the head's rotated axis."""
    radii: np.ndarray
    """Outer (scalp) semi-axes ``(z, u, v)`` in mm."""

    def inside(self, inset_mm: float | np.ndarray) -> np.ndarray:
        """Mask of the head's ellipsoid shrunk along each semi-axis by ``inset_mm`` (number or broadcastable array)."""
        rz, ru, rv = (float(r) - inset_mm for r in self.radii)
        return (self.dz / rz) ** 2 + (self.du / ru) ** 2 + (self.dv / rv) ** 2 <= 1.0

    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The coordinates as a grid for :func:`hounsfield_operators.synthetic_ct.ellipsoid_mask`."""
        return (self.dz, self.du, self.dv)


def _head_coordinates(
    rng: np.random.Generator, shape_zyx: tuple[int, int, int], spacing: tuple[float, float, float]
) -> _Head:
    nz, ny, nx = shape_zyx
    sz, sy, sx = spacing
    fov = np.array([nz * sz, ny * sy, nx * sx])
    centre = (fov - np.array([sz, sy, sx])) / 2.0
    radii = np.array(
        [
            fov[0] * rng.uniform(0.55, 0.75),
            min(fov[1] * rng.uniform(0.40, 0.45), 100.0),
            min(fov[2] * rng.uniform(0.33, 0.38), 82.0),
        ]
    )
    # The head sits in the field of view with a shift, a slight roll, and its widest slice at or
    # below the middle of the slab (the slab ends towards the vertex).
    offset = np.array(
        [
            -rng.uniform(0.0, 0.25) * fov[0],
            rng.uniform(-0.04, 0.04) * fov[1],
            rng.uniform(-0.04, 0.04) * fov[2],
        ]
    )
    angle = rng.uniform(-0.25, 0.25)
    dz = (np.arange(nz) * sz)[:, None, None] - (centre[0] + offset[0])
    dy = (np.arange(ny) * sy)[None, :, None] - (centre[1] + offset[1])
    dx = (np.arange(nx) * sx)[None, None, :] - (centre[2] + offset[2])
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    return _Head(dz=dz, du=cos_a * dy + sin_a * dx, dv=-sin_a * dy + cos_a * dx, radii=radii)


def _intraparenchymal(
    rng: np.random.Generator, head: _Head, white: np.ndarray, brain: np.ndarray, ventricles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular blob of blood inside the brain, and a ring of oedema around it (maybe empty)."""
    grid = head.grid()
    candidates = np.argwhere(white & ~ventricles)
    for _attempt in range(50):
        base = rng.uniform(5.0, 16.0)
        point = tuple(candidates[rng.integers(len(candidates))])
        centre = np.array([float(np.broadcast_to(g, white.shape)[point]) for g in grid])
        radii = base * rng.uniform(0.7, 1.3, size=3)
        blob = ellipsoid_mask(grid, centre, radii, rng.uniform(0.0, np.pi))
        lobe_centre = centre + rng.normal(size=3) * base * 0.5
        blob |= ellipsoid_mask(grid, lobe_centre, radii * rng.uniform(0.5, 0.8), rng.uniform(0.0, np.pi))
        blob &= brain & ~ventricles
        if blob.sum() < _MIN_BLEED_VOXELS:
            continue
        oedema = np.zeros_like(blob)
        if rng.uniform() < 0.5:
            rim = rng.uniform(2.0, 6.0)
            oedema = ellipsoid_mask(grid, centre, radii + rim, 0.0) & brain & ~ventricles & ~blob
        return blob, oedema
    raise RuntimeError("no room for an intraparenchymal bleed")  # pragma: no cover - the brain is never that small


def _subdural(rng: np.random.Generator, head: _Head, inner_table_inset: float) -> np.ndarray:
    """A crescent under the inner table over a sector of the convexity and a range of slices.

    Thickest (8-18 mm) over the middle of its sector and slices, tapering to nothing at their ends.
    """
    thickness = rng.uniform(8.0, 18.0)
    sector_centre = rng.uniform(-np.pi, np.pi)
    half_width = rng.uniform(0.4, 1.1)
    z_centre = rng.uniform(-0.4, 0.3) * float(head.radii[0])
    z_half = rng.uniform(0.3, 0.6) * float(head.radii[0])
    bearing = np.arctan2(head.dv, head.du)
    angular = np.angle(np.exp(1j * (bearing - sector_centre))) / half_width
    axial = (head.dz - z_centre) / z_half
    taper = np.cos(0.5 * np.pi * np.clip(angular, -1.0, 1.0)) * np.cos(0.5 * np.pi * np.clip(axial, -1.0, 1.0))
    taper = np.clip(1.5 * taper, 0.0, 1.0)  # a flat middle, as blood spreads along the convexity
    return head.inside(inner_table_inset) & ~head.inside(inner_table_inset + thickness * taper)


def _intraventricular(rng: np.random.Generator, head: _Head, ventricles: np.ndarray) -> np.ndarray:
    """Blood layering in the posterior (dependent, supine patient) part of the ventricles."""
    occupied = np.broadcast_to(head.du, ventricles.shape)[ventricles]
    if occupied.size == 0:
        return np.zeros_like(ventricles)
    level = np.quantile(occupied, rng.uniform(0.45, 0.8))
    side = rng.integers(3)  # 0, 1: one ventricle; 2: both
    sides = (head.dv < 0.0, head.dv >= 0.0, np.ones_like(head.dv, dtype=bool))[side]
    return ventricles & (head.du >= level) & sides


def make_head_phantom(
    seed: int,
    *,
    shape_zyx: tuple[int, int, int] = DEFAULT_SHAPE_ZYX,
    bleed: bool | None = None,
    bleed_kind: BleedKind | None = None,
    spacing_zyx_mm: tuple[float, float, float] | None = None,
) -> HeadPhantom:
    """Generate a synthetic non-contrast head CT phantom.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``; everything is derived from it.
    shape_zyx : tuple of int
        Volume shape ``(z, y, x)``.
    bleed : bool or None
        Whether to place a haemorrhage; ``None`` draws it with probability 0.5.
    bleed_kind : {"intraparenchymal", "subdural", "intraventricular"} or None
        The kind of bleed (when there is one); ``None`` draws it (0.5, 0.35, 0.15).
    spacing_zyx_mm : tuple of float or None
        Voxel spacing in mm. ``None`` draws z in [4, 5.5] mm and an isotropic in-plane spacing in
        [2.2, 2.6] mm (rounded to 0.01 mm), so the head fills most of the field of view.

    Returns
    -------
    HeadPhantom
        The generated phantom.
    """
    rng = np.random.default_rng(seed)
    if spacing_zyx_mm is None:
        pixel = round(float(rng.uniform(2.2, 2.6)), 2)
        spacing = (round(float(rng.uniform(4.0, 5.5)), 2), pixel, pixel)
    else:
        spacing = (float(spacing_zyx_mm[0]), float(spacing_zyx_mm[1]), float(spacing_zyx_mm[2]))
    has_bleed = bool(rng.uniform() < _BLEED_PROBABILITY) if bleed is None else bleed
    kind: BleedKind = BLEED_KINDS[int(rng.choice(len(BLEED_KINDS), p=_BLEED_KIND_PROBABILITIES))]
    if bleed_kind is not None:
        kind = bleed_kind
    head = _head_coordinates(rng, shape_zyx, spacing)

    scalp = rng.uniform(3.0, 6.0)
    skull = rng.uniform(5.0, 9.0)
    csf_layer = rng.uniform(1.0, 3.5)
    cortex = rng.uniform(3.0, 6.0)
    inner_table = scalp + skull
    clean = np.full(shape_zyx, -1000.0)
    clean[np.broadcast_to(head.inside(0.0), shape_zyx)] = rng.uniform(20.0, 45.0)
    bone = np.broadcast_to(head.inside(scalp), shape_zyx)
    # Cortical bone, denser in some places than others (a smooth variation over the skull).
    bone_hu = rng.uniform(700.0, 1300.0) + rng.uniform(0.0, 200.0) * np.cos(
        np.arctan2(head.dv, head.du) * rng.integers(1, 4) + rng.uniform(0.0, 2.0 * np.pi)
    )
    clean[bone] = np.broadcast_to(bone_hu, shape_zyx)[bone]
    intracranial = np.broadcast_to(head.inside(inner_table), shape_zyx)
    clean[intracranial] = rng.uniform(0.0, 10.0)
    brain = np.broadcast_to(head.inside(inner_table + csf_layer), shape_zyx)
    clean[brain] = rng.uniform(33.0, 40.0)
    white = np.broadcast_to(head.inside(inner_table + csf_layer + cortex), shape_zyx)
    clean[white] = rng.uniform(24.0, 30.0)

    # Lateral ventricles: a mirrored pair, size from slit-like to enlarged.
    grid = head.grid()
    ventricle_radii = np.array(
        [rng.uniform(0.18, 0.28) * head.radii[0], rng.uniform(0.22, 0.32) * head.radii[1], rng.uniform(3.0, 11.0)]
    )
    separation = ventricle_radii[2] + rng.uniform(1.5, 4.0)
    height = rng.uniform(0.0, 0.2) * head.radii[0]
    flare = rng.uniform(0.05, 0.3)
    ventricles = np.zeros(shape_zyx, dtype=bool)
    for sign in (-1.0, 1.0):
        centre = np.array([height, rng.uniform(-0.05, 0.05) * head.radii[1], sign * separation])
        ventricles |= ellipsoid_mask(grid, centre, ventricle_radii, sign * flare)
    ventricles &= white
    clean[ventricles] = rng.uniform(0.0, 10.0)

    # Falx: a thin, slightly hyperdense midline sheet above the ventricles, in some heads.
    if rng.uniform() < 0.6:
        falx = np.broadcast_to((np.abs(head.dv) <= 0.6 * spacing[2]) & (head.dz > height), shape_zyx)
        falx = falx & brain & ~ventricles
        clean[falx] = rng.uniform(38.0, 50.0)
    # Physiological calcifications: choroid plexus in the ventricles' posterior parts, pineal gland.
    if rng.uniform() < 0.5:
        for sign in (-1.0, 1.0):
            spot = np.array([height, 0.6 * ventricle_radii[1], sign * separation])
            clean[ellipsoid_mask(grid, spot, np.full(3, rng.uniform(2.0, 3.5)))] = rng.uniform(150.0, 400.0)
    if rng.uniform() < 0.4:
        pineal = np.array([height - 0.3 * ventricle_radii[0], 1.1 * ventricle_radii[1], 0.0])
        clean[ellipsoid_mask(grid, pineal, np.full(3, rng.uniform(2.0, 3.0)))] = rng.uniform(150.0, 400.0)

    bleed_mask = np.zeros(shape_zyx, dtype=bool)
    blood_hu = float(rng.uniform(50.0, 90.0))
    if has_bleed:
        if kind == "intraparenchymal":
            bleed_mask, oedema = _intraparenchymal(rng, head, white, brain, ventricles)
            clean[oedema] = rng.uniform(14.0, 22.0)
        elif kind == "subdural":
            bleed_mask = _subdural(rng, head, inner_table)
        else:
            bleed_mask = _intraventricular(rng, head, ventricles)
        if bleed_mask.sum() < _MIN_BLEED_VOXELS:  # a sliver cut off by the slab: make it a blob instead
            kind = "intraparenchymal"
            bleed_mask, _ = _intraparenchymal(rng, head, white, brain, ventricles)
        clean[bleed_mask] = blood_hu

    # Partial volume, beam-hardening-like cupping near the skull, correlated noise. The FFT blur is
    # periodic: padded along z first, so the vertex's bone does not wrap into the lowest slice.
    padded = np.pad(clean, ((_Z_PAD, _Z_PAD), (0, 0), (0, 0)), mode="edge")
    image = gaussian_filter_fft(padded, (0.3, 0.6, 0.6))[_Z_PAD:-_Z_PAD]
    cupping = rng.uniform(0.0, 6.0)
    near_table = np.clip(1.0 - (np.sqrt((head.du / head.radii[1]) ** 2 + (head.dv / head.radii[2]) ** 2)), 0.0, 1.0)
    image += np.where(intracranial, cupping * (1.0 - np.broadcast_to(near_table, shape_zyx)) ** 4, 0.0)
    noise_sigma = rng.uniform(3.0, 7.0)
    corr = rng.uniform(0.5, 1.0)
    noise = gaussian_filter_fft(rng.normal(size=shape_zyx), (0.3, corr, corr))
    image += noise * (noise_sigma / noise.std())
    hu = np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)

    truth = None
    if has_bleed:
        truth = BleedTruth(
            kind=kind,
            volume_ml=float(bleed_mask.sum() * np.prod(spacing) / 1000.0),
            blood_hu=blood_hu,
            mean_hu=float(hu[bleed_mask].mean()),
        )
    return HeadPhantom(hu=hu, bleed_mask=bleed_mask, spacing_zyx_mm=spacing, bleed=truth)


def write_dicom_series(phantom: HeadPhantom, out_dir: Path, **kwargs: Any) -> list[Path]:
    """Write a head phantom as a CT series: :func:`hounsfield_operators.synthetic_ct.write_dicom_series`.

    ``series_description`` defaults to "Phantom head non-contrast" and ``body_part_examined`` to
    "HEAD"; every other keyword argument is passed on.
    """
    kwargs.setdefault("series_description", "Phantom head non-contrast")
    kwargs.setdefault("body_part_examined", "HEAD")
    return synthetic_ct.write_dicom_series(phantom, out_dir, **kwargs)
