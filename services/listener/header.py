"""The few header values the listener indexes, read straight from the encoded dataset.

Decoding a dataset with pydicom costs tens of microseconds per element, more than a C-STORE's
whole protocol work for a small image. The listener needs about twenty top-level values (UIDs,
the indexed tags, the facts of the study): :func:`quick_values` walks the element headers of a
little-endian dataset up to the pixel data, checking its structure (lengths, sequence and item
delimiters) as it goes, and decodes only those values, with the same text pydicom would give.

Whenever anything is out of the ordinary (big endian or deflate, a value that is not plain ASCII,
a VR other than the dictionary's, a number pydicom would judge, nesting deeper than 32, bytes
that end early) it returns ``None`` and the caller reads the header with pydicom instead, so
unusual data is judged exactly as before.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from hounsfield.errors import HounsfieldError

__all__ = ["dataset_int", "dataset_text", "quick_values"]

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE_SYNTAXES_EXCLUDED = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflate
_PIXEL_DATA = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_PLAIN = frozenset(range(0x20, 0x7F))
_MAX_DEPTH = 32


class _Unusual(HounsfieldError):
    """Leave this dataset to pydicom."""


@functools.cache
def _wanted(keywords: tuple[str, ...]) -> dict[int, tuple[str, str]]:
    wanted = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword} is not a DICOM keyword")
        wanted[tag] = (keyword, dictionary_VR(tag))
    return wanted


def _skip_items(data: memoryview, pos: int, explicit: bool, depth: int) -> int:
    """Skip the items of an undefined-length value, up to and past its sequence delimiter."""
    if depth > _MAX_DEPTH:
        raise _Unusual
    end = len(data)
    while True:
        if end - pos < 8:
            raise _Unusual
        group, element = _TAG.unpack_from(data, pos)
        tag = group << 16 | element
        length = _U32.unpack_from(data, pos + 4)[0]
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Unusual
        if length != 0xFFFFFFFF:
            pos += length
            if pos > end:
                raise _Unusual
            continue
        while True:  # an undefined-length item: its elements, then the item delimiter
            if end - pos < 8:
                raise _Unusual
            group, element = _TAG.unpack_from(data, pos)
            if group << 16 | element == _ITEM_END:
                pos += 8
                break
            pos, _, _ = _element(data, pos, explicit, depth + 1)


def _element(data: memoryview, pos: int, explicit: bool, depth: int) -> tuple[int, bytes | None, int]:
    """Parse one element header at ``pos``; returns (next position, VR or None, value start)."""
    end = len(data)
    if explicit:
        if end - pos < 8:
            raise _Unusual
        vr = bytes(data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if end - pos < 12:
                raise _Unusual
            length, start = _U32.unpack_from(data, pos + 8)[0], pos + 12
        else:
            length, start = _U16.unpack_from(data, pos + 6)[0], pos + 8
    else:
        vr, length, start = None, _U32.unpack_from(data, pos + 4)[0], pos + 8
    if length == 0xFFFFFFFF:
        return _skip_items(data, start, explicit, depth + 1), vr, start
    if start + length > end:
        raise _Unusual
    return start + length, vr, start


def _text(vr: str, raw: bytes) -> str:
    if not _PLAIN.issuperset(raw.rstrip(b" \x00")):
        raise _Unusual  # a character set, control characters: pydicom decodes those
    text = raw.decode("ascii").rstrip(" \x00")
    if vr in ("IS", "DS"):
        values = [value.strip() for value in text.split("\\")]
        for value in values:
            if value:
                try:
                    int(value) if vr == "IS" else float(value)
                except ValueError:
                    raise _Unusual from None
        return "\\".join(values)
    if vr == "AE":
        return "\\".join(value.strip() for value in text.split("\\"))
    return text


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"}


def quick_values(
    dataset: bytes | bytearray | memoryview, transfer_syntax: str, keywords: Iterable[str], *, whole: bool = True
) -> dict[str, str] | None:
    """The text of each keyword present at the top level, as ``str(value)`` (multi-values joined by ``\\``).

    ``None`` when pydicom should read this header instead (see the module docstring). ``whole=False``
    says ``dataset`` is only the first bytes of the dataset: then the pixel data must be reached.
    """
    if transfer_syntax in _EXPLICIT_LE_SYNTAXES_EXCLUDED:
        return None
    wanted = _wanted(tuple(keywords))
    explicit = transfer_syntax != _IMPLICIT_LE
    data = memoryview(dataset)
    found: dict[str, str] = {}
    pos, end = 0, len(data)
    try:
        while pos < end:
            if end - pos < 8:
                raise _Unusual
            group, element = _TAG.unpack_from(data, pos)
            tag = group << 16 | element
            if tag in _PIXEL_DATA:
                whole = True
                break
            if group == 0xFFFE:
                raise _Unusual
            following, vr, start = _element(data, pos, explicit, 0)
            if tag in wanted:
                keyword, expected = wanted[tag]
                if expected not in _TEXT_VRS or (vr is not None and vr.decode("ascii", "replace") != expected):
                    raise _Unusual
                if following - start > 1024:
                    raise _Unusual
                found[keyword] = _text(expected, bytes(data[start:following]))
            pos = following
    except (_Unusual, struct.error):
        return None
    return found if whole else None


def dataset_text(ds: Dataset, keyword: str) -> str:
    """An element of a decoded dataset as index text: ``""`` when absent, values joined by ``\\``."""
    value: Any = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def dataset_int(ds: Dataset, keyword: str) -> int | None:
    """An integer element of a decoded dataset; ``None`` when absent or not a number."""
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
