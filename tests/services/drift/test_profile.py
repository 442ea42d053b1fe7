"""The profile of a real synthetic CT series (the phantom generator's DICOM): scanner, geometry and
intensities in rescaled units, from every header and a bounded, seeded pixel sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from hounsfield.config import DriftSettings
from hounsfield.drift import ProfileFailed, profile_input
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series

SHAPE = (12, 64, 64)


def _series(folder: Path, *, spacing: tuple[float, float, float] = (2.5, 0.75, 0.75), **kwargs: object) -> list[Path]:
    phantom = make_phantom(7, shape_zyx=SHAPE, n_lesions=1, spacing_zyx_mm=spacing)
    return write_dicom_series(phantom, folder, uid_seed="drift-profile", **kwargs)


def test_a_ct_series_is_profiled_from_its_headers_and_pixels(tmp_path: Path) -> None:
    files = _series(tmp_path / "ct")
    profile = profile_input(files, DriftSettings(), seed="job-1")
    assert profile.scanner == "Hounsfield phantom / Synthetic"
    assert (profile.slice_thickness_mm, profile.pixel_spacing_mm, profile.instances) == (2.5, 0.75, len(files))
    voxels = np.stack([pydicom.dcmread(f).pixel_array for f in files]).astype(float)  # HU: slope 1, intercept 0
    assert profile.sampled_pixels == voxels.size  # fewer than max_sampled_pixels: every pixel of every slice
    assert profile.intensity_mean == pytest.approx(voxels.mean(), abs=0.01)
    assert profile.intensity_std == pytest.approx(voxels.std(), abs=0.01)
    p05, p50, p95 = np.percentile(voxels, [5, 50, 95])
    assert (profile.intensity_p05, profile.intensity_p50, profile.intensity_p95) == pytest.approx((p05, p50, p95))
    assert profile_input(files, DriftSettings(), seed="job-1") == profile


def test_thicker_slices_and_other_spacing_show_in_the_profile(tmp_path: Path) -> None:
    profile = profile_input(_series(tmp_path / "thick", spacing=(5.0, 0.9, 0.7)), DriftSettings(), seed="job")
    assert (profile.slice_thickness_mm, profile.pixel_spacing_mm) == (5.0, 0.8)


def test_intensities_are_in_rescaled_units_without_padding(tmp_path: Path) -> None:
    files = _series(tmp_path / "ct")
    plain = profile_input(files, DriftSettings(), seed="job")
    for path in files:  # stored as unsigned values + 1024 with an intercept of -1024: the same Hounsfield units
        ds = pydicom.dcmread(path)
        ds.PixelData = (ds.pixel_array.astype(np.int32) + 1024).astype(np.uint16).tobytes()
        ds.PixelRepresentation, ds.RescaleIntercept, ds.RescaleSlope = 0, -1024, 1
        ds.save_as(path)
    shifted = profile_input(files, DriftSettings(), seed="job")
    assert shifted.model_dump() == plain.model_dump()

    for path in _series(tmp_path / "padded"):  # a padded border (outside the field of view) is left out
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[:4, :] = -3024
        ds.PixelData = pixels.tobytes()
        ds.add_new("PixelPaddingValue", "SS", -3024)
        ds.save_as(path)
    files = sorted((tmp_path / "padded").glob("*.dcm"))
    padded = profile_input(files, DriftSettings(), seed="job")
    assert padded.sampled_pixels == len(files) * 60 * 64
    assert padded.intensity_p05 > -2000


def test_the_pixels_decoded_are_bounded(tmp_path: Path) -> None:
    files = _series(tmp_path / "broken", drop_pixel_data_at=5)  # one slice without pixels
    with pytest.raises(ProfileFailed, match="pixels of a sampled slice") as failed:
        profile_input(files, DriftSettings(), seed="job")  # 16 slices at most: all 12 decoded, the broken one too
    assert "drift-profile" not in str(failed.value) and str(tmp_path) not in str(failed.value)
    two = profile_input(files, DriftSettings(max_sampled_slices=2, max_sampled_pixels=1000), seed="job")
    assert two.instances == len(files)  # every header, but the pixels of the first and last slices only
    assert two.sampled_pixels == 1000
    assert two.slice_thickness_mm == 2.5


def test_a_file_that_is_not_dicom_fails_the_profile_with_its_kind_only(tmp_path: Path) -> None:
    files = _series(tmp_path / "ct")
    files[3].write_bytes(b"PATIENT NAME: nobody")
    with pytest.raises(ProfileFailed, match=r"a header could not be read \(\w+\)") as failed:
        profile_input(files, DriftSettings(), seed="job")
    assert "nobody" not in str(failed.value)


@pytest.mark.parametrize("frames", ["abc", "999999999"])
def test_a_number_of_frames_that_cannot_be_right_fails_the_profile_not_the_process(tmp_path: Path, frames: str) -> None:
    files = _series(tmp_path / "ct")
    broken = pydicom.dcmread(files[2])
    broken.NumberOfFrames = 1
    broken.save_as(files[2], enforce_file_format=True)
    # Written as a sender would (pydicom refuses to make it): a malformed IS value is read back as text, a
    # huge one would fill memory with frame indices.
    value = frames.encode().ljust(len(frames) + len(frames) % 2)
    element = b"\x28\x00\x08\x00IS"
    data = files[2].read_bytes().replace(element + b"\x02\x001 ", element + len(value).to_bytes(2, "little") + value)
    files[2].write_bytes(data)
    with pytest.raises(ProfileFailed, match="Number of Frames"):
        profile_input(files, DriftSettings(), seed="job")
