"""The C-STORE handler: make the instance durable, index it, answer.

Routing never happens here; the handler only notes which studies the association touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom.events import Event
from sqlalchemy.exc import IntegrityError, OperationalError

from services.db import Database
from services.db.index import IndexedInstance, record_instance
from services.listener.completeness import CompletenessTracker
from services.router.rules import INDEXED_TAGS
from services.store import InvalidUID, StudyStore, check_uid

__all__ = ["STATUS", "StoreContext", "handle_store"]

logger = logging.getLogger(__name__)

STATUS = {
    "success": 0x0000,
    "out_of_resources": 0xA700,
    "dataset_mismatch": 0xA900,
    "cannot_understand": 0xC210,
    "processing_failure": 0x0110,
}


@dataclass(frozen=True)
class StoreContext:
    store: StudyStore
    db: Database
    tracker: CompletenessTracker


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


def handle_store(event: Event, context: StoreContext) -> int:
    """Store one instance; return a DICOM status (Success only once fsynced and indexed)."""
    try:
        ds = event.dataset
        study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
        sop_class = check_uid(ds.get("SOPClassUID"), "SOPClassUID")
        tags = {keyword: _text(ds, keyword) for keyword in INDEXED_TAGS if keyword in ds}
    except InvalidUID as exc:
        logger.warning("C-STORE refused: %s", exc)
        return STATUS["dataset_mismatch"]
    except (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:
        logger.warning("C-STORE refused: dataset cannot be decoded (%s)", type(exc).__name__)
        return STATUS["cannot_understand"]
    if sop_uid != str(getattr(event.request, "AffectedSOPInstanceUID", "")):
        logger.warning("C-STORE refused: SOPInstanceUID differs from the request's AffectedSOPInstanceUID")
        return STATUS["dataset_mismatch"]

    try:
        stored = context.store.write_instance(study_uid, series_uid, sop_uid, event.encoded_dataset())
    except OSError as exc:  # StoreFull included: the disk floor was reached, nothing was written
        logger.error("C-STORE refused (out of resources): %s", exc.strerror or exc)
        return STATUS["out_of_resources"]

    assoc = event.assoc
    item = IndexedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        patient_id=_text(ds, "PatientID"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription")[:64],
        instance_number=_int(ds, "InstanceNumber"),
        calling_ae=assoc.requestor.ae_title.strip(),
        called_ae=assoc.acceptor.ae_title.strip(),
        tags=tags,
        path=str(stored.path),
        size=stored.size,
        sha256=stored.sha256,
        revision=stored.revision,
    )
    for attempt in range(3):
        try:
            with context.db.session() as session:
                record_instance(session, item)
            break
        except IntegrityError:
            # Another association indexed the same study or series first: read it and retry.
            if attempt == 2:
                logger.exception("C-STORE refused: index conflict persisted")
                return STATUS["processing_failure"]
        except OperationalError:
            logger.exception("C-STORE refused: the index database is unavailable")
            return STATUS["out_of_resources"]
    context.tracker.instance_received(assoc, study_uid)
    return STATUS["success"]
