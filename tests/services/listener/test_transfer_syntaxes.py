"""Every common transfer syntax and storage SOP class arrives, is kept exactly as sent, indexed, and decodes.

A modality sends in the syntax it was set up for; the listener must accept it as proposed, store the bytes
that arrived (no transcoding: decoding is the model's business, and lossy re-encoding would be harm), index
the syntax, and the worker's pre-flight check must decode it. Files are encoded here per syntax
(``tests.transfer_syntaxes``) and sent with dcmtk's ``storescu`` proposing exactly that one syntax, or with
pynetdicom where dcmtk 3.6.7 does not know the syntax (HTJ2K).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import uid
from pydicom._uid_dict import UID_dictionary
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import _NON_PATIENT_OBJECT_CLASSES, _STORAGE_CLASSES  # type: ignore[attr-defined]
from sqlalchemy import select

from hounsfield.config import Settings, load_settings
from hounsfield.db import Instance, Job
from hounsfield.demo.orthanc import free_port
from hounsfield.listener.server import Listener
from hounsfield.worker.preflight import InputRejected, check_series
from tests.dicom_standard import TRANSFER_SYNTAXES, StandardSyntax
from tests.transfer_syntaxes import IMAGE_FACTORIES, SYNTAXES, Syntax, encode, pixels_match

CALLED_AE = "HOUNSFIELD"
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
ExplicitVRBigEndian = str(uid.ExplicitVRBigEndian)


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    """One listener for the module (start and stop cost most of a second; every case sends fresh UIDs)."""
    folder = tmp_path_factory.mktemp("syntaxes")
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("HOUNSFIELD_")]:
            patch.delenv(key)
        settings = load_settings(
            None,
            data_dir=folder / "data",
            listener={
                "host": "127.0.0.1",
                "port": free_port(),
                "quiet_period_s": 1.0,
                "min_free_disk_mb": 64,
                "open_mode": True,  # as in conftest's settings: the senders' AE titles are made up
            },
            destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
            deployments=[],
        )
    queued: list[Job] = []  # no deployments: nothing is routed, but the listener wants a queue
    running = Listener(settings, queued.append)
    running.start()
    yield running
    running.stop()


def _port(listener: Listener) -> int:
    settings: Settings = listener.settings
    return settings.listener.port


# --- senders -------------------------------------------------------------------------------------------------------


def _storescu(listener: Listener, path: Path, sop_class: str, syntax: Syntax, folder: Path) -> None:
    """Send with dcmtk proposing exactly one context: the file's SOP class in ``syntax`` and nothing else.

    Without a profile storescu proposes uncompressed syntaxes too, and converts when those are accepted;
    a one-context profile makes any refusal or silent conversion show.
    """
    profile = folder / f"{syntax.name}.cfg"
    profile.write_text(
        "[[TransferSyntaxes]]\n[Only]\n"
        f"TransferSyntax1 = {syntax.uid}\n"
        "[[PresentationContexts]]\n[Only]\n"
        f"PresentationContext1 = {sop_class}\\Only\n"
        "[[Profiles]]\n[Only]\nPresentationContexts = Only\n"
    )
    argv = ["/usr/bin/storescu", "-v", "-xf", str(profile), "Only", "-aet", "MODALITY", "-aec", CALLED_AE]
    argv += ["127.0.0.1", str(_port(listener)), str(path)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Received Store Response (Success)" in output, (
        f"storescu could not store {syntax.name}: {output[-800:]}"
    )


def _pynetdicom(listener: Listener, path: Path, sop_class: str, syntax: Syntax) -> None:
    """Send the file's bytes as they are (pynetdicom does not decode a dataset given as a path)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(sop_class, syntax.uid)
    assoc = ae.associate("127.0.0.1", _port(listener), ae_title=CALLED_AE)
    assert assoc.is_established, f"no association for {syntax.name}"
    try:
        assert len(assoc.accepted_contexts) == 1, f"the listener refused {sop_class} in {syntax.name}"
        (context,) = assoc.accepted_contexts
        assert context.transfer_syntax[0] == syntax.uid
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert status is not None and status.Status == 0x0000, f"C-STORE of {syntax.name} answered {status}"


