"""Process logging: one line per record on stderr. Never log patient names or IDs.

Values a peer controls (a calling AE title, a UID, a header value) reach log messages; a newline or
another control character in one could forge a line of its own. :class:`OneLineFormatter` writes every
control character of a message escaped (``\\n``, ``\\x1b``), so one record is always one line; only a
traceback that our own code logged with the record follows on lines of its own.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["OneLineFormatter", "escape_controls", "setup_logging"]

_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_CONTROLS |= {code: f"\\u{code:04x}" for code in (0x85, 0x2028, 0x2029)}  # line breaks beyond ASCII


def escape_controls(text: str) -> str:
    """``text`` with every control character (and Unicode line break) written as an escape."""
    return text.translate(_CONTROLS)


class OneLineFormatter(logging.Formatter):
    """A formatter whose messages are one line each, whatever the values in them."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def setup_logging(level: str = "INFO", process: str = "hounsfield", *, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(OneLineFormatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "celery", "kombu", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
