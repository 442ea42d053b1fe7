"""DICOM over TLS on the listener's second port, with dcmtk (storescu/echoscu +tls) and Python's ssl.

A throw-away CA, server and client certificates are made for each run (``tests.pki``).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hounsfield.config import ListenerSettings, Settings, SourceSettings, TLSSettings
from hounsfield.db import Instance
from hounsfield.demo.orthanc import free_port
from hounsfield.listener.server import Listener
from tests.pki import PKI, make_pki
from tests.support import write_study

ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_listener(settings: Settings, pki: PKI) -> Iterator[Callable[..., Listener]]:
    started: list[Listener] = []

    def start(listener_update: dict[str, Any] | None = None, **tls: Any) -> Listener:
        options: dict[str, Any] = {
            "port": free_port(),
            "certificate": pki.server_cert,
            "private_key": pki.server_key,
            "client_ca": pki.ca,
            "require_client_certificate": True,
            **tls,
        }
        update = {"tls": TLSSettings(**options), "port": free_port(), **(listener_update or {})}
        listener_settings = settings.listener.model_copy(update=update)
        running = Listener(settings.model_copy(update={"listener": listener_settings}), [].append)
        running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _rogue(pki: PKI) -> tuple[str, ...]:
    """echoscu's options for a client certificate from a CA the listener does not trust."""
    return ("+tls", str(pki.rogue_client_key), str(pki.rogue_client_cert), "+cf", str(pki.ca))


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
    rogue = _dcmtk(
        "echoscu", listener, "+tls", str(pki.rogue_client_key), str(pki.rogue_client_cert), "+cf", str(pki.ca)
    )
    assert rogue.returncode != 0, "a certificate from an untrusted CA is refused"


def test_a_client_without_a_certificate_is_served_when_none_is_required(
    tls_listener: Callable[..., Listener], pki: PKI
) -> None:
    listener = tls_listener(require_client_certificate=False)
    anonymous = _dcmtk("echoscu", listener, "+tla", "+cf", str(pki.ca))
    assert anonymous.returncode == 0, anonymous.stderr
    rogue = _dcmtk(
        "echoscu", listener, "+tls", str(pki.rogue_client_key), str(pki.rogue_client_cert), "+cf", str(pki.ca)
    )
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


def _failures(listener: Listener, reason: str) -> float:
    value = listener.metrics.registry.get_sample_value(
        "hounsfield_listener_tls_handshake_failures_total", {"reason": reason}
    )
    return value or 0.0


