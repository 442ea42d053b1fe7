"""Checks a series before a model sees it, so that bad input fails at once with a clear reason.

The listener stores instances as they arrived, in whatever transfer syntax the sender chose; pixels are
decoded only here and in the model's loader. So the check makes sure that this installation can decode
every syntax in the series (a decoder plugin exists and its packages are installed), and decodes one frame
per syntax, so that a model never starts on a series it cannot read.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from hounsfield.errors import HounsfieldError

__all__ = ["InputRejected", "check_decodable", "check_series"]

# What pydicom and its decoder plugins raise for a code stream they cannot decode.
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError, IndexError, EOFError, OSError)


class InputRejected(HounsfieldError, ValueError):
    """The study cannot be processed by this model; retrying will not help."""


def check_series(series_uid: str, description: str, paths: list[Path]) -> None:
    """Every instance must be readable DICOM and carry pixel data that this installation can decode."""
    if not paths:
        raise InputRejected(f"series {description!r} has no stored instances")
    decoded: set[UID] = set()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, defer_size="1 KB")
        except (InvalidDicomError, OSError, EOFError) as exc:
            raise InputRejected(f"series {description!r}: an instance is not readable DICOM ({exc})") from exc
        if "PixelData" not in ds:
            number = ds.get("InstanceNumber", "?")
            raise InputRejected(
                f"series {description!r} ({len(paths)} instances): instance number {number} has no pixel data"
            )
        syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
        try:
            if syntax not in decoded:
                check_decodable(syntax)
                # One frame per syntax shows the code stream really decodes. From the path only that
                # frame is read; pydicom does not inflate a deflated file that way, so that one is read whole.
                pixel_array(pydicom.dcmread(path) if syntax == DeflatedExplicitVRLittleEndian else path, index=0)
                decoded.add(syntax)
        except InputRejected as exc:
            raise InputRejected(f"series {description!r}: {exc}") from exc
        except _DECODE_ERRORS as exc:
            number = ds.get("InstanceNumber", "?")
            raise InputRejected(
                f"series {description!r}: undecodable pixels: instance number {number} ({_name(syntax)}) "
                f"could not be decoded ({type(exc).__name__}: {' '.join(str(exc).split())})"
            ) from exc


def _name(syntax: UID) -> str:
    if not syntax:
        return "a missing Transfer Syntax UID"
    return syntax.name if syntax.name != str(syntax) else f"transfer syntax {syntax}"


def check_decodable(syntax: UID) -> None:
    """Raise :class:`InputRejected` unless pydicom can decode pixel data in ``syntax`` here.

    The reason names the syntax and what is missing: no decoder exists in pydicom at all (video, JPEG XL,
    an unknown UID), or the packages that one of its plugins needs are not installed.
    """
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputRejected(
            f"undecodable pixels: {_name(syntax)} needs a pixel data decoder, and pydicom has none"
        ) from None
    if not decoder.is_available:
        needs = "; or ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise InputRejected(f"undecodable pixels: {_name(syntax)} needs {needs}")
