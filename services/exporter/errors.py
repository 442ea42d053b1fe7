"""How an export fails: refused (final), or the destination unreachable (worth waiting for)."""

from __future__ import annotations

from hounsfield.errors import HounsfieldError

__all__ = ["DestinationUnreachable", "ExportFailed"]


class ExportFailed(HounsfieldError):
    """The destination refused an object or stayed unreachable after every retry."""


class DestinationUnreachable(ExportFailed):
    """No association or connection could be made (or it broke) after every quick retry."""
