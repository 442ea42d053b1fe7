"""Receiving one instance, whatever carried it: make it durable, index it, answer.

:func:`receive_instance` is transport-neutral. The DIMSE engine (C-STORE) and STOW-RS both hand it
the dataset bytes as they arrived and the transfer syntax they arrived in; it reads the header
(never the pixels), makes the Part 10 file durable without transcoding, indexes it, and returns a
DICOM status. With the listener's ingest journal (:mod:`hounsfield.listener.ingest`), Success is
returned once the journal record holding the file and its index row is on stable storage; the file
and row follow within moments. Without it (STOW-RS), Success is returned once the file is fsynced
and its index row committed.

Routing never happens here; the receiver only tells the completeness tracker which study the
sender touched.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from hounsfield.contracts.rules import INDEXED_TAGS
from hounsfield.db import Database
from hounsfield.db.group_commit import DatabaseUnavailable, GroupCommit, IndexConflict
from hounsfield.db.index import IndexedInstance
from hounsfield.dicom_status import Status
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.header import DatasetMalformed, SyntaxNotStored, dataset_text, read_values
from hounsfield.listener.ingest import JournaledStore
from hounsfield.listener.journal import JournalBusy
from hounsfield.listener.metrics import ListenerMetrics
from hounsfield.logs import Throttle, log_context
from hounsfield.store import InvalidUID, StudyStore, check_uid

__all__ = [
    "Origin",
    "Received",
    "SpooledDataset",
    "StoreContext",
    "header_values",
    "index_facts",
    "part10_bytes",
    "part10_prefix",
    "receive_instance",
]

logger = logging.getLogger(__name__)

_PREAMBLE = b"\x00" * 128 + b"DICM"
# The walk raises DatasetMalformed; pydicom, decoding an indexed value, may raise any of the others
# (found by tests/services/listener/test_fuzz.py): a dataset that cannot be read is 0xC210 with a
# reason, not an unexpected error.
_HEADER_ERRORS = (
    DatasetMalformed, InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError, OverflowError,
    struct.error, BytesLengthException, NotImplementedError, OSError,
)  # fmt: skip
MAX_INFLATED_DEFAULT = 256 << 20


@dataclass(frozen=True)
class StoreContext:
    """What the receiver writes to: the study store, the index, and the completeness tracker."""

    store: StudyStore
    db: Database
    tracker: CompletenessTracker
    metrics: ListenerMetrics | None = field(default=None, compare=False, repr=False)
    """Counts what arrived and what was refused (none: not counted)."""
    journal: JournaledStore | None = field(default=None, compare=False, repr=False)
    """The ingest journal the listener writes through (none: each instance is written and indexed
    before its Success, as STOW-RS does)."""
    max_inflated: int = field(default=MAX_INFLATED_DEFAULT, compare=False)
    """How far a deflated dataset may inflate while it is checked (``listener.max_inflated_mb``)."""
    index: GroupCommit = field(init=False, compare=False, repr=False)
    """Commits the index rows of concurrent stores together (see :class:`GroupCommit`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", GroupCommit(self.db))

    def then(self, call: Callable[[], None]) -> None:
        """Run ``call`` once every instance received so far is indexed (at once without a journal)."""
        if self.journal is not None:
            self.journal.then(call)
        else:
            call()


@dataclass(frozen=True)
class Origin:
    """Who delivered an instance and over what; ``key`` groups instances of one association or request."""

    key: Hashable
    calling_ae: str
    called_ae: str
    transport: Literal["dimse", "dimse-tls", "stow-rs"] = "dimse"


@dataclass(frozen=True)
class Received:
    """The outcome of :func:`receive_instance`: a DICOM status, and the reason when it is not Success."""

    status: int
    reason: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    duplicate: bool = False
    series_instance_uid: str = ""
    durable_seq: int = 0
    """With ``defer_durability``: the ingest journal record that must be durable before this Success is
    sent (0: nothing to wait for)."""

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS


@dataclass(frozen=True)
class SpooledDataset:
    """A dataset too large to hold in memory, already written to a spool file as it arrived.

    The file (on the store's file system) holds the whole Part 10 file: preamble and file meta made
    from the transport's announced UIDs (:func:`part10_prefix`), then the dataset from ``offset``.
    ``size`` and ``sha256`` cover the whole file. :func:`receive_instance` moves it into the store
    or leaves it for the caller to delete.
    """

    path: Path
    offset: int
    size: int
    sha256: str
    head: bytes = b""
    """The dataset's first bytes, kept in memory, where its header usually is whole."""


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    pad = b"\x00" if vr == b"UI" else b" "
    if len(value) % 2:
        value += pad
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


_META_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_META_IMPLEMENTATION = _meta_element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode()) + _meta_element(
    0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode()
)


