"""Helpers shared by tests (import as ``tests.support``)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series

CT_RULE = {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, {"kind": "instance_count", "min": 8}]}


def write_study(
    folder: Path, seed: int, *, modality: str = "CT", shape=(16, 64, 64), **kwargs
) -> tuple[str, list[Path]]:
    """A small synthetic series on disk; returns its StudyInstanceUID and files."""
    phantom = make_phantom(seed, shape_zyx=shape, n_lesions=1)
    files = write_dicom_series(phantom, folder, modality=modality, uid_seed=f"test-{seed}-{modality}", **kwargs)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files
