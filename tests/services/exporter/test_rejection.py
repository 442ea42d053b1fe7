"""IOCM rejection notes built from real results (the example application's SEG and SR of a phantom).

Real components: the example App SDK application, highdicom, and dciodvfy at the validation gate.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pytest

from hounsfield.exporter.rejection import build_rejection_note
from hounsfield.exporter.validation import GateRejected, validate_object

ROOT = "1.2.826.0.1.3680043.10.1392."


@pytest.mark.parametrize(("reason", "code"), [("quality", "113001"), ("patient-safety", "113037")])
def test_a_rejection_note_passes_the_gate_and_references_every_withdrawn_instance(
    example_results: list[pydicom.Dataset], tmp_path: Path, reason: str, code: str
) -> None:
    note = build_rejection_note(example_results, reason=reason, uid_root=ROOT, job_key="job-1", description="recall")  # type: ignore[arg-type]
    path = tmp_path / "ko.dcm"
    note.save_as(path, enforce_file_format=True)
    report = validate_object(path)
    assert report.kind == "KO" and report.errors == []
    assert str(note.ConceptNameCodeSequence[0].CodeValue) == code
    evidence = note.CurrentRequestedProcedureEvidenceSequence
    assert [str(s.StudyInstanceUID) for s in evidence] == [str(example_results[0].StudyInstanceUID)]
    referenced = {
        str(sop.ReferencedSOPInstanceUID)
        for s in evidence[0].ReferencedSeriesSequence
        for sop in s.ReferencedSOPSequence
    }
    assert referenced == {str(ds.SOPInstanceUID) for ds in example_results}
    assert str(note.SeriesInstanceUID) not in {str(ds.SeriesInstanceUID) for ds in example_results}, (
        "a series of its own"
    )


def test_the_same_job_and_title_make_the_same_note(example_results: list[pydicom.Dataset]) -> None:
    made = [
        build_rejection_note(example_results, reason=reason, uid_root=ROOT, job_key=key, description="x")  # type: ignore[arg-type]
        for reason, key in [
            ("quality", "job-1"),
            ("quality", "job-1"),
            ("patient-safety", "job-1"),
            ("quality", "job-2"),
        ]
    ]
    uids = [str(note.SOPInstanceUID) for note in made]
    assert uids[0] == uids[1] and len(set(uids)) == 3 and all(u.startswith(ROOT) for u in uids)


def test_a_broken_note_never_passes_the_gate(example_results: list[pydicom.Dataset], tmp_path: Path) -> None:
    note = build_rejection_note(example_results, reason="quality", uid_root=ROOT, job_key="job-1", description="x")
    del note.CurrentRequestedProcedureEvidenceSequence  # type 1 in the Key Object Document module
    path = tmp_path / "broken.dcm"
    note.save_as(path, enforce_file_format=True)
    with pytest.raises(GateRejected, match=r"broken\.dcm"):
        validate_object(path)


def test_a_note_needs_instances_of_one_study(example_results: list[pydicom.Dataset]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_rejection_note([], reason="quality", uid_root=ROOT, job_key="j", description="x")
    other = copy.deepcopy(example_results[0])
    other.StudyInstanceUID = ROOT + "99"
    with pytest.raises(ValueError, match="one study"):
        build_rejection_note([example_results[0], other], reason="quality", uid_root=ROOT, job_key="j", description="x")
