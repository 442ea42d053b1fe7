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
memory a request needs stays bounded whatever its parts weigh. A request carries at most
``registry.max_stow_parts`` parts (every part counts, empty or failed ones too): the first part beyond
it is answered 413 before it is parsed. Parts that were complete before a body turned out broken
(400), too large or with too many parts (413) stay stored: they were durable and indexed, and sending
them again is an idempotent duplicate; an unfinished part is dropped.

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
header fields, one per distinct reason (the first eight), as PS3.18 words its other transactions'
warnings; they never carry patient data. HTTP status: 200 all stored, 202 some failed, 409 none stored;
415 for another media type, 400 for a broken body, 413 above ``registry.max_stow_body_mb`` or
``registry.max_stow_parts``. Retrieve URLs follow PS3.18 (``.../studies/{uid}/series/{uid}/instances/{uid}``);
WADO-RS itself is not served yet.

Bounded per request: while the parts stream in, each leaves a tuple of its UIDs (and its status when it
failed), the UIDs it shares with other parts held once (:class:`StowOutcomes`); so the response has at
most ``registry.max_stow_parts`` items, and it is built off the event loop. A part refused here is
logged (one WARNING line, our own words, no patient data) for the first eight of a request; the rest
are counted in one line when the request ends. A request that stored something is audited
(:func:`~hounsfield.access.record`: action ``stow.store``, entity ``study``, the sender's principal, the
counts of stored, duplicate and failed instances and of studies) in a transaction of its own after its
parts, which were durable and indexed one by one before.

Completeness: a STOW-RS request has no association release, and DICOMweb senders commonly spread
one study over many requests (one per instance, or chunks of a few megabytes), so completing a
study when a request ends would route half studies. Each request is one tracker key while it runs
(its studies are "busy"); when it ends the key is let go like an aborted association, and the
quiet period (``listener.quiet_period_s``) decides. STOW-RS arrivals are recorded with calling AE
``STOW-RS`` (routing rules may match it) and the listener's AE title as the called AE.
"""

from __future__ import annotations

import json
import logging
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse, Response
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from hounsfield.access import Principal, record
from hounsfield.config import Settings
from hounsfield.db import Database, Job
from hounsfield.dicom_status import Status
from hounsfield.dicom_syntaxes import STORED
from hounsfield.errors import HounsfieldError
from hounsfield.listener.engine.spool import DatasetSink
from hounsfield.listener.intake import Intake
from hounsfield.listener.storage import Origin, Received, SpooledDataset, part10_prefix, receive_instance
from hounsfield.store import InvalidUID, check_uid

__all__ = [
    "DICOM_JSON",
    "STOW_CALLING_AE",
    "StowIntake",
    "StowOutcomes",
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
_MAX_WARNINGS = 8  # distinct Warning texts kept (and sent) per request
_LOGGED_REFUSALS = 8  # refused parts logged one by one per request; the rest are counted in one line
_META_LIMIT = 1 << 16  # a file meta is a few hundred bytes; 64 KiB is beyond any sane one
_SPOOL_THRESHOLD = 4 << 20  # larger datasets go to a spool file while they arrive (as in the listener)
_SYNTAXES = frozenset(STORED)  # every transfer syntax the listener stores
_HEADER_ERRORS = (
    InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError, OverflowError, zlib.error
)  # fmt: skip


class StowRequestRefused(HounsfieldError):
    """The request as a whole is refused: an HTTP status and a reason without patient data."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


