"""Transcribed from the DICOM standard, for tests to check the code against (import as ``tests.dicom_standard``).

Deliberately not taken from pydicom, pynetdicom or ``hounsfield.dicom_syntaxes``: a test whose expected
values come from the library the code uses cannot see that the library is behind the standard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TRANSFER_SYNTAXES", "StandardSyntax"]

Kind = Literal["native", "deflated", "encapsulated", "jpip", "rtv", "media"]


@dataclass(frozen=True)
class StandardSyntax:
    uid: str
    name: str
    retired: bool
    kind: Kind
    """How it carries a dataset: ``jpip`` (pixels behind a URL), ``rtv`` (DICOM-RTV streams, PS3.34),
    ``media`` (file formats that are not a network transfer syntax)."""


def _s(uid: str, name: str, kind: Kind = "encapsulated", *, retired: bool = False) -> StandardSyntax:
    return StandardSyntax(uid, name, retired, kind)


_J = "1.2.840.10008.1.2.4."

TRANSFER_SYNTAXES: tuple[StandardSyntax, ...] = (
    # PS3.6 2025b, Table A-1, every row of type "Transfer Syntax".
    _s("1.2.840.10008.1.2", "Implicit VR Little Endian", "native"),
    _s("1.2.840.10008.1.2.1", "Explicit VR Little Endian", "native"),
    _s("1.2.840.10008.1.2.1.98", "Encapsulated Uncompressed Explicit VR Little Endian"),
    _s("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian", "deflated"),
    _s("1.2.840.10008.1.2.2", "Explicit VR Big Endian", "native", retired=True),
    _s(_J + "50", "JPEG Baseline (Process 1)"),
    _s(_J + "51", "JPEG Extended (Process 2 & 4)"),
    _s(_J + "52", "JPEG Extended (Process 3 & 5)", retired=True),
    _s(_J + "53", "JPEG Spectral Selection, Non-Hierarchical (Process 6 & 8)", retired=True),
    _s(_J + "54", "JPEG Spectral Selection, Non-Hierarchical (Process 7 & 9)", retired=True),
    _s(_J + "55", "JPEG Full Progression, Non-Hierarchical (Process 10 & 12)", retired=True),
    _s(_J + "56", "JPEG Full Progression, Non-Hierarchical (Process 11 & 13)", retired=True),
    _s(_J + "57", "JPEG Lossless, Non-Hierarchical (Process 14)"),
    _s(_J + "58", "JPEG Lossless, Non-Hierarchical (Process 15)", retired=True),
    _s(_J + "59", "JPEG Extended, Hierarchical (Process 16 & 18)", retired=True),
    _s(_J + "60", "JPEG Extended, Hierarchical (Process 17 & 19)", retired=True),
    _s(_J + "61", "JPEG Spectral Selection, Hierarchical (Process 20 & 22)", retired=True),
    _s(_J + "62", "JPEG Spectral Selection, Hierarchical (Process 21 & 23)", retired=True),
    _s(_J + "63", "JPEG Full Progression, Hierarchical (Process 24 & 26)", retired=True),
    _s(_J + "64", "JPEG Full Progression, Hierarchical (Process 25 & 27)", retired=True),
    _s(_J + "65", "JPEG Lossless, Hierarchical (Process 28)", retired=True),
    _s(_J + "66", "JPEG Lossless, Hierarchical (Process 29)", retired=True),
    _s(_J + "70", "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"),
    _s(_J + "80", "JPEG-LS Lossless Image Compression"),
    _s(_J + "81", "JPEG-LS Lossy (Near-Lossless) Image Compression"),
    _s(_J + "90", "JPEG 2000 Image Compression (Lossless Only)"),
    _s(_J + "91", "JPEG 2000 Image Compression"),
    _s(_J + "92", "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)"),
    _s(_J + "93", "JPEG 2000 Part 2 Multi-component Image Compression"),
    _s(_J + "94", "JPIP Referenced", "jpip"),
    _s(_J + "95", "JPIP Referenced Deflate", "jpip"),
    _s(_J + "100", "MPEG2 Main Profile / Main Level"),
    _s(_J + "100.1", "Fragmentable MPEG2 Main Profile / Main Level"),
    _s(_J + "101", "MPEG2 Main Profile / High Level"),
    _s(_J + "101.1", "Fragmentable MPEG2 Main Profile / High Level"),
    _s(_J + "102", "MPEG-4 AVC/H.264 High Profile / Level 4.1"),
    _s(_J + "102.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1"),
    _s(_J + "103", "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1"),
    _s(_J + "103.1", "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1"),
    _s(_J + "104", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video"),
    _s(_J + "104.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video"),
    _s(_J + "105", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video"),
    _s(_J + "105.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video"),
    _s(_J + "106", "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2"),
    _s(_J + "106.1", "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2"),
    _s(_J + "107", "HEVC/H.265 Main Profile / Level 5.1"),
    _s(_J + "108", "HEVC/H.265 Main 10 Profile / Level 5.1"),
    _s(_J + "110", "JPEG XL Lossless"),
    _s(_J + "111", "JPEG XL JPEG Recompression"),
    _s(_J + "112", "JPEG XL"),
    _s(_J + "201", "High-Throughput JPEG 2000 Image Compression (Lossless Only)"),
    _s(_J + "202", "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)"),
    _s(_J + "203", "High-Throughput JPEG 2000 Image Compression"),
    _s(_J + "204", "JPIP HTJ2K Referenced", "jpip"),
    _s(_J + "205", "JPIP HTJ2K Referenced Deflate", "jpip"),
    _s("1.2.840.10008.1.2.5", "RLE Lossless"),
    _s("1.2.840.10008.1.2.6.1", "RFC 2557 MIME encapsulation", "media", retired=True),
    _s("1.2.840.10008.1.2.6.2", "XML Encoding", "media", retired=True),
    _s("1.2.840.10008.1.2.7.1", "SMPTE ST 2110-20 Uncompressed Progressive Active Video", "rtv"),
    _s("1.2.840.10008.1.2.7.2", "SMPTE ST 2110-20 Uncompressed Interlaced Active Video", "rtv"),
    _s("1.2.840.10008.1.2.7.3", "SMPTE ST 2110-30 PCM Digital Audio", "rtv"),
    _s("1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression"),
    _s("1.2.840.10008.1.20", "Papyrus 3 Implicit VR Little Endian", "media", retired=True),
)
