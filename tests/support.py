"""Helpers shared by tests (import as ``tests.support``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series

CT_RULE = {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, {"kind": "instance_count", "min": 8}]}


def write_study(
    folder: Path, seed: int, *, modality: str = "CT", shape=(16, 64, 64), **kwargs
) -> tuple[str, list[Path]]:
    """A small synthetic series on disk; returns its StudyInstanceUID and files."""
    phantom = make_phantom(seed, shape_zyx=shape, n_lesions=1)
    files = write_dicom_series(phantom, folder, modality=modality, uid_seed=f"test-{seed}-{modality}", **kwargs)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 50 ms until it is true; :class:`AssertionError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def bare_ct() -> Dataset:
    """A CT header with fresh UIDs and nothing else (no pixels): the least a listener indexes."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    return ds
