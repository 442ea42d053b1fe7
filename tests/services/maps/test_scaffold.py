"""``hounsfield map new``: the folder it makes, the applications it makes running on a phantom study, its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from hounsfield.catalog.manifests import load_map
from hounsfield.cli import app as cli
from hounsfield.errors import Invalid
from hounsfield.exporter.validation import validate_object
from hounsfield.maps.bundle import bundle_from_torchscript
from hounsfield.maps.scaffold import new_application
from tests.services.maps.scaffolded import (
    LESION_MODEL,
    REPO,
    UID_ROOT,
    algorithm_equipment,
    content_items,
    lesion_phantom,
    load_app_module,
    run_app,
    save_classifier,
    write_study,
)

CONTEXT = {"model_name": "Liver lesions", "model_version": "0.1.0", "job_key": "job-scaffold", "uid_root": UID_ROOT}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scaffold")


@pytest.fixture(scope="module")
def study(root: Path) -> Path:
    write_study(lesion_phantom(3), root / "study")
    return root / "study"


@pytest.fixture(scope="module")
def segmentation_app(root: Path) -> Path:
    return new_application("liver_lesions", "segmentation", root / "apps", model=LESION_MODEL)


@pytest.fixture(scope="module")
def classifier(root: Path) -> Path:
    return save_classifier(root / "classifier.ts")


@pytest.fixture(scope="module")
def classification_app(root: Path, classifier: Path) -> Path:
    return new_application("lesion_triage", "classification", root / "apps", model=classifier)


@pytest.fixture(scope="module")
def segmentation_outputs(root: Path, segmentation_app: Path, study: Path) -> Path:
    return run_app(segmentation_app, study, root / "seg-output", context=CONTEXT)


@pytest.fixture(scope="module")
def classification_outputs(root: Path, classification_app: Path, study: Path) -> Path:
    return run_app(classification_app, study, root / "cls-output", context=CONTEXT)


def test_the_folder_has_the_map_layout_with_version_0_1_0(segmentation_app: Path) -> None:
    files = sorted(str(p.relative_to(segmentation_app)) for p in segmentation_app.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "__main__.py",
        "app.json",
        "app.py",
        "app.yaml",
        "models/liver_lesions/model.ts",
        "pkg.json",
        "requirements.txt",
        "tests/test_app.py",
    ]
    assert (segmentation_app / "models/liver_lesions/model.ts").read_bytes() == LESION_MODEL.read_bytes()
    loaded = load_map(segmentation_app)  # the catalog reads it as a build context
    assert loaded.models_root == segmentation_app / "models" and loaded.model_files == 1
    app, pkg = loaded.manifests.app, loaded.manifests.pkg
    assert app.version == pkg.version == "0.1.0"
    assert "version: 0.1.0" in (segmentation_app / "app.yaml").read_text()
    assert 'MODEL_VERSION = "0.1.0"' in (segmentation_app / "app.py").read_text()
    assert app.argv == ["python3", "-u", "/opt/holoscan/app"]
    assert app.environment["PYTHONPATH"] == "/opt/holoscan/app"
    assert app.environment["HOLOSCAN_MODEL_PATH"] == pkg.model_root == "/opt/holoscan/models"
    assert [(m.name, m.path) for m in pkg.models] == [("liver_lesions", "/opt/holoscan/models/liver_lesions")]
    assert app.output.format["files"] == ["seg.dcm", "sr.dcm"]


def test_the_generated_code_passes_the_projects_lint_and_format(
    segmentation_app: Path, classification_app: Path
) -> None:
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed")
    config = ["--config", str(REPO / "pyproject.toml"), "--no-cache"]
    folders = [str(segmentation_app), str(classification_app)]
    for command in (["check", *config, *folders], ["format", "--check", *config, *folders]):
        completed = subprocess.run([str(ruff), *command], capture_output=True, text=True, check=False)
        assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_segmentation_app_writes_a_seg_and_sr_that_pass_the_gate_and_name_the_model(
    segmentation_outputs: Path,
) -> None:
    reports = {path.name: validate_object(path) for path in sorted(segmentation_outputs.glob("*.dcm"))}
    assert sorted(reports) == ["seg.dcm", "sr.dcm"]
    assert (reports["seg.dcm"].kind, reports["sr.dcm"].kind) == ("SEG", "SR")
    seg = pydicom.dcmread(segmentation_outputs / "seg.dcm")
    sr = pydicom.dcmread(segmentation_outputs / "sr.dcm")
    for dataset in (seg, sr):
        equipment = algorithm_equipment(dataset)
        assert (equipment.ManufacturerModelName, equipment.SoftwareVersions) == ("Liver lesions", "0.1.0")
        assert "Liver lesions v0.1.0" in dataset.SeriesDescription
        assert str(dataset.SOPInstanceUID).startswith(UID_ROOT)
    assert len(seg.SegmentSequence) >= 1
    assert len(content_items(sr)["Volume"]) == len(seg.SegmentSequence)  # a measurement group per segment


def test_the_classification_app_writes_a_valid_sr_with_the_finding_and_its_probability(
    classification_outputs: Path, classification_app: Path, study: Path
) -> None:
    assert sorted(p.name for p in classification_outputs.iterdir()) == ["sr.dcm"]
    assert validate_object(classification_outputs / "sr.dcm").kind == "SR"
    sr = pydicom.dcmread(classification_outputs / "sr.dcm")
    assert algorithm_equipment(sr).ManufacturerModelName == "Liver lesions"
    items = content_items(sr)
    probability = float(items["Probability"][0].MeasuredValueSequence[0].NumericValue)
    # The same probability from the app's own pre-processing and the model, outside the pipeline.
    import torch

    module = load_app_module(classification_app)
    hu = lesion_phantom(3).hu
    scores = torch.jit.load(str(classification_app / "models/lesion_triage/model.ts"))(
        torch.from_numpy(module.network_input(hu))[None]
    )
    expected = float(module.probabilities_from_output(scores)[module.FINDING_CLASS])
    assert probability == pytest.approx(expected, abs=1e-3)
    assert 0.05 < probability < 0.95, "the stand-in classifier is not saturated on the phantom"
    presence = items["Presence of property"][0].ConceptCodeSequence[0].CodeMeaning
    assert presence == ("Present" if probability >= module.OPERATING_THRESHOLD else "Absent")


def test_the_generated_folder_passes_its_own_tests(segmentation_app: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(segmentation_app / "tests")],
        cwd=segmentation_app,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("HOLOSCAN_", "PYTEST_"))},
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    assert "3 passed" in completed.stdout, completed.stdout[-2000:]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return bundle_from_torchscript(LESION_MODEL, tmp_path / "bundle", name="lesions")


def _refusal(tmp_path: Path, **changes: object) -> str:
    arguments: dict[str, object] = {"name": "good_name", "kind": "segmentation", "dest": tmp_path / "apps"}
    arguments.update(changes)
    if "model" not in arguments and "bundle" not in arguments:
        arguments["model"] = LESION_MODEL
    with pytest.raises(Invalid) as refused:
        new_application(**arguments)  # type: ignore[arg-type]
    dest = Path(str(arguments["dest"]))
    assert not dest.exists() or [p.name for p in dest.iterdir()] in ([], ["good_name"]), "a refusal leaves nothing"
    return str(refused.value)


@pytest.mark.parametrize("name", ["", "Liver", "1liver", "liver-lesions", "liver lesions", "class", "x" * 41])
def test_a_bad_name_is_refused(tmp_path: Path, name: str) -> None:
    assert "not a valid application name" in _refusal(tmp_path, name=name)


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    assert "'detection' is not a kind of application" in _refusal(tmp_path, kind="detection")


def test_neither_or_both_of_model_and_bundle_are_refused(tmp_path: Path, bundle: Path) -> None:
    assert "exactly one of" in _refusal(tmp_path, model=None, bundle=None)
    assert "exactly one of" in _refusal(tmp_path, model=LESION_MODEL, bundle=bundle)


def test_a_model_that_is_not_torchscript_is_refused(tmp_path: Path) -> None:
    not_a_model = tmp_path / "model.ts"
    not_a_model.write_text("weights")
    assert "is not loadable TorchScript" in _refusal(tmp_path, model=not_a_model)
    assert "is not a file" in _refusal(tmp_path, model=tmp_path / "missing.ts")


@pytest.mark.parametrize("missing", ["configs/metadata.json", "configs/inference.json", "models/model.ts"])
def test_a_bundle_missing_a_file_is_refused(tmp_path: Path, bundle: Path, missing: str) -> None:
    (bundle / missing).unlink()
    assert f"is not a MONAI bundle: missing {missing}" in _refusal(tmp_path, bundle=bundle)


def test_a_bundle_with_unreadable_configs_is_refused(tmp_path: Path, bundle: Path) -> None:
    (bundle / "configs/inference.json").write_text("{")
    assert "inference.json is not readable JSON" in _refusal(tmp_path, bundle=bundle)
    (bundle / "configs/inference.json").write_text(json.dumps({"preprocessing": {}}))
    assert "no 'postprocessing' item" in _refusal(tmp_path, bundle=bundle)
    (bundle / "configs/metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    assert "network_data_format needs 'inputs' and 'outputs'" in _refusal(tmp_path, bundle=bundle)


def test_a_classification_bundle_is_refused_for_a_segmentation_app(tmp_path: Path) -> None:
    classes = bundle_from_torchscript(
        LESION_MODEL, tmp_path / "classes", name="classes", kind="classification", labels=("absent", "present")
    )
    assert "first output is of type 'image', not 'series'" in _refusal(tmp_path, bundle=classes)


def test_an_existing_destination_is_refused(tmp_path: Path) -> None:
    (tmp_path / "apps" / "good_name").mkdir(parents=True)
    assert "exists; choose another name or destination" in _refusal(tmp_path)


def test_the_cli_makes_the_folder_and_reports_a_refusal(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(
        cli, ["map", "new", "cli_app", "--kind", "segmentation", "--model", str(LESION_MODEL), "--dest", str(tmp_path)]
    )
    assert made.exit_code == 0, made.output
    assert (tmp_path / "cli_app" / "models" / "cli_app" / "model.ts").is_file()
    again = runner.invoke(cli, ["map", "new", "cli_app", "--model", str(LESION_MODEL), "--dest", str(tmp_path)])
    assert again.exit_code == 2
    assert "exists; choose another name or destination" in " ".join(again.output.split())  # rich wraps lines
