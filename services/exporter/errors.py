"""How an export fails: refused (final), or the destination unreachable (worth waiting for)."""

from __future__ import annotations

from hounsfield.errors import HounsfieldError

__all__ = ["DestinationUnreachable", "ExportFailed"]


class ExportFailed(HounsfieldError):
    """The destination refused an object or stayed unreachable after every retry.

    ``protocol`` (the destination's, ``dimse`` or ``stow-rs``; ``none`` when unknown) and ``kind`` (``refused``,
    ``unreachable``, ``not_configured``) label the worker's metrics; neither names the destination.
    """

    def __init__(self, message: str, *, protocol: str = "none", kind: str = "refused") -> None:
        super().__init__(message)
        self.protocol = protocol
        self.kind = kind


class DestinationUnreachable(ExportFailed):
    """No association or connection could be made (or it broke) after every quick retry."""

    def __init__(self, message: str, *, protocol: str = "none") -> None:
        super().__init__(message, protocol=protocol, kind="unreachable")
