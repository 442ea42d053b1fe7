"""Start-up recovery of the study store after a crash (kill -9, power cut, OOM kill).

The listener answers Success only after the instance file is fsynced and renamed into place and its
index row is committed. A crash can leave three kinds of debris, which :func:`recover_store` clears
before the listener serves again:

* ``.incoming-*`` temporary files of writes that never reached their rename: never acknowledged,
  removed;
* instance files renamed into place whose index commit never happened (or was lost: the listener's
  SQLite index commits with ``synchronous=NORMAL``, which an operating-system crash may roll back),
  indexed now from their own header. The file is the record; the index is derived from it;
* studies left ``receiving``: no association is open any more, so nothing would ever complete them.
  They are handed to the completeness tracker, which gives each a full quiet period from the restart
  (a sender that retries in that time is still part of the same study).

Nothing is ever deleted but temporary files. A file that cannot be read as DICOM is left in place
and counted; an index row whose file is missing or short (which the write order makes impossible
short of disk corruption) is reported, not removed.

The scan lists every study folder, so its cost grows with the store (a few seconds per hundred
thousand files); index queries go by batches of SOP Instance UIDs.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from hounsfield.db import Database
from hounsfield.db.index import (
    IndexedInstance,
    indexed_files,
    instance_files,
    receiving_studies,
    record_instance,
    study_series_callers,
)
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.storage import header_values, index_facts
from hounsfield.store import InvalidUID, StudyStore, check_uid, sha256_file

__all__ = ["RecoveryReport", "recover_store"]

logger = logging.getLogger(__name__)

_TEMP_PREFIX = ".incoming-"
_INSTANCE_NAME = re.compile(r"^(?P<sop>[0-9.]+?)(?:\.r(?P<revision>[0-9]+))?\.dcm$")
_READ_ERRORS = (InvalidDicomError, InvalidUID, ValueError, TypeError, KeyError, AttributeError, EOFError, OSError)


@dataclass
class RecoveryReport:
    """What start-up recovery found and did (counts only: no UIDs, no patient data)."""

    temp_files_removed: int = 0
    files_scanned: int = 0
    instances_indexed: int = 0
    """Files on disk with no index row (or a row pointing at an older revision), indexed now."""
    unreadable_files: int = 0
    """Instance files that could not be read as DICOM or whose UIDs disagree with their folder; left in place."""
    missing_files: int = 0
    """Index rows of receiving studies whose file is missing or shorter than recorded."""
    receiving_studies: int = 0
    """Studies left receiving, handed to the quiet period."""

    @property
    def clean(self) -> bool:
        return not (self.temp_files_removed or self.instances_indexed or self.unreadable_files or self.missing_files)


@dataclass(frozen=True)
class _OnDisk:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    revision: int


@dataclass
class _Study:
    uid: str
    files: dict[str, list[_OnDisk]] = field(default_factory=dict)
    """SOP Instance UID -> its files (revisions, possibly in several series folders)."""


def _scan_study(folder: Path, counts: RecoveryReport) -> _Study | None:
    """The study folder's instance files; temporary files are removed on the way."""
    try:
        study_uid = check_uid(folder.name, "StudyInstanceUID")
    except InvalidUID:
        logger.warning("recovery: a folder in the study store is not a study; left alone")
        return None
    study = _Study(study_uid)
    for series_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for entry in os.scandir(series_dir):
            if entry.name.startswith(_TEMP_PREFIX):
                Path(entry.path).unlink(missing_ok=True)
                counts.temp_files_removed += 1
                continue
            match = _INSTANCE_NAME.match(entry.name)
            if match is None or not entry.is_file():
                continue
            counts.files_scanned += 1
            on_disk = _OnDisk(Path(entry.path), study_uid, series_dir.name, match["sop"], int(match["revision"] or 0))
            study.files.setdefault(on_disk.sop_uid, []).append(on_disk)
    return study


def _study_folders(store: StudyStore) -> Iterator[Path]:
    if not store.studies.is_dir():
        return
    yield from sorted(p for p in store.studies.iterdir() if p.is_dir())


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _newest(files: list[_OnDisk]) -> _OnDisk:
    """The latest write among one instance's files: revisions only ever grow, then by modification time."""
    return max(files, key=lambda f: (f.revision, f.path.stat().st_mtime))


def _needs_index(candidate: _OnDisk, row: tuple[str, int, datetime] | None) -> bool:
    if row is None:
        return True
    path, revision, received_at = row
    if path == str(candidate.path) or candidate.revision <= revision:
        return False
    # A newer revision than the row's, written after the row was: its index update was lost. (An
    # older revision sent again repoints the row at that time, so then the row is the newer one.)
    written = datetime.fromtimestamp(candidate.path.stat().st_mtime, UTC)
    return written > _as_utc(received_at)


