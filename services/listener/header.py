"""An incoming dataset's element stream, checked whole, and the header values the listener indexes.

Before an instance is acknowledged its whole dataset is walked, element by element, in the
encoding its transfer syntax announces: every tag, VR and length; every sequence and item, of
defined or undefined length, to their delimiters and within their parents' lengths (nested at
most :data:`_MAX_DEPTH` deep); the Pixel Data encapsulated (a Basic Offset Table item, at least one
fragment, a sequence delimiter) exactly when the syntax says so. A stream that does not hold
together is refused with :class:`DatasetMalformed` (the receiver answers 0xC210): what is
acknowledged is a dataset that any reader can walk.

Only element headers and the values the listener indexes are read; every other value is skipped.
So the walk costs the same memory whatever the dataset holds: the dataset itself when it is in
memory, windows of its spool file, or, for the deflated syntax, windows of its inflated stream,
inflated no further than ``max_inflated`` bytes (``listener.max_inflated_mb``).

The indexed values come back as the text pydicom would give them: plain ASCII text in the
dictionary's VR is decoded here; anything else (a character set, another VR, a number pydicom
judges) by pydicom, from the raw element. UIDs are taken as they are, less one trailing padding
byte: a UID with anything else after it is not cleaned up but left for the receiver to refuse.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Iterable
from typing import Any, BinaryIO, Protocol

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from hounsfield.dicom_syntaxes import STORED, TransferSyntax
from hounsfield.errors import HounsfieldError

__all__ = [
    "DatasetMalformed",
    "EncodingMismatch",
    "SyntaxNotStored",
    "dataset_int",
    "dataset_text",
    "read_values",
]

_MAX_DEPTH = 64
_MAX_PARTS = 4_000_000
"""Elements, items and fragments in one dataset: bounds the walk's time (about a second per million),
which a small deflate stream could otherwise make long (an RT structure set holds tens of thousands)."""
_MAX_VALUE = 64 << 10
"""The longest indexed value read (an indexed element is a few dozen bytes)."""
_CHUNK = 256 << 10
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_CHARACTER_SET = 0x00080005
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
     b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)  # fmt: skip
_VRS = _LONG_VRS | _SHORT_VRS
_PLAIN = bytes(range(0x20, 0x7F))
_TEXT_VRS = {
    vr: vr.encode("ascii")
    for vr in ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT")
}
"""The text VRs, each with its bytes in an explicit VR element header."""
_UID_CHARACTERS = b"0123456789."


class DatasetMalformed(HounsfieldError, ValueError):
    """The dataset's element stream does not hold together in its transfer syntax (the words name
    tags, lengths and offsets, never a value)."""


class EncodingMismatch(DatasetMalformed):
    """The dataset's encoding is not the one its transfer syntax announces."""


class SyntaxNotStored(DatasetMalformed):
    """The transfer syntax is not one the listener stores (:data:`hounsfield.dicom_syntaxes.STORED`)."""


class _Truncated(HounsfieldError):
    """Internal: the bytes ended before what the stream announced (always turned into DatasetMalformed)."""


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# -- where the bytes come from ------------------------------------------------------------------------------


class _Stream(Protocol):
    def read(self, size: int) -> bytes: ...

    def skip(self, size: int) -> int: ...


class _File:
    """The rest of an open file, from its current position."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        here = handle.tell()
        self._size = handle.seek(0, 2)
        handle.seek(here)

    def read(self, size: int) -> bytes:
        return self._handle.read(size)

    def skip(self, size: int) -> int:
        here = self._handle.tell()
        target = min(here + size, self._size)
        self._handle.seek(target)
        return target - here


class _Memory:
    """Bytes already in memory, as a stream (the compressed input of :class:`_Inflating`)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, size: int) -> bytes:
        chunk = self._data[self._pos : self._pos + size].tobytes()
        self._pos += len(chunk)
        return chunk

    def skip(self, size: int) -> int:
        skipped = min(size, len(self._data) - self._pos)
        self._pos += skipped
        return skipped


