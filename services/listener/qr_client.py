"""A query/retrieve client (SCU) for one source PACS: Study Root C-FIND, C-MOVE and C-GET.

:class:`QueryRetrieveClient` speaks to one configured source (``listener.sources.NAME.query``):
:meth:`~QueryRetrieveClient.find_studies` and :meth:`~QueryRetrieveClient.find_series` with the
source's instance counts, :meth:`~QueryRetrieveClient.move` to a destination AE and
:meth:`~QueryRetrieveClient.get` with this process as the storage SCP (each instance handed to a
callback; each storage class proposed once per transfer syntax, :func:`get_storage_contexts`), over
DICOM TLS when the source's ``query.tls`` is set. It knows nothing of the store or the index:
:mod:`hounsfield.listener.fetch` (``hounsfield fetch``) and :mod:`hounsfield.listener.source_count`
(completion by the source's count) use it.

Patient IDs and accession numbers travel in the C-FIND identifiers only; they are never logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
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

from hounsfield.config import SourceSettings
from hounsfield.dicom_status import Status, describe, is_pending
from hounsfield.errors import HounsfieldError
from hounsfield.listener.header import dataset_int
from hounsfield.store import InvalidUID, check_uid

__all__ = [
    "QueryFailed",
    "QueryRetrieveClient",
    "RetrieveError",
    "SeriesOnSource",
    "SourceNotConfigured",
    "SourceUnavailable",
    "StudyOnSource",
    "StudyQuery",
    "Transfer",
    "get_storage_contexts",
]

logger = logging.getLogger(__name__)

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
_MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1-255
_DATE_RANGE = re.compile(r"^(\d{8})(?:-(\d{8}))?$")
_NOT_IN_KEYS = re.compile(r"[*?\\\x00-\x1f]")

# Proposed for each storage class on a C-GET association, one presentation context per syntax (as
# pynetdicom's StoragePresentationContexts): a source that cannot transcode (Orthanc) sends each instance
# on the context of the syntax it holds it in, and fails one it finds no such context for (0xC000). In
# order of preference: when the contexts cannot hold every pair, the first syntaxes keep theirs.
_GET_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1, JPEG2000Lossless, JPEGLSLossless, RLELossless,
    JPEGBaseline8Bit, JPEG2000, DeflatedExplicitVRLittleEndian, JPEGLSNearLossless, JPEGLossless, JPEGExtended12Bit,
    HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K, ExplicitVRBigEndian,
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


class RetrieveError(HounsfieldError):
    """Querying or retrieving from a source failed; the message says why (no patient data in it)."""


class SourceNotConfigured(RetrieveError):
    """The named source does not exist or has no ``query`` settings."""


class SourceUnavailable(RetrieveError):
    """The source could not be reached, refused the association, or stopped answering."""


class QueryFailed(RetrieveError):
    """The source answered a query or retrieve with a failure status."""


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
    service: Literal["move", "get"] = "move"

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS and self.failed == 0

    def reason(self, destination: str | None = None) -> str:
        """Why the transfer is not a clean success ('' when it is)."""
        if self.ok:
            return ""
        if self.status == Status.MOVE_DESTINATION_UNKNOWN or (
            self.status & 0xF000 == 0xC000 and destination and not self.completed
        ):
            check = (
                f"is the listener running, and does the source know move destination {destination!r} (AE, host, port)?"
            )
            return f"the source could not deliver the study (0x{self.status:04X}): {check}"
        text = describe(self.status, self.service) or "the source could not perform the retrieve"
        failed = f"; {self.failed} instance(s) failed" if self.failed else ""
        return f"{text} (0x{self.status:04X}){failed}"


def get_storage_contexts(sop_class_uids: Sequence[str]) -> list[PresentationContext]:
    """The storage contexts a C-GET proposes besides its own: one per (SOP class, transfer syntax).

    ``sop_class_uids`` are the classes the study holds (a common set of storage classes when empty).
    While PS3.8's 128 contexts (one is the C-GET's) hold every pair, each class gets one context per
    syntax. With more classes, each gets as many contexts as fit: one per syntax for the preferred
    ones and a last one listing the rest (a source that can transcode still finds a syntax there).
    Classes beyond 127 are left out, and logged: the source cannot send their instances.
    """
    classes = list(dict.fromkeys(sop_class_uids or _COMMON_STORAGE))
    room = _MAX_CONTEXTS - 1
    if len(classes) > room:
        logger.warning("C-GET: %d storage classes, %d proposed (the association's limit)", len(classes), room)
        classes = classes[:room]
    each = min(len(_GET_TRANSFER_SYNTAXES), room // len(classes))
    groups: list[list[str | UID]] = [[syntax] for syntax in _GET_TRANSFER_SYNTAXES[: each - 1]]
    groups.append(list(_GET_TRANSFER_SYNTAXES[each - 1 :]))
    return [build_context(uid, group) for uid in classes for group in groups]


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
        where = f"source {self.name!r} ({qr.host}:{qr.port}, AE {self.called_ae!r})"
        tls_args = None
        if qr.tls is not None:
            try:
                tls_args = qr.tls.tls_args(qr.host)
            except OSError as exc:  # ssl.SSLError included: a missing or unusable CA bundle, certificate or key
                raise SourceUnavailable(f"{where}: its TLS settings cannot be used: {exc.strerror or exc}") from exc
        assoc = ae.associate(
            qr.host, qr.port, ae_title=self.called_ae, evt_handlers=handlers, tls_args=tls_args, **kwargs
        )
        if not assoc.is_established:
            if not connected:
                tls = ", or the TLS handshake failed: is its certificate signed by tls.ca_bundle?" if tls_args else ""
                raise SourceUnavailable(
                    f"{where} is not reachable (connection refused or no answer within {qr.timeout_s:g} s{tls})"
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

    def _find(self, *identifiers: Dataset) -> list[Dataset]:
        """The matches of each C-FIND identifier in turn, all on one association."""
        ae = self._ae()
        ae.add_requested_context(FIND)
        matches: list[Dataset] = []
        with self._association(ae) as assoc:
            for identifier in identifiers:
                try:
                    responses = assoc.send_c_find(identifier, FIND)
                    for status, found in responses:
                        code = _status(status)
                        if is_pending(code):
                            if found is not None:
                                matches.append(found)
                            continue
                        if code != Status.SUCCESS:
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

    def find_sop_classes(self, study_uid: str, series_uids: Sequence[str]) -> list[str]:
        """The SOP classes of the instances of some series of a study, by IMAGE-level C-FINDs (one per series).

        For sources that do not answer SOPClassesInStudy at STUDY level; empty when they do not say.
        """
        identifiers = []
        for series_uid in series_uids:
            ds = Dataset()
            ds.QueryRetrieveLevel = "IMAGE"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = ""
            ds.SOPClassUID = ""
            identifiers.append(ds)
        found = (str(match.get("SOPClassUID", "") or "") for match in self._find(*identifiers))
        return list(dict.fromkeys(uid for uid in found if uid))

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
    def _final(responses: Iterator[tuple[Dataset, Dataset | None]], service: Literal["move", "get"]) -> Transfer:
        for status, _ in responses:
            code = _status(status)
            if is_pending(code):
                continue
            return Transfer(
                status=code,
                completed=dataset_int(status, "NumberOfCompletedSuboperations") or 0,
                failed=dataset_int(status, "NumberOfFailedSuboperations") or 0,
                warning=dataset_int(status, "NumberOfWarningSuboperations") or 0,
                service=service,
            )
        raise SourceUnavailable("the source ended the retrieve without a final status")

    def move(self, study_uid: str, series_uids: Sequence[str] | None, destination: str) -> Transfer:
        """C-MOVE a whole study (``series_uids`` None) or some of its series, in one request, to ``destination``."""
        ae = self._ae()
        ae.add_requested_context(MOVE)
        with self._association(ae) as assoc:
            try:
                responses = assoc.send_c_move(self._retrieve_identifier(study_uid, series_uids), destination, MOVE)
                return self._final(responses, "move")
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

        ``sop_class_uids`` are the storage classes the study holds (a common set when empty): each is
        proposed once per transfer syntax (:func:`get_storage_contexts`), with this side as its SCP
        (SCP/SCU role selection).
        """
        ae = self._ae()
        ae.add_requested_context(GET)
        contexts = get_storage_contexts(sop_class_uids)
        for context in contexts:
            ae.add_requested_context(str(context.abstract_syntax), context.transfer_syntax)
        classes = dict.fromkeys(str(context.abstract_syntax) for context in contexts)
        roles = [build_role(uid, scp_role=True) for uid in classes]
        with self._association(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            try:
                return self._final(assoc.send_c_get(self._retrieve_identifier(study_uid, series_uids), GET), "get")
            except ValueError as exc:
                raise QueryFailed(f"source {self.name!r} does not offer Study Root C-GET") from exc
