"""Tests of the synthetic CT phantom generator and its DICOM writer."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hounsfield_operators.ct_lesion_seg.phantom import longest_axial_diameter_mm, make_phantom, write_dicom_series

SMALL_SHAPE = (12, 64, 64)


def test_same_seed_gives_identical_phantom() -> None:
    first, second = make_phantom(7), make_phantom(7)
    assert np.array_equal(first.hu, second.hu)
    assert np.array_equal(first.lesion_labels, second.lesion_labels)
    assert first.spacing_zyx_mm == second.spacing_zyx_mm
    assert first.lesions == second.lesions
    assert not np.array_equal(first.hu, make_phantom(8).hu)


@pytest.mark.parametrize("seed", range(6))
def test_lesion_truths_match_labels(seed: int) -> None:
    phantom = make_phantom(seed)
    assert phantom.hu.dtype == np.int16 and phantom.lesion_labels.dtype == np.uint8
    assert phantom.hu.shape == phantom.lesion_labels.shape == (48, 128, 128)
    voxel_ml = float(np.prod(phantom.spacing_zyx_mm)) / 1000.0
    assert sorted(np.unique(phantom.lesion_labels[phantom.lesion_mask]).tolist()) == [
        lesion.index for lesion in phantom.lesions
    ]
    for lesion in phantom.lesions:
        mask = phantom.lesion_labels == lesion.index
        assert lesion.volume_ml == pytest.approx(mask.sum() * voxel_ml)
        assert lesion.mean_hu == pytest.approx(float(phantom.hu[mask].mean()))
        assert lesion.longest_axial_diameter_mm == pytest.approx(
            longest_axial_diameter_mm(mask, phantom.spacing_zyx_mm)
        )
        assert 4.0 <= lesion.longest_axial_diameter_mm <= 2.2 * 15.0 * 1.2 + 3.0
        centre_vox = np.rint(np.divide(lesion.center_zyx_mm, phantom.spacing_zyx_mm)).astype(int)
        assert phantom.lesion_labels[tuple(centre_vox)] == lesion.index


def test_requested_lesion_count_and_spacing() -> None:
    phantom = make_phantom(3, shape_zyx=SMALL_SHAPE, n_lesions=0, spacing_zyx_mm=(3.0, 2.5, 2.5))
    assert phantom.lesions == () and not phantom.lesion_mask.any()
    assert phantom.spacing_zyx_mm == (3.0, 2.5, 2.5)
    assert len(make_phantom(3, n_lesions=2).lesions) == 2


def test_longest_axial_diameter_of_a_rectangle() -> None:
    mask = np.zeros((3, 20, 20), dtype=bool)
    mask[1, 2:5, 3:7] = True  # 3 x 4 pixels
    spacing = (5.0, 2.0, 1.0)
    expected = float(np.hypot(2 * 2.0, 3 * 1.0)) + 1.5
    assert longest_axial_diameter_mm(mask, spacing) == pytest.approx(expected)
    assert longest_axial_diameter_mm(np.zeros_like(mask), spacing) == 0.0


def _read_series(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in paths]


def test_ct_series_round_trip(tmp_path: Path) -> None:
    phantom = make_phantom(11, shape_zyx=SMALL_SHAPE)
    paths = write_dicom_series(phantom, tmp_path)
    assert [path.name for path in paths] == [f"IM{k + 1:04d}.dcm" for k in range(SMALL_SHAPE[0])]
    datasets = _read_series(paths)
    volume = np.stack([ds.pixel_array for ds in datasets])
    assert np.array_equal(volume, phantom.hu)
    spacing_z, spacing_y, spacing_x = phantom.spacing_zyx_mm
    z_positions = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert np.allclose(np.diff(z_positions), spacing_z, atol=1e-4)
    for k, ds in enumerate(datasets):
        assert ds.InstanceNumber == k + 1
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([spacing_y, spacing_x])
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) for ds in datasets}) == 1


def test_uids_are_deterministic(tmp_path: Path) -> None:
    phantom = make_phantom(12, shape_zyx=SMALL_SHAPE)
    first = write_dicom_series(phantom, tmp_path / "a")
    second = write_dicom_series(phantom, tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    other = _read_series(write_dicom_series(phantom, tmp_path / "c", patient_id="OTHER"))
    assert other[0].StudyInstanceUID != pydicom.dcmread(first[0]).StudyInstanceUID
    explicit = _read_series(
        write_dicom_series(phantom, tmp_path / "d", study_instance_uid="1.2.3.4", series_instance_uid="1.2.3.4.5")
    )
    assert {(ds.StudyInstanceUID, ds.SeriesInstanceUID) for ds in explicit} == {("1.2.3.4", "1.2.3.4.5")}


def test_mr_series(tmp_path: Path) -> None:
    phantom = make_phantom(13, shape_zyx=SMALL_SHAPE)
    datasets = _read_series(write_dicom_series(phantom, tmp_path, modality="MR"))
    assert all(ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.Modality == "MR" for ds in datasets)
    assert all("RescaleSlope" not in ds and "RescaleIntercept" not in ds for ds in datasets)
    volume = np.stack([ds.pixel_array for ds in datasets])
    assert volume.min() >= 0 and volume.max() <= 1100


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_dciodvfy_reports_no_errors(tmp_path: Path, modality: str) -> None:
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy is not None, "dciodvfy (dicom3tools) must be installed"
    paths = write_dicom_series(make_phantom(14, shape_zyx=SMALL_SHAPE), tmp_path, modality=modality)
    for path in (paths[0], paths[-1]):
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


def test_drop_pixel_data_at(tmp_path: Path) -> None:
    phantom = make_phantom(15, shape_zyx=SMALL_SHAPE)
    intact = _read_series(write_dicom_series(phantom, tmp_path / "intact"))
    broken = _read_series(write_dicom_series(phantom, tmp_path / "broken", drop_pixel_data_at=4))
    for k, (good, bad) in enumerate(zip(intact, broken, strict=True)):
        if k == 4:
            assert "PixelData" not in bad and "PixelData" in good
            del good.PixelData
        assert good == bad
