"""DIMSE command sets (PS3.7 section 9 and annex E): group 0000, always implicit VR little endian.

A C-STORE-RQ's command set is a dozen short elements. Decoding it with a general-purpose dataset
reader costs more than the rest of the per-instance protocol work, so the few elements the SCP
uses are read and written here directly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hounsfield.errors import HounsfieldError

__all__ = [
    "C_CANCEL_RQ",
    "C_ECHO_RQ",
    "C_STORE_RQ",
    "NO_DATASET",
    "Command",
    "CommandUndecodable",
    "decode_command",
    "encode_response",
]

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101
"""Command Data Set Type value meaning "no dataset follows"."""

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")

_AFFECTED_SOP_CLASS = 0x0002
_REQUESTED_SOP_CLASS = 0x0003
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_RESPONDED_TO = 0x0120
_DATASET_TYPE = 0x0800
_STATUS = 0x0900
_ERROR_COMMENT = 0x0902
_AFFECTED_SOP_INSTANCE = 0x1000
_REQUESTED_SOP_INSTANCE = 0x1001
_MOVE_ORIGINATOR_AE = 0x1030


class CommandUndecodable(HounsfieldError, ValueError):
    """The command set cannot be decoded (truncated, wrong group, missing Command Field)."""


@dataclass(frozen=True)
class Command:
    """The elements of a request's command set that the SCP acts on."""

    command_field: int
    message_id: int
    has_dataset: bool
    affected_sop_class_uid: str = ""
    affected_sop_instance_uid: str = ""
    move_originator_ae: str = ""
    """Move Originator Application Entity Title: set when the C-STORE is a C-MOVE's sub-operation."""

    @property
    def is_request(self) -> bool:
        return not self.command_field & 0x8000


def _text(value: bytes) -> str:
    return value.decode("ascii", errors="replace").strip(" \x00")


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Decode a command set; :class:`CommandUndecodable` when it is not one."""
    view = memoryview(data)
    offset, end = 0, len(view)
    values: dict[int, bytes] = {}
    while offset < end:
        if end - offset < 8:
            raise CommandUndecodable("truncated command element")
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += 8
        if group != 0x0000:
            raise CommandUndecodable(f"command set element in group {group:04X}")
        if length == 0xFFFFFFFF or offset + length > end:
            raise CommandUndecodable("command element length exceeds the command set")
        values[element] = bytes(view[offset : offset + length])
        offset += length
    try:
        command_field = _US.unpack(values[_COMMAND_FIELD])[0]
    except (KeyError, struct.error) as exc:
        raise CommandUndecodable("command set without a valid Command Field") from exc

    def us(element: int, default: int) -> int:
        raw = values.get(element)
        if raw is None or len(raw) != 2:
            return default
        return int(_US.unpack(raw)[0])

    message_id = us(_MESSAGE_ID, us(_RESPONDED_TO, 0))
    sop_class = values.get(_AFFECTED_SOP_CLASS, values.get(_REQUESTED_SOP_CLASS, b""))
    sop_instance = values.get(_AFFECTED_SOP_INSTANCE, values.get(_REQUESTED_SOP_INSTANCE, b""))
    return Command(
        command_field=command_field,
        message_id=message_id,
        has_dataset=us(_DATASET_TYPE, NO_DATASET) != NO_DATASET,
        affected_sop_class_uid=_text(sop_class),
        affected_sop_instance_uid=_text(sop_instance),
        move_originator_ae=_text(values.get(_MOVE_ORIGINATOR_AE, b"")),
    )


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii", errors="replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _comment_value(text: str) -> bytes:
    # LO: 64 characters at most, no backslash or control characters; ASCII keeps it readable anywhere.
    cleaned = "".join(c if 0x20 <= ord(c) < 0x7F and c != "\\" else " " for c in text)[:64].rstrip()
    raw = cleaned.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def encode_response(
    request: Command, status: int, *, error_comment: str = "", sop_class_uid: str = "", sop_instance_uid: str = ""
) -> bytes:
    """The response command set to ``request`` (no dataset follows), in tag order."""
    sop_class = sop_class_uid or request.affected_sop_class_uid
    sop_instance = sop_instance_uid or request.affected_sop_instance_uid
    body = []
    if sop_class:
        body.append(_element(_AFFECTED_SOP_CLASS, _uid_value(sop_class)))
    body.append(_element(_COMMAND_FIELD, _US.pack(request.command_field | 0x8000)))
    body.append(_element(_RESPONDED_TO, _US.pack(request.message_id)))
    body.append(_element(_DATASET_TYPE, _US.pack(NO_DATASET)))
    body.append(_element(_STATUS, _US.pack(status)))
    if error_comment and status != 0x0000:
        body.append(_element(_ERROR_COMMENT, _comment_value(error_comment)))
    if sop_instance:
        body.append(_element(_AFFECTED_SOP_INSTANCE, _uid_value(sop_instance)))
    content = b"".join(body)
    return _element(0x0000, _UL.pack(len(content))) + content