class StowOutcomes:
    """What became of a request's parts, kept compact while they stream in.

    A stored part (duplicates included) leaves the tuple of its SOP Class, SOP Instance, Study and
    Series Instance UIDs; a failed one its SOP Class and Instance UIDs (empty when unknown) and its
    status. A UID that several parts share (their SOP class, study, series) is held once. The reasons
    in words are kept only as distinct ``Warning`` texts, at most ``_MAX_WARNINGS`` of them: past that
    a failure costs no text at all.
    """

    def __init__(self) -> None:
        self.referenced: list[tuple[str, str, str, str]] = []
        self.failed: list[tuple[str, str, int]] = []
        self.duplicates = 0
        self.studies: dict[str, None] = {}
        """The studies of the stored instances, in the order they came."""
        self.warnings: dict[str, None] = {}
        self._shared: dict[str, str] = {}

    def _one(self, uid: str) -> str:
        return self._shared.setdefault(uid, uid)

    def add(self, received: Received) -> None:
        """Note one part's outcome."""
        if received.ok:
            study = self._one(received.study_instance_uid)
            self.referenced.append(
                (
                    self._one(received.sop_class_uid),
                    received.sop_instance_uid,
                    study,
                    self._one(received.series_instance_uid),
                )
            )
            self.studies[study] = None
            if received.duplicate:
                self.duplicates += 1
            return
        self.failed.append((self._one(received.sop_class_uid), received.sop_instance_uid, received.status))
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings[_warning(received.status, received.reason)] = None

    @property
    def stored(self) -> int:
        """Instances stored, duplicates included (the response's ReferencedSOPSequence)."""
        return len(self.referenced)


@dataclass(slots=True)
class _Part:
    """One part while it arrives: its headers, its head until the file meta is read, then its sink."""

    headers: dict[str, str] = field(default_factory=dict)
    head: bytearray = field(default_factory=bytearray)
    sink: DatasetSink | None = None
    syntax: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    refusal: Received | None = None
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


class StowTransaction:
    """One STOW-RS request: feed it the body, it stores each part as the part completes.

    A part's first bytes (up to 64 KiB) are kept until its file meta can be read; the dataset behind
    it goes to a :class:`~hounsfield.listener.engine.spool.DatasetSink`, in memory up to 4 MiB and in a
    spool file on the store's file system beyond, as for a large C-STORE. Each part is stored when its
    closing boundary is seen; :attr:`outcomes` notes what became of it. Blocking (writes, fsyncs,
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
        self._max_parts = intake.settings.registry.max_stow_parts
        self._seen = 0
        self._parts = 0
        self._refusals = 0
        self._ended = False
        self._part: _Part | None = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self.outcomes = StowOutcomes()
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
        self._parts += 1
        if self._parts > self._max_parts:
            raise StowRequestRefused(
                413, f"the request has more than {self._max_parts} parts (registry.max_stow_parts)"
            )
        self._part = _Part()

    def _on_header_end(self) -> None:
        if self._part is not None:
            name = self._header_field.decode("latin-1").strip().lower()
            self._part.headers[name] = self._header_value.decode("latin-1").strip()
        self._header_field.clear()
        self._header_value.clear()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None or part.refusal is not None:
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
        if part.sink is None and part.refusal is None:
            self._open(part)
        if part.refusal is not None:
            self._refused(part.refusal)
        else:
            self._store(part)

    def _on_end(self) -> None:
        self._ended = True

    def _open(self, part: _Part) -> None:
        """Read the part's file meta from its head and start collecting the dataset behind it."""
        head, part.head = part.head, bytearray()
        media_type = parse_options_header(part.headers.get("content-type", "application/dicom"))[0]
        if media_type != b"application/dicom":
            self._refuse(part, Status.CANNOT_UNDERSTAND, "a part is not application/dicom")
            return
        try:
            meta, offset = _split_part10(head)
        except _HEADER_ERRORS:
            self._refuse(part, Status.CANNOT_UNDERSTAND, "a part is not a DICOM Part 10 file")
            return
        sop_class = _meta_uid(meta, "MediaStorageSOPClassUID")
        sop_instance = _meta_uid(meta, "MediaStorageSOPInstanceUID")
        part.sop_class_uid, part.sop_instance_uid = sop_class or "", sop_instance or ""
        part.syntax = str(meta.TransferSyntaxUID).strip().rstrip("\x00")
        if sop_class is None or sop_instance is None:
            self._refuse(
                part, Status.CANNOT_UNDERSTAND, "the file meta lacks a valid Media Storage SOP Class or Instance UID"
            )
            return
        if part.syntax not in _SYNTAXES:
            reason = "the file meta names a transfer syntax this node does not take"
            self._refuse(part, Status.TRANSFER_SYNTAX_NOT_SUPPORTED, reason)
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

    def _refuse(self, part: _Part, code: Status, reason: str) -> None:
        """The part fails before its dataset is collected: the rest of it is dropped, its end notes it."""
        part.refusal = Received(code, reason, part.sop_class_uid, part.sop_instance_uid)

    def _refused(self, received: Received) -> None:
        """Note a part refused here; log it while the request has refused few (the reason is our own words)."""
        self.outcomes.add(received)
        self._refusals += 1
        if self._refusals <= _LOGGED_REFUSALS:
            logger.warning("STOW-RS part refused (0x%04X): %s", received.status, received.reason)

    def feed(self, chunk: bytes) -> None:
        """Parse ``chunk`` and store every part it completes.

        Raises :class:`StowRequestRefused`: 413 beyond ``registry.max_stow_body_mb`` or
        ``registry.max_stow_parts`` (the parts before stay stored), 400 for a malformed body.
        """
        self._seen += len(chunk)
        if self._seen > self._max_bytes:
            raise StowRequestRefused(
                413, f"the request body exceeds {self._max_bytes // 2**20} MiB (registry.max_stow_body_mb)"
            )
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise StowRequestRefused(400, f"the multipart body is malformed: {exc}") from exc

    def finish(self) -> None:
        """Check that the body ended with its closing boundary and held at least one part."""
        if not self._ended:
            raise StowRequestRefused(400, "the multipart body ends before its closing boundary")
        if not self._parts:
            raise StowRequestRefused(400, "the multipart body holds no DICOM instance")

    def release(self) -> None:
        """The request is over: drop an unfinished part; its studies are no longer busy, the quiet period decides."""
        if self._part is not None and self._part.sink is not None:
            self._part.sink.discard()
        self._part = None
        self._context.tracker.association_aborted(self._origin.key)
        unlogged = self._refusals - _LOGGED_REFUSALS
        if unlogged > 0:
            logger.warning("STOW-RS: %d more part(s) refused in this request, not logged one by one", unlogged)

    def _store(self, part: _Part) -> None:
        assert part.sink is not None
        dataset = part.sink.finish()
        if dataset is None:
            self._refused(
                Received(Status.OUT_OF_RESOURCES, part.sink.failure, part.sop_class_uid, part.sop_instance_uid)
            )
            return
        try:
            self.outcomes.add(self._receive(part, dataset))
        finally:
            if isinstance(dataset, SpooledDataset):
                dataset.path.unlink(missing_ok=True)  # adopted (renamed away) unless refused

    def _receive(self, part: _Part, dataset: bytearray | SpooledDataset) -> Received:
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
        return received


