"""Checks a series before a model sees it, so that bad input fails at once with a clear reason."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

__all__ = ["BadInput", "check_series"]


class BadInput(ValueError):
    """The study cannot be processed by this model; retrying will not help."""


def check_series(series_uid: str, description: str, paths: list[Path]) -> None:
    """Every instance must be readable DICOM and carry pixel data."""
    if not paths:
        raise BadInput(f"series {description!r} has no stored instances")
    for path in paths:
        try:
            ds = pydicom.dcmread(path, defer_size="1 KB")
        except (InvalidDicomError, OSError, EOFError) as exc:
            raise BadInput(f"series {description!r}: an instance is not readable DICOM ({exc})") from exc
        if "PixelData" not in ds:
            number = ds.get("InstanceNumber", "?")
            raise BadInput(
                f"series {description!r} ({len(paths)} instances): instance number {number} has no pixel data"
            )
