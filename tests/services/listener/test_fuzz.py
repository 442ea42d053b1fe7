"""Property-based fuzzing of the running listener: mutated datasets and raw PDUs off the wire.

The listener runs as its own process (``hounsfield listener``), so that the test holds whatever
engine serves the port. Three properties are checked throughout:

* it stays up: after every batch a fresh association's C-ECHO succeeds, and a valid C-STORE still
  succeeds at the end;
* it never acknowledges what it did not keep: for every Success the SOP instance is in the index
  and its file holds exactly the bytes that were sent (the last ones sent under that UID);
* every failure is a failure status, an A-ASSOCIATE-RJ, an A-ABORT or a closed connection, within
  a bounded time: never silence.

Hypothesis runs derandomized (the same examples on every run), a few thousand datasets and PDUs in
all, several per association to keep the run short.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config

from hounsfield.db import Database, Instance
from hounsfield.demo.orthanc import free_port
from tests.services.listener.dicom_wire import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    EXPLICIT_LE,
    IMPLICIT_LE,
    P_DATA_TF,
    VERIFICATION,
    ListenerProcess,
    PresentationContext,
    RawAssociation,
    WireError,
    associate_rq,
    check_acknowledged,
    echo,
    echo_rq,
    p_data,
    part10_file,
    pdu,
    read_pdu,
    responses,
    store_rq,
)
from tests.support import wait_for

pytestmark = pytest.mark.fuzz

HOST = "127.0.0.1"
APPLIED_WITHIN_S = 10.0
"""An acknowledged instance is durable in the ingest journal; its file and index row follow within this."""
ANSWER_WITHIN_S = 10.0
"""A connection the fuzzer has finished with must be closed (or answered) by then: else it hangs."""

SOP_CLASSES = (CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage)
TRANSFER_SYNTAXES = (
    EXPLICIT_LE,
    IMPLICIT_LE,
    str(ExplicitVRBigEndian),
    str(DeflatedExplicitVRLittleEndian),
    str(JPEGBaseline8Bit),
    str(RLELossless),
)
SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB006, 0xB007}


def _is_failure(status: int) -> bool:
    """A C-STORE failure status (PS3.4 B.2.3, PS3.7 C)."""
    return (status >> 8) in (0xA7, 0xA9) or (status >> 12) == 0xC or status in (0x0110, 0x0117, 0x0122, 0x0124)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ListenerProcess, Database]]:
    listener = ListenerProcess(
        tmp_path_factory.mktemp("fuzz-listener"),
        free_port(),
        listener={"quiet_period_s": 600.0, "network_timeout_s": 5.0, "acse_timeout_s": 5.0},
    )
    listener.start()
    db = Database(f"sqlite:///{listener.data_dir.resolve() / 'hounsfield.db'}")
    try:
        yield listener, db
    finally:
        db.dispose()
        listener.stop()


def _assert_serving(listener: ListenerProcess) -> None:
    assert listener.alive, f"the listener process died:\n{listener.log_tail()}"
    assert echo(HOST, listener.port, timeout=ANSWER_WITHIN_S), f"C-ECHO failed after a batch:\n{listener.log_tail()}"


def _assert_no_unexpected_errors(listener: ListenerProcess) -> None:
    """Bad input is answered with a status and a reason, never by an exception escaping into the log."""
    log = listener.log_path.read_text(errors="replace")
    assert "Traceback" not in log, (
        "an exception escaped while handling bad input:\n" + log[log.index("Traceback") :][:3000]
    )


def _assert_still_stores(listener: ListenerProcess, db: Database) -> None:
    """A valid instance from an ordinary SCU (pynetdicom) is stored and acknowledged."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "FUZZ0002"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    ae = AE(ae_title="AFTERFUZZ")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ANSWER_WITHIN_S
    ae.add_requested_context(CTImageStorage, EXPLICIT_LE)
    assoc = ae.associate(HOST, listener.port, ae_title="HOUNSFIELD")
    assert assoc.is_established, "a valid association was refused after the fuzzing"
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000

    def indexed() -> bool:
        with db.session() as session:
            row = session.get(Instance, ds.SOPInstanceUID)
            return row is not None and Path(row.path).is_file()

    wait_for(indexed, timeout=APPLIED_WITHIN_S)


