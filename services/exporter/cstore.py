"""C-STORE SCU: send result objects to a DICOM destination, retrying while it is unreachable."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from services.config import DestinationSettings

__all__ = ["DestinationUnreachable", "ExportFailed", "send_files"]

logger = logging.getLogger(__name__)


class ExportFailed(RuntimeError):
    """The destination refused an object or stayed unreachable after every retry."""


class DestinationUnreachable(ExportFailed):
    """No association could be made (or it broke) after every quick retry: worth waiting for."""


def _send_once(paths: Sequence[Path], destination: DestinationSettings, calling_ae: str) -> None:
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    contexts: dict[str, set[str]] = {}
    for ds in datasets:
        sop_class = str(ds.SOPClassUID)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        contexts.setdefault(sop_class, {ExplicitVRLittleEndian, ImplicitVRLittleEndian}).add(syntax)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"association with {destination.ae_title}@{destination.host}:{destination.port} failed")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise ConnectionError("no C-STORE response (connection lost)")
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise ExportFailed(f"{destination.ae_title} refused a {ds.Modality} object with status 0x{code:04X}")
    finally:
        assoc.release()


def send_files(paths: Sequence[Path], destination: DestinationSettings, *, calling_ae: str) -> int:
    """Send every file in one association; returns the number of attempts it took."""
    attempts = destination.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            _send_once(paths, destination, calling_ae)
            return attempt
        except (ConnectionError, OSError, RuntimeError) as exc:
            if isinstance(exc, ExportFailed):
                raise ExportFailed(f"export to {destination.ae_title} refused: {exc}") from exc
            if attempt == attempts:
                raise DestinationUnreachable(
                    f"{destination.ae_title}@{destination.host}:{destination.port} unreachable "
                    f"after {attempt} attempt(s): {exc}"
                ) from exc
            delay = destination.retry_backoff_s * 2 ** (attempt - 1)
            logger.warning("export to %s failed (%s); retry %d in %.1f s", destination.ae_title, exc, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
