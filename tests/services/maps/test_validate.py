"""`hounsfield map validate`: the example application validates; a copy broken in one way gives one problem.

Each broken copy is a valid application folder (made here, as `hounsfield map new` makes one) with one
thing changed, and the test asserts the whole list of problems: the one expected, with its severity,
where it is and how to fix it, and nothing else. The same checks run on a MAP's file system, and on a
MAP image built with podman where podman and the base image are here (skipped, saying why, elsewhere).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hounsfield.cli import app as cli
from hounsfield.maps.validate import Problem, validate, validate_folder

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "operators" / "ct_lesion_seg"
BASE_IMAGE = "localhost/hounsfield-base:bookworm"


def app_json(**changes: Any) -> dict[str, Any]:
    app: dict[str, Any] = {
        "apiVersion": "1.0.0",
        "command": "python3 -u /opt/holoscan/app",
        "environment": {
            "PYTHONPATH": "/opt/holoscan/app",
            "HOLOSCAN_APPLICATION": "/opt/holoscan/app",
            "HOLOSCAN_INPUT_PATH": "/var/holoscan/input",
            "HOLOSCAN_OUTPUT_PATH": "/var/holoscan/output",
            "HOLOSCAN_WORKDIR": "/var/holoscan",
            "HOLOSCAN_MODEL_PATH": "/opt/holoscan/models",
            "HOLOSCAN_CONFIG_PATH": "/var/holoscan/app.yaml",
            "HOLOSCAN_APP_MANIFEST_PATH": "/etc/holoscan/app.json",
            "HOLOSCAN_PKG_MANIFEST_PATH": "/etc/holoscan/pkg.json",
        },
        "input": {"path": "input/", "formats": ["diagnostic"]},
        "output": {"path": "output/", "format": {"mediaType": "application/dicom", "files": ["seg.dcm"]}},
        "sdk": "monai-deploy",
        "sdkVersion": "4.0.0",
        "timeout": 600,
        "version": "1.0.0",
        "workingDirectory": "/var/holoscan",
    }
    app.update(changes)
    return app


def pkg_json(**changes: Any) -> dict[str, Any]:
    pkg: dict[str, Any] = {
        "apiVersion": "1.0.0",
        "applicationRoot": "/opt/holoscan/app",
        "modelRoot": "/opt/holoscan/models",
        "models": [{"name": "seg", "path": "/opt/holoscan/models/seg"}],
        "resources": {"cpu": 1, "gpu": 0, "memory": "2Gi"},
        "version": "1.0.0",
    }
    pkg.update(changes)
    return pkg


def write_application(folder: Path) -> Path:
    """A valid application folder (build context): manifests, config, docs, code, one model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.json").write_text(json.dumps(app_json(), indent=2))
    (folder / "pkg.json").write_text(json.dumps(pkg_json(), indent=2))
    (folder / "app.yaml").write_text("application:\n  title: Test segmentation\n  version: 1.0.0\n")
    (folder / "README.md").write_text("# Test segmentation\n")
    (folder / "requirements.txt").write_text("monai-deploy-app-sdk\n")
    (folder / "__main__.py").write_text("from app import main\n\nmain()\n")
    (folder / "app.py").write_text("def main() -> None:\n    pass\n")
    (folder / "models" / "seg").mkdir(parents=True)
    (folder / "models" / "seg" / "model.ts").write_bytes(b"PK\x03\x04 not really TorchScript")
    return folder


def write_image_layout(folder: Path) -> Path:
    """The same application as a MAP's file system (what a MAP image holds)."""
    holoscan = folder / "etc" / "holoscan"
    holoscan.mkdir(parents=True)
    (holoscan / "app.json").write_text(json.dumps(app_json()))
    (holoscan / "pkg.json").write_text(json.dumps(pkg_json()))
    app = folder / "opt" / "holoscan" / "app"
    app.mkdir(parents=True)
    (app / "__main__.py").write_text("from app import main\n\nmain()\n")
    (app / "app.py").write_text("def main() -> None:\n    pass\n")
    (folder / "opt" / "holoscan" / "models" / "seg").mkdir(parents=True)
    (folder / "opt" / "holoscan" / "models" / "seg" / "model.ts").write_bytes(b"PK\x03\x04 not really TorchScript")
    (folder / "opt" / "holoscan" / "docs").mkdir(parents=True)
    (folder / "opt" / "holoscan" / "docs" / "README.md").write_text("# Test segmentation\n")
    (folder / "var" / "holoscan").mkdir(parents=True)
    (folder / "var" / "holoscan" / "app.yaml").write_text("application:\n  version: 1.0.0\n")
    return folder