class _Inflating:
    """A raw deflate stream (RFC 1951), inflated as it is read, no further than ``limit`` bytes."""

    def __init__(self, compressed: _Stream, limit: int) -> None:
        self._compressed = compressed
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""
        self._limit = limit
        self._inflated = 0
        self._ended = False

    def read(self, size: int) -> bytes:
        parts = []
        while size > 0 and not self._ended:
            if not self._pending:
                self._pending = self._compressed.read(_CHUNK)
            try:
                # With no input left, zlib may still hold output it kept back for the size limit.
                out = self._inflater.decompress(self._pending, size)
            except zlib.error:
                raise DatasetMalformed("the deflate stream is corrupt") from None
            if not out and not self._pending and not self._inflater.eof:
                raise DatasetMalformed("the deflate stream ends before its last block")
            self._pending = self._inflater.unconsumed_tail
            self._inflated += len(out)
            if self._inflated > self._limit:
                raise DatasetMalformed(
                    f"the dataset inflates to more than {self._limit >> 20} MiB (listener.max_inflated_mb)"
                )
            if self._inflater.eof:
                self._ended = True
                # PS3.5 A.5: at most one padding byte may follow the deflate stream.
                after = self._inflater.unused_data + self._pending + self._compressed.read(2)
                if len(after) > 1 or after.strip(b"\x00"):
                    raise DatasetMalformed("bytes follow the end of the deflate stream")
            parts.append(out)
            size -= len(out)
        return b"".join(parts)

    def skip(self, size: int) -> int:
        skipped = 0
        while skipped < size:
            chunk = self.read(min(size - skipped, _CHUNK))
            if not chunk:
                break
            skipped += len(chunk)
        return skipped