# --- Datasets, encoded by hand so that every byte can be wrong ------------------------------------

# VRs with a 4-byte length in Explicit VR (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


@dataclass
class Element:
    tag: int
    vr: bytes
    value: bytes | list[list[Element]]
    length: int | None = None
    """Overrides the encoded length (to lie about it)."""


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def _base_dataset(sop_class: str, sop_uid: str, study_uid: str, series_uid: str) -> list[Element]:
    us = lambda n: struct.pack("<H", n)  # noqa: E731
    reference = [Element(0x00081150, b"UI", _uid(CTImageStorage)), Element(0x00081155, b"UI", _uid(generate_uid()))]
    return [
        Element(0x00080016, b"UI", _uid(sop_class)),
        Element(0x00080018, b"UI", _uid(sop_uid)),
        Element(0x00080020, b"DA", b"20240115"),
        Element(0x00080060, b"CS", b"CT"),
        Element(0x00081140, b"SQ", [reference]),
        Element(0x00100010, b"PN", b"Fuzz^Case "),
        Element(0x00100020, b"LO", b"FUZZ0001"),
        Element(0x0020000D, b"UI", _uid(study_uid)),
        Element(0x0020000E, b"UI", _uid(series_uid)),
        Element(0x00200011, b"IS", b"1 "),
        Element(0x00200013, b"IS", b"7 "),
        Element(0x00280002, b"US", us(1)),
        Element(0x00280010, b"US", us(4)),
        Element(0x00280011, b"US", us(4)),
        Element(0x00280100, b"US", us(16)),
        Element(0x00280101, b"US", us(12)),
        Element(0x00280102, b"US", us(11)),
        Element(0x00280103, b"US", us(0)),
        Element(0x7FE00010, b"OW", bytes(range(32))),
    ]


_ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
_ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def _encode(elements: list[Element], explicit: bool) -> bytes:
    out = bytearray()
    for element in elements:
        group, number = element.tag >> 16, element.tag & 0xFFFF
        if isinstance(element.value, list):  # a sequence: undefined lengths and delimiters
            items = b"".join(_ITEM + _encode(item, explicit) + _ITEM_END for item in element.value)
            value = items + _SEQUENCE_END
            length = 0xFFFFFFFF if element.length is None else element.length
        else:
            value = element.value
            length = len(value) if element.length is None else element.length
        out += struct.pack("<HH", group, number)
        if not explicit:
            out += struct.pack("<L", length & 0xFFFFFFFF)
        elif element.vr in _LONG_VRS:
            out += element.vr + b"\x00\x00" + struct.pack("<L", length & 0xFFFFFFFF)
        else:
            out += element.vr + struct.pack("<H", length & 0xFFFF)
        out += value
    return bytes(out)


_UID_INDEXES = (0, 1, 7, 8)  # SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID
_BAD_UIDS = st.sampled_from(
    [b"", b"\x00\x00", b"1..2", b"1.2.3.", b"abc", b"1.2.3 x", b"9" * 65, b"1.2.\xff\xfe", b"../../etc", b"1\\2"]
) | st.binary(max_size=80)
_ABSURD_LENGTHS = st.sampled_from([0xFFFFFFF0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFF, 0xFFFE, 1]) | st.integers(0, 2**32 - 1)

_WRONG_VRS = st.sampled_from([b"US", b"UL", b"SQ", b"OB", b"UN", b"DA", b"FD"]) | st.binary(min_size=2, max_size=2)
_BIT_FLIPS = st.lists(st.tuples(st.integers(0, 400), st.integers(0, 7)), min_size=1, max_size=6)
_BAD_PDU_TYPES = st.sampled_from([0x00, 0x08, 0x09, 0x10, 0x7F, 0x80, 0xFF]) | st.integers(8, 255)

_element_mutation = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 18)),
    st.tuples(st.just("uid"), st.sampled_from(_UID_INDEXES), _BAD_UIDS),
    st.tuples(st.just("vr"), st.integers(0, 18), _WRONG_VRS),
    st.tuples(st.just("length"), st.integers(0, 18), _ABSURD_LENGTHS),
    st.tuples(st.just("value"), st.integers(0, 18), st.binary(max_size=40)),
    st.tuples(st.just("swap"), st.integers(0, 18), st.integers(0, 18)),
    st.tuples(st.just("duplicate"), st.integers(0, 18)),
)
_byte_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(1, 400)),
    st.tuples(st.just("flip"), _BIT_FLIPS),
    st.tuples(st.just("insert"), st.integers(0, 400), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
)


