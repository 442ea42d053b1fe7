from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from hounsfield.exporter.validation import GateRejected, validate_object
from tests.support import write_study


def test_a_valid_object_passes_with_its_warnings_reported(tmp_path: Path) -> None:
    _, files = write_study(tmp_path, seed=11)
    report = validate_object(files[0])
    assert report.kind == "CT" and report.errors == []
    assert report.sop_instance_uid == pydicom.dcmread(files[0]).SOPInstanceUID


def test_dciodvfy_errors_stop_the_object_with_the_validators_words(tmp_path: Path) -> None:
    _, files = write_study(tmp_path, seed=12)
    ds = pydicom.dcmread(files[0])
    del ds.ImageType  # type 1 in the CT Image module
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    with pytest.raises(GateRejected, match=r"broken\.dcm \(CT\) failed dciodvfy: Error - .*ImageType"):
        validate_object(broken)


def test_not_dicom_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    with pytest.raises(GateRejected, match="not readable DICOM"):
        validate_object(junk)


def test_missing_validator_is_a_clear_failure(tmp_path: Path) -> None:
    _, files = write_study(tmp_path, seed=13)
    with pytest.raises(GateRejected, match="not installed"):
        validate_object(files[0], dciodvfy="/nonexistent/dciodvfy")
