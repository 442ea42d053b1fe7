"""The DICOM engine against real peers: dcmtk (storescu, echoscu), pynetdicom SCUs, and raw sockets.

Conformance on the wire (PS3.7, PS3.8): negotiation results, PDU sizes, fragmentation, release and
abort, timeouts, limits, unsupported commands; and what a Success promises (the bytes on disk are
the bytes sent, the index has the instance), what an abort leaves (nothing half-stored).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_items import (
    AbstractSyntaxSubItem,
    ApplicationContextItem,
    ImplementationClassUIDSubItem,
    MaximumLengthSubItem,
    PresentationContextItemRQ,
    TransferSyntaxSubItem,
    UserInformationItem,
)
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from hounsfield import __version__
from hounsfield.config import Settings
from hounsfield.db import Instance, Study
from hounsfield.listener.server import Listener
from tests.support import bare_ct, write_study

ENV = {**os.environ, "TCP_NODELAY": "1"}
VERIFICATION = "1.2.840.10008.1.1"


# -- running listeners --------------------------------------------------------------------------------


@pytest.fixture
def serve(settings: Settings) -> Iterator[Callable[..., Listener]]:
    """Start a listener; keyword arguments override the engine configuration or listener settings."""
    started: list[Listener] = []

    def start(listener_settings: dict[str, Any] | None = None, **engine: Any) -> Listener:
        tuned = settings
        if listener_settings:
            tuned = settings.model_copy(update={"listener": settings.listener.model_copy(update=listener_settings)})
        running = Listener(tuned, [].append)
        base = running.engine_config()
        running.engine_config = lambda: dataclasses.replace(base, **engine)  # type: ignore[method-assign]
        running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def listener(serve: Callable[..., Listener]) -> Listener:
    return serve()


def _port(listener: Listener) -> int:
    return listener.settings.listener.port


def _count(listener: Listener) -> int:
    listener.flush()
    with listener.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def _dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's dataset as encoded (everything after the file meta)."""
    with path.open("rb") as handle:
        pydicom.filereader.read_preamble(handle, False)
        pydicom.filereader._read_file_meta_info(handle)
        return handle.read()


def _stored(listener: Listener) -> dict[str, Path]:
    listener.flush()
    with listener.db.session() as session:
        return {row.sop_instance_uid: Path(row.path) for row in session.scalars(select(Instance))}


def _assert_stored_exactly(listener: Listener, files: list[Path]) -> None:
    stored = _stored(listener)
    assert len(stored) == len(files)
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert _dataset_bytes(stored[uid]) == _dataset_bytes(path), "the stored dataset differs from the one sent"