@dataclass(frozen=True)
class Mutant:
    """One C-STORE to make: which UIDs, how to encode, what to claim, what to break."""

    reuse_previous: bool
    explicit: bool
    claimed_syntax: str | None
    """The transfer syntax the file meta (hence the presentation context) claims; None: the true one."""
    claimed_class: int
    element_mutations: tuple[tuple[object, ...], ...]
    byte_mutations: tuple[tuple[object, ...], ...]


_mutants = st.builds(
    Mutant,
    reuse_previous=st.booleans(),
    explicit=st.booleans(),
    claimed_syntax=st.none() | st.none() | st.sampled_from(TRANSFER_SYNTAXES),
    claimed_class=st.sampled_from([0, 0, 0, 1, 2]),
    element_mutations=st.lists(_element_mutation, max_size=3).map(tuple),
    byte_mutations=st.lists(_byte_mutation, max_size=2).map(tuple),
)


def _mutate(elements: list[Element], mutant: Mutant) -> bytes:
    for mutation in mutant.element_mutations:
        kind, index = mutation[0], int(mutation[1]) % len(elements)  # type: ignore[call-overload]
        element = elements[index]
        if kind == "drop":
            del elements[index]
        elif kind == "uid":
            elements[index] = Element(element.tag, element.vr, mutation[2])  # type: ignore[arg-type]
        elif kind == "vr":
            element.vr = mutation[2]  # type: ignore[assignment]
        elif kind == "length":
            element.length = mutation[2]  # type: ignore[assignment]
        elif kind == "value":
            element.value = mutation[2]  # type: ignore[assignment]
        elif kind == "swap":
            other = int(mutation[2]) % len(elements)  # type: ignore[call-overload]
            elements[index], elements[other] = elements[other], elements[index]
        elif kind == "duplicate":
            elements.insert(index, Element(element.tag, element.vr, element.value, element.length))
        if not elements:
            elements.append(Element(0x00080060, b"CS", b"CT"))
    data = bytearray(_encode(elements, mutant.explicit))
    for mutation in mutant.byte_mutations:
        kind = mutation[0]
        if kind == "truncate":
            del data[max(1, len(data) - int(mutation[1])) :]  # type: ignore[call-overload]
        elif kind == "flip":
            for position, bit in mutation[1]:  # type: ignore[attr-defined]
                data[position % len(data)] ^= 1 << bit
        elif kind == "insert":
            position = int(mutation[1]) % (len(data) + 1)  # type: ignore[call-overload]
            data[position:position] = mutation[2]  # type: ignore[index]
        elif kind == "append":
            data += mutation[1]  # type: ignore[operator]
    return bytes(data)


def _part10(dataset: bytes, sop_class: str, sop_uid: str, syntax: str) -> bytes:
    return part10_file(dataset, sop_class=sop_class, sop_instance=sop_uid, transfer_syntax=syntax)


def _contexts() -> list[PresentationContext]:
    """One presentation context per (SOP class, transfer syntax): the fuzzer picks which one to lie in."""
    contexts, context_id = [], 1
    for sop_class in SOP_CLASSES:
        for syntax in TRANSFER_SYNTAXES:
            contexts.append(PresentationContext(context_id, sop_class, (syntax,)))
            context_id += 2
    return contexts


def _context_id(assoc: RawAssociation, sop_class: str, syntax: str) -> int:
    index = SOP_CLASSES.index(sop_class) * len(TRANSFER_SYNTAXES) + TRANSFER_SYNTAXES.index(syntax)
    context_id = 1 + 2 * index
    assert assoc.accepted.get(context_id) == syntax, f"context for {sop_class} in {syntax} not accepted"
    return context_id


