"""MONAI bundles as ``hounsfield map new --bundle`` takes them, and one made from a TorchScript model.

The layout is the directory form of a MONAI bundle (MONAI's ``bundle`` specification), the form the
App SDK's ``MonaiBundleInferenceOperator`` reads when it is given the folder as ``bundle_path``::

    BUNDLE/
      configs/metadata.json    # version, task, network_data_format: inputs and outputs by name
      configs/inference.json   # "preprocessing", "inferer", "postprocessing" (MONAI config syntax)
      models/model.ts          # TorchScript weights
      docs/README.md           # optional

The operator names its ports after ``network_data_format``'s inputs and outputs (an ``image`` input
and a ``pred`` output for the applications made here), drops ``LoadImage``/``SaveImage`` transforms
(it receives and emits in-memory images), runs ``preprocessing``, the ``inferer`` (a
``SimpleInferer`` when the config has none) and ``postprocessing``.

:func:`check_bundle` refuses a folder the operator could not run; :func:`bundle_from_torchscript`
writes such a folder around a TorchScript model with a window-and-scale pre-processing, a sliding
window (segmentation) or whole-volume (classification) inferer and softmax post-processing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hounsfield.errors import Invalid

__all__ = [
    "INFERENCE_CONFIG",
    "METADATA_CONFIG",
    "MODEL_FILE",
    "BundleInfo",
    "bundle_from_torchscript",
    "check_bundle",
    "check_torchscript",
]

#: Where a bundle keeps its metadata, relative to the bundle folder.
METADATA_CONFIG = Path("configs") / "metadata.json"
#: Where a bundle keeps its inference configuration.
INFERENCE_CONFIG = Path("configs") / "inference.json"
#: Where a bundle keeps its TorchScript weights.
MODEL_FILE = Path("models") / "model.ts"

_REQUIRED_CONFIG_KEYS = ("preprocessing", "postprocessing")


@dataclass(frozen=True)
class BundleInfo:
    """What :func:`check_bundle` found in a bundle.

    Attributes
    ----------
    path : pathlib.Path
        The bundle folder.
    version : str
        ``metadata.json#version`` (``"0.1.0"`` when absent).
    inputs : tuple of str
        The network's input names (``network_data_format.inputs``).
    outputs : tuple of str
        The network's output names (``network_data_format.outputs``).
    output_type : str
        ``type`` of the first output (``"image"`` for a segmentation).
    """

    path: Path
    version: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    output_type: str


def check_torchscript(model: Path, field: str = "model") -> None:
    """Refuse a file that ``torch.jit.load`` cannot load.

    Raises
    ------
    hounsfield.errors.Invalid
        When the file is missing or is not loadable TorchScript (or torch is not installed).
    """
    if not model.is_file():
        raise Invalid(field, f"{model} is not a file")
    try:
        import torch
    except ImportError:  # the CLI without the worker extra
        raise Invalid(field, "checking a TorchScript model needs torch (install hounsfield[worker])") from None
    try:
        torch.jit.load(str(model), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Invalid(field, f"{model} is not loadable TorchScript (torch.jit.load: {first_line})") from None


def _read_json(path: Path, field: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(field, f"{path} is not readable JSON ({exc})") from None
    if not isinstance(document, dict):
        raise Invalid(field, f"{path} must hold a JSON object")
    return document


def check_bundle(path: Path, field: str = "bundle") -> BundleInfo:
    """Check that a folder is a MONAI bundle that ``MonaiBundleInferenceOperator`` can run.

    Parameters
    ----------
    path : pathlib.Path
        The bundle folder.
    field : str
        Name of the refused field in an :class:`~hounsfield.errors.Invalid`.

    Returns
    -------
    BundleInfo

    Raises
    ------
    hounsfield.errors.Invalid
        Naming the missing file or key: the folder, ``configs/metadata.json``, ``configs/inference.json``
        or ``models/model.ts`` missing; a config not a JSON object; no ``network_data_format`` inputs
        and outputs; no ``preprocessing`` or ``postprocessing``; weights that are not loadable TorchScript.
    """
    path = Path(path)
    if not path.is_dir():
        raise Invalid(field, f"{path} is not a folder (a MONAI bundle is a folder with configs/ and models/)")
    missing = [
        str(relative) for relative in (METADATA_CONFIG, INFERENCE_CONFIG, MODEL_FILE) if not (path / relative).is_file()
    ]
    if missing:
        raise Invalid(field, f"{path} is not a MONAI bundle: missing {', '.join(missing)}")
    metadata = _read_json(path / METADATA_CONFIG, field)
    data_format = metadata.get("network_data_format")
    inputs = data_format.get("inputs") if isinstance(data_format, dict) else None
    outputs = data_format.get("outputs") if isinstance(data_format, dict) else None
    if not isinstance(inputs, dict) or not inputs or not isinstance(outputs, dict) or not outputs:
        raise Invalid(field, f"{path / METADATA_CONFIG}: network_data_format needs 'inputs' and 'outputs' objects")
    first_output = next(iter(outputs.values()))
    output_type = str(first_output.get("type", "")) if isinstance(first_output, dict) else ""
    inference = _read_json(path / INFERENCE_CONFIG, field)
    absent = [key for key in _REQUIRED_CONFIG_KEYS if key not in inference]
    if absent:
        raise Invalid(field, f"{path / INFERENCE_CONFIG}: no {' or '.join(repr(key) for key in absent)} item")
    check_torchscript(path / MODEL_FILE, field)
    return BundleInfo(
        path=path,
        version=str(metadata.get("version") or "0.1.0"),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        output_type=output_type,
    )


def _metadata(
    *,
    name: str,
    version: str,
    kind: Literal["segmentation", "classification"],
    description: str,
    labels: Sequence[str],
    roi_size: Sequence[int],
    hu_window: tuple[float, float],
) -> dict[str, Any]:
    import monai
    import numpy
    import torch

    spatial = [int(v) for v in roi_size]
    channel_def = {str(i): label for i, label in enumerate(labels)}
    if kind == "segmentation":
        output = {
            "type": "image",
            "format": "segmentation",
            "num_channels": len(labels),
            "spatial_shape": spatial,
            "dtype": "float32",
            "value_range": [0, 1],
            "is_patch_data": True,
            "channel_def": channel_def,
        }
    else:
        # "series": the operator hands the post-processed class probabilities on as a numpy array.
        output = {"type": "series", "format": "probabilities", "num_channels": len(labels), "channel_def": channel_def}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": version,
        "changelog": {version: f"{name}: made from a TorchScript model by hounsfield.maps.bundle"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "optional_packages_version": {},
        "name": name,
        "task": f"CT {kind}",
        "description": description,
        "authors": "Hounsfield",
        "copyright": "Copyright (c) the model's authors",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [float(hu_window[0]), float(hu_window[1])],
                    "is_patch_data": kind == "segmentation",
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {"pred": output},
        },
    }


def _inference(
    *,
    kind: Literal["segmentation", "classification"],
    hu_window: tuple[float, float],
    roi_size: Sequence[int],
    overlap: float,
    sw_batch_size: int,
) -> dict[str, Any]:
    pre: list[dict[str, Any]] = [
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": float(hu_window[0]),
            "a_max": float(hu_window[1]),
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
    ]
    post: list[dict[str, Any]] = [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]
    if kind == "segmentation":
        inferer: dict[str, Any] = {
            "_target_": "SlidingWindowInferer",
            "roi_size": [int(v) for v in roi_size],
            "sw_batch_size": int(sw_batch_size),
            "overlap": float(overlap),
        }
        post.append({"_target_": "AsDiscreted", "keys": "pred", "argmax": True})
    else:
        pre.append({"_target_": "Resized", "keys": "image", "spatial_size": [int(v) for v in roi_size]})
        inferer = {"_target_": "SimpleInferer"}
    pre.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return {
        "imports": ["$import torch"],
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }


def bundle_from_torchscript(
    model_ts: Path,
    dest: Path,
    *,
    name: str,
    version: str = "0.1.0",
    kind: Literal["segmentation", "classification"] = "segmentation",
    labels: Sequence[str] = ("background", "lesion"),
    hu_window: tuple[float, float] = (-150.0, 250.0),
    roi_size: Sequence[int] = (64, 64, 32),
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    description: str | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a MONAI bundle folder around a TorchScript model.

    Pre-processing: channel first, HU clipped to ``hu_window`` and scaled to [0, 1] (then, for a
    classifier, resized to ``roi_size``). Inferer: a sliding window of ``roi_size`` with ``overlap``
    (segmentation) or the whole volume (classification). Post-processing: softmax over the channels,
    then argmax for a segmentation. The defaults are those of the CT lesion example
    (``hounsfield_operators.ct_lesion_seg.preprocessing``).

    Parameters
    ----------
    model_ts : pathlib.Path
        A loadable TorchScript model taking ``(N, 1, x, y, z)`` and returning ``(N, len(labels), ...)``.
    dest : pathlib.Path
        The bundle folder to make; it must not exist.
    name, version, description : str
        The bundle's name, semantic version and description (``metadata.json``).
    kind : {"segmentation", "classification"}
        What the network outputs: a label map, or class scores.
    labels : sequence of str
        One name per output channel (``channel_def``), background or "absent" first.
    hu_window, roi_size, overlap, sw_batch_size
        Pre-processing and inferer settings, as above.
    extra_metadata : mapping or None
        Further ``metadata.json`` keys.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    hounsfield.errors.Invalid
        When the model is not loadable TorchScript, ``dest`` exists, or an argument is out of range.
    """
    dest = Path(dest)
    if kind not in ("segmentation", "classification"):
        raise Invalid("kind", f"{kind!r} is neither 'segmentation' nor 'classification'")
    if len(labels) < 2:
        raise Invalid("labels", "a network has at least two output channels (background or absent first)")
    if len(roi_size) != 3 or any(int(v) < 1 for v in roi_size):
        raise Invalid("roi_size", f"three positive sizes (x, y, z) are needed, got {list(roi_size)}")
    if not hu_window[0] < hu_window[1]:
        raise Invalid("hu_window", f"the lower bound must be below the upper, got {hu_window}")
    if dest.exists():
        raise Invalid("dest", f"{dest} exists; choose a new folder")
    check_torchscript(Path(model_ts))
    metadata = _metadata(
        name=name,
        version=version,
        kind=kind,
        description=description or f"{name}: CT {kind} from a TorchScript model",
        labels=labels,
        roi_size=roi_size,
        hu_window=hu_window,
    )
    metadata.update(extra_metadata or {})
    inference = _inference(
        kind=kind, hu_window=hu_window, roi_size=roi_size, overlap=overlap, sw_batch_size=sw_batch_size
    )
    (dest / METADATA_CONFIG).parent.mkdir(parents=True)
    (dest / METADATA_CONFIG).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    (dest / INFERENCE_CONFIG).write_text(json.dumps(inference, indent=2) + "\n", encoding="utf-8")
    (dest / MODEL_FILE).parent.mkdir(parents=True)
    shutil.copyfile(model_ts, dest / MODEL_FILE)
    (dest / "docs").mkdir()
    (dest / "docs" / "README.md").write_text(
        f"# {name}\n\n{metadata['description']}\n\nMade by `hounsfield.maps.bundle.bundle_from_torchscript`: "
        "`configs/inference.json` holds the pre-processing, inferer and post-processing, "
        "`configs/metadata.json` the network's inputs and outputs, `models/model.ts` the weights.\n",
        encoding="utf-8",
    )
    return dest
