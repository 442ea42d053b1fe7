"""``hounsfield map validate``: an application folder or a MAP image checked against the MAP spec 1.0.

Every problem says where it is (the manifest and field, or the file), what is wrong and how to fix it,
as a :class:`Problem`; an ``error`` makes the MAP unusable or not what the spec describes, a ``warning``
is something a reviewer should look at (a missing README, the packager's number-versions).

Two layouts are read, as :func:`hounsfield.catalog.manifests.load_map` reads them:

- the application folder (the build context of ``hounsfield map package``): ``app.json``, ``pkg.json``,
  ``app.yaml`` (optional), ``requirements.txt``, ``README.md``, the code (the folder is what
  ``pkg.json#applicationRoot`` becomes), and ``models/<model name>/...`` (or, for a single model, its
  files directly in ``models/``);
- a MAP's file system (``etc/holoscan/app.json`` and ``pkg.json``, the application under
  ``applicationRoot``, models under ``modelRoot``, documentation in ``/opt/holoscan/docs``): what
  :func:`validate` copies out of an image. Nothing in the image runs.

What is checked: the required files; every schema issue the manifest parser finds; the versions
(semver, app.json, pkg.json and app.yaml agreeing) and ``apiVersion``; that the command can start
(a Python module found under the application's ``PYTHONPATH`` or installed, a script found under
``applicationRoot``); the declared input formats and output format; the ``HOLOSCAN_*`` paths; each
model (its name, its path under ``modelRoot``, files that exist and are not empty, no duplicates);
the resources (cpu, memory, gpu, limits not below requests); the timeout.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import posixpath
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from hounsfield.catalog.manifests import AppManifest, ManifestInvalid, ManifestIssue, SemVer, parse_manifests
from hounsfield.containers import (
    ContainerCommandFailed,
    ContainerEngineMissing,
    extract,
    image_exists,
)

__all__ = ["Problem", "validate", "validate_folder"]

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning"]

SPEC_APPLICATION_ROOT = "/opt/holoscan/app"
SPEC_MODEL_ROOT = "/opt/holoscan/models"
SPEC_DOCS = "/opt/holoscan/docs"
SPEC_CONFIG = "/var/holoscan/app.yaml"
SPEC_ENVIRONMENT = {
    "HOLOSCAN_INPUT_PATH": "/var/holoscan/input",
    "HOLOSCAN_OUTPUT_PATH": "/var/holoscan/output",
    "HOLOSCAN_WORKDIR": "/var/holoscan",
    "HOLOSCAN_MODEL_PATH": SPEC_MODEL_ROOT,
    "HOLOSCAN_CONFIG_PATH": SPEC_CONFIG,
    "HOLOSCAN_APP_MANIFEST_PATH": "/etc/holoscan/app.json",
    "HOLOSCAN_PKG_MANIFEST_PATH": "/etc/holoscan/pkg.json",
    "HOLOSCAN_DOCS_PATH": SPEC_DOCS,
    "HOLOSCAN_LOGS_PATH": "/var/holoscan/logs",
    "HOLOSCAN_APPLICATION": SPEC_APPLICATION_ROOT,
}
"""The spec's paths; ``HOLOSCAN_MODEL_PATH`` and ``HOLOSCAN_APPLICATION`` must also match pkg.json's roots."""

_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_PYTHON_OPTIONS_WITH_VALUE = frozenset({"-W", "-X", "--check-hash-based-pycs"})
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Mi|Gi)B?$")
"""A memory size in the parser's form (``hounsfield.catalog.manifests``): ``512Mi``, ``1.5Gi``."""
_SHORT_VERSION = re.compile(r"^(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?$")
_IMAGE_PATHS_FIRST = ["/etc/holoscan"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a MAP: how bad, where (``app.json: command``, ``models/seg``), what, how to fix it."""

    severity: Severity
    where: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.what}; fix: {self.fix}"


# -- the entry points ---------------------------------------------------------------------------------


def validate(target: str) -> list[Problem]:
    """Validate ``target``: an application folder when it is a directory, else a MAP image reference.

    The image is read, never run: a container is created, the MAP's manifests, application, models and
    documentation are copied out of it into a temporary folder, and the container is removed.
    """
    path = Path(target)
    if path.is_dir():
        return validate_folder(path)
    if path.exists():
        return [
            Problem(
                "error",
                target,
                "is a file, not an application folder or a MAP image",
                "give the application folder (with app.json and pkg.json) or an image reference",
            ),
        ]
    if target.startswith(("/", ".", "~")):
        return [Problem("error", target, "no such folder", "give an existing application folder, or an image name")]
    return _validate_image(target)


def validate_folder(path: Path) -> list[Problem]:
    """Validate a MAP's file system (``etc/holoscan/...``) or an application folder (``app.json`` at the top)."""
    path = Path(path)
    image_layout = (path / "etc/holoscan/app.json").is_file() or (path / "etc/holoscan/pkg.json").is_file()
    return _Check(path, image_layout=image_layout).run()


def _validate_image(reference: str) -> list[Problem]:
    try:
        if not image_exists(reference):
            return [
                Problem(
                    "error",
                    reference,
                    "neither a folder nor an image the container engine has",
                    f"pull or build it first (podman pull {reference}), or give the application folder",
                ),
            ]
        with tempfile.TemporaryDirectory(prefix="hounsfield-validate-") as scratch:
            root = Path(scratch)
            extract(reference, _IMAGE_PATHS_FIRST, root)
            extract(reference, _image_paths(root), root)
            return _Check(root, image_layout=True).run()
    except ContainerEngineMissing as exc:
        return [Problem("error", reference, f"cannot read an image: {exc}", "validate the application folder instead")]
    except ContainerCommandFailed as exc:
        return [Problem("error", reference, f"could not be read: {exc}", "check the reference (podman images)")]


def _image_paths(root: Path) -> list[str]:
    """What to copy out of an image once its manifests are out: roots, config, docs, the command's paths."""
    app = _json_or_none(root / "etc/holoscan/app.json")
    pkg = _json_or_none(root / "etc/holoscan/pkg.json")
    paths = {SPEC_APPLICATION_ROOT, SPEC_MODEL_ROOT, SPEC_DOCS, SPEC_CONFIG}
    if isinstance(pkg, dict):
        for key in ("applicationRoot", "modelRoot"):
            if isinstance(pkg.get(key), str) and pkg[key].startswith("/"):
                paths.add(pkg[key])
    if isinstance(app, dict):
        environment = app.get("environment")
        if not isinstance(environment, dict):
            environment = {}
        config = environment.get("HOLOSCAN_CONFIG_PATH")
        if isinstance(config, str) and config.startswith("/"):
            paths.add(config)
        for entry in str(environment.get("PYTHONPATH", "")).split(":"):
            if entry.startswith("/"):
                paths.add(entry)
        if isinstance(app.get("command"), str | list):
            argv = _argv(app["command"])
            program = _python_script(argv) if argv and _PYTHON.match(posixpath.basename(argv[0])) else argv[:1]
            paths.update(a for a in program if a.startswith("/"))
    # A folder copied onto one already there lands inside it: copy each tree once, from its top.
    normal = sorted({posixpath.normpath(p) for p in paths})
    return [p for p in normal if not any(p.startswith(q + "/") for q in normal if q != p)]


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


# -- the checks ---------------------------------------------------------------------------------------


class _Check:
    """One validation of one folder; the checks add to ``problems``."""

    def __init__(self, root: Path, *, image_layout: bool) -> None:
        self.root = root
        self.image = image_layout
        self.manifests = root / "etc/holoscan" if image_layout else root
        self.problems: list[Problem] = []
        self.app: dict[str, Any] | None = None
        self.pkg: dict[str, Any] | None = None

    # where things are

    def _label(self, path: Path) -> str:
        """A file as the problem names it: relative in a folder, the container path in an image."""
        relative = path.relative_to(self.root).as_posix()
        if relative == ".":
            return "/" if self.image else "."
        return "/" + relative if self.image else relative

    def _local(self, container_path: str) -> Path | None:
        """Where a container path is here: under applicationRoot (the folder itself for an application
        folder), anywhere in an image's file system; None when an application folder cannot tell."""
        normal = posixpath.normpath(container_path)
        app_root = posixpath.normpath(self.application_root)
        if self.image:
            return self.root / normal.lstrip("/")
        if normal == app_root:
            return self.root
        if normal.startswith(app_root + "/"):
            return self.root / normal[len(app_root) + 1 :]
        return None

    @property
    def application_root(self) -> str:
        value = (self.pkg or {}).get("applicationRoot")
        return value if isinstance(value, str) and value.startswith("/") else SPEC_APPLICATION_ROOT

    @property
    def model_root(self) -> str:
        value = (self.pkg or {}).get("modelRoot", SPEC_MODEL_ROOT)
        return value if isinstance(value, str) and value.startswith("/") else SPEC_MODEL_ROOT

    @property
    def working_directory(self) -> str:
        value = (self.app or {}).get("workingDirectory", "/var/holoscan")
        return value if isinstance(value, str) and value.startswith("/") else "/var/holoscan"

    @property
    def environment(self) -> dict[str, Any]:
        value = (self.app or {}).get("environment")
        return value if isinstance(value, dict) else {}

    def add(self, severity: Severity, where: str, what: str, fix: str) -> None:
        self.problems.append(Problem(severity, where, what, fix))

    # the run

    def run(self) -> list[Problem]:
        self.app = self._manifest("app.json", "the application manifest: how to run it")
        self.pkg = self._manifest("pkg.json", "the package manifest: applicationRoot, models, resources")
        self._documentation()
        own_start = len(self.problems)
        if self.app is not None:
            self._versions("app.json")
            self._command()
            self._formats()
            self._environment()
            self._timeout()
        if self.pkg is not None:
            self._versions("pkg.json")
            self._roots()
            self._models()
            self._resources()
        self._versions_agree()
        self._config()
        self._schema_issues(own_start)
        return self.problems

    def _manifest(self, name: str, role: str) -> dict[str, Any] | None:
        path = self.manifests / name
        where = self._label(path) if self.image else name
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            self.add(
                "error",
                where,
                f"not found ({role})",
                f"write {name} (MAP spec 1.0); `hounsfield map new` makes one to start from",
            )
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.add("error", where, f"unreadable: {exc}", f"make {name} a readable UTF-8 file")
            return None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            self.add(
                "error",
                where,
                f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                f"correct the JSON syntax at line {exc.lineno}, column {exc.colno}",
            )
            return None
        if not isinstance(document, dict):
            self.add(
                "error",
                where,
                f"is a JSON {type(document).__name__}, not an object",
                f"write {name} as one JSON object {{...}}",
            )
            return None
        return document

    def _documentation(self) -> None:
        if self.image:
            docs = self.root / SPEC_DOCS.lstrip("/")
            if not docs.is_dir() or not any(p.is_file() for p in docs.rglob("*")):
                self.add(
                    "warning",
                    SPEC_DOCS,
                    "no documentation in the image",
                    "copy the application's README.md into /opt/holoscan/docs/ (the spec's place for it)",
                )
            return
        if not any((self.root / name).is_file() for name in ("README.md", "README.rst", "README.txt", "README")):
            self.add(
                "warning",
                "README.md",
                "not found: the MAP carries no documentation",
                "write README.md: what the application does, its intended use, inputs, outputs and model",
            )
        if not (self.root / "requirements.txt").is_file():
            self.add(
                "warning",
                "requirements.txt",
                "not found: the image gets no Python dependencies of its own",
                "list the application's Python dependencies, one a line (an empty file if it needs none)",
            )

    # versions

    def _versions(self, file: str) -> None:
        document = self.app if file == "app.json" else self.pkg
        assert document is not None
        if "version" not in document:
            self.add(
                "error",
                f"{file}: version",
                "missing (read as 0.0.0): the registry registers the version from it",
                'add "version": "1.0.0" (semver.org: MAJOR.MINOR.PATCH), the same in app.json and pkg.json',
            )
        else:
            self._semver(f"{file}: version", document["version"], "1.0.0")
        if "apiVersion" not in document:
            self.add(
                "warning",
                f"{file}: apiVersion",
                "missing (read as 0.0.0)",
                'add "apiVersion": "1.0.0", the MAP spec version the manifest follows',
            )
        else:
            version = self._semver(f"{file}: apiVersion", document["apiVersion"], "1.0.0")
            if version is not None and version.major != 1:
                self.add(
                    "warning",
                    f"{file}: apiVersion",
                    f"{version} is not a version of MAP spec 1.x, the one checked",
                    'write "apiVersion": "1.0.0" if the manifest follows MAP spec 1.0',
                )

    def _semver(self, where: str, value: Any, example: str) -> SemVer | None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.add(
                "error", where, f"{json.dumps(value)} is not a version", f'write a semantic version, e.g. "{example}"'
            )
            return None
        text = repr(value) if isinstance(value, float) else str(value)
        short = _SHORT_VERSION.match(text)
        if short is not None:
            padded = f"{short.group(1)}.{short.group(2) or 0}.0"
            shown = text if isinstance(value, str) else f"the number {text}"
            self.add(
                "warning",
                where,
                f"{shown} is not semver: read as {padded}",
                f'write "{padded}" (a string, MAJOR.MINOR.PATCH)',
            )
            return SemVer.parse(padded)
        if not isinstance(value, str):
            self.add(
                "error", where, f"the number {text} is not a version", f'write a semantic version, e.g. "{example}"'
            )
            return None
        try:
            return SemVer.parse(value)
        except ValueError:
            self.add(
                "error",
                where,
                f"{value!r} is not a semantic version",
                f'write MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD] (semver.org), e.g. "{example}"',
            )
            return None

    def _quiet_semver(self, value: Any) -> SemVer | None:
        """The version as the parser reads it, without adding problems (they are added once elsewhere)."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return None
        text = repr(value) if isinstance(value, float) else str(value)
        short = _SHORT_VERSION.match(text)
        if short is not None:
            return SemVer.parse(f"{short.group(1)}.{short.group(2) or 0}.0")
        try:
            return SemVer.parse(text) if isinstance(value, str) else None
        except ValueError:
            return None

    def _versions_agree(self) -> None:
        if self.app is None or self.pkg is None:
            return
        app_version = self._quiet_semver(self.app.get("version"))
        pkg_version = self._quiet_semver(self.pkg.get("version"))
        if app_version is not None and pkg_version is not None and app_version != pkg_version:
            self.add(
                "error",
                "pkg.json: version",
                f"{pkg_version} differs from app.json's version {app_version}",
                "give app.json and pkg.json the same version: the version of the application and its models",
            )
        app_api = self._quiet_semver(self.app.get("apiVersion"))
        pkg_api = self._quiet_semver(self.pkg.get("apiVersion"))
        if app_api is not None and pkg_api is not None and app_api != pkg_api:
            self.add(
                "warning",
                "pkg.json: apiVersion",
                f"{pkg_api} differs from app.json's apiVersion {app_api}",
                "write the MAP spec version both manifests follow in both",
            )

    # app.json

    def _command(self) -> None:
        assert self.app is not None
        command = self.app.get("command")
        if not isinstance(command, str | list) or not command:
            return  # the parser's issue (missing, empty, not a string or array) says it
        if isinstance(command, list) and not all(isinstance(a, str) for a in command):
            return
        argv = _argv(command)
        if not argv:
            return
        where = "app.json: command"
        if _PYTHON.match(posixpath.basename(argv[0])):
            self._python_command(argv, where)
            return
        if argv[0].startswith("/"):
            local = self._local(argv[0])
            if local is None:
                return  # outside applicationRoot: only the image can tell
            if not local.is_file():
                self.add(
                    "error",
                    where,
                    f"{argv[0]} is not in the {'image' if self.image else 'application folder'}"
                    f" (looked for {self._label(local)})",
                    f"put the program at {self._label(local)} or correct the command's path",
                )

    def _python_command(self, argv: list[str], where: str) -> None:
        module, script, inline = _python_target(argv)
        if inline:
            return
        if module is None and script is None:
            self.add(
                "error",
                where,
                f"{' '.join(argv)} names no script and no module to run",
                f'add the module or the script: "python3 -u -m package.module" or "python3 -u {self.application_root}"',
            )
            return
        if module is not None:
            self._python_module(module, where)
        elif script is not None:
            self._python_script(script, where)

    def _python_module(self, module: str, where: str) -> None:
        parts = module.split(".")
        if module == "" or not all(part.isidentifier() for part in parts):
            self.add(
                "error",
                where,
                f"-m {module!r} is not a Python module name",
                "name the module as it is imported, e.g. -m my_app or -m my_package.app",
            )
            return
        search = []
        for entry in str(self.environment.get("PYTHONPATH", "")).split(":"):
            if entry:
                local = self._local(posixpath.join(self.working_directory, entry))
                if local is not None:
                    search.append(local)
        if any(_module_under(base, parts) for base in search):
            return
        app_root = self._local(self.application_root)
        if app_root is not None and _module_under(app_root, parts):
            self.add(
                "error",
                "app.json: environment.PYTHONPATH",
                f"{module} is under applicationRoot ({self.application_root}), which PYTHONPATH does not name",
                f'add "PYTHONPATH": "{self.application_root}" to app.json\'s environment',
            )
            return
        if self.image:
            self.add(
                "warning",
                where,
                f"module {module} is not under applicationRoot or PYTHONPATH; it must be installed in the image",
                "put the module under applicationRoot, or install it in the image (requirements.txt)",
            )
            return
        if not _module_installed(parts):
            self.add(
                "error",
                where,
                f"module {module} is not in the application folder (PYTHONPATH) nor installed here",
                f"put {'/'.join(parts)}.py (or the package {'/'.join(parts)}/__main__.py) in the folder and "
                f'"PYTHONPATH": "{self.application_root}" in environment, or correct the module name',
            )

    def _python_script(self, script: str, where: str) -> None:
        if not script.startswith("/"):
            self.add(
                "error",
                where,
                f"{script} is relative: it is looked for in workingDirectory ({self.working_directory}),"
                " not in the application",
                f"give the script's absolute path under applicationRoot, e.g. {self.application_root}/app.py",
            )
            return
        local = self._local(script)
        if local is None:
            self.add(
                "warning",
                where,
                f"{script} is outside applicationRoot ({self.application_root}): the folder cannot show it exists",
                f"put the application under {self.application_root} and run it from there",
            )
            return
        place = "image" if self.image else "application folder"
        if local.is_dir():
            if not (local / "__main__.py").is_file():
                self.add(
                    "error",
                    where,
                    f"{script} is a folder without __main__.py: python cannot run it",
                    f"add {self._label(local / '__main__.py') if local != self.root else '__main__.py'} "
                    "that starts the application, or name the script to run",
                )
        elif not local.is_file():
            label = self._label(local) if local != self.root else "."
            self.add(
                "error",
                where,
                f"{script} is not in the {place} (looked for {label})",
                f"put the script at {label} or correct the path in the command",
            )

    def _formats(self) -> None:
        assert self.app is not None
        inputs, outputs = self.app.get("input"), self.app.get("output")
        if isinstance(inputs, dict):
            formats = inputs.get("formats")
            if not formats:
                state = "missing" if "formats" not in inputs else f"{json.dumps(formats)}: none declared"
                self.add(
                    "error",
                    "app.json: input.formats",
                    state,
                    'list the inputs the application accepts, e.g. "formats": ["diagnostic"] or '
                    '[{"type": "dicom", "modality": "CT"}]',
                )
        elif inputs is None:
            self.add(
                "error",
                "app.json: input",
                "missing",
                'add "input": {"path": "input/", "formats": [...]}: where and what the application reads',
            )
        if isinstance(outputs, dict):
            if not outputs.get("format") and not outputs.get("formats"):
                state = "missing" if "format" not in outputs and "formats" not in outputs else "none declared"
                self.add(
                    "error",
                    "app.json: output.format",
                    state,
                    'describe the results, e.g. "format": {"mediaType": "application/dicom", '
                    '"sopClasses": ["1.2.840.10008.5.1.4.1.1.66.4"]}',
                )
        elif outputs is None:
            self.add(
                "error",
                "app.json: output",
                "missing",
                'add "output": {"path": "output/", "format": {...}}: where and what the application writes',
            )

    def _environment(self) -> None:
        expected = dict(SPEC_ENVIRONMENT)
        if self.pkg is not None:
            expected["HOLOSCAN_MODEL_PATH"] = self.model_root
            expected["HOLOSCAN_APPLICATION"] = self.application_root
        for key, spec_path in expected.items():
            if key not in self.environment:
                continue
            value = self.environment[key]
            if not isinstance(value, str):
                self.add(
                    "error",
                    f"app.json: environment.{key}",
                    f"{json.dumps(value)} is not a path",
                    f'write "{key}": "{spec_path}"',
                )
                continue
            actual = posixpath.normpath(posixpath.join(self.working_directory, value))
            if actual != posixpath.normpath(spec_path):
                whose = {
                    "HOLOSCAN_MODEL_PATH": "pkg.json's modelRoot",
                    "HOLOSCAN_APPLICATION": "pkg.json's applicationRoot",
                }
                self.add(
                    "error",
                    f"app.json: environment.{key}",
                    f"{value} is not {whose.get(key, 'the MAP spec path')} {spec_path}",
                    f'write "{key}": "{spec_path}"',
                )

    def _timeout(self) -> None:
        assert self.app is not None
        if "timeout" not in self.app:
            return
        value = self.app["timeout"]
        fix = "seconds the application may run per job, a whole number >= 0 (0: no timeout), e.g. 600"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add("error", "app.json: timeout", f"{json.dumps(value)} is not a number", fix)
        elif isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
            self.add("error", "app.json: timeout", f"{value} is not a whole number of seconds", fix)
        elif value < 0:
            self.add("error", "app.json: timeout", f"{value:g} is negative", fix)

    # pkg.json

    def _roots(self) -> None:
        assert self.pkg is not None
        for key, spec in (("applicationRoot", SPEC_APPLICATION_ROOT), ("modelRoot", SPEC_MODEL_ROOT)):
            value = self.pkg.get(key)
            if isinstance(value, str) and value.startswith("/") and posixpath.normpath(value) != spec:
                self.add(
                    "warning",
                    f"pkg.json: {key}",
                    f"{value} is not the MAP spec's {spec}",
                    f'write "{key}": "{spec}" unless the hosting service is told otherwise',
                )

    def _models_folder(self) -> Path:
        if self.image or not (self.root / "models").is_dir():
            return self.root / self.model_root.lstrip("/")
        return self.root / "models"

    def _models(self) -> None:
        assert self.pkg is not None
        raw = self.pkg.get("models", [])
        folder = self._models_folder()
        if isinstance(raw, dict):
            self.add(
                "warning",
                "pkg.json: models",
                "a name -> path object (an older packager's form)",
                'write the spec\'s array: "models": [{"name": "...", "path": "..."}]',
            )
            raw = [{"name": name, "path": path} for name, path in raw.items()]
        if not isinstance(raw, list):
            return  # the parser's issue
        flat = not self.image and len(raw) == 1 and any(p.is_file() for p in folder.glob("*"))
        seen_names: dict[str, int] = {}
        seen_paths: dict[str, int] = {}
        used: set[Path] = set()
        for index, entry in enumerate(raw):
            at = f"pkg.json: models[{index}]"
            if not isinstance(entry, dict):
                continue  # the parser's issue
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                self.add(
                    "error",
                    f"{at}.name",
                    "missing" if name is None else f"{json.dumps(name)} is not a name",
                    'name the model, e.g. "name": "ct_lesion_seg" (no spaces)',
                )
                name = None
            elif name in seen_names:
                self.add(
                    "error",
                    f"{at}.name",
                    f"{name!r} is listed twice (also models[{seen_names[name]}])",
                    "give each model its own name, or remove the duplicate entry",
                )
            else:
                seen_names[name] = index
            relative = self._model_path(at, entry.get("path"), name)
            if relative is None:
                if name is not None:
                    used.add(folder / name)  # meant for it, most likely: the path's problem says enough
                continue
            if relative in seen_paths:
                self.add(
                    "error",
                    f"{at}.path",
                    f"the same folder as models[{seen_paths[relative]}]",
                    "give each model its own folder under modelRoot",
                )
                continue
            seen_paths[relative] = index
            local = folder / relative
            if not local.exists() and flat:
                local = folder  # one model, its files directly in models/
            used.add(local)
            self._model_files(at, local)
        self._undeclared_models(folder, used, flat)

    def _model_path(self, at: str, path: Any, name: str | None) -> str | None:
        """The model's path relative to modelRoot; None (with a problem) when it is not under it."""
        root = posixpath.normpath(self.model_root)
        if path is None:
            return name
        if not isinstance(path, str) or not path:
            self.add(
                "error",
                f"{at}.path",
                f"{json.dumps(path)} is not a path",
                f'write the model\'s folder, e.g. "path": "{root}/{name or "<name>"}"',
            )
            return None
        normal = posixpath.normpath(posixpath.join(root, path))
        if normal == root or not normal.startswith(root + "/"):
            self.add(
                "error",
                f"{at}.path",
                f"{path} is not a folder under modelRoot ({self.model_root})",
                f'put the model in its own folder under modelRoot: "path": "{root}/{name or "<name>"}"',
            )
            return None
        return normal[len(root) + 1 :]

    def _model_files(self, at: str, local: Path) -> None:
        label = self._label(local)
        if not local.exists():
            source = f"models/{local.relative_to(self._models_folder()).as_posix()}/" if not self.image else label
            self.add(
                "error",
                label,
                f"not found: {at} names a model that is not there",
                f"put the model's files in {source}, or correct {at}.path",
            )
            return
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        if not files:
            self.add("error", label, "has no files", f"put the model's files (e.g. model.ts) in {label}/")
        for file in files:
            if file.stat().st_size == 0:
                self.add("error", self._label(file), "is empty", "put the trained model's file there (re-export it)")

    def _undeclared_models(self, folder: Path, used: set[Path], flat: bool) -> None:
        if flat or not folder.is_dir():
            return
        if not used and any(p.is_file() for p in folder.iterdir()):
            self.add(
                "warning",
                self._label(folder),
                "holds model files that pkg.json#models does not list",
                f'add {{"name": "<name>", "path": "{posixpath.join(self.model_root, "<name>")}"}} '
                "to pkg.json's models",
            )
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child not in used and not child.name.startswith((".", "__")):
                self.add(
                    "warning",
                    self._label(child),
                    "a model folder that pkg.json#models does not list",
                    f'add {{"name": "{child.name}", "path": "{posixpath.join(self.model_root, child.name)}"}} '
                    "to pkg.json's models, or remove the folder",
                )

    def _resources(self) -> None:
        assert self.pkg is not None
        resources = self.pkg.get("resources")
        if not isinstance(resources, dict):
            return  # absent (defaults) or the parser's issue
        self._amounts("pkg.json: resources", resources)
        fragments = resources.get("fragments")
        if isinstance(fragments, dict):
            for name, amounts in fragments.items():
                if isinstance(amounts, dict):
                    self._amounts(f"pkg.json: resources.fragments.{name}", amounts)

    def _amounts(self, at: str, amounts: dict[str, Any]) -> None:
        cpu = self._number(
            f"{at}.cpu", amounts, "cpu", "the CPU cores it needs, more than 0, e.g. 1 or 0.5", minimum=0.0
        )
        cpu_limit = self._number(f"{at}.cpuLimit", amounts, "cpuLimit", "CPU cores, at least cpu", minimum=0.0)
        gpu = self._gpus(f"{at}.gpu", amounts, "gpu")
        gpu_limit = self._gpus(f"{at}.gpuLimit", amounts, "gpuLimit")
        sizes = {
            key: self._quantity(f"{at}.{key}", amounts, key)
            for key in ("memory", "memoryLimit", "gpuMemory", "gpuMemoryLimit", "sharedMemory")
        }
        requested = {
            "cpu": cpu if "cpu" in amounts else 1.0,
            "gpu": gpu if "gpu" in amounts else 0,
            "memory": sizes["memory"] if "memory" in amounts else 1024.0,
            "gpuMemory": sizes["gpuMemory"],
        }
        for key, limit in (
            ("cpu", cpu_limit),
            ("gpu", gpu_limit),
            ("memory", sizes["memoryLimit"]),
            ("gpuMemory", sizes["gpuMemoryLimit"]),
        ):
            request = requested[key]
            if limit is not None and request is not None and limit < request:
                shown = amounts.get(key, {"cpu": 1, "gpu": 0, "memory": "1Gi"}.get(key))
                default = "" if key in amounts else " (the default)"
                self.add(
                    "error",
                    f"{at}.{key}Limit",
                    f"{amounts[key + 'Limit']} is below the request {key} {shown}{default}",
                    f"make {key}Limit at least {key} ({shown}), or lower {key}",
                )

    def _number(self, where: str, amounts: dict[str, Any], key: str, fix: str, *, minimum: float) -> float | None:
        if key not in amounts or (amounts[key] is None and key.endswith("Limit")):
            return None
        value = amounts[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.add("error", where, f"{json.dumps(value)} is not a number", f"write {fix}")
            return None
        if value <= minimum:
            self.add("error", where, f"{value:g}: must be more than {minimum:g}", f"write {fix}")
            return None
        return float(value)

    def _gpus(self, where: str, amounts: dict[str, Any], key: str) -> int | None:
        if key not in amounts or (amounts[key] is None and key.endswith("Limit")):
            return None
        value = amounts[key]
        fix = "a whole number of GPUs, 0 or more (0: runs on CPU)"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add("error", where, f"{json.dumps(value)} is not a number of GPUs", f"write {fix}")
            return None
        if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
            self.add("error", where, f"{value} is not a whole number of GPUs", f"write {fix}")
            return None
        if value < 0:
            self.add("error", where, f"{value:g} is negative", f"write {fix}")
            return None
        return int(value)

    def _quantity(self, where: str, amounts: dict[str, Any], key: str) -> float | None:
        """The size in MiB; None (with a problem when it is given and not a size) otherwise."""
        if key not in amounts or (amounts[key] is None and key != "memory"):
            return None
        value = amounts[key]
        match = _QUANTITY.match(value) if isinstance(value, str) else None
        if match is None:
            self.add(
                "error",
                where,
                f"{json.dumps(value)} is not a memory quantity",
                'write a size in Mi or Gi, e.g. "2Gi" or "512Mi"',
            )
            return None
        number = float(match.group(1))
        return number * 1024 if match.group(2) == "Gi" else number

    # app.yaml

    def _config(self) -> None:
        if self.image:
            value = self.environment.get("HOLOSCAN_CONFIG_PATH", SPEC_CONFIG)
            path = self._local(value if isinstance(value, str) and value.startswith("/") else SPEC_CONFIG)
        else:
            path = self.root / "app.yaml"
        if path is None or not path.is_file():
            return  # optional
        where = self._label(path) if self.image else "app.yaml"
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            self.add("error", where, f"unreadable: {exc}", "make app.yaml a readable UTF-8 file")
            return
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            reason = getattr(exc, "problem", None) or str(exc)
            self.add("error", where, f"not YAML: {reason}{at}", f"correct the YAML syntax{at}")
            return
        if document is None:
            return
        if not isinstance(document, dict):
            self.add("error", where, "is not a mapping", "write app.yaml as keys and values (application:, resources:)")
            return
        application = document.get("application")
        if not isinstance(application, dict) or "version" not in application:
            return
        yaml_where = f"{'app.yaml' if not self.image else where}: application.version"
        version = self._semver(yaml_where, application["version"], "1.0.0")
        app_version = self._quiet_semver((self.app or {}).get("version"))
        if version is not None and app_version is not None and version != app_version:
            self.add(
                "error",
                yaml_where,
                f"{version} differs from app.json's version {app_version}",
                f"write application.version: {app_version} (or change all three versions together)",
            )

    # what the parser says

    def _schema_issues(self, own_start: int) -> None:
        """Every issue the manifest parser finds, unless a check above already named the same place."""
        issues = _parser_issues(self.app, self.pkg)
        covered = [p.where for p in self.problems[own_start:] if p.severity == "error"]
        for issue in issues:
            where = f"{issue.file}: {_field_path(issue.field)}" if issue.field else issue.file
            if any(c == where or c.startswith((where + ".", where + "[")) for c in covered):
                continue
            self.add("error", where, issue.reason, _fix_for(issue))


def _parser_issues(app: dict[str, Any] | None, pkg: dict[str, Any] | None) -> list[ManifestIssue]:
    # A manifest that could not be read is reported already; the other is parsed with a stand-in that passes.
    stand_in_app = {"command": "true", "input": {"formats": ["x"]}, "output": {"format": "x"}}
    stand_in_pkg = {"applicationRoot": SPEC_APPLICATION_ROOT}
    try:
        parse_manifests(app if app is not None else stand_in_app, pkg if pkg is not None else stand_in_pkg)
    except ManifestInvalid as exc:
        return exc.issues
    return []


def _field_path(field: str) -> str:
    """The parser's ``models.0.name`` as ``models[0].name``."""
    parts = field.split(".")
    text = parts[0]
    for part in parts[1:]:
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


_FIXES = {
    "command": 'give the command that starts the application, e.g. "python3 -u -m my_app" or '
    '"python3 -u /opt/holoscan/app"',
    "input": 'write "input": {"path": "input/", "formats": [...]}',
    "output": 'write "output": {"path": "output/", "format": {...}}',
    "environment": 'write environment as an object of names to strings, e.g. {"HOLOSCAN_WORKDIR": "/var/holoscan"}',
    "workingDirectory": 'write "workingDirectory": "/var/holoscan"',
    "applicationRoot": f'write "applicationRoot": "{SPEC_APPLICATION_ROOT}"',
    "modelRoot": f'write "modelRoot": "{SPEC_MODEL_ROOT}"',
    "models": 'write "models": [{"name": "...", "path": "/opt/holoscan/models/<name>"}], one entry per model',
    "name": "a model name without spaces or control characters, at most 128 characters",
    "resources": 'write "resources": {"cpu": 1, "gpu": 0, "memory": "2Gi"}',
    "readiness": 'a probe: {"type": "command", "command": [...]} or {"type": "http-get", "port": 8080, "path": "/"}',
    "liveness": 'a probe: {"type": "command", "command": [...]} or {"type": "http-get", "port": 8080, "path": "/"}',
    "type": "one of tcp, grpc, http-get, command",
    "port": "a TCP port, 1 to 65535",
    "sdk": 'the SDK that built the application, e.g. "monai-deploy"',
    "sdkVersion": 'the SDK\'s version, e.g. "4.0.0"',
    "timeout": "seconds the application may run per job, a whole number >= 0 (0: no timeout), e.g. 600",
}


def _fix_for(issue: ManifestIssue) -> str:
    parts = [p for p in issue.field.split(".") if not p.isdigit()]
    for part in reversed(parts):
        if part in _FIXES:
            return _FIXES[part]
    if not issue.field:
        return f"write {issue.file} as one JSON object following MAP spec 1.0"
    return f"correct {issue.field} in {issue.file} (MAP spec 1.0 describes it)"


# -- the command ------------------------------------------------------------------------------------------


def _argv(command: str | list[Any]) -> list[str]:
    return AppManifest.model_construct(command=command).argv  # type: ignore[call-arg]  # only the command is read


def _python_target(argv: list[str]) -> tuple[str | None, str | None, bool]:
    """What a python command line runs: (module, script, inline code)."""
    index = 1
    while index < len(argv):
        arg = argv[index]
        if arg == "-m":
            return (argv[index + 1] if index + 1 < len(argv) else ""), None, False
        if arg.startswith("-m"):
            return arg[2:], None, False
        if arg == "-c" or (arg.startswith("-c") and not arg.startswith("--")):
            return None, None, True
        if arg in _PYTHON_OPTIONS_WITH_VALUE:
            index += 2
            continue
        if arg.startswith("-") and arg != "-":
            index += 1
            continue
        return None, arg, False
    return None, None, False


def _python_script(argv: list[str]) -> list[str]:
    _, script, _ = _python_target(argv)
    return [script] if script else []


def _module_under(base: Path, parts: list[str]) -> bool:
    """Whether ``python -m`` finds ``parts`` under ``base``: packages down to a module, or a package's __main__."""
    folder = base
    for part in parts[:-1]:
        folder = folder / part
        if not folder.is_dir():
            return False
    last = folder / parts[-1]
    return (folder / f"{parts[-1]}.py").is_file() or (last / "__main__.py").is_file()


def _module_installed(parts: list[str]) -> bool:
    """Whether ``python -m`` finds the module among the packages installed here; nothing is imported."""
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if len(parts) == 1:
        return spec.submodule_search_locations is None or any(
            (Path(location) / "__main__.py").is_file() for location in spec.submodule_search_locations
        )
    return any(_module_under(Path(location), parts[1:]) for location in spec.submodule_search_locations or [])
