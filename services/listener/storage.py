"""Receiving one instance, whatever carried it: make it durable, index it, answer.

:func:`receive_instance` is transport-neutral. The DIMSE engine (C-STORE) and STOW-RS both hand it
the dataset bytes as they arrived and the transfer syntax they arrived in; it reads the header
(never the pixels), writes a Part 10 file without transcoding, indexes it, and returns a DICOM
status. Success is returned only once the file is fsynced and its index row committed.

Routing never happens here; the receiver only tells the completeness tracker which study the
sender touched.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Hashable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from sqlalchemy.exc import IntegrityError, OperationalError

from services.db import Database
from services.db.index import IndexedInstance, record_instance
from services.listener.completeness import CompletenessTracker
from services.router.rules import INDEXED_TAGS
from services.store import InvalidUID, StudyStore, check_uid

__all__ = ["STATUS", "Origin", "Received", "StoreContext", "part10_bytes", "read_header", "receive_instance"]

logger = logging.getLogger(__name__)

STATUS = {
    "success": 0x0000,
    "out_of_resources": 0xA700,
    "dataset_mismatch": 0xA900,
    "cannot_understand": 0xC210,
    "processing_failure": 0x0110,
}

_PIXEL_DATA_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_HEADER_ERRORS = (
    InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError, OverflowError, zlib.error
)  # fmt: skip


@dataclass(frozen=True)
class StoreContext:
    """What the receiver writes to: the study store, the index, and the completeness tracker."""

    store: StudyStore
    db: Database
    tracker: CompletenessTracker


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

    @property
    def ok(self) -> bool:
        return self.status == STATUS["success"]


def _before_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_DATA_TAGS


def read_header(dataset: bytes, transfer_syntax: str) -> Dataset:
    """Decode the dataset's elements up to (not including) the pixel data.

    Raises one of pydicom's decoding errors (or :class:`ValueError`) when the bytes are not a
    dataset in ``transfer_syntax``.
    """
    syntax = UID(transfer_syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        dataset = inflater.decompress(dataset, 64 << 20)
        if inflater.unconsumed_tail:
            raise ValueError("deflated dataset inflates beyond 64 MiB before its pixel data")
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    header = read_dataset(BytesIO(dataset), implicit, little, stop_when=_before_pixels)
    # read_dataset is lazy about values: touch them now so that bad values fail here, not later.
    for element in header.iterall():
        _ = element.value
    return header


def part10_bytes(dataset: bytes, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The DICOM file (preamble, file meta, dataset as it arrived) for one instance."""
    meta = create_file_meta(
        sop_class_uid=UID(sop_class_uid), sop_instance_uid=UID(sop_instance_uid), transfer_syntax=UID(transfer_syntax)
    )
    return b"".join((b"\x00" * 128, b"DICM", encode_file_meta(meta), dataset))


def _text(ds: Dataset, keyword: str) -> str:
    value: Any = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _refuse(
    status: str, reason: str, *, sop_class_uid: str = "", sop_instance_uid: str = "", study_instance_uid: str = ""
) -> Received:
    logger.warning("instance refused (0x%04X): %s", STATUS[status], reason)
    return Received(STATUS[status], reason, sop_class_uid, sop_instance_uid, study_instance_uid)


def receive_instance(
    context: StoreContext,
    dataset: bytes,
    transfer_syntax: str,
    origin: Origin,
    *,
    expected_sop_instance_uid: str | None = None,
    expected_sop_class_uid: str | None = None,
) -> Received:
    """Store one instance as it arrived (no transcoding) and index it.

    ``dataset`` is the encoded dataset without file meta, in ``transfer_syntax``. The ``expected_*``
    UIDs are the ones the transport announced (a C-STORE request's Affected SOP Class/Instance UID);
    a dataset that disagrees with them is refused.
    """
    try:
        header = read_header(dataset, transfer_syntax)
        study_uid = check_uid(header.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(header.get("SeriesInstanceUID"), "SeriesInstanceUID")
        sop_uid = check_uid(header.get("SOPInstanceUID"), "SOPInstanceUID")
        sop_class = check_uid(header.get("SOPClassUID"), "SOPClassUID")
        tags = {keyword: _text(header, keyword) for keyword in INDEXED_TAGS if keyword in header}
        facts = {
            "patient_id": _text(header, "PatientID")[:64],
            "accession_number": _text(header, "AccessionNumber")[:16],
            "study_date": _text(header, "StudyDate")[:8],
            "modality": _text(header, "Modality")[:16],
            "series_description": _text(header, "SeriesDescription")[:64],
        }
    except InvalidUID as exc:
        return _refuse("dataset_mismatch", str(exc))
    except _HEADER_ERRORS as exc:
        return _refuse("cannot_understand", f"the dataset cannot be decoded ({type(exc).__name__})")
    uids = {"sop_class_uid": sop_class, "sop_instance_uid": sop_uid, "study_instance_uid": study_uid}
    if expected_sop_instance_uid is not None and sop_uid != expected_sop_instance_uid.strip().rstrip("\x00"):
        reason = "SOPInstanceUID differs from the request's Affected SOP Instance UID"
        return _refuse("dataset_mismatch", reason, **uids)
    if expected_sop_class_uid is not None and sop_class != expected_sop_class_uid.strip().rstrip("\x00"):
        return _refuse("dataset_mismatch", "SOPClassUID differs from the request's Affected SOP Class UID", **uids)

    data = part10_bytes(dataset, sop_class_uid=sop_class, sop_instance_uid=sop_uid, transfer_syntax=transfer_syntax)
    try:
        stored = context.store.write_instance(study_uid, series_uid, sop_uid, data)
    except OSError as exc:  # StoreFull included: the disk floor was reached, nothing was written
        return _refuse("out_of_resources", f"the study store cannot take it: {exc.strerror or exc}", **uids)

    item = IndexedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(transfer_syntax),
        series_number=_int(header, "SeriesNumber"),
        instance_number=_int(header, "InstanceNumber"),
        calling_ae=origin.calling_ae,
        called_ae=origin.called_ae,
        tags=tags,
        path=str(stored.path),
        size=stored.size,
        sha256=stored.sha256,
        revision=stored.revision,
        **facts,
    )
    for attempt in range(3):
        try:
            with context.db.session() as session:
                record_instance(session, item)
            break
        except IntegrityError:
            # Another association indexed the same study or series first: read it and retry.
            if attempt == 2:
                logger.exception("index conflict persisted")
                return _refuse("processing_failure", "the index kept conflicting", **uids)
        except OperationalError:
            logger.exception("the index database is unavailable")
            return _refuse("out_of_resources", "the index database is unavailable", **uids)
    context.tracker.instance_received(origin.key, study_uid, origin.calling_ae)
    return Received(STATUS["success"], duplicate=stored.duplicate, **uids)