def test_failed_handshakes_are_logged_and_counted(
    tls_listener: Callable[..., Listener], pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio's TLS server dropped failed handshakes without a word; each is now a line and a count."""
    listener = tls_listener()
    with caplog.at_level(logging.WARNING, logger="hounsfield.listener.engine.association"):
        assert _dcmtk("echoscu", listener).returncode != 0  # plain DICOM to the TLS port
        assert _dcmtk("echoscu", listener, "+tla", "+cf", str(pki.ca)).returncode != 0  # no client certificate
        rogue = _dcmtk(
            "echoscu", listener, "+tls", str(pki.rogue_client_key), str(pki.rogue_client_cert), "+cf", str(pki.ca)
        )
        assert rogue.returncode != 0
        deadline = time.monotonic() + 5
        while _failures(listener, "protocol") + _failures(listener, "certificate") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _failures(listener, "protocol") >= 1, "plain bytes on the TLS port"
    assert _failures(listener, "certificate") >= 1, "a missing or untrusted client certificate"
    assert _failures(listener, "protocol") + _failures(listener, "certificate") == 3
    lines = [r.getMessage() for r in caplog.records if "TLS handshake from 127.0.0.1 failed" in r.getMessage()]
    assert len(lines) == 3, lines


def test_a_stalled_handshake_is_closed_after_the_request_timeout(
    tls_listener: Callable[..., Listener],
) -> None:
    listener = tls_listener({"request_timeout_s": 1.0})
    with socket.create_connection(("127.0.0.1", _tls_port(listener)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
        try:
            while sock.recv(4096):
                pass
        except ConnectionError:
            pass
        assert time.monotonic() - started < 4
    deadline = time.monotonic() + 5
    while _failures(listener, "timeout") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _failures(listener, "timeout") == 1


def _outside_address() -> str | None:
    """An address of this host that is not loopback (what a modality on the network would connect to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # a documentation address: no packet is sent for UDP connect
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_tls_only_closes_the_plain_port_to_the_network(tls_listener: Callable[..., Listener], pki: PKI) -> None:
    listener = tls_listener({"host": "0.0.0.0"}, only=True)
    plain, secure = listener._server.ports if listener._server else (0, 0)
    bound = {server.sockets[0].getsockname()[0] for server in listener._server._servers} if listener._server else set()
    assert bound == {"127.0.0.1", "0.0.0.0"}, "the plain port on loopback only, the TLS port everywhere"
    assert plain == listener.settings.listener.port and secure == _tls_port(listener)
    readiness = _dcmtk("echoscu", listener, port=plain)
    assert readiness.returncode == 0, "the pod's own readiness C-ECHO still reaches the plain port on loopback"
    outside = _outside_address()
    assert outside is not None, "this host has no address besides loopback to test from"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((outside, plain), timeout=5).close()
    argv = ["/usr/bin/echoscu", "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
    argv += ["-aet", "MODALITY", "-aec", "HOUNSFIELD", outside, str(secure)]
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"the TLS port serves the network: {proc.stderr}"


def test_a_source_bound_to_its_certificate(tls_listener: Callable[..., Listener], pki: PKI) -> None:
    """The client certificate names MODALITY: a source bound to that name is served over TLS only."""
    bound = SourceSettings(ae_title="MODALITY", tls_client_names=["MODALITY"])
    listener = tls_listener({"sources": {"ct": bound}, "open_mode": False})
    tls = ("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
    assert _dcmtk("echoscu", listener, *tls).returncode == 0, "the certificate it is bound to"
    plain = _dcmtk("echoscu", listener, port=listener.settings.listener.port)
    assert plain.returncode != 0 and "Calling AE Title Not Recognized" in plain.stderr, "the same AE title over TCP"
    other = tls_listener(
        {"sources": {"ct": SourceSettings(ae_title="MODALITY", tls_client_names=["CT-2"])}, "open_mode": False}
    )
    refused = _dcmtk("echoscu", other, *tls)
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr, "another certificate"


def test_binding_a_source_needs_a_client_ca(pki: PKI) -> None:
    tls = TLSSettings(port=free_port(), certificate=pki.server_cert, private_key=pki.server_key)
    with pytest.raises(ValueError, match=r"tls_client_names, which needs tls\.client_ca"):
        ListenerSettings(tls=tls, sources={"ct": {"ae_title": "MODALITY", "tls_client_names": ["MODALITY"]}})


def _pending(listener: Listener) -> int:
    assert listener._server is not None and listener._server._state is not None
    return listener._server._state.pending


def test_stalled_or_reset_handshakes_give_their_slots_back(tls_listener: Callable[..., Listener]) -> None:
    """Python's TLS layer does not always report a connection lost mid-handshake: each such connection kept
    its 'waiting to associate' slot for ever, until every new connection was refused (found by review)."""
    listener = tls_listener({"request_timeout_s": 0.5, "max_pending_per_address": 2})
    stalled = [socket.create_connection(("127.0.0.1", _tls_port(listener)), timeout=5) for _ in range(2)]
    reset = socket.create_connection(("127.0.0.1", _tls_port(listener)), timeout=5)
    reset.sendall(b"\x16\x03\x01")
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()  # a reset in the middle of the handshake
    deadline = time.monotonic() + 5
    while _pending(listener) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pending(listener) == 0, "every failed handshake gave its slot back"
    for sock in stalled:
        sock.close()
    plain = _dcmtk("echoscu", listener, port=listener.settings.listener.port)
    assert plain.returncode == 0, "the address is still served"
