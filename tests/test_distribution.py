"""The installed distribution: two top-level import names of its own, and every module of the tree in it.

The repository's folders are not import names (``services/`` is installed as ``hounsfield``,
``operators/`` as ``hounsfield_operators``; pyproject.toml lists the packages). The wheel is built
here from a copy of the sources, as pip builds it for an install, and read back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.support import REPO

TOP_LEVEL = {"hounsfield", "hounsfield_operators"}
FOLDERS = {"services": "hounsfield", "operators": "hounsfield_operators"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("hounsfield-*.whl")
    return zipfile.ZipFile(path)


def _modules(wheel: zipfile.ZipFile) -> set[str]:
    return {name for name in wheel.namelist() if name.endswith(".py")}


def test_the_wheel_claims_only_its_own_import_names(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/", 1)[0] for name in wheel.namelist() if ".dist-info/" not in name}
    assert top == TOP_LEVEL, "generic names such as services or operators must not reach site-packages"


def test_every_module_of_the_tree_is_in_the_wheel_under_its_import_name(wheel: zipfile.ZipFile) -> None:
    expected = {
        f"{name}/{path.relative_to(REPO / folder).as_posix()}"
        for folder, name in FOLDERS.items()
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    missing = sorted(expected - _modules(wheel))
    assert not missing, f"not in the wheel (a package missing from [tool.setuptools] packages?): {missing[:10]}"


def test_the_wheel_carries_its_data_and_the_command(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for data in (
        "hounsfield/py.typed",
        "hounsfield_operators/py.typed",
        "hounsfield/catalog/taxonomy.yaml",
        "hounsfield/db/migrations/script.py.mako",
        "hounsfield_operators/ct_lesion_seg/models/model.ts",
        "hounsfield_operators/ct_lesion_seg/app.json",
        "hounsfield/registry/dashboard/templates/base.html",
        "hounsfield/registry/dashboard/static/dashboard.css",
    ):
        assert data in names, data
    assert {n for n in names if n.startswith("hounsfield/db/migrations/versions/")}, "the migrations ship"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "hounsfield = hounsfield.cli:main" in wheel.read(entry_points).decode()