def _indexed_item(candidate: _OnDisk, called_ae: str) -> IndexedInstance:
    """The index row for one instance file, from its own header (never its pixels)."""
    # Opened by descriptor: pydicom's warnings about bad files name the file, and its path holds UIDs.
    with io.BufferedReader(io.FileIO(os.open(candidate.path, os.O_RDONLY))) as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = pydicom.dcmread(handle, stop_before_pixels=True)
    study_uid = check_uid(header.get("StudyInstanceUID"), "StudyInstanceUID")
    series_uid = check_uid(header.get("SeriesInstanceUID"), "SeriesInstanceUID")
    sop_uid = check_uid(header.get("SOPInstanceUID"), "SOPInstanceUID")
    sop_class = check_uid(header.get("SOPClassUID"), "SOPClassUID")
    if (study_uid, series_uid, sop_uid) != (candidate.study_uid, candidate.series_uid, candidate.sop_uid):
        raise ValueError("the file's UIDs disagree with its place in the store")
    meta = header.file_meta
    return IndexedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(meta.TransferSyntaxUID),
        calling_ae=str(meta.get("SourceApplicationEntityTitle", "") or "").strip(),
        called_ae=called_ae,
        path=str(candidate.path),
        size=candidate.path.stat().st_size,
        sha256=sha256_file(candidate.path),
        revision=candidate.revision,
        **index_facts(header_values(header)),
    )


def _index_study(db: Database, study: _Study, called_ae: str, counts: RecoveryReport) -> None:
    with db.session() as session:
        rows = indexed_files(session, sorted(study.files))
    items: list[IndexedInstance] = []
    for sop_uid, files in sorted(study.files.items()):
        candidate = _newest(files)
        if not _needs_index(candidate, rows.get(sop_uid)):
            continue
        try:
            items.append(_indexed_item(candidate, called_ae))
        except _READ_ERRORS as exc:
            counts.unreadable_files += 1
            logger.error("recovery: an instance file cannot be indexed (%s); left in place", type(exc).__name__)
    if not items:
        return
    with db.session() as session:
        for item in items:
            record_instance(session, item)
    counts.instances_indexed += len(items)


def _receiving(db: Database, counts: RecoveryReport) -> list[tuple[str, str]]:
    """Studies left receiving, each with the calling AE title of its first series; checks their files."""
    with db.session() as session:
        studies: list[tuple[str, str]] = []
        for uid in receiving_studies(session):
            series = study_series_callers(session, uid)
            studies.append((uid, next((ae for _, ae in series if ae), "")))
            for path, size in instance_files(session, [s for s, _ in series]):
                try:
                    short = os.stat(path).st_size < size
                except FileNotFoundError:
                    short = True
                if short:
                    counts.missing_files += 1
    if counts.missing_files:
        logger.error("recovery: %d indexed instance file(s) are missing or short", counts.missing_files)
    return studies


def recover_store(
    store: StudyStore,
    db: Database,
    tracker: CompletenessTracker | None = None,
    *,
    called_ae: str = "",
    scan_files: bool = True,
) -> RecoveryReport:
    """Bring the study store and its index back in step after a crash; run before serving.

    ``called_ae`` is recorded for series first seen in a recovered file (the file does not say which
    of the listener's titles was called). With a ``tracker``, studies left receiving get a quiet
    period from now. ``scan_files=False`` (the last run stopped cleanly: nothing can be half-done)
    skips the walk over the store and only resumes the receiving studies.

    Assumes no other process writes to the store meanwhile (it removes every temporary file).
    """
    report = RecoveryReport()
    for folder in _study_folders(store) if scan_files else ():
        study = _scan_study(folder, report)
        if study is not None and study.files:
            _index_study(db, study, called_ae, report)
    receiving = _receiving(db, report)
    if tracker is not None and receiving:
        tracker.resume(receiving)
    report.receiving_studies = len(receiving)
    if report.clean:
        logger.info("recovery: store and index agree (%d files); %d study(ies) receiving", report.files_scanned,
                    report.receiving_studies)  # fmt: skip
    else:
        logger.warning(
            "recovery: removed %d temporary file(s), indexed %d instance(s), %d unreadable, %d missing; "
            "%d study(ies) receiving",
            report.temp_files_removed,
            report.instances_indexed,
            report.unreadable_files,
            report.missing_files,
            report.receiving_studies,
        )
    return report