# --- what was stored -----------------------------------------------------------------------------------------------


def _dataset_bytes(path: Path) -> bytes:
    """The encoded data set after the file meta information (inflated for the deflated syntax)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", f"{path.name} is not a Part-10 file"
    assert data[132:136] == b"\x02\x00\x00\x00", f"{path.name} lacks a File Meta Information Group Length"
    end = 144 + int.from_bytes(data[140:144], "little")
    meta = pydicom.filereader.read_file_meta_info(path)
    body = data[end:]
    if meta.TransferSyntaxUID == uid.DeflatedExplicitVRLittleEndian:
        body = zlib.decompress(body, -zlib.MAX_WBITS)  # senders may deflate at another level: compare content
    return body


def _indexed(listener: Listener, sop_instance_uid: str) -> Instance:
    listener.flush()
    with listener.db.session() as session:
        rows = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).all()
        assert len(rows) == 1, f"{len(rows)} index rows for the instance"
        session.expunge_all()
        return rows[0]


_BITS = {kind: int(factory(0).BitsStored) for kind, factory in IMAGE_FACTORIES.items()}
CASES = [
    pytest.param(kind, syntax, id=f"{syntax.name}-{kind}")
    for syntax in SYNTAXES
    for kind in IMAGE_FACTORIES
    if syntax.bits is None or syntax.bits == _BITS[kind]
]


@pytest.mark.parametrize(("kind", "syntax"), CASES)
def test_instance_is_stored_as_sent_indexed_and_decodes(
    listener: Listener, tmp_path: Path, kind: str, syntax: Syntax
) -> None:
    original = IMAGE_FACTORIES[kind](len(kind) * 100 + SYNTAXES.index(syntax))
    sent = encode(original, syntax, tmp_path)
    sent_ds = pydicom.dcmread(sent)
    assert sent_ds.file_meta.TransferSyntaxUID == syntax.uid
    if syntax.dcmtk_can_send:
        _storescu(listener, sent, original.SOPClassUID, syntax, tmp_path)
    else:
        _pynetdicom(listener, sent, original.SOPClassUID, syntax)

    row = _indexed(listener, sent_ds.SOPInstanceUID)
    assert row.transfer_syntax_uid == syntax.uid, f"indexed as {row.transfer_syntax_uid}"
    assert row.sop_class_uid == original.SOPClassUID
    stored = Path(row.path)
    stored_ds = pydicom.dcmread(stored)
    assert stored_ds.file_meta.TransferSyntaxUID == syntax.uid, "the listener transcoded the instance"
    assert stored_ds.PixelData == sent_ds.PixelData, "pixel data bytes changed on the way"
    assert _dataset_bytes(stored) == _dataset_bytes(sent), "the stored data set is not the one sent"

    problem = pixels_match(
        stored_ds.pixel_array, original.pixel_array, lossless=syntax.lossless, bits_stored=int(original.BitsStored)
    )
    assert problem is None, f"{syntax.name}: {problem}"
    check_series(row.series_instance_uid, f"{kind} in {syntax.name}", [stored])


def _storage_classes() -> dict[str, str]:
    """Every storage SOP class of patient objects that pydicom or pynetdicom knows, retired ones included (old
    modalities still send them).

    Left out: the Media Storage Directory class (DICOMDIR files, never sent by C-STORE) and the non-patient
    objects (hanging protocols, colour palettes, implant templates, defined procedure protocols, protocol
    approvals, inventories): they carry no study or series, so refusing them at negotiation is the honest
    answer for a study store.
    """
    excluded = {str(uid.MediaStorageDirectoryStorage), *map(str, _NON_PATIENT_OBJECT_CLASSES.values())}
    known = {
        str(key): name
        for key, (name, kind, *_rest) in UID_dictionary.items()
        if kind == "SOP Class" and name.endswith("Storage")
    }
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        known.setdefault(str(context.abstract_syntax), UID(context.abstract_syntax).name)
    for name, value in _STORAGE_CLASSES.items():
        known.setdefault(str(value), name)
    return {key: name for key, name in known.items() if key not in excluded}


def test_every_storage_sop_class_is_accepted(listener: Listener) -> None:
    classes = sorted(_storage_classes())
    refused: list[str] = []
    for start in range(0, len(classes), 128):  # at most 128 presentation contexts per association
        ae = AE(ae_title="ALLCLASSES")
        for sop_class in classes[start : start + 128]:
            ae.add_requested_context(sop_class, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", _port(listener), ae_title=CALLED_AE)
        assert assoc.is_established
        accepted = {str(context.abstract_syntax) for context in assoc.accepted_contexts}
        assoc.release()
        refused += [sop_class for sop_class in classes[start : start + 128] if sop_class not in accepted]
    names = sorted(f"{UID(sop_class).name} ({sop_class})" for sop_class in refused)
    assert not refused, f"{len(refused)} of {len(classes)} storage SOP classes refused: {names}"


@pytest.mark.parametrize("kind", sorted(IMAGE_FACTORIES))
def test_synthetic_images_are_valid_iods(tmp_path: Path, kind: str) -> None:
    """The test images pass dicom3tools' IOD checker, so the listener is tested on objects a modality could send."""
    path = tmp_path / f"{kind}.dcm"
    IMAGE_FACTORIES[kind](1).save_as(path, enforce_file_format=True)
    proc = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
    assert not errors, f"{kind}: {errors}"