def _storescu(listener: Listener, files: list[Path], *options: str, calling: str = "STORESCU") -> None:
    argv = ["/usr/bin/storescu", *options, "-aet", calling, "-aec", "HOUNSFIELD", "127.0.0.1", str(_port(listener))]
    proc = subprocess.run([*argv, *map(str, files)], env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _ct(rows: int = 16, frames: int = 1, **overrides: Any) -> Dataset:
    ds = bare_ct()
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = os.urandom(rows * rows * 2 * frames)
    for key, value in overrides.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


# -- raw upper layer ------------------------------------------------------------------------------------


def associate_rq(
    contexts: list[tuple[int, str, list[str]]],
    *,
    calling: str = "RAWSCU",
    called: str = "HOUNSFIELD",
    max_pdu: int = 16384,
    version: int = 1,
) -> bytes:
    rq = A_ASSOCIATE_RQ()
    rq.protocol_version = version
    rq.calling_ae_title, rq.called_ae_title = calling, called
    application = ApplicationContextItem()
    application.application_context_name = "1.2.840.10008.3.1.1.1"
    items: list[Any] = [application]
    for context_id, abstract, syntaxes in contexts:
        item = PresentationContextItemRQ()
        item.presentation_context_id = context_id
        sub = AbstractSyntaxSubItem()
        sub.abstract_syntax_name = abstract
        item.abstract_transfer_syntax_sub_items = [sub]
        for syntax in syntaxes:
            transfer = TransferSyntaxSubItem()
            transfer.transfer_syntax_name = syntax
            item.abstract_transfer_syntax_sub_items.append(transfer)
        items.append(item)
    user = UserInformationItem()
    length = MaximumLengthSubItem()
    length.maximum_length_received = max_pdu
    klass = ImplementationClassUIDSubItem()
    klass.implementation_class_uid = "1.2.826.0.1.3680043.9.9999.1"
    user.user_data = [length, klass]
    rq.variable_items = [*items, user]
    return rq.encode()


def pdata(context_id: int, payload: bytes, *, command: bool, last: bool) -> bytes:
    control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


def command_set(**elements: Any) -> bytes:
    ds = Dataset()
    ds.CommandGroupLength = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.CommandGroupLength = len(encode(ds, True, True)) - 12
    return bytes(encode(ds, True, True))


class Raw:
    """A plain socket speaking PDUs by hand."""

    def __init__(self, port: int, *, source: str = "127.0.0.1") -> None:
        """Connect from ``source``: 127.0.0.2 and up are other addresses of the loopback network."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the listener")
            data += chunk
        return data

    def pdu(self) -> tuple[int, bytes]:
        kind, length = struct.unpack(">BxI", self._exactly(6))
        return kind, self._exactly(length)

    def closed(self, within: float = 5.0) -> bool:
        self.sock.settimeout(within)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def associate(self, contexts: list[tuple[int, str, list[str]]], **kwargs: Any) -> bytes:
        self.send(associate_rq(contexts, **kwargs))
        kind, body = self.pdu()
        assert kind == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {kind:#x}"
        return body

    def response(self) -> Dataset:
        """Read P-DATA PDUs until a whole command set arrived; decode it."""
        payload = b""
        while True:
            kind, body = self.pdu()
            assert kind == 0x04, f"expected P-DATA-TF, got PDU type {kind:#x}"
            offset = 0
            while offset < len(body):
                length, _, control = struct.unpack_from(">IBB", body, offset)
                payload += body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if control & 0x03 == 0x03:
                    return decode(BytesIO(payload), True, True)  # command sets: implicit VR little endian

    def close(self) -> None:
        self.sock.close()


def _rj(body: bytes) -> tuple[int, int, int]:
    return body[1], body[2], body[3]


# -- negotiation -----------------------------------------------------------------------------------------


def test_echo_with_dcmtk_and_pynetdicom_and_our_implementation_identity(listener: Listener) -> None:
    proc = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "HOUNSFIELD", "127.0.0.1", str(_port(listener))],
        env=ENV, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ae = AE(ae_title="PYECHO")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", _port(listener), ae_title="HOUNSFIELD")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    acceptor = assoc.acceptor
    assoc.release()
    assert assoc.is_released
    assert acceptor.implementation_class_uid == f"{listener.settings.uid_root}0.1"
    assert acceptor.implementation_version_name == f"HOUNSFIELD_{__version__}"[:16]
    assert acceptor.maximum_length == listener.engine_config().max_pdu


SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # a vendor-private storage class accepted by default
JPIP_REFERENCED = "1.2.840.10008.1.2.4.94"
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"


def test_contexts_get_the_listeners_preferred_syntax_or_the_right_rejection(listener: Listener) -> None:
    raw = Raw(_port(listener))
    ac = raw.associate(
        [
            (1, CTImageStorage, ["1.2.3.999", ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
            (3, CTImageStorage, [JPEG2000Lossless, ExplicitVRLittleEndian]),
            (5, "1.2.840.10008.5.1.4.1.2.2.1", [ExplicitVRLittleEndian]),  # C-FIND study root: not served
            (7, MRImageStorage, ["1.2.3.998"]),
            (9, CTImageStorage, [ExplicitVRBigEndian, JPEGBaseline8Bit]),
            (11, CTImageStorage, [ExplicitVRBigEndian]),
            (13, CTImageStorage, [JPEGBaseline8Bit, JPEG2000Lossless]),
            (15, CTImageStorage, [JPIP_REFERENCED]),
            (17, CTImageStorage, [ENCAPSULATED_UNCOMPRESSED, JPEGBaseline8Bit]),
            (19, SIEMENS_CSA_NON_IMAGE, [ExplicitVRLittleEndian]),
            (21, "1.2.826.0.1.3680043.9.9999.77", [ExplicitVRLittleEndian]),  # private, not configured
        ]
    )
    assert pydicom_free_ac(ac) == {
        1: (0, ExplicitVRLittleEndian),  # uncompressed explicit before implicit
        3: (0, ExplicitVRLittleEndian),  # uncompressed before lossless compression
        5: (3, None),
        7: (4, None),
        9: (0, JPEGBaseline8Bit),  # retired big endian never when anything else is offered...
        11: (0, ExplicitVRBigEndian),  # ...and taken when it is all there is
        13: (0, JPEG2000Lossless),  # lossless before lossy, whatever the order proposed
        15: (4, None),  # JPIP: the pixels would not be in the dataset
        17: (0, ENCAPSULATED_UNCOMPRESSED),
        19: (0, ExplicitVRLittleEndian),
        21: (3, None),
    }
    raw.close()


def test_the_preference_and_the_private_classes_are_settings(serve: Callable[..., Listener]) -> None:
    private = "1.2.826.0.1.3680043.9.9999.77"
    listener = serve(
        {"transfer_syntaxes": [JPEG2000Lossless, ExplicitVRLittleEndian], "private_sop_classes": [private]}
    )
    raw = Raw(_port(listener))
    ac = raw.associate(
        [
            (1, CTImageStorage, [ExplicitVRLittleEndian, JPEG2000Lossless]),
            (3, CTImageStorage, [ImplicitVRLittleEndian, JPEGBaseline8Bit]),  # neither is listed
            (5, private, [ExplicitVRLittleEndian]),
            (7, SIEMENS_CSA_NON_IMAGE, [ExplicitVRLittleEndian]),  # no longer listed
        ]
    )
    assert pydicom_free_ac(ac) == {1: (0, JPEG2000Lossless), 3: (4, None), 5: (0, ExplicitVRLittleEndian), 7: (3, None)}
    raw.close()


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (["+C", "-xy"], "JPEG Baseline proposed first: taking it made storescu compress 16-bit CT lossy, and fail"),
        (["+C", "-xb"], "Explicit VR Big Endian proposed first: taking it made storescu convert every byte"),
    ],
)
def test_dcmtk_proposing_lossy_or_big_endian_first_sends_as_is(
    listener: Listener, tmp_path: Path, options: list[str], why: str
) -> None:
    files = []
    for index in range(3):
        path = tmp_path / f"ct{index}.dcm"
        _ct().save_as(path, enforce_file_format=True)
        files.append(path)
    _storescu(listener, files, *options)
    _assert_stored_exactly(listener, files)
    with listener.db.session() as session:
        syntaxes = set(session.scalars(select(Instance.transfer_syntax_uid)))
    assert syntaxes == {ExplicitVRLittleEndian}, why


def test_a_private_storage_class_is_stored(listener: Listener, tmp_path: Path) -> None:
    ds = _ct(SOPClassUID=SIEMENS_CSA_NON_IMAGE)
    del ds.PixelData
    path = tmp_path / "csa.dcm"
    ds.save_as(path, enforce_file_format=True)
    profile = tmp_path / "private.cfg"  # storescu proposes a class it does not know from a profile only
    profile.write_text(
        "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = 1.2.840.10008.1.2.1\n"
        f"[[PresentationContexts]]\n[Private]\nPresentationContext1 = {SIEMENS_CSA_NON_IMAGE}\\Uncompressed\n"
        "[[Profiles]]\n[Private]\nPresentationContexts = Private\n"
    )
    _storescu(listener, [path], "-xf", str(profile), "Private")
    _assert_stored_exactly(listener, [path])


def pydicom_free_ac(body: bytes) -> dict[int, tuple[int, str | None]]:
    """Context ID -> (result, transfer syntax if accepted) from an A-ASSOCIATE-AC body."""
    results: dict[int, tuple[int, str | None]] = {}
    offset = 68
    while offset < len(body):
        kind, length = body[offset], struct.unpack_from(">H", body, offset + 2)[0]
        if kind == 0x21:
            context_id, result = body[offset + 4], body[offset + 6]
            sub_length = struct.unpack_from(">H", body, offset + 10)[0]
            syntax = body[offset + 12 : offset + 12 + sub_length].decode().rstrip("\x00")
            results[context_id] = (result, syntax if result == 0 else None)
        offset += 4 + length
    return results


def test_role_selection_extended_negotiation_and_async_window_are_ignored_gracefully(listener: Listener) -> None:
    ae = AE(ae_title="EXTNEG")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CTImageStorage, True, True
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid, ext.service_class_application_information = CTImageStorage, b"\x02\x00"
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 4
    assoc = ae.associate("127.0.0.1", _port(listener), ae_title="HOUNSFIELD", ext_neg=[role, ext, window])
    assert assoc.is_established
    assert assoc.send_c_store(_ct()).Status == 0x0000
    assoc.release()
    assert _count(listener) == 1


def test_unsupported_protocol_version_is_rejected(listener: Listener) -> None:
    raw = Raw(_port(listener))
    raw.send(associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])], version=2))
    kind, body = raw.pdu()
    assert kind == 0x03 and _rj(body) == (1, 2, 2)
    assert raw.closed()


def test_association_limit_rejects_transiently(serve: Callable[..., Listener]) -> None:
    listener = serve(max_associations=2)
    first, second = Raw(_port(listener)), Raw(_port(listener))
    for raw in (first, second):
        raw.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
    third = Raw(_port(listener))
    third.send(associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])]))
    kind, body = third.pdu()
    assert kind == 0x03 and _rj(body) == (2, 3, 2), "transient, service-provider (presentation), local limit"
    first.send(struct.pack(">BxI", 0x05, 4) + b"\x00" * 4)
    assert first.pdu()[0] == 0x06
    first.close()  # the requestor closes the transport after A-RELEASE-RP
    time.sleep(0.2)
    fourth = Raw(_port(listener))
    fourth.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
    for raw in (second, third, fourth):
        raw.close()


# -- storing ---------------------------------------------------------------------------------------------


def test_storescu_study_is_stored_byte_for_byte(listener: Listener, tmp_path: Path) -> None:
    _, files = write_study(tmp_path / "ct", seed=11)
    _storescu(listener, files)
    _assert_stored_exactly(listener, files)
    for path in _stored(listener).values():
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian


@pytest.mark.parametrize(
    ("options", "label"),
    [
        (("--max-send-pdu", "4096", "--max-pdu", "4096"), "4 KiB PDUs: every instance in dozens of P-DATA-TF"),
        (("--max-pdu", "131072"), "128 KiB"),
        (("-xi", "--max-pdu", "16384"), "implicit VR little endian"),
    ],
)
def test_pdu_sizes_and_fragmentation(listener: Listener, tmp_path: Path, options: tuple[str, ...], label: str) -> None:
    ds = _ct(rows=256)
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    _, files = write_study(tmp_path / "ct", seed=12, shape=(4, 64, 64))
    _storescu(listener, [path, *files], *options)
    if "-xi" in options:
        syntaxes = {
            pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in _stored(listener).values()
        }
        assert syntaxes == {ImplicitVRLittleEndian}, label
    else:
        _assert_stored_exactly(listener, [path, *files])


def test_pynetdicom_unlimited_pdu_and_several_syntaxes_on_several_contexts(listener: Listener) -> None:
    ae = AE(ae_title="PYSTORE")
    ae.maximum_pdu_size = 0
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, [ExplicitVRBigEndian])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", _port(listener), ae_title="HOUNSFIELD")
    assert assoc.is_established and len(assoc.accepted_contexts) == 3
    sent = {}
    for syntax, sop_class in ((ImplicitVRLittleEndian, CTImageStorage), (ExplicitVRBigEndian, CTImageStorage),
                              (ExplicitVRLittleEndian, MRImageStorage)):  # fmt: skip
        ds = _ct(rows=300, SOPClassUID=sop_class)  # 180 KB: beyond one 16 KiB PDU of the default
        ds.file_meta.TransferSyntaxUID = syntax
        assert assoc.send_c_store(ds).Status == 0x0000
        sent[ds.SOPInstanceUID] = (syntax, ds)
    assoc.release()
    for uid, path in _stored(listener).items():
        syntax, ds = sent[uid]
        stored = pydicom.dcmread(path)
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert stored.PixelData == ds.PixelData


def test_eight_concurrent_associations(listener: Listener, tmp_path: Path) -> None:
    batches = [write_study(tmp_path / f"s{k}", seed=20 + k, shape=(10, 32, 32))[1] for k in range(8)]
    argv = ["/usr/bin/storescu", "-aec", "HOUNSFIELD", "127.0.0.1", str(_port(listener))]
    procs = [
        subprocess.Popen([*argv, "-aet", f"CONC{k}", *map(str, files)], env=ENV, stderr=subprocess.PIPE, text=True)
        for k, files in enumerate(batches)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-1000:]
    _assert_stored_exactly(listener, [f for files in batches for f in files])
    with listener.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 8


def test_large_dataset_is_spooled_while_it_arrives(serve: Callable[..., Listener], tmp_path: Path) -> None:
    listener = serve(spool_threshold=64 << 10)
    ds = _ct(rows=256, frames=6)  # 786 KB of pixels: spooled past 64 KiB
    path = tmp_path / "multi.dcm"
    ds.save_as(path, enforce_file_format=True)
    _storescu(listener, [path, path])  # the second copy is a duplicate: one file, one row
    _assert_stored_exactly(listener, [path])
    assert not list(listener.store.spool_dir.iterdir()), "no spool file is left behind"
    assert len(list((listener.settings.data_dir / "studies").rglob("*.dcm"))) == 1


def test_memory_stays_flat_while_a_large_instance_arrives(listener: Listener, tmp_path: Path) -> None:
    """A 96 MB instance must not be held in memory (dcmtk sends it; the listener runs in this process)."""
    header = _ct(rows=512, frames=1)
    del header.PixelData
    header.NumberOfFrames = 192
    path = tmp_path / "huge.dcm"
    header.save_as(path, enforce_file_format=True)
    pixels = 512 * 512 * 2 * 192
    block = os.urandom(1 << 20)
    with path.open("ab") as handle:
        handle.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels))
        for _ in range(pixels // len(block)):
            handle.write(block)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the process's peak so far
    _storescu(listener, [path])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 48 * 1024, f"peak memory grew by {grown // 1024} MiB while receiving 96 MiB"
    _assert_stored_exactly(listener, [path])


# -- release, abort, errors ------------------------------------------------------------------------------


def _store_rq(ds: Dataset, message_id: int = 1) -> tuple[bytes, bytes]:
    command = command_set(
        AffectedSOPClassUID=ds.SOPClassUID, CommandField=0x0001, MessageID=message_id, Priority=0,
        CommandDataSetType=0x0000, AffectedSOPInstanceUID=ds.SOPInstanceUID,
    )  # fmt: skip
    return command, bytes(encode(ds, False, True))


@pytest.mark.parametrize("ending", ["a-abort", "connection-closed"])
def test_abort_mid_dataset_stores_nothing(serve: Callable[..., Listener], ending: str) -> None:
    listener = serve(spool_threshold=64 << 10)
    for rows in (16, 256):  # in memory, and spooled
        raw = Raw(_port(listener))
        raw.associate([(1, CTImageStorage, [ExplicitVRLittleEndian])])
        command, dataset = _store_rq(_ct(rows=rows))
        raw.send(pdata(1, command, command=True, last=True))
        half = len(dataset) // 2
        for start in range(0, half, 8192):
            raw.send(pdata(1, dataset[start : min(start + 8192, half)], command=False, last=False))
        time.sleep(0.2)
        if ending == "a-abort":
            raw.send(struct.pack(">BxIBBBB", 0x07, 4, 0, 0, 0, 0))
        raw.close()
    time.sleep(0.5)
    assert _count(listener) == 0
    assert not list((listener.settings.data_dir / "studies").rglob("*.dcm"))
    assert not list(listener.store.spool_dir.glob("*")), "the partial spool file is removed"


def test_release_answers_and_the_study_completes(listener: Listener) -> None:
    raw = Raw(_port(listener))
    raw.associate([(1, CTImageStorage, [ExplicitVRLittleEndian])])
    ds = _ct()
    command, dataset = _store_rq(ds, message_id=7)
    raw.send(pdata(1, command, command=True, last=True) + pdata(1, dataset, command=False, last=True))
    response = raw.response()
    assert response.Status == 0x0000 and response.MessageIDBeingRespondedTo == 7
    assert response.CommandField == 0x8001 and response.AffectedSOPInstanceUID == ds.SOPInstanceUID
    raw.send(struct.pack(">BxI", 0x05, 4) + b"\x00" * 4)
    assert raw.pdu()[0] == 0x06
    assert raw.closed()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with listener.db.session() as session:
            study = session.get(Study, ds.StudyInstanceUID)
            if study is not None and study.completion_trigger == "association-release":
                return
        time.sleep(0.05)
    raise AssertionError("the study was not completed on release")


def test_unsupported_command_is_answered_0211_and_the_association_goes_on(listener: Listener) -> None:
    raw = Raw(_port(listener))
    raw.associate([(1, CTImageStorage, [ExplicitVRLittleEndian])])
    find = command_set(AffectedSOPClassUID=CTImageStorage, CommandField=0x0020, MessageID=3, Priority=0,
                       CommandDataSetType=0x0000)  # fmt: skip
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    raw.send(
        pdata(1, find, command=True, last=True)
        + pdata(1, bytes(encode(identifier, False, True)), command=False, last=True)
    )
    response = raw.response()
    assert response.Status == 0x0211 and response.CommandField == 0x8020
    assert "C-STORE" in response.ErrorComment
    command, dataset = _store_rq(_ct(), message_id=4)
    raw.send(pdata(1, command, command=True, last=True) + pdata(1, dataset, command=False, last=True))
    assert raw.response().Status == 0x0000
    raw.close()


def test_refused_instance_carries_an_error_comment(listener: Listener) -> None:
    raw = Raw(_port(listener))
    raw.associate([(1, CTImageStorage, [ExplicitVRLittleEndian])])
    ds = _ct()
    command, _ = _store_rq(ds)
    ds.SOPInstanceUID = generate_uid()  # the dataset now disagrees with the command
    raw.send(
        pdata(1, command, command=True, last=True) + pdata(1, bytes(encode(ds, False, True)), command=False, last=True)
    )
    response = raw.response()
    assert response.Status == 0xA900
    assert "SOPInstanceUID differs" in response.ErrorComment and len(response.ErrorComment) <= 64
    raw.close()


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (struct.pack(">BxI", 0x09, 4) + b"\x00" * 4, "unknown PDU type"),
        (struct.pack(">BxI", 0x04, 1 << 30), "a P-DATA-TF claiming 1 GiB (no body follows)"),
        (pdata(9, b"\x00" * 10, command=True, last=True), "a presentation context that was not accepted"),
        (struct.pack(">BxI", 0x04, 3) + b"\x00\x00\x00", "a truncated PDV item"),
        (pdata(1, b"\x08\x00\x00\x00", command=True, last=True), "an undecodable command set"),
        (associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])]), "a second A-ASSOCIATE-RQ"),
    ],
)
def test_protocol_errors_abort_the_association(listener: Listener, garbage: bytes, why: str) -> None:
    raw = Raw(_port(listener))
    raw.associate([(1, CTImageStorage, [ExplicitVRLittleEndian])])
    raw.send(garbage)
    kind, body = raw.pdu()
    assert kind == 0x07, why
    assert body[2] == 2, "aborted by the service provider"
    assert raw.closed(), why
    # The listener still serves.
    ae = AE(ae_title="AFTER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", _port(listener), ae_title="HOUNSFIELD")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


def test_malformed_associate_request_is_aborted(listener: Listener) -> None:
    raw = Raw(_port(listener))
    rq = bytearray(associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])]))
    rq[76:78] = b"\xff\xff"  # the application context item claims 64 KiB
    raw.send(bytes(rq))
    assert raw.pdu()[0] == 0x07
    assert raw.closed()


def test_non_ascii_ae_title_is_aborted_in_one_log_line(listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    rq = bytearray(associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])]))
    rq[26:30] = b"\xa0\xe9\xff\x80"  # the calling AE title (bytes 26-41): not ISO 646
    with caplog.at_level(logging.INFO):
        raw = Raw(_port(listener))
        raw.send(bytes(rq))
        assert raw.pdu()[0] == 0x07
        assert raw.closed()
    assert "malformed A-ASSOCIATE-RQ" in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a peer's bad bytes"


def test_silent_connections_are_closed_by_the_timers(serve: Callable[..., Listener]) -> None:
    listener = serve({"request_timeout_s": 0.5, "network_timeout_s": 1.0})
    silent = Raw(_port(listener))
    started = time.monotonic()
    assert silent.closed(within=5), "no A-ASSOCIATE-RQ: closed after the request timeout"
    assert time.monotonic() - started < 3
    idle = Raw(_port(listener))
    idle.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
    kind, _ = idle.pdu()
    assert kind == 0x07, "an idle association is aborted after the network timeout"
    assert idle.closed()


def _echo_rq() -> bytes:
    command = command_set(AffectedSOPClassUID=VERIFICATION, CommandField=0x0030, MessageID=1, CommandDataSetType=0x0101)
    return pdata(1, command, command=True, last=True)


def test_a_byte_now_and_then_does_not_hold_an_association(serve: Callable[..., Listener]) -> None:
    """The review's attack: any byte reset the idle timer, so callers sending one byte every few seconds
    held every association slot for ever, and the real modality and the readiness C-ECHO were rejected."""
    listener = serve({"network_timeout_s": 1.0})
    drip = Raw(_port(listener))
    drip.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
    drip.sock.settimeout(0.25)
    started, ended = time.monotonic(), None
    for byte in _echo_rq():  # a byte every 0.25 s: a whole PDU would take 20 s
        try:
            drip.send(bytes([byte]))
            reply = drip.sock.recv(64)
        except TimeoutError:
            continue
        except OSError:
            reply = b""
        assert reply[:1] in (b"\x07", b""), f"expected an A-ABORT, got {reply[:1]!r}"
        ended = time.monotonic()
        break
    assert ended is not None, "the dripping association was never aborted"
    assert ended - started < 4, f"aborted only after {ended - started:.1f} s (network timeout 1 s)"


def test_associations_are_limited_per_address_and_in_all(serve: Callable[..., Listener]) -> None:
    listener = serve({"max_associations": 3, "max_associations_per_address": 2})
    port, echo = _port(listener), [(1, VERIFICATION, [ImplicitVRLittleEndian])]
    held = [Raw(port), Raw(port)]
    for raw in held:
        raw.associate(echo)
    third = Raw(port)
    third.send(associate_rq(echo))
    kind, body = third.pdu()
    assert kind == 0x03 and _rj(body) == (2, 3, 2), "a third from the same address: transient, local limit"
    other = Raw(port, source="127.0.0.2")
    other.associate(echo)
    other.send(_echo_rq())
    assert other.response().Status == 0x0000, "another address (the real modality) is still served"
    fourth = Raw(port, source="127.0.0.3")
    fourth.send(associate_rq(echo))
    kind, body = fourth.pdu()
    assert kind == 0x03 and _rj(body) == (2, 3, 2), "a fourth in all: transient, local limit"
    held[0].close()
    time.sleep(0.3)
    fifth = Raw(port, source="127.0.0.3")
    fifth.associate(echo)  # the slot is free again
    for raw in (held[1], third, other, fourth, fifth):
        raw.close()


def test_connections_waiting_to_associate_are_capped_and_timed(serve: Callable[..., Listener]) -> None:
    listener = serve({"max_pending_connections": 3, "max_pending_per_address": 2, "request_timeout_s": 2.0})
    port = _port(listener)
    silent = [Raw(port), Raw(port)]
    time.sleep(0.2)
    started = time.monotonic()
    assert Raw(port).closed(within=1.5), "a third waiting connection from one address is closed at once"
    waiting = Raw(port, source="127.0.0.2")
    time.sleep(0.2)
    assert Raw(port, source="127.0.0.3").closed(within=1.5), "a fourth waiting connection in all is closed at once"
    assert time.monotonic() - started < 2.5
    waiting.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])  # identified in time: served
    for raw in silent:
        assert raw.closed(within=4), "a connection that sends no A-ASSOCIATE-RQ is closed after request_timeout_s"
    Raw(port).associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (struct.pack(">BxI", 0x04, 2 << 20), "a P-DATA-TF before the association"),
        (struct.pack(">BxI", 0x01, 1 << 20), "an A-ASSOCIATE-RQ of a megabyte"),
        (struct.pack(">BxI", 0x05, 4), "an A-RELEASE-RQ before the association"),
    ],
)
def test_before_its_association_a_caller_may_send_only_a_small_request(
    listener: Listener, header: bytes, why: str
) -> None:
    """Nothing is buffered for an unidentified caller but a bounded A-ASSOCIATE-RQ: the PDU's header
    alone is answered with an A-ABORT, before its body is sent (50 half-sent PDUs held 104 MB)."""
    raw = Raw(_port(listener))
    raw.send(header)
    kind, _ = raw.pdu()
    assert kind == 0x07, why
    assert raw.closed()


def test_dcmtk_reports_rejection_of_an_unserved_called_title(listener: Listener) -> None:
    proc = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "NOT-US", "127.0.0.1", str(_port(listener))],
        env=ENV, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Called AE Title Not Recognized" in proc.stderr


def test_unserved_called_title_gets_reason_7_on_the_wire(listener: Listener) -> None:
    # A raw socket: pynetdicom 3.0's requestor races a fast A-ASSOCIATE-RJ (its ACSE thread may find
    # the socket already closed by its DUL thread and report an abort); dcmtk's view is tested above.
    raw = Raw(_port(listener))
    raw.send(associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])], called="NOT-US"))
    kind, body = raw.pdu()
    assert kind == 0x03 and _rj(body) == (1, 1, 7)
    raw.close()
