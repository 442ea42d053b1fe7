"""STOW-RS (DICOMweb Store Instances, PS3.18 10.5): one request that stores result objects.

Sent with ``dicomweb-client`` to ``<url>/studies``. The destination's answer is read per instance:
any instance in its Failed SOP Sequence (0008,1198) makes the export fail with the destination's
failure reason; an HTTP 4xx is a refusal; a connection that cannot be made, or an HTTP 5xx, is
worth retrying.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from dicomweb_client import DICOMwebClient

from hounsfield.config import DestinationSettings
from hounsfield.dicom_status import describe
from hounsfield.exporter.errors import ExportFailed

__all__ = ["store_once"]


def _session(destination: DestinationSettings) -> requests.Session:
    session = requests.Session()
    if destination.token_env:
        token = os.environ.get(destination.token_env)
        if not token:
            raise ExportFailed(f"the bearer token's variable {destination.token_env} is not set")
        session.headers["Authorization"] = f"Bearer {token}"
    elif destination.username and destination.password_env:
        password = os.environ.get(destination.password_env)
        if password is None:
            raise ExportFailed(f"the password's variable {destination.password_env} is not set")
        session.auth = (destination.username, password)
    return session


def store_once(paths: Sequence[Path], destination: DestinationSettings) -> None:
    """POST every file in one STOW-RS request.

    Raises :class:`ConnectionError` when the destination cannot be reached or answers 5xx (worth
    retrying), and :class:`ExportFailed` when it refuses the request or any instance.
    """
    assert destination.url is not None  # checked by the settings
    datasets = [pydicom.dcmread(p) for p in paths]
    with _session(destination) as session:
        client = DICOMwebClient(url=destination.url.rstrip("/"), session=session, timeout=destination.timeout_s)
        client.set_http_retry_params(retry=False)  # the destination's own retries and backoff apply
        try:
            answer = client.store_instances(datasets)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status >= 500:
                raise ConnectionError(f"answered HTTP {status}") from exc
            # Only the status: a PACS's error text may echo the request's patient data.
            raise ExportFailed(f"refused the request: HTTP {status}") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
    failed = answer.get("FailedSOPSequence") or []
    if failed:
        reasons = []
        for item in failed:
            code = int(item.get("FailureReason", 0))
            reasons.append(f"{item.get('ReferencedSOPInstanceUID', '?')}: 0x{code:04X} {describe(code)}".rstrip())
        raise ExportFailed(f"refused {len(failed)} instance(s): {'; '.join(reasons)}")
    stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence") or []}
    missing = [str(ds.SOPInstanceUID) for ds in datasets if stored and str(ds.SOPInstanceUID) not in stored]
    if missing:
        raise ExportFailed(f"did not list {len(missing)} instance(s) as stored: {missing[0]}")