def _edit(file: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        document = json.loads((folder / file).read_text())
        change(document)
        (folder / file).write_text(json.dumps(document))

    return edit


def _set(file: str, **values: Any) -> Callable[[Path], None]:
    return _edit(file, lambda document: document.update(values))


def _drop(file: str, key: str) -> Callable[[Path], None]:
    return _edit(file, lambda document: document.pop(key))


def _env(**values: str | None) -> Callable[[Path], None]:
    def change(document: dict[str, Any]) -> None:
        for key, value in values.items():
            if value is None:
                document["environment"].pop(key)
            else:
                document["environment"][key] = value

    return _edit("app.json", change)


def _resources(**values: Any) -> Callable[[Path], None]:
    return _edit("pkg.json", lambda document: document["resources"].update(values))


def _models(*entries: dict[str, str], extra_folders: tuple[str, ...] = ()) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        _set("pkg.json", models=list(entries))(folder)
        for name in extra_folders:
            (folder / "models" / name).mkdir()
            (folder / "models" / name / "model.ts").write_bytes(b"weights")

    return edit


def _remove(relative: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return edit


def _write(relative: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / relative).write_text(text)


SEG = {"name": "seg", "path": "/opt/holoscan/models/seg"}
BROKEN: dict[str, tuple[Callable[[Path], None], list[tuple[str, str, str, str]]]] = {
    # id: (what is broken, [(severity, where, words of what, words of the fix)])
    "no app.json": (_remove("app.json"), [("error", "app.json", "not found", "hounsfield map new")]),
    "no pkg.json": (_remove("pkg.json"), [("error", "pkg.json", "not found", "write pkg.json")]),
    "app.json not JSON": (
        _write("app.json", '{"command": "python3" "x"}'),
        [("error", "app.json", "not JSON: Expecting ',' delimiter at line 1", "line 1, column 23")],
    ),
    "pkg.json an array": (_write("pkg.json", "[]"), [("error", "pkg.json", "not an object", "one JSON object")]),
    "no README": (_remove("README.md"), [("warning", "README.md", "not found", "intended use")]),
    "no requirements": (_remove("requirements.txt"), [("warning", "requirements.txt", "not found", "one a line")]),
    "negative timeout": (_set("app.json", timeout=-1), [("error", "app.json: timeout", "-1 is negative", ">= 0")]),
    "fractional timeout": (
        _set("app.json", timeout=1.5),
        [("error", "app.json: timeout", "1.5 is not a whole number of seconds", "0: no timeout")],
    ),
    "huge timeout (the parser's issue)": (
        _set("app.json", timeout=2**31),
        [("error", "app.json: timeout", "less than or equal to 2147483647", "whole number >= 0")],
    ),
    "no command": (_drop("app.json", "command"), [("error", "app.json: command", "Field required", "python3 -u")]),
    "empty command": (_set("app.json", command=" "), [("error", "app.json: command", "empty", "python3 -u -m")]),
    "script not in the folder": (
        _set("app.json", command="python3 -u /opt/holoscan/app/main.py"),
        [("error", "app.json: command", "/opt/holoscan/app/main.py is not in the application folder", "main.py")],
    ),
    "relative script": (
        _set("app.json", command="python3 app.py"),
        [("error", "app.json: command", "app.py is relative", "/opt/holoscan/app/app.py")],
    ),
    "folder without __main__": (
        _remove("__main__.py"),
        [("error", "app.json: command", "a folder without __main__.py", "add __main__.py")],
    ),
    "python without a target": (
        _set("app.json", command="python3 -u"),
        [("error", "app.json: command", "names no script and no module", "python3 -u -m package.module")],
    ),
    "unknown module": (
        _set("app.json", command="python3 -u -m no_such_app.main"),
        [("error", "app.json: command", "no_such_app.main is not in the application folder", "PYTHONPATH")],
    ),
    "module not on PYTHONPATH": (
        lambda folder: (_set("app.json", command="python3 -u -m app")(folder), _env(PYTHONPATH=None)(folder)),
        [("error", "app.json: environment.PYTHONPATH", "which PYTHONPATH does not name", '"PYTHONPATH"')],
    ),
    "program not in the folder": (
        _set("app.json", command="/opt/holoscan/app/run.sh"),
        [("error", "app.json: command", "/opt/holoscan/app/run.sh is not in the application folder", "run.sh")],
    ),
    "bad app version": (
        _set("app.json", version="1.x"),
        [("error", "app.json: version", "'1.x' is not a semantic version", "MAJOR.MINOR.PATCH")],
    ),
    "app version a number (the packager's form)": (
        _set("app.json", version=1.0),
        [("warning", "app.json: version", "the number 1.0 is not semver: read as 1.0.0", '"1.0.0"')],
    ),
    "no pkg version": (_drop("pkg.json", "version"), [("error", "pkg.json: version", "missing", '"1.0.0"')]),
    "versions disagree": (
        _set("pkg.json", version="1.1.0"),
        [("error", "pkg.json: version", "1.1.0 differs from app.json's version 1.0.0", "the same version")],
    ),
    "app.yaml version disagrees": (
        _write("app.yaml", "application:\n  version: 1.2.0\n"),
        [("error", "app.yaml: application.version", "1.2.0 differs from app.json's version 1.0.0", "1.0.0")],
    ),
    "app.yaml not YAML": (
        _write("app.yaml", "application: [1, 2\n"),
        [("error", "app.yaml", "not YAML", "line 2")],
    ),
    "no apiVersion": (_drop("app.json", "apiVersion"), [("warning", "app.json: apiVersion", "missing", '"1.0.0"')]),
    "no input formats": (
        _set("app.json", input={"path": "input/", "formats": []}),
        [("error", "app.json: input.formats", "none declared", '"formats": ["diagnostic"]')],
    ),
    "no output format": (
        _set("app.json", output={"path": "output/"}),
        [("error", "app.json: output.format", "missing", '"mediaType": "application/dicom"')],
    ),
    "input path not the spec's": (
        _env(HOLOSCAN_INPUT_PATH="/data/in"),
        [("error", "app.json: environment.HOLOSCAN_INPUT_PATH", "/data/in is not the MAP spec", "/var/holoscan/in")],
    ),
    "model path not modelRoot": (
        _env(HOLOSCAN_MODEL_PATH="/models"),
        [("error", "app.json: environment.HOLOSCAN_MODEL_PATH", "is not pkg.json's modelRoot", "/opt/holoscan/models")],
    ),
    "relative applicationRoot (the parser's issue)": (
        _set("pkg.json", applicationRoot="opt/holoscan/app"),
        [("error", "pkg.json: applicationRoot", "must be an absolute path", '"/opt/holoscan/app"')],
    ),
    "model name with a space (the parser's issue)": (
        _models({"name": "my seg", "path": "/opt/holoscan/models/seg"}),
        [("error", "pkg.json: models[0].name", "should match pattern", "without spaces")],
    ),
    "model outside modelRoot": (
        _models({"name": "seg", "path": "/data/seg"}),
        [("error", "pkg.json: models[0].path", "/data/seg is not a folder under", "models/seg")],
    ),
    "model files missing": (
        _remove("models/seg"),
        [("error", "models/seg", "not found: pkg.json: models[0] names a model", "models/seg/")],
    ),
    "model file empty": (
        _write("models/seg/model.ts", ""),
        [("error", "models/seg/model.ts", "is empty", "re-export")],
    ),
    "model name twice": (
        _models(SEG, {"name": "seg", "path": "/opt/holoscan/models/seg2"}, extra_folders=("seg2",)),
        [("error", "pkg.json: models[1].name", "'seg' is listed twice (also models[0])", "own name")],
    ),
    "model folder twice": (
        _models(SEG, {"name": "other", "path": "seg"}),
        [("error", "pkg.json: models[1].path", "the same folder as models[0]", "own folder")],
    ),
    "model folder not listed": (
        _models(SEG, extra_folders=("extra",)),
        [("warning", "models/extra", "does not list", '"path": "/opt/holoscan/models/extra"')],
    ),
    "no cpu": (_resources(cpu=0), [("error", "pkg.json: resources.cpu", "0: must be more than 0", "CPU cores")]),
    "memory not a quantity": (
        _resources(memory="2GB"),
        [("error", "pkg.json: resources.memory", '"2GB" is not a memory quantity', '"2Gi"')],
    ),
    "half a GPU": (
        _resources(gpu=0.5),
        [("error", "pkg.json: resources.gpu", "0.5 is not a whole number of GPUs", "0 or more")],
    ),
    "memory limit below the request": (
        _resources(memoryLimit="1Gi"),
        [("error", "pkg.json: resources.memoryLimit", "1Gi is below the request memory 2Gi", "at least memory")],
    ),
    "cpu limit below the default request": (
        lambda folder: _set("pkg.json", resources={"cpuLimit": 0.5, "memory": "2Gi"})(folder),
        [("error", "pkg.json: resources.cpuLimit", "0.5 is below the request cpu 1 (the default)", "at least cpu")],
    ),
}


def _shape(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.severity, p.where) for p in problems]


@pytest.fixture
def application(tmp_path: Path) -> Path:
    return write_application(tmp_path / "seg_app")


def test_the_example_application_has_no_errors() -> None:
    problems = validate(str(EXAMPLE))
    assert [p for p in problems if p.severity == "error"] == []
    # What others add to the example (README.md, requirements.txt) may still be missing: nothing else.
    assert {p.where for p in problems} <= {"README.md", "requirements.txt"}, problems


def test_a_complete_application_validates_clean(application: Path) -> None:
    assert validate(str(application)) == []


@pytest.mark.parametrize(
    "command",
    [
        "python3 -u /opt/holoscan/app",
        "python3 -u /opt/holoscan/app/app.py",
        '["python3", "-u", "/opt/holoscan/app/__main__.py"]',
        "python3 -u -m app",
        "python3 -u -m hounsfield_operators.ct_lesion_seg",  # installed here
        "python3 -c 'import app'",
    ],
)
def test_every_runnable_form_of_the_command_validates(application: Path, command: str) -> None:
    _set("app.json", command=command)(application)
    assert validate(str(application)) == []


@pytest.mark.parametrize("broken", list(BROKEN), ids=list(BROKEN))
def test_a_copy_broken_in_one_way_gives_exactly_that_problem(application: Path, broken: str) -> None:
    edit, expected = BROKEN[broken]
    edit(application)
    problems = validate(str(application))
    assert _shape(problems) == [(severity, where) for severity, where, _, _ in expected], problems
    for problem, (_, _, what, fix) in zip(problems, expected, strict=True):
        assert what in problem.what, problem
        assert fix in problem.fix, problem


def test_a_problem_reads_as_one_line(application: Path) -> None:
    _set("app.json", timeout=-1)(application)
    (problem,) = validate(str(application))
    assert str(problem) == (
        "error: app.json: timeout: -1 is negative; "
        "fix: seconds the application may run per job, a whole number >= 0 (0: no timeout), e.g. 600"
    )


def test_several_problems_are_all_reported(application: Path) -> None:
    _set("app.json", timeout=-1, version="2.0.0")(application)
    _resources(cpu=-1, memory="lots")(application)
    assert _shape(validate(str(application))) == [
        ("error", "app.json: timeout"),
        ("error", "pkg.json: resources.cpu"),
        ("error", "pkg.json: resources.memory"),
        ("error", "pkg.json: version"),
        ("error", "app.yaml: application.version"),
    ]


def test_the_packager_form_is_read_with_warnings(application: Path) -> None:
    _set("app.json", version=1.0, command='["python3", "/opt/holoscan/app"]')(application)
    _set("pkg.json", version=1.0, models={"seg": "/opt/holoscan/models/seg"})(application)
    assert _shape(validate(str(application))) == [
        ("warning", "app.json: version"),
        ("warning", "pkg.json: version"),
        ("warning", "pkg.json: models"),
    ]


def test_the_example_broken_in_its_model_names_the_file(tmp_path: Path) -> None:
    copy = tmp_path / "ct_lesion_seg"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "models" / "model.ts").write_bytes(b"")
    errors = [p for p in validate(str(copy)) if p.severity == "error"]
    assert _shape(errors) == [("error", "models/model.ts")] and errors[0].what == "is empty"


