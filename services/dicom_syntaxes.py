"""The transfer syntaxes the listener stores, the order in which it prefers them, and the vendors'
private storage SOP classes it accepts by default.

Each one is taken from PS3.6 (2025b) Table A-1 with what the listener must know about its encoding:
how the element stream is encoded (VR, byte order, deflate) and whether its Pixel Data is
encapsulated. pydicom's and pynetdicom's own lists are not used: they lag the standard
(Encapsulated Uncompressed Explicit VR Little Endian, Deflated Image Frame Compression) and list
syntaxes the listener has no business accepting.

Not stored, on purpose (an A-ASSOCIATE-AC answers them "transfer syntaxes not supported", so that a
sender that offers something else too sends that):

* JPIP Referenced (Deflate), JPIP HTJ2K Referenced (Deflate): the pixels are not in the dataset but
  behind a URL, and an application has no way to reach it;
* SMPTE ST 2110 (DICOM-RTV): real-time video streams, not instances (PS3.34);
* the retired JPEG processes 3 and 5 to 29, RFC 2557 MIME and XML encoding, Papyrus 3: retired
  decades ago, and nothing here could decode them.

Explicit VR Big Endian is retired too, but old modalities still send it: it is stored when nothing
else is offered, and never chosen when something else is (:func:`preference_order`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BIG_ENDIAN",
    "DEFAULT_PREFERENCE",
    "DEFLATED",
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "PRIVATE_STORAGE_CLASSES",
    "STORED",
    "TransferSyntax",
    "preference_order",
]

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"


@dataclass(frozen=True)
class TransferSyntax:
    """How a transfer syntax encodes a dataset (PS3.5 section 10 and annex A)."""

    uid: str
    name: str
    lossy: bool = False
    encapsulated: bool = True
    """The Pixel Data is a sequence of fragments (undefined length) rather than native pixels."""
    implicit_vr: bool = False
    big_endian: bool = False
    deflated: bool = False
    """The whole dataset after the file meta is one deflate stream (RFC 1951)."""


def _native(uid: str, name: str, **kwargs: bool) -> TransferSyntax:
    return TransferSyntax(uid, name, encapsulated=False, **kwargs)


_JPEG = "1.2.840.10008.1.2.4."
STORED: dict[str, TransferSyntax] = {
    syntax.uid: syntax
    for syntax in (
        _native(IMPLICIT_LE, "Implicit VR Little Endian", implicit_vr=True),
        _native(EXPLICIT_LE, "Explicit VR Little Endian"),
        TransferSyntax("1.2.840.10008.1.2.1.98", "Encapsulated Uncompressed Explicit VR Little Endian"),
        _native(DEFLATED, "Deflated Explicit VR Little Endian", deflated=True),
        _native(BIG_ENDIAN, "Explicit VR Big Endian (retired)", big_endian=True),
        TransferSyntax(_JPEG + "50", "JPEG Baseline (Process 1)", lossy=True),
        TransferSyntax(_JPEG + "51", "JPEG Extended (Process 2 & 4)", lossy=True),
        TransferSyntax(_JPEG + "57", "JPEG Lossless, Non-Hierarchical (Process 14)"),
        TransferSyntax(_JPEG + "70", "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 SV1)"),
        TransferSyntax(_JPEG + "80", "JPEG-LS Lossless Image Compression"),
        TransferSyntax(_JPEG + "81", "JPEG-LS Lossy (Near-Lossless) Image Compression", lossy=True),
        TransferSyntax(_JPEG + "90", "JPEG 2000 Image Compression (Lossless Only)"),
        TransferSyntax(_JPEG + "91", "JPEG 2000 Image Compression", lossy=True),
        TransferSyntax(_JPEG + "92", "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)"),
        TransferSyntax(_JPEG + "93", "JPEG 2000 Part 2 Multi-component Image Compression", lossy=True),
        TransferSyntax(_JPEG + "100", "MPEG2 Main Profile / Main Level", lossy=True),
        TransferSyntax(_JPEG + "100.1", "Fragmentable MPEG2 Main Profile / Main Level", lossy=True),
        TransferSyntax(_JPEG + "101", "MPEG2 Main Profile / High Level", lossy=True),
        TransferSyntax(_JPEG + "101.1", "Fragmentable MPEG2 Main Profile / High Level", lossy=True),
        TransferSyntax(_JPEG + "102", "MPEG-4 AVC/H.264 High Profile / Level 4.1", lossy=True),
        TransferSyntax(_JPEG + "102.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1", lossy=True),
        TransferSyntax(_JPEG + "103", "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", lossy=True),
        TransferSyntax(
            _JPEG + "103.1", "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", lossy=True
        ),
        TransferSyntax(_JPEG + "104", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", lossy=True),
        TransferSyntax(
            _JPEG + "104.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", lossy=True
        ),
        TransferSyntax(_JPEG + "105", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", lossy=True),
        TransferSyntax(
            _JPEG + "105.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", lossy=True
        ),
        TransferSyntax(_JPEG + "106", "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", lossy=True),
        TransferSyntax(_JPEG + "106.1", "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", lossy=True),
        TransferSyntax(_JPEG + "107", "HEVC/H.265 Main Profile / Level 5.1", lossy=True),
        TransferSyntax(_JPEG + "108", "HEVC/H.265 Main 10 Profile / Level 5.1", lossy=True),
        TransferSyntax(_JPEG + "110", "JPEG XL Lossless"),
        TransferSyntax(_JPEG + "111", "JPEG XL JPEG Recompression", lossy=True),
        TransferSyntax(_JPEG + "112", "JPEG XL", lossy=True),
        TransferSyntax(_JPEG + "201", "High-Throughput JPEG 2000 Image Compression (Lossless Only)"),
        TransferSyntax(_JPEG + "202", "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)"),
        TransferSyntax(_JPEG + "203", "High-Throughput JPEG 2000 Image Compression", lossy=True),
        TransferSyntax("1.2.840.10008.1.2.5", "RLE Lossless"),
        TransferSyntax("1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression"),
    )
}
"""Every transfer syntax the listener accepts and stores as sent, by UID."""

DEFAULT_PREFERENCE: tuple[str, ...] = (
    # Uncompressed first: every application reads them, at no decoding cost.
    EXPLICIT_LE,
    IMPLICIT_LE,
    "1.2.840.10008.1.2.1.98",
    # Then lossless compression, the codecs pydicom decodes fastest first.
    _JPEG + "80",
    _JPEG + "70",
    _JPEG + "57",
    "1.2.840.10008.1.2.5",
    _JPEG + "201",
    _JPEG + "202",
    _JPEG + "90",
    _JPEG + "92",
    DEFLATED,
    "1.2.840.10008.1.2.8.1",
    _JPEG + "110",
    # Lossy last: only when the sender offers nothing else (its images are lossy already, or it
    # would compress them on the fly).
    _JPEG + "111",
    _JPEG + "81",
    _JPEG + "203",
    _JPEG + "91",
    _JPEG + "93",
    _JPEG + "51",
    _JPEG + "50",
    _JPEG + "112",
    *(uid for uid, syntax in STORED.items() if uid.startswith(_JPEG + "10")),
    BIG_ENDIAN,
)
"""``listener.transfer_syntaxes``' default: lossless and uncompressed before lossy, big endian last."""


