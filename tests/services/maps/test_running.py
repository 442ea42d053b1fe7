"""``hounsfield map run`` on an application folder (the subprocess runtime) and ``map publish``'s refusals.

The image path (the container runtime) is held by tests/deploy/test_maps.py, where podman runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from hounsfield.cli import app as cli
from hounsfield.errors import Invalid
from hounsfield.exporter.validation import GateRejected
from hounsfield.maps.publish import publish
from hounsfield.maps.running import run_map
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "operators" / "ct_lesion_seg"

# An application that answers with a copy of its first input, for another patient: what a buggy warm
# process holding the previous job's patient would write.
WRONG_PATIENT = """
import os, pathlib, pydicom
source = sorted(pathlib.Path(os.environ["HOLOSCAN_INPUT_PATH"]).rglob("*.dcm"))[0]
ds = pydicom.dcmread(source)
ds.PatientID, ds.PatientName = "SOMEONE-ELSE", "Else^Someone"
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
ds.save_as(pathlib.Path(os.environ["HOLOSCAN_OUTPUT_PATH"]) / "result.dcm")
print("wrote a result for another patient", flush=True)
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    write_dicom_series(make_phantom(20261127), folder, uid_seed="map-run")
    return folder


def _wrong_patient_app(folder: Path) -> Path:
    folder.mkdir()
    (folder / "wrong.py").write_text(WRONG_PATIENT)
    app = json.loads((EXAMPLE / "app.json").read_text())
    app["command"] = "python3 -u /opt/holoscan/app/wrong.py"
    (folder / "app.json").write_text(json.dumps(app))
    pkg = json.loads((EXAMPLE / "pkg.json").read_text())
    pkg["models"] = [{"name": "wrong", "path": "/opt/holoscan/models/wrong"}]
    (folder / "pkg.json").write_text(json.dumps(pkg))
    (folder / "models" / "wrong").mkdir(parents=True)
    (folder / "models" / "wrong" / "weights.bin").write_bytes(b"\0")
    return folder


def test_a_folder_runs_as_a_worker_runs_it_and_its_results_pass_the_gate(study: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    report = run_map(str(EXAMPLE), study, tmp_path / "out", echo=lines.append)
    assert report.runtime == "subprocess"
    assert sorted(result.kind for result in report.results) == ["SEG", "SR"]
    assert list(report.timings) == ["prepare", "application", "validation gate"]
    assert any(line.startswith("  | ") for line in lines), "the application's output is shown as it runs"
    assert report.log is not None and "Wrote" in report.log.read_text()
    sr = pydicom.dcmread(tmp_path / "out" / "sr.dcm")
    assert "NOT FOR DIAGNOSTIC USE" in sr.SeriesDescription, "research mode by default"


def test_a_result_for_another_patient_fails_the_run_with_the_reason(study: Path, tmp_path: Path) -> None:
    app = _wrong_patient_app(tmp_path / "wrong")
    with pytest.raises(GateRejected, match="does not belong to this job"):
        run_map(str(app), study, tmp_path / "out", echo=lambda _: None)
    answer = CliRunner().invoke(cli, ["map", "run", str(app), "-i", str(study), "-o", str(tmp_path / "out2")])
    assert answer.exit_code == 1 and "does not belong to this job" in answer.output


def test_refusals_before_anything_runs(study: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.dcm").write_bytes(b"x")
    with pytest.raises(Invalid, match="is not empty"):
        run_map(str(EXAMPLE), study, busy)
    with pytest.raises(Invalid, match="holds no DICOM file"):
        run_map(str(EXAMPLE), tmp_path / "busy", tmp_path / "out")
    with pytest.raises(Invalid, match="mode"):
        run_map(str(EXAMPLE), study, tmp_path / "out", mode="production")


@pytest.mark.parametrize("url", ["http://registry.hospital.local:8470", "http://10.0.0.5", "ftp://registry.local"])
def test_publish_sends_no_token_over_plain_http_to_another_host(url: str) -> None:
    with pytest.raises(Invalid, match=r"https|http"):
        publish(str(EXAMPLE), model="m", registry=url, token="secret-token")


def test_publish_tells_an_unreachable_registry() -> None:
    from hounsfield.demo.orthanc import free_port
    from hounsfield.maps.publish import PublishFailed

    with pytest.raises(PublishFailed, match="cannot be reached"):
        publish(str(EXAMPLE), model="m", registry=f"http://127.0.0.1:{free_port()}", token="t", timeout_s=2)
