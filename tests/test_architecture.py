"""The layering of the rooms is a checked rule: import-linter's contracts (pyproject.toml) hold for the
tree, and each kind of contract does break when code breaks it.

``make lint`` runs the same contracts; here a copy of the tree is given one violation of each kind
(a domain module importing the HTTP face, a circle between two listener modules, SQL in the router,
FastAPI below the face) and every one must be reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO


def _lint_imports(python_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if python_path is not None:  # found before the editable install's own mapping
        env["PYTHONPATH"] = str(python_path)
    command = [
        str(Path(sys.executable).with_name("lint-imports")),
        "--config",
        str(REPO / "pyproject.toml"),
        "--no-cache",
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_tree_keeps_every_contract() -> None:
    checked = _lint_imports()
    assert checked.returncode == 0, checked.stdout[-4000:]
    assert "0 broken" in checked.stdout


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_each_kind_of_violation_breaks_its_contract(tmp_path: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "models")
    root = tmp_path / "path"
    shutil.copytree(REPO / "services", root / "hounsfield", ignore=ignore)
    shutil.copytree(REPO / "operators", root / "hounsfield_operators", ignore=ignore)
    package = root / "hounsfield"
    _append(package / "catalog" / "rules.py", "from hounsfield.registry import deps")
    _append(package / "listener" / "header.py", "from hounsfield.listener import server")
    _append(package / "router" / "dry_run.py", "import sqlalchemy")
    _append(package / "catalog" / "models.py", "import fastapi")

    checked = _lint_imports(root)

    report = checked.stdout
    assert checked.returncode != 0
    assert "hounsfield.catalog is not allowed to import hounsfield.registry" in report
    assert "Illegal imports of protected package hounsfield.registry" in report
    assert "No cycles are allowed in hounsfield.listener" in report
    assert "hounsfield.router.dry_run -> sqlalchemy" in report
    assert "hounsfield.catalog.models -> fastapi" in report
    assert "Contracts: 1 kept, 5 broken." in report, report[-3000:]
