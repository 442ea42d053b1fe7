"""Tests of the synthetic head CT phantoms (with and without haemorrhage) and their DICOM series."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from hounsfield_operators.ct_ich_triage.phantom import (
    BLEED_KINDS,
    DEFAULT_SHAPE_ZYX,
    make_head_phantom,
    write_dicom_series,
)


def test_same_seed_gives_identical_phantom() -> None:
    first, second = make_head_phantom(21), make_head_phantom(21)
    assert np.array_equal(first.hu, second.hu)
    assert np.array_equal(first.bleed_mask, second.bleed_mask)
    assert first.spacing_zyx_mm == second.spacing_zyx_mm
    assert first.bleed == second.bleed
    assert not np.array_equal(first.hu, make_head_phantom(22).hu)


def test_forced_kind_and_absence() -> None:
    normal = make_head_phantom(5, bleed=False)
    assert normal.bleed is None and not normal.has_bleed and not normal.bleed_mask.any()
    for kind in BLEED_KINDS:
        phantom = make_head_phantom(5, bleed=True, bleed_kind=kind)
        assert phantom.has_bleed and phantom.bleed is not None
        assert phantom.bleed.kind == kind
        assert phantom.bleed_mask.any()


@pytest.mark.parametrize("seed", range(8))
def test_anatomy_and_bleed_truth(seed: int) -> None:
    phantom = make_head_phantom(seed, bleed=True)
    hu = phantom.hu
    assert hu.dtype == np.int16 and hu.shape == DEFAULT_SHAPE_ZYX == phantom.bleed_mask.shape
    assert (hu >= 700).sum() > 2000, "a skull of cortical bone"
    assert (hu <= -900).sum() > 0.2 * hu.size, "air around the head"
    soft = (hu > 15) & (hu < 45)
    assert soft.sum() > 0.1 * hu.size, "brain parenchyma"
    bleed = phantom.bleed
    assert bleed is not None
    voxel_ml = float(np.prod(phantom.spacing_zyx_mm)) / 1000.0
    assert bleed.volume_ml == pytest.approx(phantom.bleed_mask.sum() * voxel_ml)
    assert bleed.mean_hu == pytest.approx(float(hu[phantom.bleed_mask].mean()))
    assert 50.0 <= bleed.blood_hu <= 90.0
    assert bleed.volume_ml >= 0.05
    # Blood is brighter than the brain around it (subdural blood sits next to bone, so only > brain).
    assert bleed.mean_hu > float(np.median(hu[soft])) + 10.0


def test_kinds_and_labels_vary_over_seeds() -> None:
    phantoms = [make_head_phantom(seed) for seed in range(40)]
    with_bleed = [p for p in phantoms if p.has_bleed]
    assert 10 <= len(with_bleed) <= 30
    assert {p.bleed.kind for p in with_bleed if p.bleed is not None} == set(BLEED_KINDS)
    volumes = [p.bleed.volume_ml for p in with_bleed if p.bleed is not None]
    assert max(volumes) > 5 * min(volumes), "bleeds of varied size"
    assert len({p.spacing_zyx_mm for p in phantoms}) == len(phantoms)


def test_head_series_round_trip(tmp_path) -> None:
    phantom = make_head_phantom(9)
    paths = write_dicom_series(phantom, tmp_path)
    datasets = [pydicom.dcmread(path) for path in paths]
    assert np.array_equal(np.stack([ds.pixel_array for ds in datasets]), phantom.hu)
    assert {ds.BodyPartExamined for ds in datasets} == {"HEAD"}
    assert {ds.SeriesDescription for ds in datasets} == {"Phantom head non-contrast"}
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in write_dicom_series(phantom, tmp_path / "b")]
