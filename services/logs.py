"""Process logging: one line per record on stderr. Never log patient names or IDs.

Values a peer controls (a calling AE title, a UID, a header value) reach log messages; a newline or
another control character in one could forge a line of its own. :class:`OneLineFormatter` writes every
control character of a message escaped (``\\n``, ``\\x1b``), so one record is always one line; only a
traceback that our own code logged with the record follows on lines of its own.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from hounsfield.errors import HounsfieldError

__all__ = ["OneLineFormatter", "Throttle", "escape_controls", "setup_logging"]

_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_CONTROLS |= {code: f"\\u{code:04x}" for code in (0x85, 0x2028, 0x2029)}  # line breaks beyond ASCII


def escape_controls(text: str) -> str:
    """``text`` with every control character (and Unicode line break) written as an escape."""
    return text.translate(_CONTROLS)


_WITHHELD = "(message withheld: it may hold patient data)"


def _without_values(exc: BaseException) -> str | None:
    """What a logged exception may say: our own errors' words (never a value, by convention: see
    ``hounsfield.errors``), an OSError's errno and text without its file name, nothing of anything
    else (a decoder's message may quote the value it choked on). None: keep the message."""
    if isinstance(exc, HounsfieldError):
        return None
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return _WITHHELD


def _redact(summary: traceback.TracebackException, exc: BaseException | None, seen: set[int]) -> None:
    if exc is None or id(exc) in seen:
        return
    seen.add(id(exc))
    replacement = _without_values(exc)
    if replacement is not None:
        summary._str = replacement  # type: ignore[attr-defined]  # what format() prints after the type
        summary.__notes__ = None
    _redact_next(summary.__cause__, exc.__cause__, seen)
    _redact_next(summary.__context__, exc.__context__, seen)
    for inner_summary, inner in zip(
        getattr(summary, "exceptions", None) or (), getattr(exc, "exceptions", ()), strict=False
    ):
        _redact(inner_summary, inner, seen)  # an exception group's members


def _redact_next(summary: traceback.TracebackException | None, exc: BaseException | None, seen: set[int]) -> None:
    if summary is not None:
        _redact(summary, exc, seen)


class OneLineFormatter(logging.Formatter):
    """A formatter whose messages are one line each, whatever the values in them.

    A logged traceback keeps its frames (file, line, code: never data) and the messages of our own
    errors; other exceptions' messages are withheld, since a library's message may quote the patient
    value it could not decode.
    """

    def format(self, record: logging.LogRecord) -> str:
        cached, record.exc_text = record.exc_text, None  # another handler may have cached the unredacted text
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        exc_type, exc, tb = ei
        if exc is None:
            return super().formatException(ei)
        summary = traceback.TracebackException(exc_type, exc, tb)
        _redact(summary, exc, set())
        return "".join(summary.format()).rstrip("\n")


class _LibraryValuesWithheld(logging.Filter):
    """pydicom warns with the offending value quoted (``Invalid value for VR PN: 'Doe^Jane'``), through its
    logger and through :mod:`warnings` (captured into ``py.warnings``): keep what it says, not the value."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in ("pydicom", "py.warnings") or record.name.startswith("pydicom."):
            text = record.getMessage()
            cut = min((index for index in (text.find("'"), text.find('"')) if index >= 0), default=-1)
            if cut >= 0:
                record.msg, record.args = f"{text[:cut].rstrip()} (value withheld)", ()
        return True


def setup_logging(level: str = "INFO", process: str = "hounsfield", *, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(OneLineFormatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_LibraryValuesWithheld())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # A library's warnings reach stderr through the same filter, on one line (captured afresh: whoever
    # replaced warnings.showwarning since, a test runner say, is replaced in turn).
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    root.setLevel(level)
    # pynetdicom's DEBUG output dumps C-FIND identifiers (patient names): never below WARNING here.
    for noisy in ("pynetdicom", "celery", "kombu", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class Throttle:
    """At most ``burst`` log lines per ``interval_s`` for one kind of event; the rest are counted.

    A caller that can make the process log at will (a flood of connections, of broken requests)
    must not be able to fill the disk or drown other lines: :meth:`allow` says whether this one may
    be logged, and the first line allowed after a quiet spell says how many were held back.
    """

    def __init__(self, burst: int = 10, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._interval_s = interval_s
        self._clock = clock
        self._window_start = -float("inf")
        self._logged = 0
        self._held = 0
        self._lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        """(log this one?, how many were held back since the last line logged)."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self._interval_s:
                self._window_start, self._logged = now, 0
            if self._logged >= self._burst:
                self._held += 1
                return False, 0
            self._logged += 1
            held, self._held = self._held, 0
            return True, held
