"""One DICOM status vocabulary: the codes Hounsfield answers and acts on, by name, in pynetdicom's words.

:class:`Status` names the codes Hounsfield itself answers (C-STORE responses, STOW-RS FailureReason)
or acts on. What a code means, and whether it is a success, a warning or a failure, comes from
pynetdicom's tables of PS3.4 (:mod:`pynetdicom.status`), never from a table of our own; the one
code pynetdicom does not list is STOW-RS's *Referenced Transfer Syntax not supported* (PS3.18
Table I.2-2), whose words are given here.
"""

from __future__ import annotations

import enum
from typing import Literal

from pynetdicom.status import (
    GENERAL_STATUS,
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    STATUS_PENDING,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

__all__ = ["Service", "Status", "describe", "is_pending", "is_stored"]


class Status(enum.IntEnum):
    """The status codes Hounsfield answers (and the warnings it meets), as PS3.4 and PS3.18 define them."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    """General failure: something went wrong on our side (a bug, or the index kept conflicting)."""
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    """Refused: SOP Class Not Supported (a C-STORE outside its presentation context's abstract syntax)."""
    UNRECOGNISED_OPERATION = 0x0211
    """A DIMSE service the listener does not provide (only C-STORE and C-ECHO are served)."""
    OUT_OF_RESOURCES = 0xA700
    """Storage: Refused, Out of Resources (the disk floor, the journal, the index database)."""
    DATASET_MISMATCH = 0xA900
    """Storage: Data Set Does Not Match SOP Class (bad or disagreeing UIDs)."""
    CANNOT_UNDERSTAND = 0xC210
    """Storage: Cannot Understand (a dataset that does not decode in its transfer syntax)."""
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    """STOW-RS: Referenced Transfer Syntax not supported (PS3.18 Table I.2-2; no DIMSE code)."""
    MOVE_DESTINATION_UNKNOWN = 0xA801
    CANCEL = 0xFE00

    @property
    def label(self) -> str:
        """A lower-case name for metrics and logs (``out_of_resources``)."""
        return self.name.lower()


Service = Literal["storage", "find", "move", "get"]

_TABLES = {
    "storage": STORAGE_SERVICE_CLASS_STATUS,
    "find": QR_FIND_SERVICE_CLASS_STATUS,
    "move": QR_MOVE_SERVICE_CLASS_STATUS,
    "get": QR_GET_SERVICE_CLASS_STATUS,
}
_OWN_WORDS = {
    Status.TRANSFER_SYNTAX_NOT_SUPPORTED: "Referenced Transfer Syntax not supported",
    Status.CANCEL: "Sub-operations terminated due to Cancel indication",  # PS3.4 C.4.2.1.5; no words in pynetdicom
}


def describe(code: int, service: Service = "storage") -> str:
    """What ``code`` means in ``service``, in PS3.4's words as pynetdicom has them ('' when it has none)."""
    if code in _OWN_WORDS:
        return _OWN_WORDS[Status(code)]
    _, words = _TABLES[service].get(code) or GENERAL_STATUS.get(code) or ("", "")
    return words or ("Success" if code == Status.SUCCESS else "")


_STORED = frozenset(
    {Status.SUCCESS}
    | {
        code
        for code, (category, _) in STORAGE_SERVICE_CLASS_STATUS.items()
        if category == STATUS_WARNING and code >> 12 == 0xB
    }
)
"""Success and the Storage Service Class's own warnings (PS3.4 B.2.3: Bxxx, the object stored). pynetdicom's
table also lists the DIMSE-N warnings 0107 and 0116, which no C-STORE response carries."""


def is_stored(code: int) -> bool:
    """A C-STORE response that means the object was stored: Success, or a Storage warning (PS3.4 B.2.3)."""
    return code in _STORED


def is_pending(code: int) -> bool:
    """A C-FIND, C-MOVE or C-GET response that more are to follow (PS3.4 C.4)."""
    return code_to_category(code) == STATUS_PENDING
