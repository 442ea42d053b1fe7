"""Helpers shared by the scaffold and bundle tests: a phantom study, a tiny classifier, running a scaffolded app."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
import torch

from hounsfield_operators.ct_lesion_seg.phantom import Phantom, make_phantom, write_dicom_series
from hounsfield_operators.runtime_support import ensure_cuda_runtime_loadable

REPO = Path(__file__).resolve().parents[3]
LESION_MODEL = REPO / "operators" / "ct_lesion_seg" / "models" / "model.ts"
UID_ROOT = "1.2.826.0.1.3680043.10.543."


def write_study(phantom: Phantom, folder: Path) -> list[str]:
    """Write the phantom as a CT series; the SOP Instance UIDs in slice order."""
    files = write_dicom_series(phantom, folder)
    return [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]


def lesion_phantom(seed: int) -> Phantom:
    phantom = make_phantom(seed, n_lesions=2)
    assert phantom.lesions, "the phantom has lesions"
    return phantom


class MeanIntensityClassifier(torch.nn.Module):
    """Two class scores from the mean of the input: a stand-in classifier whose answer depends on the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3, 4))
        return torch.stack([torch.zeros_like(mean), 8.0 * (mean - 0.3)], dim=1)


def save_classifier(path: Path) -> Path:
    torch.jit.save(torch.jit.script(MeanIntensityClassifier()), str(path))
    return path


def load_app_module(folder: Path) -> ModuleType:
    """Import a scaffolded folder's app.py under a name of its own (every folder has an ``app`` module)."""
    ensure_cuda_runtime_loadable()
    name = f"scaffolded_{folder.name}_{abs(hash(str(folder)))}"
    spec = importlib.util.spec_from_file_location(name, folder / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_app(
    folder: Path, study: Path, output: Path, *, context: dict[str, str] | None = None, models: Path | None = None
) -> Path:
    """Run a scaffolded application in this process as the worker does (-i -o -m -w); its output folder."""
    module = load_app_module(folder)
    class_name = "".join(part.capitalize() for part in folder.name.split("_")) + "App"
    workdir = output.parent / f"{output.name}-work"
    workdir.mkdir(parents=True)
    if context is not None:
        (workdir / "result_context.json").write_text(json.dumps(context))
    argv = [
        folder.name,
        "-i",
        str(study),
        "-o",
        str(output),
        "-m",
        str(models or folder / "models"),
        "-w",
        str(workdir),
    ]
    getattr(module, class_name)(argv=argv).run()
    return output


def seg_mask(seg_path: Path, sop_uids: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    """The union of a SEG's segments as a (z, y, x) mask, frames placed by their source instance."""
    seg = pydicom.dcmread(seg_path)
    index_of = {uid: k for k, uid in enumerate(sop_uids)}
    mask = np.zeros(shape, dtype=bool)
    frames = seg.pixel_array.reshape(-1, *shape[1:])
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        mask[index_of[source]] |= frame > 0
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def algorithm_equipment(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """The Contributing Equipment item of the algorithm (Purpose of Reference Newcode1, 99IHE)."""
    items = [
        item
        for item in dataset.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    ]
    assert len(items) == 1
    return items[0]


def content_items(dataset: pydicom.Dataset) -> dict[str, list[pydicom.Dataset]]:
    """Every SR content item under the root, by concept name meaning."""
    found: dict[str, list[pydicom.Dataset]] = {}

    def walk(sequence: pydicom.Sequence) -> None:
        for item in sequence:
            if "ConceptNameCodeSequence" in item:
                found.setdefault(str(item.ConceptNameCodeSequence[0].CodeMeaning), []).append(item)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(dataset.ContentSequence)
    return found