# --- pre-flight: decoding is checked before a model runs -----------------------------------------------------------


def test_preflight_refuses_a_syntax_pydicom_cannot_decode(tmp_path: Path) -> None:
    ds = IMAGE_FACTORIES["CT"](5)
    path = encode(ds, next(s for s in SYNTAXES if s.name == "JPEG2000Lossless"), tmp_path)
    video = pydicom.dcmread(path)
    video.file_meta.TransferSyntaxUID = uid.MPEG2MPML  # encapsulated, but no pydicom decoder exists for video
    video.save_as(path, enforce_file_format=True)
    with pytest.raises(InputRejected, match=r"undecodable pixels: MPEG2 Main Profile / Main Level needs a pixel data"):
        check_series(ds.SeriesInstanceUID, "video", [path])


def _site_packages_without(folder: Path, hidden: tuple[str, ...]) -> Path:
    """A copy of this interpreter's site-packages, made of symbolic links, lacking the ``hidden`` entries:
    to an interpreter that uses it, those packages are simply not installed."""
    (site_packages,) = {Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()}
    farm = folder / "site-packages"
    farm.mkdir()
    for entry in site_packages.iterdir():
        if not entry.name.lower().startswith(hidden):
            (farm / entry.name).symlink_to(entry)
    return farm


def test_preflight_names_the_package_a_missing_decoder_needs(tmp_path: Path) -> None:
    """Without pylibjpeg-openjpeg this installation cannot decode HTJ2K: the reason says what to install.

    The check runs in an interpreter whose site-packages lack that package (pydicom finds its plugins once,
    at import, so it cannot be taken away in this process).
    """
    ds = IMAGE_FACTORIES["CT"](6)
    path = encode(ds, next(s for s in SYNTAXES if s.name == "HTJ2KLossless"), tmp_path)
    farm = _site_packages_without(tmp_path, ("openjpeg", "pylibjpeg_openjpeg"))
    script = (
        "import site, sys\n"
        f"site.addsitedir({str(farm)!r})\n"
        "from pathlib import Path\n"
        "from hounsfield.worker.preflight import InputRejected, check_series\n"
        "try:\n"
        f"    check_series('1.2.3', 'htj2k', [Path({str(path)!r})])\n"
        "except InputRejected as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('accepted')\n"
    )
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60, check=False, cwd=root
    )
    assert proc.returncode == 0, proc.stderr[-800:]
    reason = proc.stdout.strip()
    assert reason.startswith("series 'htj2k': undecodable pixels: High-Throughput JPEG 2000"), reason
    assert "pylibjpeg-openjpeg" in reason, reason