def test_mutated_datasets_are_stored_exactly_or_refused(running: tuple[ListenerProcess, Database]) -> None:
    listener, db = running
    acknowledged: dict[str, bytes] = {}
    outcomes = {"acknowledged": 0, "refused": 0, "aborted": 0}

    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(_mutants, min_size=16, max_size=28))
    def fuzz(batch: list[Mutant]) -> None:
        assoc = RawAssociation(HOST, listener.port, timeout=ANSWER_WITHIN_S)
        assert assoc.associate(_contexts()) == A_ASSOCIATE_AC, "association refused to a well-formed request"
        uids = (generate_uid(), generate_uid(), generate_uid())
        try:
            for message_id, mutant in enumerate(batch, start=1):
                if not mutant.reuse_previous:
                    uids = (generate_uid(), generate_uid(), generate_uid())
                sop_uid, study_uid, series_uid = uids
                true_syntax = EXPLICIT_LE if mutant.explicit else IMPLICIT_LE
                claimed_class = SOP_CLASSES[mutant.claimed_class]
                context_id = _context_id(assoc, claimed_class, mutant.claimed_syntax or true_syntax)
                dataset = _mutate(_base_dataset(CTImageStorage, sop_uid, study_uid, series_uid), mutant)
                try:
                    code = assoc.c_store(context_id, claimed_class, sop_uid, dataset, message_id)
                except TimeoutError:
                    pytest.fail(f"no answer to a C-STORE within {ANSWER_WITHIN_S:.0f} s: the listener hung")
                except (ConnectionError, WireError):
                    outcomes["aborted"] += 1  # an A-ABORT or a closed connection: nothing was promised
                    break
                if code in SUCCESS_OR_WARNING:
                    acknowledged[sop_uid] = dataset
                    outcomes["acknowledged"] += 1
                    check_acknowledged(db, listener.data_dir, sop_uid, dataset, within_s=APPLIED_WITHIN_S)
                else:
                    assert _is_failure(code), f"C-STORE answered 0x{code:04X}, neither success nor failure"
                    outcomes["refused"] += 1
        finally:
            with contextlib.suppress(OSError, WireError):
                assoc.release()
        _assert_serving(listener)

    fuzz()

    # Nothing acknowledged earlier was lost or overwritten by what came later.
    for sop_uid, sent in acknowledged.items():
        check_acknowledged(db, listener.data_dir, sop_uid, sent, within_s=APPLIED_WITHIN_S)
    assert outcomes["acknowledged"] > 50 and outcomes["refused"] > 300, f"the mutations missed a side: {outcomes}"
    assert not list(listener.data_dir.rglob(".incoming-*")), "a temporary file was left behind"
    _assert_still_stores(listener, db)
    _assert_no_unexpected_errors(listener)


def _pynetdicom_scu() -> AE:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ANSWER_WITHIN_S
    for syntax in TRANSFER_SYNTAXES:
        ae.add_requested_context(CTImageStorage, syntax)
    return ae


@pytest.mark.parametrize("claimed", [s for s in TRANSFER_SYNTAXES if s != EXPLICIT_LE])
def test_part10_file_meta_that_lies_about_its_transfer_syntax(
    running: tuple[ListenerProcess, Database], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, claimed: str
) -> None:
    """pynetdicom's SCU sends an Explicit VR file whose meta claims another syntax, bytes untouched."""
    listener, db = running
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
    ae = _pynetdicom_scu()
    sop_uid = generate_uid()
    dataset = _encode(_base_dataset(CTImageStorage, sop_uid, generate_uid(), generate_uid()), explicit=True)
    liar, honest = tmp_path / "liar.dcm", tmp_path / "honest.dcm"
    for path, syntax in ((liar, claimed), (honest, EXPLICIT_LE)):
        path.write_bytes(part10_file(dataset, sop_class=CTImageStorage, sop_instance=sop_uid, transfer_syntax=syntax))
    assoc = ae.associate(HOST, listener.port, ae_title="HOUNSFIELD")
    assert assoc.is_established
    try:
        lied = assoc.send_c_store(liar)
        if "Status" in lied and int(lied.Status) in SUCCESS_OR_WARNING:
            check_acknowledged(db, listener.data_dir, sop_uid, dataset, within_s=APPLIED_WITHIN_S)
        else:
            assert "Status" not in lied or _is_failure(int(lied.Status))
        if not assoc.is_established:
            assoc = ae.associate(HOST, listener.port, ae_title="HOUNSFIELD")
        # The same bytes under their true transfer syntax are taken, whatever happened to the liar.
        assert assoc.send_c_store(honest).Status == 0x0000
        check_acknowledged(db, listener.data_dir, sop_uid, dataset, within_s=APPLIED_WITHIN_S)
    finally:
        if assoc.is_established:
            assoc.release()
    _assert_serving(listener)


