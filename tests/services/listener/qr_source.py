"""A source PACS made with pynetdicom (Study Root C-FIND and C-GET), beside Orthanc, for fetch tests.

It serves the files it is given, over plain TCP or TLS, and can behave as sources in the field do:
leave SOPClassesInStudy out of its STUDY-level answers (``sop_classes_in_study=False``), or stop a
C-GET with a failure after some instances (``stop_after``: out of resources, 0xA702).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from hounsfield.demo.orthanc import free_port

__all__ = ["PynetdicomSource"]

_OUT_OF_RESOURCES = 0xA702


class PynetdicomSource:
    """A Study Root Q/R SCP on loopback; :attr:`proposed` holds the contexts each C-GET association proposed."""

    def __init__(
        self,
        files: Sequence[Path],
        *,
        ae_title: str = "PYNDPACS",
        sop_classes_in_study: bool = True,
        stop_after: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self._files = [pydicom.dcmread(path) for path in files]
        self._sop_classes_in_study = sop_classes_in_study
        self._stop_after = stop_after
        self._ssl_context = ssl_context
        self._server: Any = None
        self._lock = threading.Lock()
        self.proposed: list[list[PresentationContext]] = []
        self.identifiers: list[Dataset] = []

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        for context in StoragePresentationContexts:  # as the C-GET's storage SCU
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        handlers = [(evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get)]
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=handlers, ssl_context=self._ssl_context
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _matching(self, identifier: Dataset) -> list[Dataset]:
        found = self._files
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber", "PatientID"):
            wanted = identifier.get(keyword)
            if wanted in (None, ""):
                continue
            values = {str(v) for v in wanted} if isinstance(wanted, list | pydicom.multival.MultiValue) else {wanted}
            found = [ds for ds in found if str(ds.get(keyword, "")) in values]
        return found

    def _find(self, event: evt.Event) -> Any:
        identifier = event.identifier
        with self._lock:
            self.identifiers.append(identifier)
        level = identifier.QueryRetrieveLevel
        matches = self._matching(identifier)
        key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID"}.get(level, "SOPInstanceUID")
        seen: dict[str, list[Dataset]] = {}
        for ds in matches:
            seen.setdefault(str(ds.get(key)), []).append(ds)
        for group in seen.values():
            first = group[0]
            answer = Dataset()
            answer.QueryRetrieveLevel = level
            answer.StudyInstanceUID = first.StudyInstanceUID
            if level == "STUDY":
                study = self._matching(answer)
                answer.AccessionNumber = first.get("AccessionNumber", "")
                answer.StudyDate = first.get("StudyDate", "")
                answer.NumberOfStudyRelatedInstances = len(study)
                answer.NumberOfStudyRelatedSeries = len({ds.SeriesInstanceUID for ds in study})
                if self._sop_classes_in_study:
                    answer.SOPClassesInStudy = sorted({str(ds.SOPClassUID) for ds in study})
            else:
                answer.SeriesInstanceUID = first.SeriesInstanceUID
                answer.Modality = first.get("Modality", "")
                answer.SeriesNumber = first.get("SeriesNumber", "")
                answer.NumberOfSeriesRelatedInstances = len(group)
                if level == "IMAGE":
                    answer.SOPInstanceUID = first.SOPInstanceUID
                    answer.SOPClassUID = first.SOPClassUID
            yield 0xFF00, answer

    def _get(self, event: evt.Event) -> Any:
        with self._lock:
            self.proposed.append(list(event.assoc.requestor.requested_contexts))
        matches = self._matching(event.identifier)
        yield len(matches)
        for index, ds in enumerate(matches):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            if self._stop_after is not None and index >= self._stop_after:
                yield _OUT_OF_RESOURCES, None
                return
            yield 0xFF00, ds
