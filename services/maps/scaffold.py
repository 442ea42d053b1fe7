"""``hounsfield map new``: an App SDK application folder from templates, around a TorchScript model or a MONAI bundle.

The folder made (the layout every ``hounsfield map`` command works on)::

    NAME/
      app.json, pkg.json, app.yaml   # MAP spec 1.0 manifests with the container paths; version 0.1.0 in all three
      requirements.txt               # what pip installs over the base image (Hounsfield's worker image)
      README.md                      # packaged to /opt/holoscan/docs
      app.py, __main__.py            # packaged to /opt/holoscan/app; app.json runs "python3 -u /opt/holoscan/app"
      models/NAME/model.ts           # the model (or the whole bundle: configs/, models/model.ts, ...)
      tests/test_app.py              # runs the application on a generated CT study (not packaged)

Kinds:

- ``segmentation``: series -> volume -> ``MonaiSegInferenceOperator`` (a TorchScript model; window,
  scaling and sliding window in ``app.py``) or ``MonaiBundleInferenceOperator`` (a bundle; its
  ``configs/inference.json``) -> DICOM SEG, one segment per connected component, and a TID 1500 SR
  with volume, long axis and mean HU per segment (the shared ``hounsfield_operators`` writers);
- ``classification``: series -> volume -> a classifier (a TorchScript model whose output is one
  probability or class scores; or a bundle's probabilities) -> a TID 1500 SR with a study-level
  qualitative evaluation (present / absent) and the probability.

Templates are Jinja2 (``templates/``); the folder is rendered beside its destination and moved into
place, so a refusal or a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import keyword
import logging
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from hounsfield.errors import Invalid
from hounsfield.maps.bundle import MODEL_FILE, BundleInfo, check_bundle, check_torchscript

__all__ = ["DEFAULT_VERSION", "KINDS", "new_application"]

logger = logging.getLogger(__name__)

#: What ``--kind`` accepts.
KINDS = ("segmentation", "classification")
#: The first version of every application (semver; app.json, pkg.json and app.yaml agree).
DEFAULT_VERSION = "0.1.0"

# The name is the folder, the Python-facing model name and (by ``map package``) the image name, which
# OCI wants in lower case: a lower-case identifier.
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_SOP_CLASSES = {
    "segmentation": (["1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"], ["seg.dcm", "sr.dcm"]),
    "classification": (["1.2.840.10008.5.1.4.1.1.88.34"], ["sr.dcm"]),
}
# What the templates start from: the CT lesion example's settings (hounsfield_operators.ct_lesion_seg).
_SEGMENTATION_DEFAULTS: dict[str, Any] = {
    "hu_window": (-150.0, 250.0),
    "roi_size": (64, 64, 32),
    "overlap": 0.25,
    "sw_batch_size": 4,
    "labels": ("background", "lesion"),
}
_CLASSIFICATION_DEFAULTS: dict[str, Any] = {
    "hu_window": (-150.0, 250.0),
    "roi_size": (64, 64, 32),
    "labels": ("absent", "present"),
}
_RENDERED = {
    "app.json": "app.json.j2",
    "pkg.json": "pkg.json.j2",
    "app.yaml": "app.yaml.j2",
    "requirements.txt": "requirements.txt.j2",
    "README.md": "README.md.j2",
    "__main__.py": "__main__.py.j2",
    "tests/test_app.py": "tests/test_app.py.j2",
}


def _environment() -> jinja2.Environment:
    templates = resources.files("hounsfield.maps") / "templates"
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # Python, JSON, YAML and Markdown, not HTML
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or _NAME.match(name) is None or keyword.iskeyword(name):
        raise Invalid(
            "name",
            f"{name!r} is not a valid application name: use 1-40 lower-case letters, digits and underscores, "
            "starting with a letter (it names the folder, the model and the image)",
        )


def _bundle_requirements(bundle: Path) -> list[str]:
    """``metadata.json#optional_packages_version`` as pins (what the bundle's configs import beyond MONAI)."""
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    optional = metadata.get("optional_packages_version") or {}
    if not isinstance(optional, dict):
        return []
    return [f"{package}=={version}" for package, version in sorted(optional.items()) if package and version]