# --- Raw PDUs ---------------------------------------------------------------------------------

_VALID_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
_STORE_CONTEXT = [PresentationContext(1, VERIFICATION, (IMPLICIT_LE,)), PresentationContext(3, CTImageStorage)]


def _valid_store_pdus() -> tuple[tuple[str, bytes], list[bytes]]:
    sop_uid = generate_uid()
    dataset = _encode(_base_dataset(CTImageStorage, sop_uid, generate_uid(), generate_uid()), explicit=False)
    return (sop_uid, dataset), [p_data((3, 0x03, store_rq(CTImageStorage, sop_uid, 7))), p_data((3, 0x02, dataset))]


_BYTE = st.integers(0, 255)
_junk = st.one_of(
    # random bytes, of any shape
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=300)),
    # a valid PDU type with an absurd length field, then a little of the promised body
    st.tuples(st.just("absurd-length"), st.sampled_from(_VALID_TYPES), _ABSURD_LENGTHS, st.binary(max_size=64)),
    # a PDU type that does not exist
    st.tuples(st.just("bad-type"), _BAD_PDU_TYPES, st.binary(max_size=64)),
    # a P-DATA-TF carrying a C-ECHO or C-STORE, out of turn
    st.tuples(st.just("p-data"), st.sampled_from(["echo", "store"])),
    # a valid A-ASSOCIATE-RQ with bytes flipped, cut or lengths lying
    st.tuples(st.just("bad-associate"), _BIT_FLIPS | st.just([]), st.integers(0, 400) | st.none()),
    # A-RELEASE-RQ / A-ABORT / A-ASSOCIATE-AC out of turn
    st.tuples(st.just("out-of-turn"), st.sampled_from([0x02, 0x03, 0x05, 0x06, 0x07])),
    # a P-DATA-TF whose command or PDV items are wrong
    st.tuples(st.just("bad-pdv"), _BYTE, _BYTE, st.binary(max_size=64), _ABSURD_LENGTHS | st.none()),
    # a C-STORE whose command set is bit-flipped
    st.tuples(st.just("flipped-store"), _BIT_FLIPS),
)


@dataclass(frozen=True)
class Probe:
    """One connection: associate first or not, then one piece of junk."""

    associate: bool
    junk: tuple[object, ...]


def _junk_bytes(junk: tuple[object, ...]) -> tuple[bytes, tuple[str, bytes] | None]:
    """The bytes to send, and the SOP Instance UID and dataset of the C-STORE inside them (if any)."""
    kind = junk[0]
    if kind == "garbage":
        return junk[1], None  # type: ignore[return-value]
    if kind == "absurd-length":
        return pdu(int(junk[1]), junk[3], length=int(junk[2])), None  # type: ignore[arg-type,call-overload]
    if kind == "bad-type":
        return pdu(int(junk[1]), junk[2]), None  # type: ignore[arg-type,call-overload]
    if kind == "p-data":
        if junk[1] == "echo":
            return p_data((1, 0x03, echo_rq())), None
        stored, pdus = _valid_store_pdus()
        return b"".join(pdus), stored
    if kind == "bad-associate":
        raw = bytearray(associate_rq(_STORE_CONTEXT))
        for position, bit in junk[1]:  # type: ignore[attr-defined]
            raw[position % len(raw)] ^= 1 << bit
        if junk[2] is not None:
            del raw[max(6, int(junk[2]) % len(raw)) :]  # type: ignore[call-overload]
        return bytes(raw), None
    if kind == "out-of-turn":
        return pdu(int(junk[1]), b"\x00" * 4), None  # type: ignore[call-overload]
    if kind == "bad-pdv":
        _, context_id, control, data, item_length = junk
        body = struct.pack(">LBB", len(data) + 2 if item_length is None else item_length, context_id, control) + data  # type: ignore[arg-type]
        return pdu(P_DATA_TF, body), None
    if kind == "flipped-store":
        stored, pdus = _valid_store_pdus()
        command = bytearray(pdus[0])
        for position, bit in junk[1]:  # type: ignore[attr-defined]
            index = 12 + position % (len(command) - 12)  # after the PDU and PDV headers
            command[index] ^= 1 << bit
        return bytes(command) + pdus[1], stored
    raise AssertionError(kind)


