"""C-ECHO as a client: the listener's readiness probe and the check hospital IT runs after pointing a PACS at it.

``hounsfield echo`` associates with a DICOM node, sends one C-ECHO and exits 0 only on Success. The
Helm chart runs it inside each listener pod against its own port, with a calling AE title the
chart lists as a source that may call from the loopback address only.
"""

from __future__ import annotations

from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

__all__ = ["EchoOutcome", "echo"]


@dataclass(frozen=True)
class EchoOutcome:
    """Whether the node answered Success, and what happened in words (no patient data involved)."""

    ok: bool
    detail: str


def echo(host: str, port: int, *, called_ae: str, calling_ae: str, timeout_s: float = 10.0) -> EchoOutcome:
    """One association, one C-ECHO, one release."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    assoc = ae.associate(host, port, ae_title=called_ae)
    hint = f"is {calling_ae} a source it accepts from here?"
    if assoc.is_rejected:
        return EchoOutcome(False, f"association rejected by {called_ae} at {host}:{port}: {hint}")
    if not assoc.is_established:
        # pynetdicom may report a fast A-ASSOCIATE-RJ as an abort (its threads race the closed socket).
        return EchoOutcome(
            False, f"no association with {called_ae} at {host}:{port} (refused, rejected, aborted or timed out): {hint}"
        )
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if not status or "Status" not in status:
        return EchoOutcome(False, f"no C-ECHO response from {called_ae} at {host}:{port}")
    if status.Status != 0x0000:
        return EchoOutcome(False, f"C-ECHO answered {status.Status:#06x} by {called_ae} at {host}:{port}")
    return EchoOutcome(True, f"C-ECHO Success from {called_ae} at {host}:{port}")
