from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from hounsfield.exporter.rejection import build_rejection_note
from hounsfield.exporter.validation import GateRejected, validate_object
from tests.support import write_study

UID_ROOT = "1.2.826.0.1.3680043.10.543."


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


# --- PixelMed's DicomSRValidator: templates of structured reports and rejection notes ---------------


def _report(
    images: list[pydicom.Dataset],
    *,
    observer_uid: bool = True,
    procedure: hd.sr.CodedConcept | None = None,
    volumetric: bool = False,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report with one TID 1501 group (a finding and its volume) about ``images``; with
    ``volumetric``, also a TID 1411 group measuring a SEG segment."""
    observer = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name="test model")
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=observer
        )
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Lesion 1"),
        finding_type=codes.SCT.Lesion,
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=1.5, unit=codes.UCUM.CubicMillimeter)],
    )
    groups: list = [group]
    evidence = list(images)
    if volumetric:
        seg = pydicom.Dataset()  # the evidence a segment reference needs (the SEG itself is not read)
        seg.SOPClassUID, seg.SOPInstanceUID = pydicom.uid.SegmentationStorage, generate_uid()
        seg.StudyInstanceUID, seg.SeriesInstanceUID = images[0].StudyInstanceUID, generate_uid()
        evidence.append(seg)
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(str(images[0].SeriesInstanceUID)),
        )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Lesion 2"),
                referenced_segment=segment,
                finding_type=codes.SCT.Lesion,
                measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=2.5, unit=codes.UCUM.CubicMillimeter)],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=procedure or codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
        referenced_images=images[:1],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="tests",
    )
    if not observer_uid:  # TID 1004 requires the Device Observer UID: PixelMed says so, dciodvfy does not
        context_items = sr.ContentSequence
        sr.ContentSequence = [item for item in context_items if item.get("ValueType") != "UIDREF"]
    return sr


def test_a_valid_report_passes_the_template_check(tmp_path: Path) -> None:
    _, files = write_study(tmp_path / "ct", seed=14)
    path = tmp_path / "sr.dcm"
    _report([pydicom.dcmread(f) for f in files]).save_as(path, enforce_file_format=True)
    report = validate_object(path)
    assert report.kind == "SR" and report.errors == []


def test_a_template_error_stops_the_report_with_pixelmeds_words(tmp_path: Path) -> None:
    _, files = write_study(tmp_path / "ct", seed=15)
    path = tmp_path / "sr.dcm"
    _report([pydicom.dcmread(f) for f in files], observer_uid=False).save_as(path, enforce_file_format=True)
    with pytest.raises(
        GateRejected, match=r"sr\.dcm \(SR\) failed DicomSRValidator: Error: Template 1004 .*Observer UID"
    ):
        validate_object(path)


def test_rejection_notes_pass_and_a_concept_name_on_a_reference_is_refused(tmp_path: Path) -> None:
    """TID 2010 forbids a purpose of reference on the referenced objects (highdicom writes one)."""
    _, files = write_study(tmp_path / "ct", seed=16)
    images = [pydicom.dcmread(f) for f in files]
    note = build_rejection_note(
        images[:2], reason="quality", uid_root="1.2.826.0.1.3680043.10.543.", job_key="j", description="t"
    )
    path = tmp_path / "ko.dcm"
    note.save_as(path, enforce_file_format=True)
    assert validate_object(path).kind == "KO"
    reference = next(item for item in note.ContentSequence if item.ValueType == "IMAGE")
    reference.ConceptNameCodeSequence = [hd.sr.CodedConcept("260753009", "SCT", "Source")]
    note.save_as(path, enforce_file_format=True)
    with pytest.raises(GateRejected, match=r"failed DicomSRValidator: .*Purpose of Reference \(Concept\) is forbidden"):
        validate_object(path)


def test_a_missing_or_failing_template_validator_stops_the_report(tmp_path: Path) -> None:
    _, files = write_study(tmp_path / "ct", seed=17)
    path = tmp_path / "sr.dcm"
    _report([pydicom.dcmread(f) for f in files]).save_as(path, enforce_file_format=True)
    with pytest.raises(GateRejected, match=r"PixelMed \(/nonexistent/pixelmed.jar\) is not installed"):
        validate_object(path, pixelmed_jar="/nonexistent/pixelmed.jar")
    with pytest.raises(GateRejected, match=r"'/nonexistent/java' is not installed"):
        validate_object(path, java="/nonexistent/java")
    with pytest.raises(GateRejected, match="DicomSRValidator did not finish"):
        validate_object(path, java="false")
    with pytest.raises(GateRejected, match="DicomSRValidator ran out of its 32 MB heap"):
        validate_object(path, heap_mb=32)
    with pytest.raises(GateRejected, match=r"DicomSRValidator did not finish in 2 s"):
        validate_object(path, timeout_s=2)


def test_pixelmed_refuses_why_the_lesion_report_is_as_it_is(tmp_path: Path) -> None:
    """What docs/models.md says of the lesion report's design: PixelMed refuses a Procedure Reported from
    outside CID 100 (a CT of the abdomen), and a report mixing TID 1411 and TID 1501 groups."""
    _, files = write_study(tmp_path / "ct", seed=18)
    images = [pydicom.dcmread(f) for f in files]
    path = tmp_path / "sr.dcm"
    abdomen = hd.sr.CodedConcept("169070004", "SCT", "Computed tomography of abdomen")
    _report(images, procedure=abdomen).save_as(path, enforce_file_format=True)
    with pytest.raises(GateRejected, match=r"Code \(169070004,SCT,.*not found in context group 100"):
        validate_object(path)
    _report(images, volumetric=True).save_as(path, enforce_file_format=True)
    with pytest.raises(GateRejected, match=r"Template 1411 .*Missing conditional content item"):
        validate_object(path)
