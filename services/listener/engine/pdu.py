"""Upper-layer PDUs (PS3.8 section 9): framing, P-DATA fragments and the association PDUs.

The association PDUs (A-ASSOCIATE-RQ/AC/RJ, A-RELEASE-RQ/RP, A-ABORT) are decoded and encoded with
pynetdicom's PDU classes: they happen once per association. P-DATA-TF PDUs carry every byte of
every instance, so they are framed here on :class:`memoryview` slices, without pynetdicom's
per-item objects and copies.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RP
from pynetdicom.pdu_items import (
    ApplicationContextItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PresentationContextItemAC,
    TransferSyntaxSubItem,
    UserInformationItem,
)

from hounsfield.errors import HounsfieldError

__all__ = [
    "APPLICATION_CONTEXT",
    "HEADER",
    "AbortReason",
    "AssociateRequest",
    "ContextResult",
    "NegotiatedContext",
    "PDUType",
    "ProposedContext",
    "ProtocolViolation",
    "decode_associate_rq",
    "encode_abort",
    "encode_associate_ac",
    "encode_associate_rj",
    "encode_pdata",
    "encode_release_rp",
    "iter_pdvs",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
"""The DICOM application context name, the only one defined."""

HEADER = struct.Struct(">BxI")
"""Every PDU starts with: type (1 byte), reserved (1), length of what follows (4, big endian)."""

_PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, message control header


class PDUType:
    """PDU type codes (PS3.8 table 9-1)."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT_RQ = 0x07


class AbortReason:
    """A-ABORT reasons when the service provider (source 2) aborts (PS3.8 table 9-26)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER = 6


class ContextResult:
    """Presentation context results in the A-ASSOCIATE-AC (PS3.8 table 9-18)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class ProtocolViolation(HounsfieldError):
    """The peer broke the upper-layer protocol; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = AbortReason.INVALID_PDU_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ProposedContext:
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class NegotiatedContext:
    """One presentation context's answer; ``transfer_syntax`` is empty unless accepted."""

    context_id: int
    abstract_syntax: str
    result: int
    transfer_syntax: str = ""

    @property
    def accepted(self) -> bool:
        return self.result == ContextResult.ACCEPTANCE


@dataclass(frozen=True)
class AssociateRequest:
    """What the listener needs from an A-ASSOCIATE-RQ (AE titles without padding)."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    max_pdu: int
    """The requestor's Maximum Length Received: the largest P-DATA we may send (0: unlimited)."""
    implementation_class_uid: str
    implementation_version_name: str


_DECODE_ERRORS = (ValueError, KeyError, IndexError, TypeError, AssertionError, struct.error, UnicodeError)


def _uid(value: object) -> str:
    return str(value or "").strip().rstrip("\x00")


def decode_associate_rq(pdu: bytes) -> AssociateRequest:
    """Decode a whole A-ASSOCIATE-RQ PDU (header included); :class:`ProtocolViolation` when malformed."""
    decoded = A_ASSOCIATE_RQ()
    try:
        decoded.decode(pdu)
        contexts = tuple(
            ProposedContext(
                int(item.context_id or 0),
                _uid(item.abstract_syntax),
                tuple(_uid(syntax) for syntax in item.transfer_syntax),
            )
            for item in decoded.presentation_context
        )
        user = decoded.user_information
        max_pdu = user.maximum_length if user is not None else None
        request = AssociateRequest(
            protocol_version=int(decoded.protocol_version),
            called_ae=str(decoded.called_ae_title).strip(),
            calling_ae=str(decoded.calling_ae_title).strip(),
            application_context=_uid(decoded.application_context_name),
            contexts=contexts,
            max_pdu=int(max_pdu or 0),
            implementation_class_uid=_uid(user.implementation_class_uid if user is not None else ""),
            implementation_version_name=str((user.implementation_version_name if user is not None else "") or ""),
        )
    except _DECODE_ERRORS as exc:
        raise ProtocolViolation(f"malformed A-ASSOCIATE-RQ ({type(exc).__name__})") from exc
    if not contexts:
        raise ProtocolViolation("A-ASSOCIATE-RQ without presentation contexts")
    return request


def encode_associate_ac(
    request: AssociateRequest,
    contexts: Sequence[NegotiatedContext],
    *,
    max_pdu: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """The A-ASSOCIATE-AC answering ``request`` with ``contexts``; we receive up to ``max_pdu``."""
    ac = A_ASSOCIATE_AC()
    ac.reserved_aet = request.called_ae
    ac.reserved_aec = request.calling_ae
    application = ApplicationContextItem()
    application.application_context_name = APPLICATION_CONTEXT
    ac.variable_items.append(application)
    for context in contexts:
        item = PresentationContextItemAC()
        item.presentation_context_id = context.context_id
        item.result_reason = context.result
        syntax = TransferSyntaxSubItem()
        # Not tested by the requestor unless accepted; a rejected context still carries one sub-item.
        syntax.transfer_syntax_name = context.transfer_syntax or "1.2.840.10008.1.2"
        item.transfer_syntax_sub_item = [syntax]
        ac.variable_items.append(item)
    user = UserInformationItem()
    length = MaximumLengthSubItem()
    length.maximum_length_received = max_pdu
    klass = ImplementationClassUIDSubItem()
    klass.implementation_class_uid = implementation_class_uid
    version = ImplementationVersionNameSubItem()
    version.implementation_version_name = implementation_version_name
    user.user_data = [length, klass, version]
    ac.variable_items.append(user)
    return ac.encode()


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ: result 1 permanent / 2 transient; source 1 user, 2 ACSE, 3 presentation."""
    rj = A_ASSOCIATE_RJ()
    rj.result, rj.source, rj.reason_diagnostic = result, source, reason
    return rj.encode()


def encode_abort(source: int = 2, reason: int = AbortReason.NOT_SPECIFIED) -> bytes:
    """An A-ABORT; source 0 is the service user (reason then 0), 2 the service provider."""
    abort = A_ABORT_RQ()
    abort.source, abort.reason_diagnostic = source, (reason if source == 2 else 0)
    return abort.encode()


def encode_release_rp() -> bytes:
    return A_RELEASE_RP().encode()


def iter_pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(context ID, message control header, fragment) for each PDV item of a P-DATA-TF body."""
    offset, end = 0, len(body)
    if end == 0:
        raise ProtocolViolation("P-DATA-TF without presentation data values")
    while offset < end:
        if end - offset < 6:
            raise ProtocolViolation("truncated presentation data value item")
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolViolation("presentation data value length disagrees with the PDU length")
        yield context_id, control, body[offset + 6 : offset + 4 + length]
        offset += 4 + length


def encode_pdata(context_id: int, payload: bytes, *, command: bool, max_pdu: int) -> list[bytes]:
    """``payload`` as P-DATA-TF PDUs of one PDV each, no larger than the peer's ``max_pdu`` (0: any)."""
    room = max(max_pdu - 6, 1) if max_pdu else max(len(payload), 1)
    flag = 0x01 if command else 0x00
    pdus = []
    for start in range(0, max(len(payload), 1), room):
        fragment = payload[start : start + room]
        last = start + room >= len(payload)
        control = flag | (0x02 if last else 0x00)
        pdus.append(
            b"".join(
                (
                    HEADER.pack(PDUType.P_DATA_TF, len(fragment) + 6),
                    _PDV_HEADER.pack(len(fragment) + 2, context_id, control),
                    fragment,
                )
            )
        )
    return pdus