def test_a_map_file_system_is_validated_with_its_container_paths(tmp_path: Path) -> None:
    root = write_image_layout(tmp_path / "map")
    assert validate_folder(root) == []
    (root / "opt/holoscan/models/seg/model.ts").write_bytes(b"")
    (root / "opt/holoscan/docs/README.md").unlink()
    assert _shape(validate_folder(root)) == [
        ("warning", "/opt/holoscan/docs"),
        ("error", "/opt/holoscan/models/seg/model.ts"),
    ]


def test_what_is_neither_folder_nor_image_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "app.json").write_text("{}")
    assert _shape(validate(str(tmp_path / "app.json"))) == [("error", str(tmp_path / "app.json"))]
    assert _shape(validate(str(tmp_path / "missing"))) == [("error", str(tmp_path / "missing"))]


# -- the command ---------------------------------------------------------------------------------------


def test_the_cli_exits_0_for_a_valid_map_and_1_listing_every_error(application: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(cli, ["map", "validate", str(application)])
    assert good.exit_code == 0, good.output
    assert good.output.strip() == f"{application}: a valid MAP"

    _set("app.json", timeout=-1)(application)
    _remove("README.md")(application)
    bad = runner.invoke(cli, ["map", "validate", str(application)])
    assert bad.exit_code == 1, bad.output
    lines = bad.output.strip().splitlines()
    assert lines[0].startswith("warning: README.md: not found")
    assert lines[1].startswith("error: app.json: timeout: -1 is negative; fix: ")
    assert len(lines) == 2


def test_the_cli_exits_0_with_only_warnings(application: Path) -> None:
    _remove("requirements.txt")(application)
    result = CliRunner().invoke(cli, ["map", "validate", str(application)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("warning: requirements.txt: not found")


# -- a MAP image -------------------------------------------------------------------------------------------


def _podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    from hounsfield.containers import engine_environment

    return subprocess.run(
        ["podman", *args], env=engine_environment(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _image_prerequisites() -> str | None:
    """Why a MAP image cannot be built here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed here"
    if _podman("image", "exists", BASE_IMAGE).returncode != 0:
        return f"no {BASE_IMAGE} here to build a MAP image from (`make base-image` makes it)"
    return None


@pytest.fixture(scope="module")
def map_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two MAP images (the manifests, code, models and docs COPYed onto the base): one valid, one whose
    model file is empty. Nothing is run to build them; they are removed after the module."""
    reason = _image_prerequisites()
    if reason is not None:
        pytest.skip(reason)
    context = write_image_layout(tmp_path_factory.mktemp("map-image") / "context")
    (context / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY etc /etc\nCOPY opt /opt\nCOPY var /var\n")
    suffix = uuid.uuid4().hex[:12]
    names = {
        "good": f"localhost/hounsfield-validate-test:{suffix}",
        "bad": f"localhost/hounsfield-validate-bad:{suffix}",
    }
    try:
        built = _podman("build", "--file", str(context / "Containerfile"), "--tag", names["good"], str(context))
        assert built.returncode == 0, built.stdout + built.stderr
        (context / "opt/holoscan/models/seg/model.ts").write_bytes(b"")
        built = _podman("build", "--file", str(context / "Containerfile"), "--tag", names["bad"], str(context))
        assert built.returncode == 0, built.stdout + built.stderr
        yield names
    finally:
        for name in names.values():
            _podman("rmi", "--force", name)


@pytest.mark.containers
def test_a_map_image_is_validated_without_running_it(map_images: dict[str, str]) -> None:
    assert validate(map_images["good"]) == []
    problems = validate(map_images["bad"])
    assert _shape(problems) == [("error", "/opt/holoscan/models/seg/model.ts")]
    assert problems[0].what == "is empty"
    result = CliRunner().invoke(cli, ["map", "validate", map_images["bad"]])
    assert result.exit_code == 1 and "error: /opt/holoscan/models/seg/model.ts: is empty" in result.output


@pytest.mark.containers
def test_an_image_that_is_not_here_is_one_error() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed here")
    missing = f"localhost/hounsfield-no-such-map:{uuid.uuid4().hex[:12]}"
    (problem,) = validate(missing)
    assert (problem.severity, problem.where) == ("error", missing) and "podman pull" in problem.fix
