"""Who may send: the association policy alone, and as peers meet it (pynetdicom and dcmtk SCUs)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from hounsfield.config import ListenerSettings, Settings
from hounsfield.listener.policy import AssociationPolicy, Rejection
from hounsfield.listener.server import Listener
from tests.services.listener.dicom_wire import PresentationContext, associate_rq, read_pdu

ENV = {**os.environ, "TCP_NODELAY": "1"}

SOURCES: dict[str, Any] = {
    "ct-room": {"ae_title": "CT01", "networks": ["127.0.0.0/8"]},
    "mr-room": {"ae_title": "MR01", "called_ae_titles": ["HOUNSFIELD", "RESEARCH"]},
    "far-away": {"ae_title": "REMOTE", "networks": ["10.0.0.0/8"]},
}


def _policy(**listener: Any) -> AssociationPolicy:
    return AssociationPolicy(ListenerSettings(**{"sources": SOURCES, **listener}))


# -- the policy on its own --------------------------------------------------------------------------------


def test_a_configured_source_is_accepted_from_its_network_and_named() -> None:
    decision = _policy().decide("CT01", "HOUNSFIELD", "127.0.0.1")
    assert decision.accepted and decision.source == "ct-room"


def test_an_unknown_caller_is_rejected_with_reason_3() -> None:
    decision = _policy().decide("STRANGER", "HOUNSFIELD", "127.0.0.1")
    assert decision.rejection is Rejection.CALLING_AE_NOT_RECOGNIZED
    assert "STRANGER" in decision.reason


def test_a_called_title_the_source_may_not_use_is_rejected_with_reason_7() -> None:
    assert _policy().decide("CT01", "RESEARCH", "127.0.0.1").rejection is Rejection.CALLED_AE_NOT_RECOGNIZED
    assert _policy().decide("MR01", "RESEARCH", "192.168.1.9").accepted, "listed called titles are allowed"


def test_a_known_caller_from_the_wrong_network_is_rejected() -> None:
    decision = _policy().decide("REMOTE", "HOUNSFIELD", "127.0.0.1")
    assert not decision.accepted and decision.rejection is Rejection.NO_REASON
    assert _policy().decide("REMOTE", "HOUNSFIELD", "10.2.3.4").accepted
    assert _policy().decide("REMOTE", "HOUNSFIELD", "::ffff:10.2.3.4").accepted, "IPv4-mapped IPv6 addresses"
    assert not _policy().decide("REMOTE", "HOUNSFIELD", "not-an-address").accepted


def test_padding_is_not_significant() -> None:
    assert _policy().decide("CT01  ", "HOUNSFIELD      ", "127.0.0.1").accepted


def test_open_mode_accepts_unknown_callers_and_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hounsfield.listener.policy"):
        decision = _policy(open_mode=True).decide("STRANGER", "HOUNSFIELD", "127.0.0.1")
    assert decision.accepted and decision.source is None
    assert "STRANGER" in caplog.text
    served = _policy(open_mode=True).decide("STRANGER", "RESEARCH", "127.0.0.1")
    assert served.accepted, "open mode serves every called title a source lists"
    wrong = _policy(open_mode=True).decide("STRANGER", "NOBODY", "127.0.0.1")
    assert wrong.rejection is Rejection.CALLED_AE_NOT_RECOGNIZED


# -- on the wire ----------------------------------------------------------------------------------------


@pytest.fixture
def closed_listener(settings: Settings) -> Iterator[Listener]:
    listener_settings = settings.listener.model_copy(
        update={"open_mode": False, "sources": ListenerSettings(sources=SOURCES).sources}
    )
    running = Listener(settings.model_copy(update={"listener": listener_settings}), [].append)
    running.start()
    yield running
    running.stop()


def _associate(listener: Listener, calling: str, called: str = "HOUNSFIELD") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", listener.settings.listener.port, ae_title=called)


def _rejection_on_the_wire(listener: Listener, calling: str, called: str) -> tuple[int, int, int]:
    """Send an A-ASSOCIATE-RQ over a plain socket; the A-ASSOCIATE-RJ's (result, source, reason).

    A raw socket rather than pynetdicom: pynetdicom 3.0's requestor races a fast A-ASSOCIATE-RJ (its
    ACSE thread can find the socket already closed by its DUL thread and report an abort instead).
    The dcmtk tests below show the same rejections as a sender's user sees them.
    """
    with socket.create_connection(("127.0.0.1", listener.settings.listener.port), timeout=10) as sock:
        sock.sendall(associate_rq([PresentationContext(1, str(Verification))], calling_ae=calling, called_ae=called))
        pdu_type, body = read_pdu(sock)
    assert pdu_type == 0x03, f"expected A-ASSOCIATE-RJ, got PDU type {pdu_type:#04x}"
    return body[1], body[2], body[3]


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [("STRANGER", "HOUNSFIELD", 3), ("CT01", "RESEARCH", 7), ("REMOTE", "HOUNSFIELD", 1)],
)
def test_rejected_with_the_policy_reason(
    closed_listener: Listener, caplog: pytest.LogCaptureFixture, calling: str, called: str, reason: int
) -> None:
    with caplog.at_level(logging.WARNING, logger="hounsfield.listener.engine.association"):
        assert _rejection_on_the_wire(closed_listener, calling, called) == (1, 1, reason)
    assert f"association from {calling}" in caplog.text and "rejected" in caplog.text


def test_a_configured_source_is_served(closed_listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hounsfield.listener.engine.association"):
        assoc = _associate(closed_listener, "CT01")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    assert "source ct-room" in caplog.text


def _echoscu(listener: Listener, calling: str, called: str = "HOUNSFIELD") -> subprocess.CompletedProcess[str]:
    argv = ["/usr/bin/echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(listener.settings.listener.port)]
    return subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=30, check=False)


def test_dcmtk_sees_the_rejections_and_the_acceptance(closed_listener: Listener) -> None:
    unknown = _echoscu(closed_listener, "STRANGER")
    assert unknown.returncode != 0 and "Calling AE Title Not Recognized" in unknown.stderr
    wrong_called = _echoscu(closed_listener, "CT01", "RESEARCH")
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stderr
    wrong_network = _echoscu(closed_listener, "REMOTE")
    assert wrong_network.returncode != 0 and "Association Rejected" in wrong_network.stderr
    assert _echoscu(closed_listener, "CT01").returncode == 0
    assert _echoscu(closed_listener, "MR01", "RESEARCH").returncode == 0


def test_open_mode_accepts_and_logs_an_unknown_caller(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    assert settings.listener.open_mode, "the shared fixture runs in open mode"
    running = Listener(settings, [].append)
    running.start()
    try:
        with caplog.at_level(logging.WARNING, logger="hounsfield.listener.policy"):
            assert _echoscu(running, "WHOEVER").returncode == 0
        assert "unknown caller 'WHOEVER'" in caplog.text
    finally:
        running.stop()


def test_hounsfield_echo_is_the_readiness_probe(closed_listener: Listener) -> None:
    """`hounsfield echo` (the Helm chart's readiness probe) exits 0 only when the listener answers Success."""
    from typer.testing import CliRunner

    from hounsfield.cli import app

    port = str(closed_listener.settings.listener.port)
    accepted = CliRunner().invoke(app, ["echo", "--port", port, "--calling-ae", "CT01"])
    assert accepted.exit_code == 0 and "C-ECHO Success from HOUNSFIELD" in accepted.output
    stranger = CliRunner().invoke(app, ["echo", "--port", port, "--calling-ae", "STRANGER", "--timeout", "5"])
    assert stranger.exit_code == 1 and "is STRANGER a source it accepts" in stranger.output
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nobody = str(free.getsockname()[1])
    closed = CliRunner().invoke(app, ["echo", "--port", nobody, "--timeout", "2"])
    assert closed.exit_code == 1 and "no association" in closed.output
