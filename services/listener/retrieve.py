"""Query/retrieve as a client: find studies on a source PACS and pull here what is missing.

:class:`QueryRetrieveClient` speaks Study Root C-FIND, C-MOVE and C-GET to one configured source
(``listener.sources.NAME.query``). :class:`Fetcher` uses it for ``hounsfield fetch``: it finds the
studies matching an accession number, patient, date range or Study Instance UID, compares the
source's instance counts with the index's, and retrieves only the series that are missing or
incomplete here, so that a study whose series were not all pushed is completed.

Where the instances go depends on the retrieve method:

* **C-MOVE** sends them to the running listener (``move_destination``, the listener's AE title by
  default), which stores them and completes the study by its own triggers (association release,
  source count, quiet period); the fetcher waits a little for that completion to show in the index.
* **C-GET** brings them back on the fetcher's own association: the fetcher is the storage SCP,
  stores each one through :func:`~hounsfield.listener.storage.receive_instance`, and, once the
  retrieve has finished with every instance here, completes the study itself (trigger
  ``retrieve``).

Patient IDs and accession numbers travel in the C-FIND identifiers only; they are never logged.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from kombu.exceptions import KombuError
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    EnhancedSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    RTDoseStorage,
    RTImageStorage,
    RTPlanStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)
from rich.table import Table
from sqlalchemy import select

from hounsfield.config import Settings, SourceSettings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Job, Study, StudyState
from hounsfield.db.index import series_instance_counts
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.header import dataset_int
from hounsfield.listener.storage import Origin, StoreContext, receive_instance
from hounsfield.registry.lifecycle import prepare_database
from hounsfield.router.routing import Router
from hounsfield.store import InvalidUID, StudyStore, check_uid

__all__ = [
    "FetchFailed",
    "FetchReport",
    "Fetcher",
    "QueryFailed",
    "QueryRetrieveClient",
    "RetrieveError",
    "SeriesOnSource",
    "SourceNotConfigured",
    "SourceUnavailable",
    "StudyFetch",
    "StudyOnSource",
    "StudyQuery",
    "Transfer",
    "render_report",
    "run_fetch",
]

logger = logging.getLogger(__name__)

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
_PENDING = (0xFF00, 0xFF01)
_MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1-255
_DATE_RANGE = re.compile(r"^(\d{8})(?:-(\d{8}))?$")
_NOT_IN_KEYS = re.compile(r"[*?\\\x00-\x1f]")

# Proposed for each storage class on a C-GET association; the source picks the one it holds.
_GET_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit,
    JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
]  # fmt: skip
# Storage classes offered for C-GET when the source does not say which ones the study holds.
_COMMON_STORAGE = [
    CTImageStorage, EnhancedCTImageStorage, MRImageStorage, EnhancedMRImageStorage, ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation, DigitalMammographyXRayImageStorageForPresentation, UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage, SecondaryCaptureImageStorage, MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage, MultiFrameTrueColorSecondaryCaptureImageStorage,
    NuclearMedicineImageStorage, PositronEmissionTomographyImageStorage, EnhancedPETImageStorage,
    XRayAngiographicImageStorage, XRayRadiofluoroscopicImageStorage, RTImageStorage, RTDoseStorage,
    RTStructureSetStorage, RTPlanStorage, SegmentationStorage, BasicTextSRStorage, EnhancedSRStorage,
    ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage, GrayscaleSoftcopyPresentationStateStorage,
    EncapsulatedPDFStorage,
]  # fmt: skip

_MOVE_STATUS = {
    0xA701: "the source is out of resources (cannot calculate the number of matches)",
    0xA702: "the source is out of resources (cannot perform the sub-operations)",
    0xA801: "the source does not know the move destination",
    0xA900: "the source says the identifier does not match the SOP class",
    0xFE00: "the retrieve was cancelled",
    0xB000: "some sub-operations failed or had warnings",
}


class RetrieveError(RuntimeError):
    """Querying or retrieving from a source failed; the message says why (no patient data in it)."""


class SourceNotConfigured(RetrieveError):
    """The named source does not exist or has no ``query`` settings."""


class SourceUnavailable(RetrieveError):
    """The source could not be reached, refused the association, or stopped answering."""


class QueryFailed(RetrieveError):
    """The source answered a query or retrieve with a failure status."""


class FetchFailed(RuntimeError):
    """``hounsfield fetch`` could not run at all; ``exit_code`` 2 for bad arguments, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class StudyQuery:
    """What to look for on the source; at least one key. Wildcards are refused (no accidental bulk pulls)."""

    accession_number: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    """``YYYYMMDD`` or a range ``YYYYMMDD-YYYYMMDD`` (both ends included)."""
    study_instance_uid: str | None = None

    def __post_init__(self) -> None:
        if not any((self.accession_number, self.patient_id, self.study_date, self.study_instance_uid)):
            raise ValueError("give at least one of: accession number, patient ID, study date, study UID")
        for name, value, longest in (
            ("accession number", self.accession_number, 16),
            ("patient ID", self.patient_id, 64),
        ):
            if value is not None and (not value.strip() or len(value) > longest or _NOT_IN_KEYS.search(value)):
                raise ValueError(f"the {name} must be 1-{longest} characters without wildcards (* ?) or backslash")
        if self.study_date is not None:
            _check_date_range(self.study_date)
        if self.study_instance_uid is not None:
            try:
                check_uid(self.study_instance_uid, "the study UID")
            except InvalidUID as exc:
                raise ValueError(str(exc)) from exc

    def identifier(self) -> Dataset:
        """The STUDY-level C-FIND identifier: these keys plus the counts and UIDs to return."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = self.study_instance_uid or ""
        ds.AccessionNumber = self.accession_number or ""
        ds.StudyDate = self.study_date or ""
        if self.patient_id is not None:
            ds.PatientID = self.patient_id
        ds.NumberOfStudyRelatedInstances = ""
        ds.NumberOfStudyRelatedSeries = ""
        ds.ModalitiesInStudy = ""
        ds.SOPClassesInStudy = ""
        return ds


def _check_date_range(value: str) -> None:
    match = _DATE_RANGE.match(value)
    if match is None:
        raise ValueError(f"study date {value!r} is not YYYYMMDD or YYYYMMDD-YYYYMMDD")
    try:
        dates = [datetime.strptime(part, "%Y%m%d") for part in match.groups() if part]
    except ValueError as exc:
        raise ValueError(f"study date {value!r} is not a calendar date") from exc
    if len(dates) == 2 and dates[0] > dates[1]:
        raise ValueError(f"study date range {value!r} ends before it starts")


@dataclass(frozen=True)
class StudyOnSource:
    """One study as the source describes it."""

    study_instance_uid: str
    accession_number: str = ""
    study_date: str = ""
    instance_count: int | None = None
    """NumberOfStudyRelatedInstances; None when the source does not say."""
    series_count: int | None = None
    modalities: tuple[str, ...] = ()
    sop_class_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeriesOnSource:
    """One series of a study as the source describes it."""

    series_instance_uid: str
    modality: str = ""
    series_number: int | None = None
    instance_count: int | None = None
    """NumberOfSeriesRelatedInstances; None when the source does not say."""


@dataclass(frozen=True)
class Transfer:
    """The final answer to a C-MOVE or C-GET: its status and sub-operation counts."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 0x0000 and self.failed == 0

    def reason(self, destination: str | None = None) -> str:
        """Why the transfer is not a clean success ('' when it is)."""
        if self.ok:
            return ""
        if self.status == 0xA801 or (self.status & 0xF000 == 0xC000 and destination and not self.completed):
            check = (
                f"is the listener running, and does the source know move destination {destination!r} (AE, host, port)?"
            )
            return f"the source could not deliver the study (0x{self.status:04X}): {check}"
        text = _MOVE_STATUS.get(self.status, "the source could not perform the retrieve")
        failed = f"; {self.failed} instance(s) failed" if self.failed else ""
        return f"{text} (0x{self.status:04X}){failed}"