def _probe(listener: ListenerProcess, db: Database, probe: Probe) -> str:
    """Run one probe; returns how the listener ended it. Fails on silence or an unkept promise."""
    assoc = RawAssociation(HOST, listener.port, timeout=ANSWER_WITHIN_S)
    try:
        if probe.associate:
            answer = assoc.associate(_STORE_CONTEXT)
            assert answer == A_ASSOCIATE_AC, f"a valid A-ASSOCIATE-RQ got PDU type 0x{answer:02X}"
        data, stored = _junk_bytes(probe.junk)
        with contextlib.suppress(ConnectionError):
            assoc.send(data)
        try:
            pdus = assoc.drain_until_closed(ANSWER_WITHIN_S)
        except TimeoutError:
            pytest.fail(f"the listener left a connection open for {ANSWER_WITHIN_S:.0f} s after {probe}")
        seen = [pdu_type for pdu_type, _ in pdus]
        allowed = {A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RP, A_ABORT}
        assert set(seen) <= allowed, f"the listener answered with PDU types {seen}"
        if not probe.associate:
            assert P_DATA_TF not in seen, f"a DIMSE answer without an association, after {probe}"
        for command in responses(pdus):
            status = struct.unpack("<H", command.get(0x0900, b"\xff\xff"))[0]
            if status in SUCCESS_OR_WARNING and struct.unpack("<H", command.get(0x0100, b"\0\0"))[0] == 0x8001:
                # A C-STORE-RSP Success for the smuggled instance: it must have been kept as sent.
                assert stored is not None, f"a C-STORE Success for nothing that was sent, after {probe}"
                check_acknowledged(db, listener.data_dir, *stored, within_s=APPLIED_WITHIN_S)
        return "abort" if A_ABORT in seen else "reject" if A_ASSOCIATE_RJ in seen else "closed"
    finally:
        assoc.close()


def test_raw_pdus_never_crash_hang_or_leak(running: tuple[ListenerProcess, Database]) -> None:
    listener, db = running
    endings: dict[str, int] = {}

    @settings(
        max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(batch=st.lists(st.builds(Probe, associate=st.booleans(), junk=_junk), min_size=4, max_size=8))
    def fuzz(batch: list[Probe]) -> None:
        for probe in batch:
            ending = _probe(listener, db, probe)
            endings[ending] = endings.get(ending, 0) + 1
        _assert_serving(listener)

    fuzz()
    assert sum(endings.values()) >= 1500, endings
    _assert_still_stores(listener, db)
    _assert_no_unexpected_errors(listener)


def test_a_silent_half_pdu_is_dropped_after_the_network_timeout(running: tuple[ListenerProcess, Database]) -> None:
    """A peer that promises a long PDU and goes quiet must not hold a connection forever."""
    listener, _ = running
    held = []
    try:
        for pdu_type in (0x01, 0x04):
            assoc = RawAssociation(HOST, listener.port, timeout=30)
            if pdu_type == 0x04:
                assert assoc.associate(_STORE_CONTEXT) == A_ASSOCIATE_AC
            assoc.send(pdu(pdu_type, b"\x00" * 10, length=0xFFFFFFF0))
            held.append(assoc)
        started = time.monotonic()
        for assoc in held:
            assoc.sock.settimeout(max(1.0, 30 - (time.monotonic() - started)))
            with contextlib.suppress(ConnectionError, WireError):
                while True:
                    read_pdu(assoc.sock)
        waited = time.monotonic() - started
    except TimeoutError:
        pytest.fail("the listener kept a silent connection open for 30 s (network_timeout_s is 5)")
    finally:
        for assoc in held:
            assoc.close()
    assert waited < 20
    _assert_serving(listener)