def part10_prefix(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The preamble and file meta that precede a dataset in its DICOM file.

    Encoded directly (explicit VR little endian, group 0002): the same bytes as pydicom's file meta
    writer, at a fraction of its cost per instance.
    """
    body = b"".join(
        (
            _META_VERSION,
            _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _meta_element(0x0010, b"UI", transfer_syntax.encode("ascii")),
            _META_IMPLEMENTATION,
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"".join((_PREAMBLE, group_length, body))


def part10_bytes(
    dataset: bytes | bytearray, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
) -> bytes:
    """The DICOM file (preamble, file meta, dataset as it arrived) for one instance."""
    prefix = part10_prefix(
        sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid, transfer_syntax=transfer_syntax
    )
    return b"".join((prefix, dataset))


def _int(values: Mapping[str, str], keyword: str) -> int | None:
    text = values.get(keyword, "")
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)  # an IS written as "12.0" is 12, as pydicom reads it
        except ValueError:
            return None
        return int(number) if number.is_integer() else None


_REFUSALS_LOG = Throttle(burst=20, interval_s=60.0)
"""A sender can make every instance a refusal: the log says a few a minute, and how many it held back."""


def _refuse(
    status: Status, reason: str, *, sop_class_uid: str = "", sop_instance_uid: str = "", study_instance_uid: str = ""
) -> Received:
    allowed, held = _REFUSALS_LOG.allow()
    if allowed:
        more = f" ({held} more refusals since the last such line)" if held else ""
        logger.warning("instance refused (0x%04X): %s%s", status, reason, more)
    return Received(status, reason, sop_class_uid, sop_instance_uid, study_instance_uid)


_FACTS = ("PatientID", "AccessionNumber", "StudyDate", "Modality", "SeriesDescription")
_KEYWORDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "SeriesNumber", "InstanceNumber",
    *_FACTS, *INDEXED_TAGS,
)  # fmt: skip


def _header_values(
    dataset: bytes | bytearray | SpooledDataset, transfer_syntax: str, max_inflated: int
) -> dict[str, str]:
    """The text of each of :data:`_KEYWORDS` the dataset has, once its whole element stream is walked.

    See :func:`~hounsfield.listener.header.read_values`; raises :class:`DatasetMalformed` (or one of
    pydicom's errors for an indexed value it cannot decode).
    """
    if not isinstance(dataset, SpooledDataset):
        return read_values(dataset, transfer_syntax, _KEYWORDS, max_inflated=max_inflated)
    with dataset.path.open("rb") as handle:
        handle.seek(dataset.offset + len(dataset.head))
        return read_values(handle, transfer_syntax, _KEYWORDS, max_inflated=max_inflated, head=dataset.head)


def header_values(header: Dataset) -> dict[str, str]:
    """The index text of each header value the receiver reads, from a dataset pydicom decoded."""
    return {keyword: dataset_text(header, keyword) for keyword in _KEYWORDS if keyword in header}


def index_facts(values: Mapping[str, str]) -> dict[str, Any]:
    """The index row's study and series facts and indexed tags, from :func:`header_values`' text."""
    return {
        "patient_id": values.get("PatientID", "")[:64],
        "accession_number": values.get("AccessionNumber", "")[:16],
        "study_date": values.get("StudyDate", "")[:8],
        "modality": values.get("Modality", "")[:16],
        "series_description": values.get("SeriesDescription", "")[:64],
        "series_number": _int(values, "SeriesNumber"),
        "instance_number": _int(values, "InstanceNumber"),
        "tags": {keyword: values[keyword] for keyword in INDEXED_TAGS if keyword in values},
    }


def receive_instance(
    context: StoreContext,
    dataset: bytes | bytearray | SpooledDataset,
    transfer_syntax: str,
    origin: Origin,
    *,
    expected_sop_instance_uid: str | None = None,
    expected_sop_class_uid: str | None = None,
    expected_study_instance_uid: str | None = None,
    defer_durability: bool = False,
) -> Received:
    """Store one instance as it arrived (no transcoding) and index it.

    ``dataset`` is the encoded dataset without file meta, in ``transfer_syntax``, or a
    :class:`SpooledDataset` (then both ``expected_*`` UIDs are required: its file meta was made from
    them). The ``expected_*`` UIDs are the ones the transport announced (a C-STORE request's
    Affected SOP Class/Instance UID, the study of a study-scoped STOW-RS URL); a dataset that
    disagrees with them is refused (0xA900) before anything is written.

    ``defer_durability`` (the DICOM engine's own thread, with the ingest journal): return without
    waiting for the journal record to be durable and without ever blocking; the Success carries the
    record in ``durable_seq``, and the caller answers once the journal says it is durable. Where it
    would have to wait, :class:`~hounsfield.listener.journal.JournalBusy` is raised with nothing stored:
    call again without it, from a thread that may wait.
    """
    received, size = _receive(
        context,
        dataset,
        transfer_syntax,
        origin,
        expected_sop_instance_uid=expected_sop_instance_uid,
        expected_sop_class_uid=expected_sop_class_uid,
        expected_study_instance_uid=expected_study_instance_uid,
        defer_durability=defer_durability,
    )
    if context.metrics is not None:
        outcome = _outcome(received.status)
        if received.duplicate:
            outcome = "duplicate"
        context.metrics.instances.labels(origin.transport, outcome).inc()
        if size:
            context.metrics.bytes.labels(origin.transport).inc(size)
    return received


def _outcome(status: int) -> str:
    """The metrics label of a status: ``stored``, or the refusal's name (``out_of_resources``)."""
    if status == Status.SUCCESS:
        return "stored"
    return Status(status).label if status in Status.__members__.values() else "other"


def _receive(
    context: StoreContext,
    dataset: bytes | bytearray | SpooledDataset,
    transfer_syntax: str,
    origin: Origin,
    *,
    expected_sop_instance_uid: str | None = None,
    expected_sop_class_uid: str | None = None,
    expected_study_instance_uid: str | None = None,
    defer_durability: bool = False,
) -> tuple[Received, int]:
    """:func:`receive_instance`'s work; also returns the bytes written (0 when nothing was)."""
    if isinstance(dataset, SpooledDataset) and (expected_sop_instance_uid is None or expected_sop_class_uid is None):
        raise ValueError("a spooled dataset needs the expected SOP Class and Instance UIDs")
    try:
        header = _header_values(dataset, transfer_syntax, context.max_inflated)
        study_uid = check_uid(header.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(header.get("SeriesInstanceUID"), "SeriesInstanceUID")
        sop_uid = check_uid(header.get("SOPInstanceUID"), "SOPInstanceUID")
        sop_class = check_uid(header.get("SOPClassUID"), "SOPClassUID")
    except InvalidUID as exc:
        return _refuse(Status.DATASET_MISMATCH, str(exc)), 0
    except _HEADER_ERRORS as exc:
        if isinstance(exc, SyntaxNotStored):
            return _refuse(Status.TRANSFER_SYNTAX_NOT_SUPPORTED, str(exc)), 0
        if isinstance(exc, DatasetMalformed):  # our own words, no value from the dataset
            return _refuse(Status.CANNOT_UNDERSTAND, str(exc)), 0
        return _refuse(Status.CANNOT_UNDERSTAND, f"the dataset cannot be decoded ({type(exc).__name__})"), 0
    uids = {"sop_class_uid": sop_class, "sop_instance_uid": sop_uid, "study_instance_uid": study_uid}
    with log_context(study_uid=study_uid):  # this thread's lines about the instance carry its study's id
        return _receive_valid(
            context, dataset, transfer_syntax, origin, header, uids, series_uid,
            expected_sop_instance_uid=expected_sop_instance_uid, expected_sop_class_uid=expected_sop_class_uid,
            expected_study_instance_uid=expected_study_instance_uid, defer_durability=defer_durability,
        )  # fmt: skip


def _receive_valid(
    context: StoreContext,
    dataset: bytes | bytearray | SpooledDataset,
    transfer_syntax: str,
    origin: Origin,
    header: Mapping[str, str],
    uids: Mapping[str, str],
    series_uid: str,
    *,
    expected_sop_instance_uid: str | None,
    expected_sop_class_uid: str | None,
    expected_study_instance_uid: str | None,
    defer_durability: bool = False,
) -> tuple[Received, int]:
    """:func:`_receive`'s work once the header's UIDs are valid."""
    study_uid, sop_uid, sop_class = uids["study_instance_uid"], uids["sop_instance_uid"], uids["sop_class_uid"]
    if expected_sop_instance_uid is not None and sop_uid != expected_sop_instance_uid.strip().rstrip("\x00"):
        reason = "SOPInstanceUID differs from the request's Affected SOP Instance UID"
        return _refuse(Status.DATASET_MISMATCH, reason, **uids), 0
    if expected_sop_class_uid is not None and sop_class != expected_sop_class_uid.strip().rstrip("\x00"):
        return _refuse(
            Status.DATASET_MISMATCH, "SOPClassUID differs from the request's Affected SOP Class UID", **uids
        ), 0
    if expected_study_instance_uid is not None and study_uid != expected_study_instance_uid:
        return _refuse(Status.DATASET_MISMATCH, "StudyInstanceUID is not the study the request names", **uids), 0

    if context.journal is not None:
        return _receive_journaled(
            context.journal, dataset, transfer_syntax, origin, header, uids, series_uid, defer=defer_durability
        )
    try:
        if isinstance(dataset, SpooledDataset):
            stored = context.store.adopt_instance(
                study_uid, series_uid, sop_uid, dataset.path, sha256=dataset.sha256, size=dataset.size
            )
        else:
            data = part10_bytes(
                dataset, sop_class_uid=sop_class, sop_instance_uid=sop_uid, transfer_syntax=transfer_syntax
            )
            stored = context.store.write_instance(study_uid, series_uid, sop_uid, data)
    except OSError as exc:  # StoreFull included: the disk floor was reached, nothing was written
        return _refuse(Status.OUT_OF_RESOURCES, f"the study store cannot take it: {exc.strerror or exc}", **uids), 0

    item = _indexed(header, uids, series_uid, transfer_syntax, origin, str(stored.path), stored.size, stored.sha256)
    item = dataclasses.replace(item, revision=stored.revision)
    for attempt in range(3):
        try:
            context.index.record(item)
            break
        except IndexConflict:
            # Another association indexed the same study or series first: read it and retry.
            if attempt == 2:
                logger.exception("index conflict persisted")
                return _refuse(Status.PROCESSING_FAILURE, "the index kept conflicting", **uids), 0
        except DatabaseUnavailable:
            logger.exception("the index database is unavailable")
            return _refuse(Status.OUT_OF_RESOURCES, "the index database is unavailable", **uids), 0
    context.tracker.instance_received(origin.key, study_uid, origin.calling_ae)
    written = 0 if stored.duplicate else stored.size
    return _success(uids, series_uid, duplicate=stored.duplicate), written


def _success(uids: Mapping[str, str], series_uid: str, *, duplicate: bool, durable_seq: int = 0) -> Received:
    return Received(
        Status.SUCCESS,
        sop_class_uid=uids["sop_class_uid"],
        sop_instance_uid=uids["sop_instance_uid"],
        study_instance_uid=uids["study_instance_uid"],
        duplicate=duplicate,
        series_instance_uid=series_uid,
        durable_seq=durable_seq,
    )


def _indexed(
    header: Mapping[str, str],
    uids: Mapping[str, str],
    series_uid: str,
    transfer_syntax: str,
    origin: Origin,
    path: str,
    size: int,
    sha256: str,
) -> IndexedInstance:
    return IndexedInstance(
        study_instance_uid=uids["study_instance_uid"],
        series_instance_uid=series_uid,
        sop_instance_uid=uids["sop_instance_uid"],
        sop_class_uid=uids["sop_class_uid"],
        transfer_syntax_uid=str(transfer_syntax),
        calling_ae=origin.calling_ae,
        called_ae=origin.called_ae,
        path=path,
        size=size,
        sha256=sha256,
        revision=0,
        **index_facts(header),
    )


def _receive_journaled(
    journal: JournaledStore,
    dataset: bytes | bytearray | SpooledDataset,
    transfer_syntax: str,
    origin: Origin,
    header: Mapping[str, str],
    uids: Mapping[str, str],
    series_uid: str,
    *,
    defer: bool = False,
) -> tuple[Received, int]:
    """Through the ingest journal: Success once the journal record (or the moved spool file) is durable
    (``defer``: the record to wait for is in the Success's ``durable_seq``)."""
    seq = 0
    try:
        if isinstance(dataset, SpooledDataset):
            if defer:
                raise JournalBusy("a spooled dataset is moved into place by a thread that may wait")
            item = _indexed(header, uids, series_uid, transfer_syntax, origin, "", dataset.size, dataset.sha256)
            stored = journal.adopt(item, dataset.path, origin.key)
        else:
            prefix = part10_prefix(
                sop_class_uid=uids["sop_class_uid"],
                sop_instance_uid=uids["sop_instance_uid"],
                transfer_syntax=transfer_syntax,
            )
            size = len(prefix) + len(dataset)
            item = _indexed(header, uids, series_uid, transfer_syntax, origin, "", size, "")  # hashed when applied
            if defer:
                stored, seq = journal.write_nowait(item, (prefix, dataset), origin.key, block=False)
            else:
                stored = journal.write(item, (prefix, dataset), origin.key)
    except OSError as exc:  # StoreFull and JournalRefused included: nothing was acknowledged
        return _refuse(Status.OUT_OF_RESOURCES, f"the study store cannot take it: {exc.strerror or exc}", **uids), 0
    written = 0 if stored.duplicate else stored.size
    return _success(uids, series_uid, duplicate=stored.duplicate, durable_seq=seq), written