def test_preflight_reports_a_truncated_code_stream(tmp_path: Path) -> None:
    ds = IMAGE_FACTORIES["MR"](7)
    path = encode(ds, next(s for s in SYNTAXES if s.name == "JPEG2000Lossless"), tmp_path)
    broken = pydicom.dcmread(path)
    frame = next(generate_frames(broken.PixelData, number_of_frames=1))
    broken.PixelData = encapsulate([frame[: len(frame) // 2 & ~1]])  # the second half of the frame never came
    broken.save_as(path, enforce_file_format=True)
    with pytest.raises(
        InputRejected, match=r"undecodable pixels: instance number 1 \(JPEG 2000 Image Compression \(Loss"
    ):
        check_series(ds.SeriesInstanceUID, "truncated", [path])


# --- the set of transfer syntaxes, from the standard ----------------------------------------------------------------


def _must_accept(syntax: StandardSyntax) -> bool:
    """What the listener must do with each syntax of PS3.6 Table A-1 (``hounsfield.dicom_syntaxes`` says why):
    store every current syntax that carries a dataset's pixels in it, and the retired Explicit VR Big
    Endian that old modalities still send; refuse JPIP (the pixels are behind a URL), DICOM-RTV streams,
    media formats, and the retired JPEG processes."""
    if syntax.uid == ExplicitVRBigEndian:
        return True
    return not syntax.retired and syntax.kind in ("native", "deflated", "encapsulated")


def test_the_transfer_syntaxes_accepted_are_the_standards(listener: Listener) -> None:
    """Each syntax of the standard alone in a context of its own: accepted or refused as the standard's rules say."""
    syntaxes = list(TRANSFER_SYNTAXES)
    answers: dict[str, bool] = {}
    for start in range(0, len(syntaxes), 64):
        ae = AE(ae_title="SYNTAXES")
        batch = syntaxes[start : start + 64]
        for syntax in batch:
            ae.add_requested_context(uid.CTImageStorage, [syntax.uid])
        assoc = ae.associate("127.0.0.1", _port(listener), ae_title=CALLED_AE)
        assert assoc.is_established
        accepted = {context.transfer_syntax[0] for context in assoc.accepted_contexts}
        assoc.release()
        answers |= {syntax.uid: syntax.uid in accepted for syntax in batch}
    wrong = [
        f"{syntax.name} ({syntax.uid}): {'accepted' if answers[syntax.uid] else 'refused'}"
        for syntax in syntaxes
        if answers[syntax.uid] != _must_accept(syntax)
    ]
    assert not wrong, wrong


def test_encapsulated_uncompressed_is_stored_as_sent(listener: Listener, tmp_path: Path) -> None:
    """1.2.840.10008.1.2.1.98: each frame its own fragment (dcmtk 3.6.7 and pydicom's encoders predate it)."""
    original = IMAGE_FACTORIES["MultiFrameWordSC"](7)
    frames = int(original.get("NumberOfFrames", 1))
    size = len(original.PixelData) // frames
    original.PixelData = encapsulate([original.PixelData[i * size : (i + 1) * size] for i in range(frames)])
    original["PixelData"].VR = "OB"
    original["PixelData"].is_undefined_length = True
    original.file_meta.TransferSyntaxUID = ENCAPSULATED_UNCOMPRESSED
    sent = tmp_path / "encapsulated.dcm"
    original.save_as(sent, enforce_file_format=True)
    syntax = Syntax("EncapsulatedUncompressedExplicitVRLittleEndian", UID(ENCAPSULATED_UNCOMPRESSED), True, "pydicom")
    _pynetdicom(listener, sent, original.SOPClassUID, syntax)
    row = _indexed(listener, original.SOPInstanceUID)
    assert row.transfer_syntax_uid == ENCAPSULATED_UNCOMPRESSED
    assert _dataset_bytes(Path(row.path)) == _dataset_bytes(sent), "stored as sent"
