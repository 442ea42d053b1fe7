"""DICOM over TLS on the listener's second port, with dcmtk (storescu/echoscu +tls) and Python's ssl.

A throw-away CA, server and client certificates are made with the openssl command for each run.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hounsfield.config import Settings, TLSSettings
from hounsfield.db import Instance
from hounsfield.demo.orthanc import free_port
from hounsfield.listener.server import Listener
from tests.support import write_study

ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    """A client certificate signed by a CA the listener does not trust."""
    rogue_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _issue(folder: Path, name: str, ca: tuple[Path, Path], subject: str, extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}{suffix}" for suffix in (".key", ".csr", ".crt", ".ext"))
    ext.write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subject)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return cert, key


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign",
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = _ca(folder, "test-ca"), _ca(folder, "rogue-ca")
    server = _issue(
        folder,
        "server",
        ca,
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    client = _issue(folder, "client", ca, "/CN=MODALITY", "extendedKeyUsage=clientAuth\n")
    rogue = _issue(folder, "rogue", rogue_ca, "/CN=ROGUE", "extendedKeyUsage=clientAuth\n")
    return PKI(ca[0], *server, *client, *rogue)


@pytest.fixture
def tls_listener(settings: Settings, pki: PKI) -> Iterator[Callable[..., Listener]]:
    started: list[Listener] = []

    def start(**tls: Any) -> Listener:
        options: dict[str, Any] = {
            "port": free_port(),
            "certificate": pki.server_cert,
            "private_key": pki.server_key,
            "client_ca": pki.ca,
            "require_client_certificate": True,
            **tls,
        }
        update = {"tls": TLSSettings(**options), "port": free_port()}
        listener_settings = settings.listener.model_copy(update=update)
        running = Listener(settings.model_copy(update={"listener": listener_settings}), [].append)
        running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _tls_port(listener: Listener) -> int:
    assert listener.settings.listener.tls is not None
    return listener.settings.listener.tls.port


def _dcmtk(
    tool: str, listener: Listener, *options: str, port: int | None = None, files: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    argv = [f"/usr/bin/{tool}", *options, "-aet", "MODALITY", "-aec", "HOUNSFIELD", "127.0.0.1"]
    argv += [str(port or _tls_port(listener)), *map(str, files)]
    return subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60, check=False)


def test_tls_store_with_a_client_certificate(
    tls_listener: Callable[..., Listener], pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listener = tls_listener()
    _, files = write_study(tmp_path / "ct", seed=31, shape=(4, 32, 32))
    with caplog.at_level(logging.INFO, logger="hounsfield.listener.engine.association"):
        proc = _dcmtk(
            "storescu", listener, "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca),
            files=tuple(files),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    listener.flush()
    with listener.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == len(files)
    assert "accepted over dimse-tls" in caplog.text
    echo = _dcmtk("echoscu", listener, "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
    assert echo.returncode == 0, echo.stderr
    plain = _dcmtk("echoscu", listener, port=listener.settings.listener.port)
    assert plain.returncode == 0, "the plain port keeps serving beside the TLS port"


def test_a_client_without_a_certificate_is_refused_when_one_is_required(
    tls_listener: Callable[..., Listener], pki: PKI
) -> None:
    listener = tls_listener()
    anonymous = _dcmtk("echoscu", listener, "+tla", "+cf", str(pki.ca))
    assert anonymous.returncode != 0
    rogue = _dcmtk("echoscu", listener, "+tls", str(pki.rogue_key), str(pki.rogue_cert), "+cf", str(pki.ca))
    assert rogue.returncode != 0, "a certificate from an untrusted CA is refused"


def test_a_client_without_a_certificate_is_served_when_none_is_required(
    tls_listener: Callable[..., Listener], pki: PKI
) -> None:
    listener = tls_listener(require_client_certificate=False)
    anonymous = _dcmtk("echoscu", listener, "+tla", "+cf", str(pki.ca))
    assert anonymous.returncode == 0, anonymous.stderr
    rogue = _dcmtk("echoscu", listener, "+tls", str(pki.rogue_key), str(pki.rogue_cert), "+cf", str(pki.ca))
    assert rogue.returncode != 0, "a certificate that is presented is still verified"


def test_plain_dicom_to_the_tls_port_fails(tls_listener: Callable[..., Listener]) -> None:
    listener = tls_listener()
    plain = _dcmtk("echoscu", listener)
    assert plain.returncode != 0
    with socket.create_connection(("127.0.0.1", _tls_port(listener)), timeout=10) as sock:
        sock.sendall(struct.pack(">BxI", 0x01, 4) + b"\x00\x01\x00\x00")  # the start of an A-ASSOCIATE-RQ
        reply = b""
        try:
            while chunk := sock.recv(4096):
                reply += chunk
        except (ConnectionError, TimeoutError):
            pass
    assert not reply.startswith(b"\x02"), "no A-ASSOCIATE-AC comes back over plain TCP"


def _handshake(port: int, pki: PKI, version: ssl.TLSVersion) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer old versions; the server must refuse
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated: that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = version
    context.load_verify_locations(pki.ca)
    context.load_cert_chain(pki.client_cert, pki.client_key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"")


def test_old_tls_versions_are_refused(tls_listener: Callable[..., Listener], pki: PKI) -> None:
    listener = tls_listener()
    _handshake(_tls_port(listener), pki, ssl.TLSVersion.TLSv1_2)  # the same client succeeds with 1.2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(_tls_port(listener), pki, ssl.TLSVersion.TLSv1_1)
    strict = tls_listener(minimum_version="1.3")
    _handshake(_tls_port(strict), pki, ssl.TLSVersion.TLSv1_3)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(_tls_port(strict), pki, ssl.TLSVersion.TLSv1_2)
