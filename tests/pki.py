"""Throw-away certificates for TLS tests, made with ``cryptography`` (import as ``tests.pki``).

:func:`make_pki` writes a CA, a server certificate for ``localhost`` / ``127.0.0.1``, a client
certificate (common name ``MODALITY``) signed by the same CA, and a *rogue* CA with a server and a
client certificate of its own (peers nobody here trusts), all as PEM files valid for two days.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PKI", "make_pki"]

_Key = ec.EllipticCurvePrivateKey
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


@dataclass(frozen=True)
class PKI:
    """Where :func:`make_pki` wrote each file."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_server_cert: Path
    """A server certificate for ``localhost`` signed by ``rogue_ca``, which nobody trusts."""
    rogue_server_key: Path
    rogue_client_cert: Path
    """A client certificate signed by ``rogue_ca``."""
    rogue_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: _Key, path: Path) -> Path:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(subject: str, issuer: x509.Name, key: _Key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _ca(folder: Path, name: str) -> tuple[x509.Certificate, _Key, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, _name(name), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key, _write_cert(cert, folder / f"{name}.crt")


def _issue(folder: Path, name: str, ca: tuple[x509.Certificate, _Key, Path], *, server: bool) -> tuple[Path, Path]:
    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = _builder(name, ca_cert.subject, key).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write_cert(cert, folder / f"{name}.crt"), _write_key(key, folder / f"{name}.key")


def make_pki(folder: Path) -> PKI:
    """A CA with server and client certificates, and a rogue CA with a server certificate, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, rogue = _ca(folder, "test-ca"), _ca(folder, "rogue-ca")
    server_cert, server_key = _issue(folder, "server", ca, server=True)
    client_cert, client_key = _issue(folder, "MODALITY", ca, server=False)
    rogue_cert, rogue_key = _issue(folder, "rogue-server", rogue, server=True)
    rogue_client = _issue(folder, "ROGUE", rogue, server=False)
    return PKI(ca[2], server_cert, server_key, client_cert, client_key, rogue[2], rogue_cert, rogue_key, *rogue_client)
