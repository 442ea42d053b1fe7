"""Process logging: one JSON object per line (or one text line) per record. Never log patient names or IDs.

Values a peer controls (a calling AE title, a UID, a header value) reach log messages; a newline or
another control character in one could forge a line of its own. Both formatters write every control
character of a message escaped (``\\n``, ``\\x1b``), so one record is always one line:
:class:`JsonLineFormatter` (``log_format: json``, the services' default) writes one JSON object per
record, its traceback a field of it; :class:`OneLineFormatter` (``log_format: text``, for a person at a
terminal) writes one text line, only a traceback that our own code logged following on lines of its own.

Correlation ids (:func:`log_context`) travel with :mod:`contextvars`: the study a line concerns (a
pseudonym of its Study Instance UID, :func:`study_correlation_id`, never the UID itself), the job, and
the registry request. Threads do not inherit them: a thread that works for a study sets its own.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

from hounsfield.errors import HounsfieldError

__all__ = [
    "DEFAULT_CORRELATION_KEY",
    "JsonLineFormatter",
    "LogContext",
    "LogFormat",
    "OneLineFormatter",
    "Throttle",
    "current_log_context",
    "escape_controls",
    "log_context",
    "setup_logging",
    "study_correlation_id",
]

LogFormat = Literal["json", "text"]

_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_CONTROLS |= {code: f"\\u{code:04x}" for code in (0x85, 0x2028, 0x2029)}  # line breaks beyond ASCII


def escape_controls(text: str) -> str:
    """``text`` with every control character (and Unicode line break) written as an escape."""
    return text.translate(_CONTROLS)


DEFAULT_CORRELATION_KEY = b"1.2.826.0.1.3680043.10.1392."
"""The key of study correlation ids in a process whose logging was not set up (the default ``uid_root``)."""


@dataclass(frozen=True)
class LogContext:
    """The correlation ids a log line carries: ``study`` (:func:`study_correlation_id`), ``job`` (the job's
    id), ``request`` (the registry request's id). None: the line concerns none."""

    study: str | None = None
    job: str | None = None
    request: str | None = None


_CONTEXT: ContextVar[LogContext] = ContextVar("hounsfield_log_context", default=LogContext())  # noqa: B039 - frozen


class _Correlation:
    """The process's key for study correlation ids, set by :func:`setup_logging` with the logging itself."""

    key: bytes = DEFAULT_CORRELATION_KEY


def study_correlation_id(study_uid: str, key: bytes | None = None) -> str:
    """A study's correlation id: the first 20 hex digits of HMAC-SHA256(key, Study Instance UID).

    Stable (the same study, the same id, in every process of an installation) and pseudonymous: the UID
    cannot be read back from it, while whoever holds the UID and the key computes it to find the study's
    lines (``hounsfield logs study-id UID``, the registry's study detail). ``key``: the installation's
    (``Settings.log_correlation_key``); None: this process's, as :func:`setup_logging` set it.
    """
    digest = hmac.new(
        key if key is not None else _Correlation.key, study_uid.encode("ascii", "replace"), hashlib.sha256
    )
    return digest.hexdigest()[:20]


def current_log_context() -> LogContext:
    """The correlation ids of this thread's (or task's) log lines now."""
    return _CONTEXT.get()


class _Keep:
    """The default of :func:`log_context`'s fields: keep the enclosing context's value."""


_KEEP: Any = _Keep()


@contextmanager
def log_context(
    *, study_uid: str | None = _KEEP, study: str | None = _KEEP, job: str | None = _KEEP, request: str | None = _KEEP
) -> Iterator[LogContext]:
    """Log lines within carry these correlation ids; the enclosing ones come back after.

    ``study_uid``: the study's Study Instance UID, logged only as its :func:`study_correlation_id`;
    ``study``: a correlation id already made (one that travelled in a queue message). A field not given
    keeps the enclosing context's value; None clears it.
    """
    fields: dict[str, str | None] = {}
    if study_uid is not _KEEP:
        fields["study"] = None if study_uid is None else study_correlation_id(study_uid)
    for name, value in (("study", study), ("job", job), ("request", request)):
        if value is not _KEEP:
            fields[name] = value
    token = _CONTEXT.set(replace(_CONTEXT.get(), **fields))
    try:
        yield _CONTEXT.get()
    finally:
        _CONTEXT.reset(token)


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


def _redacted_traceback(ei: Any) -> str | None:
    """The traceback of ``ei`` with foreign exceptions' messages withheld (see :class:`OneLineFormatter`)."""
    exc_type, exc, tb = ei
    if exc is None:
        return None
    summary = traceback.TracebackException(exc_type, exc, tb)
    _redact(summary, exc, set())
    return "".join(summary.format()).rstrip("\n")


class _ContextFields(logging.Filter):
    """Puts the emitting thread's correlation ids on the record (``record.log_context``), unless it has some."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(getattr(record, "log_context", None), LogContext):
            record.log_context = _CONTEXT.get()
        return True


def _context_of(record: logging.LogRecord) -> LogContext:
    context = getattr(record, "log_context", None)
    return context if isinstance(context, LogContext) else _CONTEXT.get()


class OneLineFormatter(logging.Formatter):
    """A formatter whose messages are one line each, whatever the values in them.

    A logged traceback keeps its frames (file, line, code: never data) and the messages of our own
    errors; other exceptions' messages are withheld, since a library's message may quote the patient
    value it could not decode. The record's correlation ids follow the message in brackets.
    """

    def format(self, record: logging.LogRecord) -> str:
        cached, record.exc_text = record.exc_text, None  # another handler may have cached the unredacted text
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        context = _context_of(record)
        ids = " ".join(f"{name}={value}" for name, value in vars(context).items() if value is not None)
        return super().formatMessage(record) + (f" [{escape_controls(ids)}]" if ids else "")

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        redacted = _redacted_traceback(ei)
        return super().formatException(ei) if redacted is None else redacted


class JsonLineFormatter(JsonFormatter):
    """One JSON object per record, on one line (python-json-logger's encoder, ASCII only, so no character of
    a value can break the line): ``time`` (ISO 8601, UTC), ``level``, ``process`` (listener, worker,
    registry, ...), ``pid``, ``thread``, ``logger``, ``message`` (control characters escaped as in the text
    format), ``study``, ``job``, ``request`` (correlation ids, null when the line concerns none) and, when
    the record has one, ``exception`` (the traceback, redacted as :class:`OneLineFormatter` redacts it).
    Nothing else of the record is written: no ``extra`` a caller attached.
    """

    def __init__(self, process: str) -> None:
        super().__init__(json_ensure_ascii=True)
        self._process = process

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        # Called for every record with an exception: a text another handler cached on it is never reused.
        redacted = _redacted_traceback(ei)
        return str(super().formatException(ei)) if redacted is None else redacted

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        context = _context_of(record)
        log_data.update(
            time=datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            level=record.levelname,
            process=self._process,
            pid=record.process,
            thread=record.threadName,
            logger=record.name,
            message=escape_controls(record.message),
            study=context.study,
            job=context.job,
            request=context.request,
        )
        if message_dict.get("exc_info"):
            log_data["exception"] = message_dict["exc_info"]
        if message_dict.get("stack_info"):
            log_data["stack"] = message_dict["stack_info"]


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


def setup_logging(
    level: str = "INFO",
    process: str = "hounsfield",
    *,
    stream: TextIO | None = None,
    log_format: LogFormat = "json",
    correlation_key: bytes | None = None,
) -> None:
    """Every record of this process to ``stream`` (stderr), one line each, in ``log_format``.

    ``correlation_key``: the installation's key of study correlation ids (``Settings.log_correlation_key``);
    every process of an installation must have the same, or a study's lines would not share an id.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLineFormatter(process))
    else:
        handler.setFormatter(OneLineFormatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_LibraryValuesWithheld())
    handler.addFilter(_ContextFields())
    if correlation_key is not None:
        _Correlation.key = correlation_key
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
