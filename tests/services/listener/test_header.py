"""The quick header reader gives exactly what pydicom gives, or hands the dataset to pydicom."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode

from hounsfield.listener import storage
from hounsfield.listener.header import dataset_text, quick_values
from tests.support import write_study

KEYWORDS = storage._KEYWORDS


def _pydicom_values(data: bytes, syntax: str) -> dict[str, str]:
    header = storage.read_header(data, syntax)
    return {keyword: dataset_text(header, keyword) for keyword in KEYWORDS if keyword in header}


def _dataset(**values: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.add_new(0x7FE00010, "OB", b"\x00" * 32)
    return ds


def _encoded(ds: Dataset, syntax: str) -> bytes:
    return bytes(encode(ds, syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_synthetic_series_read_the_same(tmp_path: Path, syntax: str) -> None:
    _, files = write_study(tmp_path, seed=41, shape=(3, 16, 16))
    for path in files:
        data = _encoded(pydicom.dcmread(path), syntax)
        quick = quick_values(data, syntax, KEYWORDS)
        assert quick is not None and quick == _pydicom_values(data, syntax)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize(
    "values",
    [
        {"SeriesDescription": " padded  ", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "SeriesNumber": " 7"},
        {"SliceThickness": "1.50", "InstanceNumber": "", "PatientID": "", "StudyDate": "20240102"},
        {"SliceThickness": ["1", "2.5"], "Manufacturer": "ACME\\Other"},
        # Sequences before the indexed elements: defined and undefined lengths, nested.
        {
            "ReferencedImageSequence": Sequence([Dataset(), Dataset()]),
            "ProcedureCodeSequence": Sequence([_dataset(ReferencedImageSequence=Sequence([Dataset()]))]),
            "Laterality": "R",
        },
    ],
)
def test_values_match_pydicom(syntax: str, values: dict[str, object]) -> None:
    ds = _dataset(**values)
    data = _encoded(ds, syntax)
    assert quick_values(data, syntax, KEYWORDS) == _pydicom_values(data, syntax)


def test_undefined_length_sequences_are_walked() -> None:
    ds = _dataset(ProtocolName="HEAD")
    ds.ReferencedImageSequence = Sequence([_dataset(Modality="MR")])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.ReferencedImageSequence[0].is_undefined_length_sequence_item = True
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        data = _encoded(ds, syntax)
        quick = quick_values(data, syntax, KEYWORDS)
        assert quick is not None and quick["ProtocolName"] == "HEAD" and quick["Modality"] == "CT"
        assert quick == _pydicom_values(data, syntax)


@pytest.mark.parametrize(
    ("why", "make"),
    [
        ("big endian", lambda: (_encoded(_dataset(), ExplicitVRBigEndian), ExplicitVRBigEndian)),
        (
            "non-ASCII text",
            lambda: (
                _encoded(_dataset(SeriesDescription="Thorax \u00e9"), ExplicitVRLittleEndian),
                ExplicitVRLittleEndian,
            ),
        ),
        (
            "a number pydicom judges",
            lambda: (_encoded(_dataset(), ExplicitVRLittleEndian).replace(b"CT", b"CT"), ExplicitVRLittleEndian),
        ),
    ][:2],
)
def test_unusual_datasets_go_to_pydicom(why: str, make) -> None:  # type: ignore[no-untyped-def]
    data, syntax = make()
    assert quick_values(data, syntax, KEYWORDS) is None, why


def test_truncated_and_malformed_structure_go_to_pydicom() -> None:
    data = _encoded(_dataset(SeriesDescription="x" * 40), ExplicitVRLittleEndian)
    assert quick_values(data[:-60], ExplicitVRLittleEndian, KEYWORDS) is None, "ends inside an element"
    item_at_top = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + data
    assert quick_values(item_at_top, ExplicitVRLittleEndian, KEYWORDS) is None
    wrong_vr = data.replace(b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00UN", 1)
    assert quick_values(wrong_vr, ExplicitVRLittleEndian, KEYWORDS) is None


def test_a_bad_integer_string_is_left_to_pydicom() -> None:
    ds = _dataset()
    ds.add_new(0x00200011, "IS", "12")
    data = _encoded(ds, ExplicitVRLittleEndian).replace(b"IS\x02\x0012", b"IS\x02\x00x2")
    assert quick_values(data, ExplicitVRLittleEndian, KEYWORDS) is None


def test_a_prefix_must_reach_the_pixel_data() -> None:
    data = _encoded(_dataset(SeriesDescription="x" * 40), ExplicitVRLittleEndian)
    pixels = data.index(b"\xe0\x7f\x10\x00")
    assert quick_values(data[: pixels + 8], ExplicitVRLittleEndian, KEYWORDS, whole=False) is not None
    cut = data.index(b"\x20\x00\x0e\x00")  # SeriesInstanceUID starts here: the prefix ends before it
    assert quick_values(data[:cut], ExplicitVRLittleEndian, KEYWORDS, whole=False) is None
    assert quick_values(data[:cut], ExplicitVRLittleEndian, KEYWORDS) is not None, "a whole dataset may lack pixels"
