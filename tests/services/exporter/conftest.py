"""Real results to build on: the example application's SEG and SR of a phantom study."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from hounsfield.worker.runtimes import InProcessRuntime
from tests.support import application_run, write_study


def run_example(folder: Path, *, seed: int, shape: tuple[int, int, int]) -> tuple[list[Path], Path]:
    """The example application on a phantom CT written under ``folder``: (the CT files, the output folder)."""
    _, files = write_study(folder / "input", seed=seed, shape=shape)
    runtime = InProcessRuntime()
    try:
        runtime.run(
            application_run(input_dir=files[0].parent, output_dir=folder / "out", workdir=folder, timeout_s=300)
        )
    finally:
        runtime.close()
    return files, folder / "out"


@pytest.fixture(scope="session")
def example_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[pydicom.Dataset]]:
    """The SEG and the SR (in that order) of the example application on a small phantom CT."""
    _, out = run_example(tmp_path_factory.mktemp("results"), seed=51, shape=(8, 32, 32))
    yield [pydicom.dcmread(out / name) for name in ("seg.dcm", "sr.dcm")]