class _Window:
    """The part of the encoded dataset in memory: all of it, or a window onto a :class:`_Stream`."""

    __slots__ = ("base", "buf", "end", "pos", "stream")

    def __init__(self, data: bytes | bytearray | memoryview, stream: _Stream | None) -> None:
        self.buf = memoryview(data)
        self.pos = 0
        self.end = len(self.buf)
        self.base = 0
        """The dataset offset of ``buf[0]``."""
        self.stream = stream

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def fill(self, size: int) -> None:
        """Make ``size`` bytes available from ``pos``; :class:`_Truncated` when the dataset ends first."""
        if self.end - self.pos >= size:
            return
        if self.stream is None:
            raise _Truncated
        parts = [self.buf[self.pos : self.end].tobytes()]
        have = len(parts[0])
        while have < size:
            chunk = self.stream.read(max(_CHUNK, size - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self.base += self.pos
        self.buf = memoryview(b"".join(parts))
        self.pos, self.end = 0, have
        if have < size:
            raise _Truncated

    def skip(self, size: int) -> None:
        available = self.end - self.pos
        if size <= available:
            self.pos += size
            return
        if self.stream is None:
            raise _Truncated
        self.base += self.end
        self.buf = memoryview(b"")
        self.pos = self.end = 0
        skipped = self.stream.skip(size - available)
        self.base += skipped
        if skipped < size - available:
            raise _Truncated

    def at_end(self) -> bool:
        if self.pos < self.end:
            return False
        if self.stream is None:
            return True
        try:
            self.fill(1)
        except _Truncated:
            return True
        return False


# -- the walk --------------------------------------------------------------------------------------------------


class _Mode:
    """How element headers are encoded: VR explicit or not, and the byte order."""

    def __init__(self, explicit: bool, little: bool) -> None:
        order = "<" if little else ">"
        self.explicit = explicit
        self.little = little
        self.tag = struct.Struct(order + "HH")
        self.u16 = struct.Struct(order + "H")
        self.u32 = struct.Struct(order + "I")


@functools.cache
def _mode(explicit: bool, little: bool) -> _Mode:
    return _Mode(explicit, little)


_IMPLICIT_LE_MODE = _mode(explicit=False, little=True)
_EXPLICIT_LE = struct.Struct("<HH2sH")
"""An explicit VR little endian element header: group, element, VR, and a short VR's length."""
_IMPLICIT_LE = struct.Struct("<HHI")
_U32_LE = struct.Struct("<I")


@functools.lru_cache(maxsize=4096)
def _is_sequence(tag: int) -> bool:
    """An implicit VR element of defined length is a sequence when the dictionary says SQ."""
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


class _Walk:
    def __init__(self, window: _Window, syntax: TransferSyntax, wanted: frozenset[int]) -> None:
        self._w = window
        self._syntax = syntax
        self._wanted = wanted
        self.found: dict[int, tuple[bytes | None, bytes]] = {}
        self.mode = _mode(explicit=not syntax.implicit_vr, little=not syntax.big_endian)
        self._parts = 0

    def dataset(self) -> None:
        self._check_encoding()
        w, mode, previous = self._w, self.mode, -1
        plain = w.stream is None and mode.little
        while True:
            if plain:
                previous = self._plain_top_level(previous)
            if w.at_end():
                return
            previous = self._element(mode, 0, None, previous, top=True)

    def _plain_top_level(self, previous: int) -> int:
        """Top-level elements of a little endian dataset held in memory, for as long as they are plain
        (of defined length, not a sequence), after the tag ``previous``: the checks of :meth:`_element`,
        with each header read in one step. An element that is not plain, or not right, is left at the
        window's position for :meth:`_element` to walk or refuse. Returns the last tag walked."""
        w = self._w
        buf, pos, end = w.buf, w.pos, w.end
        explicit = self.mode.explicit
        wanted, found = self._wanted, self.found
        encapsulated = self._syntax.encapsulated
        short_vrs, long_vrs = _SHORT_VRS, _LONG_VRS
        header, long_length, implicit_header = _EXPLICIT_LE.unpack_from, _U32_LE.unpack_from, _IMPLICIT_LE.unpack_from
        parts = self._parts
        while end - pos >= 12 and parts < _MAX_PARTS:
            if explicit:
                group, element, vr, length = header(buf, pos)
                if vr in short_vrs:
                    start = pos + 8
                elif vr in long_vrs and vr != b"SQ":
                    length = long_length(buf, pos + 8)[0]
                    start = pos + 12
                else:
                    break
            else:
                group, element, length = implicit_header(buf, pos)
                vr, start = None, pos + 8
            tag = group << 16 | element
            if (
                group == 0xFFFE
                or tag <= previous
                or start + length > end  # undefined length (0xFFFFFFFF) included
                or (tag == _PIXEL_DATA and encapsulated)
                or (vr is None and _is_sequence(tag))
            ):
                break
            if tag in wanted:
                if length > _MAX_VALUE:
                    break
                found[tag] = (vr, buf[start : start + length].tobytes())
            pos, previous, parts = start + length, tag, parts + 1
        w.pos, self._parts = pos, parts
        return previous

    def _check_encoding(self) -> None:
        """pydicom's own test: the first element's VR field names a VR exactly when VRs are explicit."""
        try:
            self._w.fill(6)
        except _Truncated:
            return  # shorter than an element: reported by the walk
        if self._w.buf[self._w.pos : self._w.pos + 2].tobytes() in (b"\xfe\xff", b"\xff\xfe"):
            return  # an item tag, which has no VR: reported by the walk
        looks_explicit = self._w.buf[self._w.pos + 4 : self._w.pos + 6].tobytes() in _VRS
        if looks_explicit != self.mode.explicit:
            found = "explicit" if looks_explicit else "implicit"
            raise EncodingMismatch(f"the dataset is encoded with {found} VR, not as its transfer syntax says")

    def _counted(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise DatasetMalformed(f"more than {_MAX_PARTS} elements and items")

    def _header(self, mode: _Mode, bound: int | None) -> tuple[int, int]:
        """An item or delimiter header: (tag, length); it must end within ``bound``."""
        w = self._w
        try:
            w.fill(8)
        except _Truncated:
            raise DatasetMalformed(f"the dataset ends inside an item header at offset {w.offset}") from None
        group, element = mode.tag.unpack_from(w.buf, w.pos)
        length = mode.u32.unpack_from(w.buf, w.pos + 4)[0]
        w.pos += 8
        if bound is not None and w.offset > bound:
            raise DatasetMalformed(f"an item header at offset {w.offset - 8} crosses the end of what holds it")
        self._counted()
        return group << 16 | element, length

    def _element(self, mode: _Mode, depth: int, limit: int | None, previous: int, *, top: bool) -> int:
        """Walk one element, which must end within ``limit`` and follow the tag ``previous``; its tag."""
        w = self._w
        at = w.offset
        try:
            w.fill(8)
            buf, pos = w.buf, w.pos
            group, element = mode.tag.unpack_from(buf, pos)
            tag = group << 16 | element
            if group == 0xFFFE:
                raise DatasetMalformed(f"item tag {_tag(tag)} where an element belongs, at offset {at}")
            if tag <= previous:
                # PS3.5 7.1: ascending, each at most once. Readers disagree on a repeated element (the
                # first or the last copy), so the index could name another patient than the file.
                how = "repeated" if tag == previous else f"after {_tag(previous)}: out of order"
                raise DatasetMalformed(f"element {_tag(tag)} at offset {at} {how}")
            vr: bytes | None
            if mode.explicit:
                vr = buf[pos + 4 : pos + 6].tobytes()
                if vr in _LONG_VRS:
                    w.fill(12)
                    length = mode.u32.unpack_from(w.buf, w.pos + 8)[0]
                    w.pos += 12
                elif vr in _SHORT_VRS:
                    length = mode.u16.unpack_from(buf, pos + 6)[0]
                    w.pos += 8
                else:
                    raise DatasetMalformed(f"element {_tag(tag)} at offset {at} has no valid VR")
            else:
                vr = None
                length = mode.u32.unpack_from(buf, pos + 4)[0]
                w.pos += 8
        except _Truncated:
            raise DatasetMalformed(f"the dataset ends inside an element header at offset {at}") from None
        self._counted()
        start = w.offset
        if limit is not None and start > limit:
            raise DatasetMalformed(f"element {_tag(tag)}'s header crosses the end of its item")
        if length == _UNDEFINED:
            self._undefined(tag, vr, mode, depth, limit, top=top)
            return tag
        if limit is not None and start + length > limit:
            raise DatasetMalformed(f"element {_tag(tag)} claims {length} bytes; its item holds {limit - start} more")
        if top and tag == _PIXEL_DATA and self._syntax.encapsulated:
            raise DatasetMalformed("native Pixel Data under a transfer syntax whose Pixel Data is encapsulated")
        if vr == b"SQ" or (vr is None and _is_sequence(tag)):
            self._items(mode, depth + 1, start + length)
            return tag
        try:
            if top and tag in self._wanted:
                if length > _MAX_VALUE:
                    raise DatasetMalformed(f"element {_tag(tag)} holds {length} bytes, too long to index")
                w.fill(length)
                self.found[tag] = (vr, w.buf[w.pos : w.pos + length].tobytes())
                w.pos += length
            else:
                w.skip(length)
        except _Truncated:
            raise DatasetMalformed(
                f"element {_tag(tag)} at offset {at} claims {length} bytes; the dataset ends first"
            ) from None
        return tag

    def _undefined(self, tag: int, vr: bytes | None, mode: _Mode, depth: int, limit: int | None, *, top: bool) -> None:
        if tag == _PIXEL_DATA:
            if top and not self._syntax.encapsulated:
                raise DatasetMalformed("encapsulated Pixel Data under a transfer syntax whose Pixel Data is native")
            self._fragments(mode, limit)
        elif not mode.explicit or vr == b"SQ":
            self._items(mode, depth + 1, None, limit)
        elif vr == b"UN":
            self._items(_IMPLICIT_LE_MODE, depth + 1, None, limit)  # PS3.5 6.2.2: its items are implicit VR
        elif vr in (b"OB", b"OW"):
            self._fragments(mode, limit)
        else:
            raise DatasetMalformed(f"element {_tag(tag)} of VR {vr!r} has undefined length")

    def _items(self, mode: _Mode, depth: int, end: int | None, limit: int | None = None) -> None:
        """A sequence's items: up to ``end`` (defined length) or its delimiter (then within ``limit``)."""
        if depth > _MAX_DEPTH:
            raise DatasetMalformed(f"sequences nested deeper than {_MAX_DEPTH}")
        w = self._w
        bound = end if end is not None else limit
        while end is None or w.offset < end:
            tag, length = self._header(mode, bound)
            if end is None and tag == _SEQUENCE_END:
                if length:
                    raise DatasetMalformed("a sequence delimiter with a length")
                return
            if tag != _ITEM:
                raise DatasetMalformed(f"{_tag(tag)} inside a sequence where an item belongs")
            previous = -1
            if length == _UNDEFINED:
                while True:
                    try:
                        w.fill(8)
                    except _Truncated:
                        raise DatasetMalformed("the dataset ends inside an item of undefined length") from None
                    group, element = mode.tag.unpack_from(w.buf, w.pos)
                    if group << 16 | element == _ITEM_END:
                        if self._header(mode, bound)[1]:
                            raise DatasetMalformed("an item delimiter with a length")
                        break
                    previous = self._element(mode, depth, bound, previous, top=False)
                continue
            item_end = w.offset + length
            if bound is not None and item_end > bound:
                raise DatasetMalformed("an item claims more bytes than its sequence holds")
            while w.offset < item_end:
                previous = self._element(mode, depth, item_end, previous, top=False)
            if w.offset != item_end:
                raise DatasetMalformed("an item's elements overrun its length")
        if w.offset != end:
            raise DatasetMalformed("a sequence's items overrun its length")

    def _fragments(self, mode: _Mode, limit: int | None) -> None:
        """Encapsulated data: the Basic Offset Table item, one or more fragments, the delimiter."""
        items = 0
        while True:
            tag, length = self._header(mode, limit)
            if tag == _SEQUENCE_END:
                if length:
                    raise DatasetMalformed("a sequence delimiter with a length")
                if items < 2:
                    raise DatasetMalformed("encapsulated Pixel Data without a fragment")
                return
            if tag != _ITEM or length == _UNDEFINED:
                raise DatasetMalformed(
                    f"encapsulated Pixel Data holds {_tag(tag)} where an item of defined length belongs"
                )
            if limit is not None and self._w.offset + length > limit:
                raise DatasetMalformed("a Pixel Data fragment claims more bytes than its item holds")
            try:
                self._w.skip(length)
            except _Truncated:
                raise DatasetMalformed(f"a Pixel Data fragment claims {length} bytes; the dataset ends first") from None
            items += 1


# -- the values ------------------------------------------------------------------------------------------------


@functools.cache
def _wanted(keywords: tuple[str, ...]) -> dict[int, tuple[str, str]]:
    wanted = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword} is not a DICOM keyword")
        wanted[tag] = (keyword, dictionary_VR(tag))
    return wanted


def _plain_text(vr: str, raw: bytes) -> str | None:
    """The value as pydicom's text when it is plain ASCII it would not judge otherwise; else None."""
    if raw.rstrip(b" \x00").translate(None, _PLAIN):
        return None  # a character set, control characters: pydicom decodes those
    text = raw.decode("ascii").rstrip(" \x00")
    if vr in ("IS", "DS"):
        values = [value.strip() for value in text.split("\\")]
        if len(values) > 1 and not all(values):
            return None  # a blank value among several: pydicom reads those differently per VR
        for value in values:
            if value:
                try:
                    int(value) if vr == "IS" else float(value)
                except ValueError:
                    return None
        return "\\".join(values)
    if vr == "AE":
        return "\\".join(value.strip() for value in text.split("\\"))
    if vr in ("SH", "LO", "UC"):  # pydicom trims each value of these
        return "\\".join(value.rstrip(" \x00") for value in text.split("\\"))
    return text


def _uid_text(raw: bytes) -> str:
    """A UID as sent, less one trailing NUL (or space) pad; anything else stays for the receiver to refuse,
    written visibly (``\\x20`` for a space, which no one may trim: the file would be named after a UID
    the dataset does not hold)."""
    if raw[-1:] in (b"\x00", b" "):
        raw = raw[:-1]
    if not raw.translate(None, _UID_CHARACTERS):
        return raw.decode("ascii")
    return "".join(chr(c) if c in _UID_CHARACTERS else f"\\x{c:02x}" for c in raw)


def read_values(
    dataset: bytes | bytearray | memoryview | BinaryIO,
    transfer_syntax: str,
    keywords: Iterable[str],
    *,
    max_inflated: int,
    head: bytes = b"",
) -> dict[str, str]:
    """Walk the whole dataset (see the module docstring) and return its top-level ``keywords``' text.

    ``dataset`` is the encoded dataset, or a binary file positioned at its first byte; ``head``, the
    file's first bytes already in memory (the file is then positioned after them). Raises
    :class:`DatasetMalformed` (or :class:`SyntaxNotStored`, :class:`EncodingMismatch`), or one of
    pydicom's errors when an indexed value cannot be decoded.
    """
    syntax = STORED.get(transfer_syntax)
    if syntax is None:
        raise SyntaxNotStored(f"transfer syntax {transfer_syntax} is not one the listener stores")
    wanted = _wanted(tuple(keywords))
    stream: _Stream | None = None
    data: bytes | bytearray | memoryview
    if isinstance(dataset, (bytes, bytearray, memoryview)):
        data = dataset
    else:
        data, stream = head, _File(dataset)
    if syntax.deflated:
        compressed: _Stream = _Memory(data) if stream is None else _Chained(data, stream)
        data, stream = b"", _Inflating(compressed, max_inflated)
    walk = _Walk(_Window(data, stream), syntax, frozenset(wanted) | {_CHARACTER_SET})
    walk.dataset()
    return _texts(walk, wanted)


class _Chained:
    """``head`` and then the stream (a spool file's first bytes are already in memory)."""

    def __init__(self, head: bytes | bytearray | memoryview, rest: _Stream) -> None:
        self._head = _Memory(head)
        self._rest = rest

    def read(self, size: int) -> bytes:
        return self._head.read(size) or self._rest.read(size)

    def skip(self, size: int) -> int:
        skipped = self._head.skip(size)
        return skipped + (self._rest.skip(size - skipped) if skipped < size else 0)


def _texts(walk: _Walk, wanted: dict[int, tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    unusual: dict[int, tuple[bytes | None, bytes]] = {}
    for tag, (vr, raw) in walk.found.items():
        if tag not in wanted:
            continue
        keyword, expected = wanted[tag]
        if expected == "UI":
            values[keyword] = _uid_text(raw)
            continue
        text = None
        text_vr = _TEXT_VRS.get(expected)
        if text_vr is not None and (vr is None or vr == text_vr) and len(raw) <= 1024:
            text = _plain_text(expected, raw)
        if text is None:
            unusual[tag] = (vr, raw)
        else:
            values[keyword] = text
    if unusual:
        values.update(_pydicom_texts(walk, unusual, wanted))
    return values


def _pydicom_texts(
    walk: _Walk, unusual: dict[int, tuple[bytes | None, bytes]], wanted: dict[int, tuple[str, str]]
) -> dict[str, str]:
    """pydicom's text for values it must judge, decoded from the raw elements in the dataset's character set."""
    implicit, little = not walk.mode.explicit, walk.mode.little
    header = Dataset()
    elements = dict(unusual)
    if _CHARACTER_SET in walk.found:
        elements[_CHARACTER_SET] = walk.found[_CHARACTER_SET]
    for tag, (vr, raw) in sorted(elements.items()):
        vr_text = vr.decode("latin-1") if vr is not None else None
        header[Tag(tag)] = RawDataElement(Tag(tag), vr_text, len(raw), raw, 0, implicit, little)  # type: ignore[assignment]
    return {wanted[tag][0]: dataset_text(header, wanted[tag][0]) for tag in unusual}


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