def _warning(status: int, reason: str) -> str:
    clean = "".join(c if " " <= c <= "~" else "?" for c in reason)[:200]
    return f"299 hounsfield: {clean} ({status:04X})"


def _element(vr: str, value: str | int) -> dict[str, object]:
    """One DICOM JSON attribute (PS3.18 F.2); an empty string has no Value, as pydicom writes it."""
    return {"vr": vr, "Value": [value]} if value != "" else {"vr": vr}


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _sequence(items: Iterable[Mapping[str, object]]) -> str:
    """A DICOM JSON sequence, its items rendered one at a time (no tree of every item is held)."""
    return '{"vr":"SQ","Value":[' + ",".join(_json(item) for item in items) + "]}"


def stow_response(outcomes: StowOutcomes, base_url: str, study_uid: str | None) -> Response:
    """The Store Instances Response (PS3.18 Annex I) as DICOM JSON, with its HTTP status.

    Rendered here (attributes in tag order, as pydicom writes them), one item per part at most: blocking
    work in proportion to the parts, so call it off the event loop.
    """
    studies_url = f"{base_url.rstrip('/')}/dicomweb/studies"
    attributes: list[tuple[str, str]] = []  # (tag, the attribute as JSON), in tag order
    retrieve_study = study_uid or (next(iter(outcomes.studies)) if len(outcomes.studies) == 1 else None)
    if outcomes.referenced and retrieve_study:
        attributes.append(("00081190", _json(_element("UR", f"{studies_url}/{retrieve_study}"))))  # RetrieveURL
    if outcomes.failed:
        failed = (
            {
                "00081150": _element("UI", sop_class),
                "00081155": _element("UI", sop_instance),
                "00081197": _element("US", status),
            }
            for sop_class, sop_instance, status in outcomes.failed
        )
        attributes.append(("00081198", _sequence(failed)))  # FailedSOPSequence
    if outcomes.referenced:
        referenced = (
            {
                "00081150": _element("UI", sop_class),
                "00081155": _element("UI", sop_instance),
                "00081190": _element("UR", f"{studies_url}/{study}/series/{series}/instances/{sop_instance}"),
            }
            for sop_class, sop_instance, study, series in outcomes.referenced
        )
        attributes.append(("00081199", _sequence(referenced)))  # ReferencedSOPSequence
    body = "{" + ",".join(f'"{tag}":{attribute}' for tag, attribute in attributes) + "}"
    status = 200 if not outcomes.failed else 202 if outcomes.referenced else 409
    answer = Response(body.encode(), status_code=status, media_type=DICOM_JSON)
    for warning in outcomes.warnings:
        answer.headers.append("Warning", warning)
    return answer