def _context(name: str, kind: str, bundle: BundleInfo | None) -> dict[str, Any]:
    defaults = _SEGMENTATION_DEFAULTS if kind == "segmentation" else _CLASSIFICATION_DEFAULTS
    sop_classes, output_files = _SOP_CLASSES[kind]
    return {
        **defaults,
        "name": name,
        "kind": kind,
        "title": name.replace("_", " ").capitalize(),
        "class_name": "".join(part.capitalize() for part in name.split("_") if part) + "App",
        "version": DEFAULT_VERSION,
        "manufacturer": "Hounsfield",
        "bundle": bundle is not None,
        "bundle_input": bundle.inputs[0] if bundle else "image",
        "bundle_output": bundle.outputs[0] if bundle else "pred",
        "bundle_version": bundle.version if bundle else None,
        "requirements": _bundle_requirements(bundle.path) if bundle else [],
        "sop_classes": sop_classes,
        "output_files": output_files,
    }


def new_application(name: str, kind: str, dest: Path, *, model: Path | None = None, bundle: Path | None = None) -> Path:
    """Make an App SDK application folder ``dest/name`` from templates.

    Parameters
    ----------
    name : str
        The application's name: 1-40 lower-case letters, digits and underscores, starting with a letter.
        It names the folder, the model folder under the model root and the model in the results.
    kind : {"segmentation", "classification"}
        What the model does.
    dest : pathlib.Path
        The folder in which ``name`` is made (created when missing).
    model : pathlib.Path or None
        A TorchScript model file; copied to ``models/<name>/model.ts``.
    bundle : pathlib.Path or None
        A MONAI bundle folder (``configs/metadata.json``, ``configs/inference.json``, ``models/model.ts``);
        copied whole to ``models/<name>/``. Exactly one of ``model`` and ``bundle``.

    Returns
    -------
    pathlib.Path
        The folder made.

    Raises
    ------
    hounsfield.errors.Invalid
        A bad name, an unknown kind, neither or both of model and bundle, a model that is not loadable
        TorchScript, a bundle missing one of its three files, or a destination that exists.
    """
    _check_name(name)
    if kind not in KINDS:
        raise Invalid("kind", f"{kind!r} is not a kind of application; choose one of {', '.join(KINDS)}")
    if (model is None) == (bundle is None):
        raise Invalid(
            "model", "give exactly one of a TorchScript model (--model model.ts) or a MONAI bundle (--bundle DIR)"
        )
    dest = Path(dest)
    folder = dest / name
    if folder.exists() or folder.is_symlink():
        raise Invalid("dest", f"{folder} exists; choose another name or destination")
    info: BundleInfo | None = None
    if model is not None:
        check_torchscript(Path(model))
    else:
        assert bundle is not None
        info = check_bundle(Path(bundle))
        if kind == "segmentation" and info.output_type != "image":
            raise Invalid(
                "bundle",
                f"{bundle}: a segmentation bundle's first output is of type 'image', not {info.output_type!r} "
                "(configs/metadata.json network_data_format.outputs)",
            )
    context = _context(name, kind, info)
    environment = _environment()
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest))
    try:
        for relative, template in {**_RENDERED, "app.py": f"app_{kind}.py.j2"}.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(environment.get_template(template).render(context), encoding="utf-8")
        model_folder = staging / "models" / name
        if model is not None:
            model_folder.mkdir(parents=True)
            shutil.copyfile(model, model_folder / MODEL_FILE.name)
        else:
            assert bundle is not None
            shutil.copytree(bundle, model_folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the folder is the developer's
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("made %s application %s from %s", kind, folder, model or bundle)
    return folder
