"""How the engine serves: ports, timeouts, limits, TLS, and how it introduces itself."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from hounsfield.config import ListenerSettings, TLSSettings
from hounsfield.dicom_syntaxes import DEFAULT_PREFERENCE, PRIVATE_STORAGE_CLASSES

__all__ = ["EngineConfig", "tls_context"]


@dataclass(frozen=True)
class EngineConfig:
    """How the engine serves: ports, timeouts, limits, and how it introduces itself."""

    ae_title: str
    host: str
    port: int
    implementation_class_uid: str
    implementation_version_name: str
    acse_timeout_s: float = 2.0
    """How long the peer has to close the connection after the listener's last PDU (ARTIM)."""
    request_timeout_s: float = 10.0
    """A connection's TLS handshake and whole A-ASSOCIATE-RQ must be done within this."""
    network_timeout_s: float = 60.0
    """While waiting for the peer, a whole PDU must arrive within this."""
    max_associations: int = 32
    max_associations_per_address: int = 16
    max_pending_connections: int = 64
    """Connections not yet associated, from everyone; more are closed at once."""
    max_pending_per_address: int = 16
    transfer_syntaxes: tuple[str, ...] = DEFAULT_PREFERENCE
    """Accepted transfer syntaxes, best first."""
    private_sop_classes: tuple[str, ...] = field(default_factory=lambda: tuple(PRIVATE_STORAGE_CLASSES))
    max_pdu: int = 1 << 20
    """The largest P-DATA-TF we accept (advertised as Maximum Length Received)."""
    spool_threshold: int = 2 << 20
    """Datasets larger than this are written to a spool file while they arrive (bounded memory per
    association whatever the size); smaller ones (most images) stay in memory and are written in the
    thread pool, so that the loop never waits on the file system for them."""
    workers: int = 8
    """Threads for the blocking store work (fsync waits, mostly)."""
    tls: TLSSettings | None = None

    @classmethod
    def from_settings(cls, listener: ListenerSettings, *, uid_root: str, version: str) -> EngineConfig:
        return cls(
            ae_title=listener.ae_title,
            host=listener.host,
            port=listener.port,
            implementation_class_uid=f"{uid_root}0.1",
            implementation_version_name=f"HOUNSFIELD_{version}"[:16],
            acse_timeout_s=listener.acse_timeout_s,
            request_timeout_s=listener.request_timeout_s,
            network_timeout_s=listener.network_timeout_s,
            max_associations=listener.max_associations,
            max_associations_per_address=listener.max_associations_per_address,
            max_pending_connections=listener.max_pending_connections,
            max_pending_per_address=listener.max_pending_per_address,
            transfer_syntaxes=tuple(listener.transfer_syntaxes),
            private_sop_classes=tuple(listener.private_sop_classes),
            tls=listener.tls,
        )


def tls_context(tls: TLSSettings) -> ssl.SSLContext:
    """The server side of DICOM TLS: our certificate, TLS >= the minimum, client certificates checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.minimum_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.private_key)
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=str(tls.client_ca))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return context