def _strings(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value: Any = ds.get(keyword)
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _status(status: Dataset | None) -> int:
    if status is None or "Status" not in status:
        raise SourceUnavailable("the source stopped answering (timeout, or the association was aborted)")
    return int(status.Status)


class QueryRetrieveClient:
    """A Study Root query/retrieve SCU for one configured source."""

    def __init__(self, name: str, source: SourceSettings, *, calling_ae: str) -> None:
        if source.query is None:
            raise SourceNotConfigured(f"source {name!r} has no query settings (listener.sources.{name}.query)")
        self.name = name
        self.settings = source.query
        self.called_ae = source.query.ae_title or source.ae_title
        self.calling_ae = calling_ae

    def __repr__(self) -> str:
        return f"QueryRetrieveClient({self.name!r}, {self.settings.host}:{self.settings.port}, {self.called_ae!r})"

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        timeout = self.settings.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = timeout
        return ae

    @contextmanager
    def _association(self, ae: AE, **kwargs: Any) -> Iterator[Association]:
        qr = self.settings
        connected: list[bool] = []
        handlers = [*kwargs.pop("evt_handlers", []), (evt.EVT_CONN_OPEN, lambda _: connected.append(True))]
        assoc = ae.associate(qr.host, qr.port, ae_title=self.called_ae, evt_handlers=handlers, **kwargs)
        where = f"source {self.name!r} ({qr.host}:{qr.port}, AE {self.called_ae!r})"
        if not assoc.is_established:
            if not connected:
                raise SourceUnavailable(
                    f"{where} is not reachable (connection refused or no answer within {qr.timeout_s:g} s)"
                )
            if assoc.is_rejected:
                raise SourceUnavailable(f"{where} rejected the association: does it know AE {self.calling_ae!r}?")
            if assoc.is_aborted:
                raise SourceUnavailable(f"{where} aborted the association request")
            raise SourceUnavailable(f"{where} did not answer the association request within {qr.timeout_s:g} s")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _find(self, identifier: Dataset) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(FIND)
        matches: list[Dataset] = []
        with self._association(ae) as assoc:
            try:
                responses = assoc.send_c_find(identifier, FIND)
                for status, found in responses:
                    code = _status(status)
                    if code in _PENDING:
                        if found is not None:
                            matches.append(found)
                        continue
                    if code != 0x0000:
                        raise QueryFailed(f"source {self.name!r} answered the C-FIND with status 0x{code:04X}")
                    break
            except ValueError as exc:  # no accepted presentation context for the model
                raise QueryFailed(f"source {self.name!r} does not offer Study Root C-FIND") from exc
        return matches

    def find_studies(self, query: StudyQuery) -> list[StudyOnSource]:
        """Studies matching ``query``, with the source's counts."""
        studies = []
        for found in self._find(query.identifier()):
            uid = str(found.get("StudyInstanceUID", "") or "")
            if not uid:
                continue
            studies.append(
                StudyOnSource(
                    study_instance_uid=uid,
                    accession_number=str(found.get("AccessionNumber", "") or ""),
                    study_date=str(found.get("StudyDate", "") or ""),
                    instance_count=dataset_int(found, "NumberOfStudyRelatedInstances"),
                    series_count=dataset_int(found, "NumberOfStudyRelatedSeries"),
                    modalities=_strings(found, "ModalitiesInStudy"),
                    sop_class_uids=_strings(found, "SOPClassesInStudy"),
                )
            )
        return sorted(studies, key=lambda s: (s.study_date, s.study_instance_uid))

    def find_series(self, study_uid: str) -> list[SeriesOnSource]:
        """The series of one study, with the source's instance counts."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ""
        ds.Modality = ""
        ds.SeriesNumber = ""
        ds.NumberOfSeriesRelatedInstances = ""
        return [
            SeriesOnSource(
                series_instance_uid=str(found.SeriesInstanceUID),
                modality=str(found.get("Modality", "") or ""),
                series_number=dataset_int(found, "SeriesNumber"),
                instance_count=dataset_int(found, "NumberOfSeriesRelatedInstances"),
            )
            for found in self._find(ds)
            if found.get("SeriesInstanceUID")
        ]

    def study_instance_count(self, study_uid: str) -> int | None:
        """NumberOfStudyRelatedInstances of one study; None when the source does not hold it or say."""
        found = self.find_studies(StudyQuery(study_instance_uid=study_uid))
        return found[0].instance_count if found else None

    @staticmethod
    def _retrieve_identifier(study_uid: str, series_uids: Sequence[str] | None) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        if series_uids:
            ds.QueryRetrieveLevel = "SERIES"
            ds.SeriesInstanceUID = list(series_uids) if len(series_uids) > 1 else series_uids[0]
        else:
            ds.QueryRetrieveLevel = "STUDY"
        return ds

    @staticmethod
    def _final(responses: Iterator[tuple[Dataset, Dataset | None]]) -> Transfer:
        for status, _ in responses:
            code = _status(status)
            if code in _PENDING:
                continue
            return Transfer(
                status=code,
                completed=dataset_int(status, "NumberOfCompletedSuboperations") or 0,
                failed=dataset_int(status, "NumberOfFailedSuboperations") or 0,
                warning=dataset_int(status, "NumberOfWarningSuboperations") or 0,
            )
        raise SourceUnavailable("the source ended the retrieve without a final status")

    def move(self, study_uid: str, series_uids: Sequence[str] | None, destination: str) -> Transfer:
        """C-MOVE a whole study (``series_uids`` None) or some of its series, in one request, to ``destination``."""
        ae = self._ae()
        ae.add_requested_context(MOVE)
        with self._association(ae) as assoc:
            try:
                responses = assoc.send_c_move(self._retrieve_identifier(study_uid, series_uids), destination, MOVE)
                return self._final(responses)
            except ValueError as exc:
                raise QueryFailed(f"source {self.name!r} does not offer Study Root C-MOVE") from exc

    def get(
        self,
        study_uid: str,
        series_uids: Sequence[str] | None,
        sop_class_uids: Sequence[str],
        on_store: Callable[[evt.Event], int],
    ) -> Transfer:
        """C-GET a whole study or some of its series; each instance is handed to ``on_store`` (returns a status).

        ``sop_class_uids`` are the storage classes to offer (the study's, when the source said);
        a common set is offered when it is empty.
        """
        ae = self._ae()
        ae.add_requested_context(GET)
        classes = list(dict.fromkeys(sop_class_uids or _COMMON_STORAGE))[: _MAX_CONTEXTS - 1]
        for uid in classes:
            ae.add_requested_context(uid, _GET_TRANSFER_SYNTAXES)
        roles = [build_role(uid, scp_role=True) for uid in classes]
        with self._association(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            try:
                return self._final(assoc.send_c_get(self._retrieve_identifier(study_uid, series_uids), GET))
            except ValueError as exc:
                raise QueryFailed(f"source {self.name!r} does not offer Study Root C-GET") from exc


Outcome = Literal["complete-here", "would-retrieve", "retrieved", "failed"]


@dataclass
class StudyFetch:
    """What happened to one study found on the source."""

    study_instance_uid: str
    accession_number: str
    study_date: str
    on_source: int | None
    here_before: int
    here_after: int
    outcome: Outcome
    series_on_source: int | None = None
    series_to_retrieve: int = 0
    retrieved: int = 0
    failed: int = 0
    reason: str = ""
    state: str | None = None
    completion_trigger: str | None = None


@dataclass
class FetchReport:
    """The answer of one ``hounsfield fetch``."""

    source: str
    method: str
    dry_run: bool
    matched: int
    studies: list[StudyFetch] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Failures beside the studies' own (e.g. jobs that could not be put on the queue)."""

    @property
    def ok(self) -> bool:
        return not self.problems and all(study.outcome != "failed" for study in self.studies)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class Fetcher:
    """Finds studies on a source and retrieves what the index lacks (see the module docstring).

    ``complete`` is called with a ``retrieve`` completion after a C-GET (the caller routes it:
    :meth:`hounsfield.router.routing.Router.on_study_complete`); C-MOVEd studies are completed by the
    listener that receives them, and the fetcher waits up to ``wait_s`` to report that completion.
    """

    def __init__(
        self,
        settings: Settings,
        source_name: str,
        *,
        db: Database,
        store: StudyStore,
        complete: Callable[[StudyComplete], object],
        wait_s: float = 10.0,
    ) -> None:
        sources = settings.listener.sources
        if source_name not in sources:
            known = ", ".join(sorted(sources)) or "none"
            raise SourceNotConfigured(f"no source named {source_name!r} (listener.sources; configured: {known})")
        self.source = sources[source_name]
        self.client = QueryRetrieveClient(source_name, self.source, calling_ae=settings.listener.ae_title)
        assert self.source.query is not None  # the client checked
        self.method = self.source.query.retrieve
        self.destination = self.source.query.move_destination or settings.listener.ae_title
        self._settings = settings
        self._db = db
        self._store = store
        self._complete = complete
        self._wait_s = wait_s

    def run(self, query: StudyQuery, *, dry_run: bool = False, limit: int = 100) -> FetchReport:
        """Find, compare, retrieve. Raises :class:`RetrieveError` when the source cannot be queried at all."""
        found = self.client.find_studies(query)
        report = FetchReport(self.client.name, self.method, dry_run, matched=len(found))
        for study in found[:limit]:
            report.studies.append(self._fetch_study(study, dry_run))
        return report

    def _here(self, study_uid: str) -> dict[str, int]:
        with self._db.session() as session:
            return series_instance_counts(session, study_uid)

    def _study_state(self, study_uid: str) -> tuple[str | None, str | None, datetime | None]:
        with self._db.session() as session:
            row = session.execute(
                select(Study.state, Study.completion_trigger, Study.completed_at).where(
                    Study.study_instance_uid == study_uid
                )
            ).one_or_none()
        if row is None:
            return None, None, None
        state, trigger, completed_at = row
        return str(StudyState(state).value), trigger, completed_at

    def _fetch_study(self, study: StudyOnSource, dry_run: bool) -> StudyFetch:
        uid = study.study_instance_uid
        here = self._here(uid)
        before = sum(here.values())
        state, trigger, _ = self._study_state(uid)
        result = StudyFetch(
            uid, study.accession_number, study.study_date, study.instance_count, before, before, "complete-here",
            series_on_source=study.series_count, state=state, completion_trigger=trigger,
        )  # fmt: skip
        if study.instance_count is not None and before >= study.instance_count:
            return result
        try:
            series = self.client.find_series(uid)
        except RetrieveError as exc:
            result.outcome, result.reason = "failed", str(exc)
            return result
        result.series_on_source = len(series)
        missing = [
            s for s in series if s.instance_count is None or here.get(s.series_instance_uid, 0) < s.instance_count
        ]
        result.series_to_retrieve = len(missing)
        if not missing:
            return result
        if dry_run:
            result.outcome = "would-retrieve"
            return result
        series_uids = None if not here else [s.series_instance_uid for s in missing]
        started = datetime.now(UTC)
        refused: list[str] = []
        try:
            if self.method == "c-get":
                transfer = self._get(study, series_uids, refused)
            else:
                transfer = self.client.move(uid, series_uids, self.destination)
        except RetrieveError as exc:
            result.outcome, result.reason = "failed", str(exc)
            result.here_after = sum(self._here(uid).values())
            return result
        result.retrieved, result.failed = transfer.completed, transfer.failed
        expected = study.instance_count
        if self.method == "c-move" and transfer.ok:
            self._wait_for_index(uid, expected, started)
        result.here_after = sum(self._here(uid).values())
        if not transfer.ok or (expected is not None and result.here_after < expected):
            result.outcome = "failed"
            result.reason = transfer.reason(self.destination if self.method == "c-move" else None) or (
                f"{result.here_after} of {expected} instance(s) are here after the retrieve"
            )
            if refused:
                result.reason += f"; {len(refused)} refused here, first because {refused[0]}"
        else:
            result.outcome = "retrieved"
            if self.method == "c-get":
                self._complete(
                    StudyComplete(study_instance_uid=uid, trigger="retrieve", calling_ae=self.source.ae_title)
                )
            else:
                self._wait_for_listener(uid, started, result)
        result.state, result.completion_trigger, _ = self._study_state(uid)
        logger.info(
            "fetch from %s (%s): %d retrieved, %d failed, %s", self.client.name, self.method, transfer.completed,
            transfer.failed, result.outcome,
        )  # fmt: skip
        return result

    def _get(self, study: StudyOnSource, series_uids: list[str] | None, refused: list[str]) -> Transfer:
        """C-GET with this process as the storage SCP; reasons for instances refused here go to ``refused``."""
        tracker = CompletenessTracker(lambda _: None, complete_on_release=False, quiet_period_s=3600.0)
        context = StoreContext(self._store, self._db, tracker)
        key = ("c-get", id(self), study.study_instance_uid)
        origin = Origin(key, self.source.ae_title, self._settings.listener.ae_title)

        def on_store(event: evt.Event) -> int:
            request = event.request
            received = receive_instance(
                context,
                event.encoded_dataset(include_meta=False),
                str(event.context.transfer_syntax),
                origin,
                expected_sop_instance_uid=str(getattr(request, "AffectedSOPInstanceUID", "") or ""),
                expected_sop_class_uid=str(getattr(request, "AffectedSOPClassUID", "") or ""),
            )
            if not received.ok:
                refused.append(received.reason)
            return received.status

        return self.client.get(study.study_instance_uid, series_uids, study.sop_class_uids, on_store)

    def _wait_for_index(self, study_uid: str, expected: int | None, started: datetime) -> None:
        """Let the listener index what it acknowledged (its journal is applied within moments).

        Waits until the index holds ``expected`` instances of the study, or the listener completed
        it after ``started`` (which it does only once every instance before the release is indexed),
        at most the fetch's wait.
        """
        deadline = time.monotonic() + self._wait_s
        while time.monotonic() < deadline:
            if expected is not None and sum(self._here(study_uid).values()) >= expected:
                return
            state, _, completed_at = self._study_state(study_uid)
            if state not in (None, StudyState.RECEIVING.value) and completed_at and _aware(completed_at) >= started:
                return
            time.sleep(0.05)

    def _wait_for_listener(self, study_uid: str, started: datetime, result: StudyFetch) -> None:
        deadline = time.monotonic() + self._wait_s
        while True:
            state, _, completed_at = self._study_state(study_uid)
            done = state is not None and state != StudyState.RECEIVING.value
            if done and completed_at is not None and _aware(completed_at) >= started:
                return
            if time.monotonic() >= deadline:
                result.reason = "the listener has not completed the study yet; it will by its own triggers"
                return
            time.sleep(0.1)


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back (stored as UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def render_report(report: FetchReport) -> Table:
    """The report as a rich table, one row per study (accession number and date, never the patient)."""
    title = f"{report.matched} stud{'y' if report.matched == 1 else 'ies'} on {report.source} ({report.method})"
    if report.dry_run:
        title += ", dry run"
    if report.matched > len(report.studies):
        title += f"; the first {len(report.studies)} handled (raise --limit for more)"
    table = Table(title=title, title_justify="left")
    for column in ("Study Instance UID", "Accession", "Date", "On source", "Here", "Series to get", "Retrieved"):
        table.add_column(column, overflow="fold")
    table.add_column("Outcome")
    table.add_column("Completion")
    table.add_column("Reason", overflow="fold")
    colours = {"failed": "red", "retrieved": "green", "would-retrieve": "yellow", "complete-here": "cyan"}
    for s in report.studies:
        here = str(s.here_before) if s.here_after == s.here_before else f"{s.here_before} -> {s.here_after}"
        table.add_row(
            s.study_instance_uid,
            s.accession_number,
            s.study_date,
            "?" if s.on_source is None else str(s.on_source),
            here,
            str(s.series_to_retrieve),
            f"{s.retrieved}" + (f" ({s.failed} failed)" if s.failed else ""),
            f"[{colours[s.outcome]}]{s.outcome}[/]",
            f"{s.state or '-'}" + (f" ({s.completion_trigger})" if s.completion_trigger else ""),
            s.reason,
        )
    return table


def run_fetch(
    settings: Settings,
    source: str,
    *,
    dry_run: bool = False,
    limit: int = 100,
    wait_s: float = 10.0,
    enqueue: Callable[[Job], None] | None = None,
    **keys: str | None,
) -> FetchReport:
    """``hounsfield fetch``: query ``source`` for the studies matching ``keys`` (see :class:`StudyQuery`).

    C-GET retrieves are routed here (jobs go to ``enqueue``, the Celery broker by default); jobs
    that cannot be queued stay queued in the database and are named in the report's problems.
    Raises :class:`FetchFailed` for bad arguments, an unknown source, or a source that cannot be queried.
    """
    try:
        query = StudyQuery(**keys)
    except ValueError as exc:
        raise FetchFailed(str(exc), exit_code=2) from exc
    db = Database(settings.sqlalchemy_url)
    try:
        prepare_database(db, settings)
        store = StudyStore(settings.data_dir, min_free_bytes=settings.listener.min_free_disk_mb * 2**20)
        unsent: list[str] = []
        sender = enqueue

        def send(job: Job) -> None:
            nonlocal sender
            if sender is None:
                from hounsfield.worker.celery_app import Enqueuer

                sender = Enqueuer(settings)
            try:
                sender(job)
            except KombuError:
                unsent.append(job.id)

        router = Router(settings, db, send)
        try:
            fetcher = Fetcher(settings, source, db=db, store=store, complete=router.on_study_complete, wait_s=wait_s)
        except SourceNotConfigured as exc:
            raise FetchFailed(str(exc), exit_code=2) from exc
        try:
            report = fetcher.run(query, dry_run=dry_run, limit=limit)
        except RetrieveError as exc:
            raise FetchFailed(str(exc)) from exc
        if unsent:
            report.problems.append(
                f"{len(unsent)} job(s) could not be put on the queue (is the broker running?); they stay "
                "queued in the database and the listener re-queues them when it starts"
            )
        return report
    finally:
        db.dispose()