def preference_order(preference: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Each accepted syntax's rank (lower is better) from the configured ``preference``.

    Only syntaxes in :data:`STORED` and in ``preference`` are accepted. Explicit VR Big Endian ranks
    last whatever its place in ``preference``: it is retired, and chosen only when alone.
    """
    ranks = {uid: rank for rank, uid in enumerate(dict.fromkeys(preference)) if uid in STORED}
    if BIG_ENDIAN in ranks:
        ranks[BIG_ENDIAN] = len(preference) + 1
    return ranks


PRIVATE_STORAGE_CLASSES: dict[str, str] = {
    "1.3.12.2.1107.5.9.1": "Siemens CSA Non-Image Storage",
    "1.3.12.2.1107.5.99.3.10": "Siemens CT MR Volume Storage",
    "1.3.12.2.1107.5.99.3.11": "Siemens AX Frame Sets Storage",
    "1.2.840.113619.4.26": "GE 3D Model Storage",
    "1.2.840.113619.4.27": "GE eNTEGRA Protocol or NM Genie Storage",
    "1.2.840.113619.4.30": "GE PET Raw Data Storage",
    "1.2.840.113619.4.5.249": "GE RT Plan Storage",
    "1.2.528.1.1001.5.1.1.1": "GE Collage Storage",
    "1.3.46.670589.11.0.0.12.1": "Philips MR Spectrum Storage",
    "1.3.46.670589.11.0.0.12.2": "Philips MR Series Data Storage",
    "1.3.46.670589.11.0.0.12.3": "Philips MR Color Image Storage",
    "1.3.46.670589.11.0.0.12.4": "Philips MR Examcard Storage",
    "1.3.46.670589.7.8.1618510091": "Philips X-Ray Multi-frame Storage",
    "1.3.46.670589.7.8.1618510092": "Philips Live Run Storage",
    "1.3.46.670589.7.8.16185100129": "Philips Run Storage",
    "1.3.46.670589.7.8.16185100130": "Philips Reconstruction Storage",
    "1.2.392.200036.9125.1.1.2": "Fuji CR Image Storage",
    "2.16.840.1.114033.5.1.4.1.1.130": "PMOD Multi-frame Image Storage",
}
"""``listener.private_sop_classes``' default: vendor-private storage SOP classes that modalities send
beside their standard images (spectroscopy, raw data, protocols, exam cards), as the archives that
accept them list them (dcm4che's UID table). They are stored and indexed like any instance; whether
an application can read one is the application's business."""
