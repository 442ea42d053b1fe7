"""What one job's input looks like: its scanner, geometry and intensities (no patient data).

The headers of every instance are read (up to the pixel data); the pixels of at most
``drift.max_sampled_slices`` slices (frames), evenly spaced through the input, are decoded, converted
to rescaled units (Rescale Slope and Intercept, or the Modality LUT: Hounsfield units for CT) and
sampled down to at most ``drift.max_sampled_pixels`` values (a sample seeded by the job, so a profile
is the same each time it is taken). Pixels equal to Pixel Padding Value are left out.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydantic import BaseModel, ConfigDict
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale, pixel_array

from hounsfield.config import DriftSettings
from hounsfield.errors import HounsfieldError

__all__ = ["SCANNER_SEPARATOR", "Profile", "ProfileFailed", "profile_input"]

logger = logging.getLogger(__name__)

SCANNER_SEPARATOR = " / "
"""Between Manufacturer and Manufacturer's Model Name in a profile's ``scanner``."""

_HEADER_TAGS = [
    "Manufacturer",
    "ManufacturerModelName",
    "SliceThickness",
    "PixelSpacing",
    "NumberOfFrames",
    "PixelPaddingValue",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "PixelRepresentation",
    "BitsStored",
    "BitsAllocated",
]
_DECODE_ERRORS = (OSError, ValueError, TypeError, AttributeError, KeyError, NotImplementedError, RuntimeError)


class ProfileFailed(HounsfieldError):
    """The input could not be profiled (a header or the pixels of a sampled slice unreadable)."""


class Profile(BaseModel):
    """One job's input: the values compared across jobs (see :mod:`hounsfield.drift.compare`)."""

    model_config = ConfigDict(frozen=True)

    scanner: str
    slice_thickness_mm: float | None
    pixel_spacing_mm: float | None
    instances: int
    sampled_pixels: int
    intensity_mean: float | None
    intensity_std: float | None
    intensity_p05: float | None
    intensity_p50: float | None
    intensity_p95: float | None


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _spacing(ds: Dataset) -> float | None:
    spacing = ds.get("PixelSpacing")
    if spacing is None or len(spacing) != 2:
        return None
    row, column = _number(spacing[0]), _number(spacing[1])
    return None if row is None or column is None else (row + column) / 2


def _scanner(ds: Dataset) -> str:
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()[:64]
    model = str(ds.get("ManufacturerModelName", "") or "").strip()[:64]
    return f"{manufacturer}{SCANNER_SEPARATOR}{model}" if manufacturer or model else ""


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.median(present)), 4) if present else None


def _sampled_slices(frames: Sequence[tuple[Path, int, Dataset]], count: int) -> list[tuple[Path, int, Dataset]]:
    if len(frames) <= count:
        return list(frames)
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in sorted(set(picks.tolist()))]


def _rescaled(path: Path, frame: int, ds: Dataset) -> np.ndarray:
    raw = pixel_array(path, index=frame)
    values = apply_rescale(raw, ds).astype(np.float64, copy=False).ravel()
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        values = values[raw.ravel() != padding]
    return values


_MAX_FRAMES = 100_000
"""More frames than this in one instance: a header that cannot be right (the profile fails, the job goes on)."""


def _frames(ds: Dataset) -> int:
    try:
        count = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ProfileFailed("a header's Number of Frames is not a number") from None
    if not 1 <= count <= _MAX_FRAMES:
        raise ProfileFailed(f"a header's Number of Frames is outside 1 to {_MAX_FRAMES}")
    return count


def profile_input(paths: Sequence[Path], settings: DriftSettings, *, seed: str) -> Profile:
    """The profile of a job's input files (one or more series); ``seed`` (the job's key) seeds the pixel sample.

    Raises :class:`ProfileFailed` when a header or a sampled slice cannot be read (the reason is the
    error's type, never a value of the data).
    """
    headers: list[tuple[Path, Dataset]] = []
    for path in paths:
        try:
            headers.append((path, pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)))
        except (InvalidDicomError, *_DECODE_ERRORS) as exc:
            raise ProfileFailed(f"a header could not be read ({type(exc).__name__})") from None
    scanners = Counter(_scanner(ds) for _, ds in headers)
    frames = [(path, index, ds) for path, ds in headers for index in range(_frames(ds))]
    budget = settings.max_sampled_pixels
    chosen = _sampled_slices(frames, settings.max_sampled_slices)
    per_slice = max(1, budget // max(1, len(chosen)))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    samples = []
    for path, index, ds in chosen:
        try:
            values = _rescaled(path, index, ds)
        except _DECODE_ERRORS as exc:
            raise ProfileFailed(f"pixels of a sampled slice could not be read ({type(exc).__name__})") from None
        if values.size > per_slice:
            values = rng.choice(values, size=per_slice, replace=False)
        samples.append(values)
    pixels = np.concatenate(samples) if samples else np.empty(0)
    pixels = pixels[np.isfinite(pixels)]
    stats: dict[str, float | None] = dict.fromkeys(("mean", "std", "p05", "p50", "p95"))
    if pixels.size:
        p05, p50, p95 = np.percentile(pixels, [5, 50, 95])
        stats = {"mean": pixels.mean(), "std": pixels.std(), "p05": p05, "p50": p50, "p95": p95}
    return Profile(
        scanner=scanners.most_common(1)[0][0] if scanners else "",
        slice_thickness_mm=_median([_number(ds.get("SliceThickness")) for _, ds in headers]),
        pixel_spacing_mm=_median([_spacing(ds) for _, ds in headers]),
        instances=len(headers),
        sampled_pixels=int(pixels.size),
        **{f"intensity_{name}": None if v is None else round(float(v), 3) for name, v in stats.items()},
    )
