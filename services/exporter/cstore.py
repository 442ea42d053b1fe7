"""C-STORE SCU: one association that sends result objects to a DICOM destination (over TLS when its ``tls`` is set)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from hounsfield.config import DestinationSettings
from hounsfield.dicom_status import is_stored
from hounsfield.exporter.errors import ExportFailed

__all__ = ["send_once"]


def send_once(paths: Sequence[Path], destination: DestinationSettings, calling_ae: str) -> None:
    """Send every file in one association, each in its own transfer syntax (or one the destination
    accepts from Explicit and Implicit VR Little Endian).

    Raises :class:`ConnectionError` when no association is made or it breaks (worth retrying), and
    :class:`ExportFailed` when the destination refuses an object or its TLS files cannot be used.
    """
    assert destination.host and destination.port and destination.ae_title  # checked by the settings
    tls_args = None
    if destination.tls is not None:
        try:
            tls_args = destination.tls.tls_args(destination.host)
        except OSError as exc:  # ssl.SSLError included: a missing or unusable CA bundle, certificate or key
            raise ExportFailed(f"its TLS settings cannot be used: {exc.strerror or exc}") from exc
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    contexts: dict[str, set[str]] = {}
    for ds in datasets:
        sop_class = str(ds.SOPClassUID)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        contexts.setdefault(sop_class, {ExplicitVRLittleEndian, ImplicitVRLittleEndian}).add(syntax)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        over = " over TLS (is its certificate signed by tls.ca_bundle and does it name the host?)" if tls_args else ""
        raise ConnectionError(f"association with {destination.label} failed{over}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise ConnectionError("no C-STORE response (connection lost)")
            if not is_stored(code):
                raise ExportFailed(f"refused a {ds.Modality} object with status 0x{code:04X}")
    finally:
        assoc.release()
