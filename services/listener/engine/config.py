"""How the engine serves: ports, timeouts, limits, TLS, and how it introduces itself."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from hounsfield.config import ListenerSettings, TLSSettings

__all__ = ["EngineConfig", "tls_context"]


@dataclass(frozen=True)
class EngineConfig:
    """How the engine serves: ports, timeouts, limits, and how it introduces itself."""

    ae_title: str
    host: str
    port: int
    implementation_class_uid: str
    implementation_version_name: str
    acse_timeout_s: float = 30.0
    network_timeout_s: float = 60.0
    max_associations: int = 32
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
            network_timeout_s=listener.network_timeout_s,
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
