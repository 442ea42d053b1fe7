"""DICOM on the wire, by hand, for tests that treat the listener as a black box on a TCP port.

Nothing here knows how the listener is built: it speaks PS3.8 upper-layer PDUs over plain sockets
(so a test can send a valid association and then anything at all), starts the listener as a
process through the ``hounsfield listener`` command, and checks what a Success promised (the
instance is on disk, byte for byte, and in the index).

Helpers for the listener tests (fuzzing, crash recovery); not collected by pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

__all__ = [
    "APPLICATION_CONTEXT",
    "A_ABORT",
    "A_ASSOCIATE_AC",
    "A_ASSOCIATE_RJ",
    "A_ASSOCIATE_RQ",
    "A_RELEASE_RP",
    "A_RELEASE_RQ",
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "P_DATA_TF",
    "VERIFICATION",
    "ListenerProcess",
    "PresentationContext",
    "RawAssociation",
    "WireError",
    "associate_rq",
    "check_acknowledged",
    "command_set",
    "dataset_part",
    "echo",
    "echo_rq",
    "p_data",
    "parse_command",
    "part10_file",
    "pdu",
    "read_pdu",
    "responses",
    "store_rq",
]

REPO = Path(__file__).resolve().parents[3]
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x05, 0x06, 0x07


class WireError(RuntimeError):
    """The peer answered with something that is not what the protocol allows at this point."""


# --- PDUs -------------------------------------------------------------------------------------


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def pdu(pdu_type: int, body: bytes, *, length: int | None = None) -> bytes:
    """One PDU; ``length`` overrides the length field (to lie about it)."""
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


@dataclass(frozen=True)
class PresentationContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...] = (EXPLICIT_LE, IMPLICIT_LE)


def associate_rq(
    contexts: list[PresentationContext],
    *,
    called_ae: str = "HOUNSFIELD",
    calling_ae: str = "FUZZER",
    max_pdu: int = 65536,
) -> bytes:
    """A well-formed A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    items = _item(0x10, APPLICATION_CONTEXT.encode("ascii"))
    for context in contexts:
        sub = _item(0x30, context.abstract_syntax.encode("ascii"))
        sub += b"".join(_item(0x40, ts.encode("ascii")) for ts in context.transfer_syntaxes)
        items += _item(0x20, struct.pack(">BBBB", context.context_id, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.10.1392.99")
    items += _item(0x50, user)
    header = struct.pack(">HH", 1, 0) + called_ae.ljust(16).encode() + calling_ae.ljust(16).encode() + b"\x00" * 32
    return pdu(A_ASSOCIATE_RQ, header + items)


def p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context id, message control header, fragment) items."""
    body = b"".join(struct.pack(">LBB", len(data) + 2, ctx, control) + data for ctx, control, data in pdvs)
    return pdu(P_DATA_TF, body)


def _element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHL", group, elem, len(value)) + value


def command_set(fields: dict[int, bytes | int | str]) -> bytes:
    """A command set in Implicit VR Little Endian with its group length: ``{element: value}``.

    Integers become US values, strings UIs; bytes are taken as they are.
    """
    body = b""
    for elem in sorted(fields):
        value = fields[elem]
        if isinstance(value, int):
            raw = struct.pack("<H", value)
        elif isinstance(value, str):
            raw = _uid_bytes(value)
        else:
            raw = value
        body += _element(0x0000, elem, raw)
    return _element(0x0000, 0x0000, struct.pack("<L", len(body))) + body


def echo_rq(message_id: int = 1) -> bytes:
    return command_set({0x0002: VERIFICATION, 0x0100: 0x0030, 0x0110: message_id, 0x0800: 0x0101})


def store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    return command_set(
        {0x0002: sop_class, 0x0100: 0x0001, 0x0110: message_id, 0x0700: 0, 0x0800: 0x0000, 0x1000: sop_instance}
    )


def parse_command(raw: bytes) -> dict[int, bytes]:
    """Element number -> value of an Implicit VR Little Endian command set (group 0000)."""
    fields: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(raw):
        group, elem, length = struct.unpack_from("<HHL", raw, offset)
        offset += 8
        if group != 0 or offset + length > len(raw):
            raise WireError("malformed command set in the response")
        fields[elem] = raw[offset : offset + length]
        offset += length
    return fields


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ConnectionResetError("the peer closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU's type and body; :class:`ConnectionError` when the peer closed, TimeoutError on silence."""
    pdu_type, _, length = struct.unpack(">BBL", _recv_exact(sock, 6))
    if pdu_type not in range(1, 8) or length > 64 << 20:
        raise WireError(f"the peer sent an invalid PDU (type 0x{pdu_type:02X}, length {length})")
    return pdu_type, _recv_exact(sock, length)


def _pdvs(body: bytes) -> Iterator[tuple[int, int, bytes]]:
    offset = 0
    while offset < len(body):
        (length,) = struct.unpack_from(">L", body, offset)
        ctx, control = body[offset + 4], body[offset + 5]
        yield ctx, control, body[offset + 6 : offset + 4 + length]
        offset += 4 + length


# --- An association over a raw socket -----------------------------------------------------------


@dataclass
class RawAssociation:
    """A requestor that speaks just enough DICOM to associate, echo, store and release."""

    host: str
    port: int
    timeout: float = 10.0
    sock: socket.socket = field(init=False)
    accepted: dict[int, str] = field(default_factory=dict)
    """Accepted presentation context id -> transfer syntax."""
    peer_max_pdu: int = 16382

    def __post_init__(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def associate(self, contexts: list[PresentationContext], **kwargs: Any) -> int:
        """Send an A-ASSOCIATE-RQ; returns the PDU type of the answer (AC, RJ or ABORT)."""
        self.send(associate_rq(contexts, **kwargs))
        pdu_type, body = read_pdu(self.sock)
        if pdu_type == A_ASSOCIATE_AC:
            self._parse_ac(body)
        return pdu_type

    def _parse_ac(self, body: bytes) -> None:
        offset = 68
        while offset + 4 <= len(body):
            item_type, _, length = struct.unpack_from(">BBH", body, offset)
            value = body[offset + 4 : offset + 4 + length]
            if item_type == 0x21 and value[2] == 0:  # presentation context, accepted
                ts_length = struct.unpack_from(">H", value, 6)[0]
                self.accepted[value[0]] = value[8 : 8 + ts_length].decode("ascii").rstrip("\x00 ")
            elif item_type == 0x50:
                sub = 0
                while sub + 4 <= len(value):
                    sub_type, _, sub_length = struct.unpack_from(">BBH", value, sub)
                    if sub_type == 0x51:
                        self.peer_max_pdu = struct.unpack_from(">L", value, sub + 4)[0] or (1 << 31)
                    sub += 4 + sub_length
            offset += 4 + length

    def _send_message(self, context_id: int, command: bytes, dataset: bytes | None) -> None:
        self.send(p_data((context_id, 0x03, command)))
        if dataset is None:
            return
        size = max(self.peer_max_pdu - 6, 2)
        chunks = [dataset[i : i + size] for i in range(0, len(dataset), size)] or [b""]
        for index, chunk in enumerate(chunks):
            self.send(p_data((context_id, 0x02 if index == len(chunks) - 1 else 0x00, chunk)))

    def response(self) -> dict[int, bytes]:
        """The next command set the peer sends (fragments joined)."""
        command = b""
        while True:
            pdu_type, body = read_pdu(self.sock)
            if pdu_type != P_DATA_TF:
                raise WireError(f"expected P-DATA-TF, got PDU type 0x{pdu_type:02X}")
            for _, control, data in _pdvs(body):
                if control & 0x01:
                    command += data
                    if control & 0x02:
                        return parse_command(command)

    def c_echo(self, context_id: int, message_id: int = 1) -> int:
        self._send_message(context_id, echo_rq(message_id), None)
        return struct.unpack("<H", self.response()[0x0900])[0]

    def c_store(self, context_id: int, sop_class: str, sop_instance: str, dataset: bytes, message_id: int = 1) -> int:
        self._send_message(context_id, store_rq(sop_class, sop_instance, message_id), dataset)
        return struct.unpack("<H", self.response()[0x0900])[0]

    def release(self) -> None:
        self.send(pdu(A_RELEASE_RQ, b"\x00" * 4))
        with contextlib.suppress(OSError, WireError):
            read_pdu(self.sock)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def drain_until_closed(self, timeout: float) -> list[tuple[int, bytes]]:
        """Half-close our side and read until the peer closes; the PDUs (type, body) it sent on the way.

        Raises :class:`TimeoutError` when the peer keeps the connection open past ``timeout``.
        """
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout
        seen: list[tuple[int, bytes]] = []
        buffer = b""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the listener kept the connection open")
                self.sock.settimeout(left)
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 6:
                    pdu_type, _, length = struct.unpack_from(">BBL", buffer)
                    if len(buffer) < 6 + length:
                        break
                    seen.append((pdu_type, buffer[6 : 6 + length]))
                    buffer = buffer[6 + length :]
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            self.close()
        return seen


def responses(pdus: list[tuple[int, bytes]]) -> list[dict[int, bytes]]:
    """The command sets in the P-DATA-TF PDUs among ``pdus`` (fragments joined)."""
    commands: list[dict[int, bytes]] = []
    command = b""
    for pdu_type, body in pdus:
        if pdu_type != P_DATA_TF:
            continue
        for _, control, data in _pdvs(body):
            if control & 0x01:
                command += data
                if control & 0x02:
                    commands.append(parse_command(command))
                    command = b""
    return commands


def echo(host: str, port: int, timeout: float = 10.0) -> bool:
    """A full association with one C-ECHO and a release; True when every step succeeded."""
    try:
        assoc = RawAssociation(host, port, timeout=timeout)
    except OSError:
        return False
    try:
        if assoc.associate([PresentationContext(1, VERIFICATION, (IMPLICIT_LE,))]) != A_ASSOCIATE_AC:
            return False
        ok = 1 in assoc.accepted and assoc.c_echo(1) == 0x0000
        assoc.release()
        return ok
    except (OSError, WireError, KeyError, struct.error):
        return False
    finally:
        assoc.close()


# --- Part 10 files and what a Success promises ------------------------------------------------


def part10_file(dataset: bytes, *, sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, file meta (which may lie about ``transfer_syntax``) and the dataset bytes as given."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1392.99"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue() + dataset


def dataset_part(file_bytes: bytes) -> bytes:
    """The dataset of a Part 10 file: what follows the file meta group (by its group length)."""
    if file_bytes[128:132] != b"DICM" or file_bytes[132:136] != b"\x02\x00\x00\x00":
        raise AssertionError("not a Part 10 file with a File Meta Information Group Length")
    (group_length,) = struct.unpack_from("<L", file_bytes, 140)
    return file_bytes[144 + group_length :]


def check_acknowledged(db: Any, data_dir: Path, sop_instance_uid: str, sent: bytes, *, within_s: float = 0.0) -> None:
    """Assert what a Success promised: an index row for the instance whose file holds ``sent``.

    The row may point at a revision (``.rN.dcm``) when different bytes came under the same UID;
    the caller passes the last bytes that were acknowledged for it. A running listener acknowledges
    once the instance is durable in its ingest journal, and writes the file and index row within
    moments: ``within_s`` is how long that may take (0: it must hold now, as after a restart, which
    replays the journal before serving).
    """
    deadline = time.monotonic() + within_s
    while True:
        try:
            _check_acknowledged(db, data_dir, sop_instance_uid, sent)
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _check_acknowledged(db: Any, data_dir: Path, sop_instance_uid: str, sent: bytes) -> None:
    from hounsfield.db import Instance

    with db.session() as session:
        row = session.get(Instance, sop_instance_uid)
        assert row is not None, "acknowledged instance missing from the index"
        path, size, sha256 = Path(row.path), row.size, row.sha256
    assert path.is_file(), "acknowledged instance: the indexed file is missing"
    assert path.resolve().is_relative_to((data_dir / "studies").resolve()), "indexed file outside the study store"
    stored = path.read_bytes()
    assert len(stored) == size and hashlib.sha256(stored).hexdigest() == sha256, "index row disagrees with the file"
    assert dataset_part(stored) == sent, "stored dataset differs from the bytes that were acknowledged"


# --- The listener as a process ----------------------------------------------------------------


@dataclass
class ListenerProcess:
    """``hounsfield listener`` with a generated YAML configuration (no deployments: nothing is queued)."""

    folder: Path
    port: int
    listener: dict[str, Any] = field(default_factory=dict)
    database_url: str | None = None
    """PostgreSQL (the tests' ``default_database_url``), or None for SQLite in the data folder."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'hounsfield.db'}"

    @property
    def config_path(self) -> Path:
        return self.folder / "hounsfield.yaml"

    @property
    def log_path(self) -> Path:
        return self.folder / "listener.log"

    def write_config(self) -> None:
        listener = {
            "host": "127.0.0.1",
            "port": self.port,
            "open_mode": True,
            "min_free_disk_mb": 16,
            "journal_segment_mb": 8,
        }
        listener.update(self.listener)
        config: dict[str, Any] = {"data_dir": str(self.data_dir), "listener": listener, "log_level": "INFO"}
        if self.database_url:
            config["database_url"] = self.database_url
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
        env["TCP_NODELAY"] = "1"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hounsfield.cli", "listener", "--config", str(self.config_path)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the listener exited with {self.proc.returncode}:\n{self.log_tail()}")
            if echo("127.0.0.1", self.port, timeout=2.0):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the listener did not answer C-ECHO within {timeout:.0f} s:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