def _audit(db: Database, principal: Principal, outcomes: StowOutcomes) -> None:
    """One audit row for a request that stored something: who, the study (or ``several``), counts only."""
    entity_id = next(iter(outcomes.studies)) if len(outcomes.studies) == 1 else "several"
    after = {
        "stored": outcomes.stored,
        "duplicates": outcomes.duplicates,
        "failed": len(outcomes.failed),
        "studies": len(outcomes.studies),
    }
    with db.session() as session:
        record(session, principal, "stow.store", "study", entity_id, after=after)


async def _receive_body(request: Request, transaction: StowTransaction) -> None:
    """Feed the body to ``transaction`` as it arrives, about 1 MiB at a time, off the event loop."""
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


async def _store_instances(request: Request, study_uid: str | None) -> Response:
    intake: StowIntake | None = getattr(request.app.state, "stow", None)
    if intake is None:
        raise HTTPException(503, "STOW-RS is not running in this process")
    principal: Principal = request.state.principal  # set by require(Role.SENDER), the router's dependency
    try:
        if study_uid is not None:
            try:
                study_uid = check_uid(study_uid, "StudyInstanceUID")
            except InvalidUID as exc:
                raise StowRequestRefused(400, f"the URL's {exc}") from exc
        boundary = boundary_of(request.headers.get("content-type"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > intake.max_body_bytes:
            raise StowRequestRefused(
                413, f"the request body exceeds {intake.max_body_bytes // 2**20} MiB (registry.max_stow_body_mb)"
            )
        transaction = StowTransaction(intake, boundary, study_instance_uid=study_uid)
    except StowRequestRefused as exc:
        raise HTTPException(exc.status_code, exc.reason) from exc
    outcomes = transaction.outcomes
    refused: StowRequestRefused | None = None
    try:
        await _receive_body(request, transaction)
    except StowRequestRefused as exc:
        refused = exc
    finally:
        transaction.release()
        if outcomes.stored:  # durable and indexed part by part: the request is audited whatever ends it
            await run_in_threadpool(_audit, request.app.state.db, principal, outcomes)
    logger.info(
        "STOW-RS request: %d stored (%d duplicate), %d failed%s",
        outcomes.stored,
        outcomes.duplicates,
        len(outcomes.failed),
        f"; refused {refused.status_code}" if refused is not None else "",
    )
    if refused is not None:
        note = f"; {outcomes.stored} instance(s) complete before that were stored (sending them again is harmless)"
        raise HTTPException(refused.status_code, refused.reason + (note if outcomes.stored else "")) from refused
    return await run_in_threadpool(stow_response, outcomes, str(request.base_url), study_uid)


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
    413: {"description": "the body exceeds registry.max_stow_body_mb, or has more parts than registry.max_stow_parts"},
    415: {"description": 'not multipart/related; type="application/dicom"'},
}


@router.post("/studies", openapi_extra=_BODY, responses=_RESPONSES, response_class=JSONResponse)
async def store_instances(request: Request) -> Response:
    """Store Instances (STOW-RS, PS3.18 10.5) of any study."""
    return await _store_instances(request, None)


@router.post("/studies/{study_uid}", openapi_extra=_BODY, responses=_RESPONSES, response_class=JSONResponse)
async def store_study_instances(
    request: Request, study_uid: Annotated[str, Path(description="Study Instance UID")]
) -> Response:
    """Store Instances of one study (STOW-RS, PS3.18 10.5); instances of other studies fail with 0xA900."""
    return await _store_instances(request, study_uid)
