"""MONAI bundles: one built from the committed lesion model runs as a MAP through ``MonaiBundleInferenceOperator``.

The bundle's pre-processing equals the lesion app's (HU -150..250 scaled to [0, 1], sliding window 64x64x32,
overlap 0.25) with softmax and argmax after, so the scaffolded bundle app must segment a held-out phantom's
lesions as well as the native app (``hounsfield_operators.ct_lesion_seg``) does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hounsfield.errors import Invalid
from hounsfield.exporter.validation import validate_object
from hounsfield.maps.bundle import bundle_from_torchscript, check_bundle
from hounsfield.maps.scaffold import new_application
from hounsfield_operators.ct_lesion_seg.preprocessing import HU_WINDOW, OVERLAP, ROI_SIZE, SW_BATCH_SIZE
from tests.services.maps.scaffolded import (
    LESION_MODEL,
    UID_ROOT,
    algorithm_equipment,
    content_items,
    dice,
    lesion_phantom,
    run_app,
    save_classifier,
    seg_mask,
    write_study,
)

logger = logging.getLogger(__name__)

#: A held-out phantom (seeds 90000-90019 were never trained on), with two lesions.
HELD_OUT_SEED = 90003
#: Measured here on seed 90003: Dice native 0.9557, bundle 0.9557, the two label maps identical (90000: 0.9289
#: both, 90007: 0.9275 both). The margin leaves room for a MONAI release that blends sliding windows with
#: other rounding, not for a different pre-processing (a -1000..1000 HU window instead drops the bundle's Dice
#: to 0.0).
DICE_MARGIN = 0.01


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundle")


@pytest.fixture(scope="module")
def lesion_bundle(root: Path) -> Path:
    return bundle_from_torchscript(
        LESION_MODEL,
        root / "lesion_bundle",
        name="ct_lesions",
        hu_window=HU_WINDOW,
        roi_size=ROI_SIZE,
        overlap=OVERLAP,
        sw_batch_size=SW_BATCH_SIZE,
    )


@pytest.fixture(scope="module")
def held_out(root: Path) -> tuple[np.ndarray, list[str], Path]:
    phantom = lesion_phantom(HELD_OUT_SEED)
    sop_uids = write_study(phantom, root / "study")
    return phantom.lesion_mask, sop_uids, root / "study"


@pytest.fixture(scope="module")
def native_dice(root: Path, held_out: tuple[np.ndarray, list[str], Path]) -> float:
    from hounsfield_operators.ct_lesion_seg.app import CTLesionSegApp

    truth, sop_uids, study = held_out
    output, workdir = root / "native", root / "native-work"
    workdir.mkdir()
    argv = ["ct_lesion_seg", "-i", str(study), "-o", str(output), "-m", str(LESION_MODEL), "-w", str(workdir)]
    CTLesionSegApp(argv=argv).run()
    return dice(seg_mask(output / "seg.dcm", sop_uids, truth.shape), truth)


@pytest.fixture(scope="module")
def bundle_output(root: Path, lesion_bundle: Path, held_out: tuple[np.ndarray, list[str], Path]) -> Path:
    app = new_application("lesion_bundle", "segmentation", root / "apps", bundle=lesion_bundle)
    context = {"model_name": "CT lesions (bundle)", "model_version": "0.1.0", "job_key": "job-b", "uid_root": UID_ROOT}
    return run_app(app, held_out[2], root / "bundle-output", context=context)


def test_the_bundle_has_the_directory_layout_the_operator_reads(lesion_bundle: Path) -> None:
    files = sorted(str(p.relative_to(lesion_bundle)) for p in lesion_bundle.rglob("*") if p.is_file())
    assert files == ["configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.ts"]
    info = check_bundle(lesion_bundle)
    assert (info.inputs, info.outputs, info.output_type, info.version) == (("image",), ("pred",), "image", "0.1.0")
    inference = json.loads((lesion_bundle / "configs/inference.json").read_text())
    scaling = inference["preprocessing"]["transforms"][1]
    assert (scaling["_target_"], scaling["a_min"], scaling["a_max"]) == ("ScaleIntensityRanged", -150.0, 250.0)
    assert inference["inferer"] == {
        "_target_": "SlidingWindowInferer", "roi_size": [64, 64, 32], "sw_batch_size": 4, "overlap": 0.25,
    }  # fmt: skip
    assert [t["_target_"] for t in inference["postprocessing"]["transforms"]] == ["Activationsd", "AsDiscreted"]
    metadata = json.loads((lesion_bundle / "configs/metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "lesion"}


def test_the_bundle_app_copies_the_bundle_as_its_model(root: Path, lesion_bundle: Path, bundle_output: Path) -> None:
    app = root / "apps" / "lesion_bundle"
    copied = app / "models" / "lesion_bundle"
    assert sorted(p.name for p in copied.iterdir()) == ["configs", "docs", "models"]
    assert (copied / "models/model.ts").read_bytes() == LESION_MODEL.read_bytes()
    assert "MonaiBundleInferenceOperator(" in (app / "app.py").read_text()


def test_the_bundle_app_segments_as_well_as_the_native_app(
    bundle_output: Path, native_dice: float, held_out: tuple[np.ndarray, list[str], Path]
) -> None:
    truth, sop_uids, _ = held_out
    bundle_dice = dice(seg_mask(bundle_output / "seg.dcm", sop_uids, truth.shape), truth)
    logger.info("held-out seed %d: Dice native %.4f, bundle %.4f", HELD_OUT_SEED, native_dice, bundle_dice)
    assert native_dice > 0.85, f"the native app's Dice {native_dice:.4f} is not what docs/models.md reports"
    assert bundle_dice >= native_dice - DICE_MARGIN, f"bundle Dice {bundle_dice:.4f} vs native {native_dice:.4f}"


def test_the_bundle_apps_results_pass_the_gate_and_name_the_model(bundle_output: Path) -> None:
    for name in ("seg.dcm", "sr.dcm"):
        validate_object(bundle_output / name)
        equipment = algorithm_equipment(pydicom.dcmread(bundle_output / name))
        assert (equipment.ManufacturerModelName, equipment.SoftwareVersions) == ("CT lesions (bundle)", "0.1.0")


def test_a_classification_bundle_gives_the_probability_the_model_app_gives(root: Path) -> None:
    classifier = save_classifier(root / "classifier.ts")
    study = root / "cls-study"
    write_study(lesion_phantom(3), study)
    bundle = bundle_from_torchscript(
        classifier, root / "cls_bundle", name="triage", kind="classification", labels=("absent", "present")
    )
    probabilities = {}
    for name, source in (("triage_bundle", {"bundle": bundle}), ("triage_model", {"model": classifier})):
        app = new_application(name, "classification", root / "apps", **source)  # type: ignore[arg-type]
        output = run_app(app, study, root / f"{name}-output")
        validate_object(output / "sr.dcm")
        items = content_items(pydicom.dcmread(output / "sr.dcm"))
        probabilities[name] = float(items["Probability"][0].MeasuredValueSequence[0].NumericValue)
    assert probabilities["triage_bundle"] == pytest.approx(probabilities["triage_model"], abs=1e-3)


def test_bundle_from_torchscript_refuses_what_it_cannot_make(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(Invalid, match="exists; choose a new folder"):
        bundle_from_torchscript(LESION_MODEL, tmp_path / "taken", name="x")
    (tmp_path / "weights.ts").write_text("not TorchScript")
    with pytest.raises(Invalid, match="is not loadable TorchScript"):
        bundle_from_torchscript(tmp_path / "weights.ts", tmp_path / "b", name="x")
    with pytest.raises(Invalid, match="three positive sizes"):
        bundle_from_torchscript(LESION_MODEL, tmp_path / "b", name="x", roi_size=(64, 64))
    with pytest.raises(Invalid, match="at least two output channels"):
        bundle_from_torchscript(LESION_MODEL, tmp_path / "b", name="x", labels=("lesion",))
    assert not (tmp_path / "b").exists()
