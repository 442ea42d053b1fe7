"""STOW-RS (DICOMweb Store Instances, PS3.18 10.5) on the registry's HTTP API.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{StudyInstanceUID}`` take a
``multipart/related; type="application/dicom"`` body whose parts are DICOM Part 10 files. Each part
goes through the same :func:`~hounsfield.listener.storage.receive_instance` as a C-STORE: header read,
UIDs validated, file written and fsynced, index row committed, and only then counted as stored.

Parsing streams: python-multipart's ``MultipartParser`` is fed the request body as it arrives, and
each part is stored as soon as its closing boundary is seen; the body is never held. Of a part, the
first 64 KiB wait until its file meta is read; the dataset behind it is collected by the listener's
``DatasetSink``: in memory up to 4 MiB, beyond that in a spool file on the store's file system
(``spool/stow/``, the disk floor checked as it grows) that the store then adopts by renaming, so the
memory a request needs stays bounded whatever its parts weigh. Parts that were complete before a
body turned out broken (400) or too large (413) stay stored: they were durable and indexed, and
sending them again is an idempotent duplicate; an unfinished part is dropped.

Per part:

- the file meta is read for the Transfer Syntax UID and the Media Storage SOP Class/Instance UIDs
  (Type 1 in PS3.10); no Part 10 preamble and meta, or a meta without those UIDs: 0xC210; a
  transfer syntax the listener would not accept over C-STORE either: 0xC122;
- ``receive_instance`` (the same as for a C-STORE) checks the dataset against them: a dataset not
  encoded in the syntax its meta names (implicit VR under an explicit-VR syntax, or the reverse)
  fails with 0xC210, so that no file with a lying meta is stored; UIDs that disagree with the meta
  fail with 0xA900, and so, on the study-scoped URL, does an instance of another study (the data
  set does not match what the request names); nothing refused is stored.

The response is ``application/dicom+json`` (Store Instances Response Module, PS3.18 Annex I):
ReferencedSOPSequence for what was stored (duplicates included: resending is a success),
FailedSOPSequence with FailureReason for what was not, and RetrieveURL for the study when every
stored instance belongs to one study. The reasons in words go in ``Warning: 299 hounsfield: ...``
header fields, one per distinct reason, as PS3.18 words its other transactions' warnings; they never
carry patient data. HTTP status: 200 all stored, 202 some failed, 409 none stored; 415 for another
media type, 400 for a broken body, 413 above ``registry.max_stow_body_mb``. Retrieve URLs follow
PS3.18 (``.../studies/{uid}/series/{uid}/instances/{uid}``); WADO-RS itself is not served yet.

Completeness: a STOW-RS request has no association release, and DICOMweb senders commonly spread
one study over many requests (one per instance, or chunks of a few megabytes), so completing a
study when a request ends would route half studies. Each request is one tracker key while it runs
(its studies are "busy"); when it ends the key is let go like an aborted association, and the
quiet period (``listener.quiet_period_s``) decides. STOW-RS arrivals are recorded with calling AE
``STOW-RS`` (routing rules may match it) and the listener's AE title as the called AE.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pynetdicom import ALL_TRANSFER_SYNTAXES
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from hounsfield.config import Settings
from hounsfield.db import Database, Job
from hounsfield.dicom_status import Status
from hounsfield.errors import HounsfieldError
from hounsfield.listener.engine.spool import DatasetSink
from hounsfield.listener.intake import Intake
from hounsfield.listener.storage import Origin, Received, SpooledDataset, part10_prefix, receive_instance
from hounsfield.store import InvalidUID, check_uid

__all__ = [
    "DICOM_JSON",
    "STOW_CALLING_AE",
    "PartOutcome",
    "StowIntake",
    "StowRequestRefused",
    "StowTransaction",
    "boundary_of",
    "router",
    "stow_response",
]

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
STOW_CALLING_AE = "STOW-RS"
_FEED_BYTES = 1 << 20  # hand the parser about 1 MiB at a time (one thread hop per MiB, not per chunk)
_MAX_WARNINGS = 8
_META_LIMIT = 1 << 16  # a file meta is a few hundred bytes; 64 KiB is beyond any sane one
_SPOOL_THRESHOLD = 4 << 20  # larger datasets go to a spool file while they arrive (as in the listener)
_SYNTAXES = frozenset(str(uid) for uid in ALL_TRANSFER_SYNTAXES)  # what the listener accepts over C-STORE
_HEADER_ERRORS = (
    InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError, OverflowError, zlib.error
)  # fmt: skip


class StowRequestRefused(HounsfieldError):
    """The request as a whole is refused: an HTTP status and a reason without patient data."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


