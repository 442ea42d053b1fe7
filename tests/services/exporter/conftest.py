"""Real results to build on: the example application's SEG and SR of a phantom study."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from services.worker.runtime import InProcessRuntime
from tests.support import write_study

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "operators" / "ct_lesion_seg" / "models" / "model.ts"


@pytest.fixture(scope="session")
def example_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[pydicom.Dataset]]:
    """The SEG and the SR (in that order) of the example application on a small phantom CT."""
    tmp = tmp_path_factory.mktemp("results")
    _, files = write_study(tmp / "input", seed=51, shape=(8, 32, 32))
    runtime = InProcessRuntime()
    try:
        runtime.run(
            "operators.ct_lesion_seg.app:CTLesionSegApp", input_dir=files[0].parent, output_dir=tmp / "out",
            model_path=MODEL, workdir=tmp, timeout_s=300,
        )  # fmt: skip
    finally:
        runtime.close()
    yield [pydicom.dcmread(tmp / "out" / name) for name in ("seg.dcm", "sr.dcm")]