@dataclass(frozen=True)
class PartOutcome:
    """What became of one part: the receiver's answer and, when stored, where to retrieve it."""

    received: Received


@dataclass
class _Part:
    """One part while it arrives: its headers, its head until the file meta is read, then its sink."""

    headers: dict[str, str] = field(default_factory=dict)
    head: bytearray = field(default_factory=bytearray)
    sink: DatasetSink | None = None
    syntax: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    outcome: PartOutcome | None = None
    """Set when the part failed before its dataset was collected (the rest of it is dropped)."""


class StowIntake:
    """The registry's receiving side: an :class:`~hounsfield.listener.intake.Intake` whose studies the
    quiet period completes, and a spool folder of its own.

    Built per app; :meth:`start` and :meth:`stop` run the tracker and router threads (the app's
    lifespan calls them).
    """

    def __init__(self, settings: Settings, db: Database, enqueue: Callable[[Job], None]) -> None:
        self.settings = settings
        self.intake = Intake(settings, db, enqueue)
        self.context = self.intake.context
        self.metrics = self.intake.metrics
        # A folder of its own under the store's spool folder: the listener clears its own leftovers
        # at start, and must not take a spool file from under a STOW-RS request.
        self.spool_dir = self.intake.store.spool_dir / "stow"

    @property
    def max_body_bytes(self) -> int:
        return self.settings.registry.max_stow_body_mb * 2**20

    def start(self) -> None:
        leftovers = list(self.spool_dir.glob(".spool-*"))
        for leftover in leftovers:  # never acknowledged: an earlier run ended mid-request
            leftover.unlink(missing_ok=True)
        if leftovers:
            logger.info("removed %d STOW-RS spool file(s) left by an earlier run", len(leftovers))
        self.intake.start()

    def stop(self) -> None:
        self.intake.stop()


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a ``multipart/related; type="application/dicom"`` content type.

    Raises :class:`StowRequestRefused` 415 for another media type, 400 when the boundary is missing.
    """
    main, params = parse_options_header(content_type or "")
    options = {key.lower(): value for key, value in params.items()}
    kind = options.get(b"type", b"").split(b";")[0].strip().lower()
    if main != b"multipart/related" or kind != b"application/dicom":
        raise StowRequestRefused(
            415,
            'STOW-RS here takes Content-Type: multipart/related; type="application/dicom" '
            "(DICOM Part 10 files; JSON or XML metadata with bulk data is not supported)",
        )
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise StowRequestRefused(400, "the multipart/related Content-Type has no boundary parameter")
    return boundary


def _split_part10(head: bytearray) -> tuple[Dataset, int]:
    """The file meta of a Part 10 file and the offset of its dataset, from the file's head."""
    stream = BytesIO(head)
    read_preamble(stream, False)
    meta = read_dataset(stream, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    offset = stream.tell()
    if offset >= _META_LIMIT:
        raise InvalidDicomError(f"the file meta is longer than {_META_LIMIT} bytes")
    if "TransferSyntaxUID" not in meta:
        raise InvalidDicomError("the file meta has no Transfer Syntax UID")
    return meta, offset


def _meta_uid(meta: Dataset, keyword: str) -> str | None:
    try:
        return check_uid(meta.get(keyword), keyword)
    except InvalidUID:
        return None


def _failure(code: Status, reason: str, sop_class_uid: str | None, sop_instance_uid: str | None) -> PartOutcome:
    logger.warning("STOW-RS part refused (0x%04X): %s", code, reason)
    return PartOutcome(Received(code, reason, sop_class_uid or "", sop_instance_uid or ""))


class StowTransaction:
    """One STOW-RS request: feed it the body, it stores each part as the part completes.

    A part's first bytes (up to 64 KiB) are kept until its file meta can be read; the dataset behind
    it goes to a :class:`~hounsfield.listener.engine.spool.DatasetSink`, in memory up to 4 MiB and in a
    spool file on the store's file system beyond, as for a large C-STORE. Blocking (writes, fsyncs,
    database): call :meth:`feed` and :meth:`finish` off the event loop, and :meth:`release` at the end.
    """

    def __init__(self, intake: StowIntake, boundary: bytes, *, study_instance_uid: str | None) -> None:
        self._context = intake.context
        self._spool_dir = intake.spool_dir
        self._min_free_bytes = intake.settings.listener.min_free_disk_mb * 2**20
        self._study = study_instance_uid
        self._origin = Origin(
            f"stow-{uuid.uuid4().hex}", STOW_CALLING_AE, intake.settings.listener.ae_title, transport="stow-rs"
        )
        self._max_bytes = intake.max_body_bytes
        self._seen = 0
        self._ended = False
        self._part: _Part | None = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._complete: list[_Part] = []
        self.outcomes: list[PartOutcome] = []
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._on_part_begin,
                    "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
                    "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                    "on_header_end": self._on_header_end,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                    "on_end": self._on_end,
                },
            )
        except ValueError as exc:  # python-multipart refuses over-long boundaries
            raise StowRequestRefused(400, f"unusable multipart boundary: {exc}") from exc

    # python-multipart callbacks (synchronous, inside MultipartParser.write)
    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_end(self) -> None:
        if self._part is not None:
            name = self._header_field.decode("latin-1").strip().lower()
            self._part.headers[name] = self._header_value.decode("latin-1").strip()
        self._header_field.clear()
        self._header_value.clear()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None or part.outcome is not None:
            return  # a part already failed: the rest of it is read and dropped
        if part.sink is not None:
            part.sink.write(memoryview(data)[start:end])
            return
        part.head += memoryview(data)[start:end]
        if len(part.head) >= _META_LIMIT:
            self._open(part)

    def _on_part_end(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        if part.sink is None and part.outcome is None:
            self._open(part)
        self._complete.append(part)

    def _on_end(self) -> None:
        self._ended = True

    def _open(self, part: _Part) -> None:
        """Read the part's file meta from its head and start collecting the dataset behind it."""
        head, part.head = part.head, bytearray()
        media_type = parse_options_header(part.headers.get("content-type", "application/dicom"))[0]
        if media_type != b"application/dicom":
            part.outcome = _failure(Status.CANNOT_UNDERSTAND, "a part is not application/dicom", None, None)
            return
        try:
            meta, offset = _split_part10(head)
        except _HEADER_ERRORS:
            part.outcome = _failure(Status.CANNOT_UNDERSTAND, "a part is not a DICOM Part 10 file", None, None)
            return
        sop_class = _meta_uid(meta, "MediaStorageSOPClassUID")
        sop_instance = _meta_uid(meta, "MediaStorageSOPInstanceUID")
        part.sop_class_uid, part.sop_instance_uid = sop_class or "", sop_instance or ""
        part.syntax = str(meta.TransferSyntaxUID).strip().rstrip("\x00")
        if sop_class is None or sop_instance is None:
            reason = "the file meta lacks a valid Media Storage SOP Class or Instance UID"
            part.outcome = _failure(Status.CANNOT_UNDERSTAND, reason, sop_class, sop_instance)
            return
        if part.syntax not in _SYNTAXES:
            reason = "the file meta names a transfer syntax this node does not take"
            part.outcome = _failure(Status.TRANSFER_SYNTAX_NOT_SUPPORTED, reason, sop_class, sop_instance)
            return
        syntax = part.syntax
        part.sink = DatasetSink(
            spool_dir=self._spool_dir,
            threshold=_SPOOL_THRESHOLD,
            min_free_bytes=self._min_free_bytes,
            prefix=lambda: part10_prefix(
                sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
            ),
        )
        part.sink.write(memoryview(head)[offset:])

    @property
    def stored(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.received.ok)

    def feed(self, chunk: bytes) -> None:
        """Parse ``chunk`` and store every part it completes."""
        self._seen += len(chunk)
        if self._seen > self._max_bytes:
            raise StowRequestRefused(413, f"the request body exceeds {self._max_bytes // 2**20} MiB")
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise StowRequestRefused(400, f"the multipart body is malformed: {exc}") from exc
        finally:
            complete, self._complete = self._complete, []
            for part in complete:
                self.outcomes.append(self._store(part))

    def finish(self) -> None:
        """Check that the body ended with its closing boundary and held at least one part."""
        if not self._ended:
            raise StowRequestRefused(400, "the multipart body ends before its closing boundary")
        if not self.outcomes:
            raise StowRequestRefused(400, "the multipart body holds no DICOM instance")

    def release(self) -> None:
        """The request is over: drop an unfinished part; its studies are no longer busy, the quiet period decides."""
        if self._part is not None and self._part.sink is not None:
            self._part.sink.discard()
        self._part = None
        self._context.tracker.association_aborted(self._origin.key)

    def _store(self, part: _Part) -> PartOutcome:
        if part.outcome is not None:
            return part.outcome
        assert part.sink is not None
        dataset = part.sink.finish()
        if dataset is None:
            return _failure(Status.OUT_OF_RESOURCES, part.sink.failure, part.sop_class_uid, part.sop_instance_uid)
        try:
            return self._receive(part, dataset)
        finally:
            if isinstance(dataset, SpooledDataset):
                dataset.path.unlink(missing_ok=True)  # adopted (renamed away) unless refused

    def _receive(self, part: _Part, dataset: bytearray | SpooledDataset) -> PartOutcome:
        sop_class, sop_instance = part.sop_class_uid, part.sop_instance_uid
        received = receive_instance(
            self._context,
            dataset,
            part.syntax,
            self._origin,
            expected_sop_instance_uid=sop_instance,
            expected_sop_class_uid=sop_class,
            expected_study_instance_uid=self._study,
        )
        if not received.ok and not received.sop_instance_uid:
            received = Received(received.status, received.reason, sop_class, sop_instance)
        return PartOutcome(received)


def _warning(status: int, reason: str) -> str:
    clean = "".join(c if " " <= c <= "~" else "?" for c in reason)[:200]
    return f"299 hounsfield: {clean} ({status:04X})"


def stow_response(outcomes: list[PartOutcome], base_url: str, study_uid: str | None) -> JSONResponse:
    """The Store Instances Response (PS3.18 Annex I) as DICOM JSON, with its HTTP status."""
    studies_url = f"{base_url.rstrip('/')}/dicomweb/studies"
    stored = [o for o in outcomes if o.received.ok]
    failed = [o for o in outcomes if not o.received.ok]
    response = Dataset()
    stored_studies = {o.received.study_instance_uid for o in stored}
    retrieve_study = study_uid or (stored_studies.pop() if len(stored_studies) == 1 else None)
    if stored and retrieve_study:
        response.RetrieveURL = f"{studies_url}/{retrieve_study}"
    if failed:
        response.FailedSOPSequence = []
        for outcome in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = outcome.received.sop_class_uid
            item.ReferencedSOPInstanceUID = outcome.received.sop_instance_uid
            item.FailureReason = outcome.received.status
            response.FailedSOPSequence.append(item)
    if stored:
        response.ReferencedSOPSequence = []
        for outcome in stored:
            r = outcome.received
            item = Dataset()
            item.ReferencedSOPClassUID = r.sop_class_uid
            item.ReferencedSOPInstanceUID = r.sop_instance_uid
            series_url = f"{studies_url}/{r.study_instance_uid}/series/{r.series_instance_uid}"
            item.RetrieveURL = f"{series_url}/instances/{r.sop_instance_uid}"
            response.ReferencedSOPSequence.append(item)
    status = 200 if not failed else 202 if stored else 409
    answer = JSONResponse(response.to_json_dict(), status_code=status, media_type=DICOM_JSON)
    for warning in list(dict.fromkeys(_warning(o.received.status, o.received.reason) for o in failed))[:_MAX_WARNINGS]:
        answer.headers.append("Warning", warning)
    return answer


async def _store_instances(request: Request, study_uid: str | None) -> JSONResponse:
    intake: StowIntake | None = getattr(request.app.state, "stow", None)
    if intake is None:
        raise HTTPException(503, "STOW-RS is not running in this process")
    try:
        if study_uid is not None:
            try:
                study_uid = check_uid(study_uid, "StudyInstanceUID")
            except InvalidUID as exc:
                raise StowRequestRefused(400, f"the URL's {exc}") from exc
        boundary = boundary_of(request.headers.get("content-type"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > intake.max_body_bytes:
            raise StowRequestRefused(413, f"the request body exceeds {intake.max_body_bytes // 2**20} MiB")
        transaction = StowTransaction(intake, boundary, study_instance_uid=study_uid)
    except StowRequestRefused as exc:
        raise HTTPException(exc.status_code, exc.reason) from exc
    try:
        pending: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= _FEED_BYTES:
                await run_in_threadpool(transaction.feed, b"".join(pending))
                pending, size = [], 0
        if pending:
            await run_in_threadpool(transaction.feed, b"".join(pending))
        transaction.finish()
    except StowRequestRefused as exc:
        kept = transaction.stored
        note = f"; {kept} instance(s) complete before that were stored (sending them again is harmless)"
        raise HTTPException(exc.status_code, exc.reason + (note if kept else "")) from exc
    finally:
        transaction.release()
    outcomes = transaction.outcomes
    logger.info(
        "STOW-RS request: %d stored (%d duplicate), %d failed",
        transaction.stored,
        sum(1 for o in outcomes if o.received.duplicate),
        len(outcomes) - transaction.stored,
    )
    return stow_response(outcomes, str(request.base_url), study_uid)


router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

_BODY = {
    "requestBody": {
        "required": True,
        "description": 'multipart/related; type="application/dicom": one DICOM Part 10 file per part',
        "content": {'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}},
    }
}
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "every instance stored", "content": {DICOM_JSON: {}}},
    202: {"description": "some instances stored, others failed (FailedSOPSequence)", "content": {DICOM_JSON: {}}},
    400: {"description": "malformed multipart body or URL"},
    409: {"description": "no instance stored (FailedSOPSequence says why)", "content": {DICOM_JSON: {}}},
    413: {"description": "the body exceeds registry.max_stow_body_mb"},
    415: {"description": 'not multipart/related; type="application/dicom"'},
}


@router.post("/studies", openapi_extra=_BODY, responses=_RESPONSES, response_class=JSONResponse)
async def store_instances(request: Request) -> JSONResponse:
    """Store Instances (STOW-RS, PS3.18 10.5) of any study."""
    return await _store_instances(request, None)


@router.post("/studies/{study_uid}", openapi_extra=_BODY, responses=_RESPONSES, response_class=JSONResponse)
async def store_study_instances(
    request: Request, study_uid: Annotated[str, Path(description="Study Instance UID")]
) -> JSONResponse:
    """Store Instances of one study (STOW-RS, PS3.18 10.5); instances of other studies fail with 0xA900."""
    return await _store_instances(request, study_uid)
