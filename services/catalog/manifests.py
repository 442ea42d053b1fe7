"""MONAI Application Package (MAP 1.0) manifests: parse, validate, digest.

A MAP carries two manifests, ``/etc/holoscan/app.json`` (how to run the application) and
``/etc/holoscan/pkg.json`` (the package layout, models and resources). Two forms are in the wild and
both are read:

- the spec form (monai-deploy guidelines/monai-application-package.md): versions are semver strings,
  ``output.format`` is an object, ``pkg.json#models`` is an array of ``{name, path}``;
- the form the App SDK / Holoscan packager writes: versions as JSON numbers (``1.0``), ``command`` as a
  JSON-encoded argv string, ``input.formats`` / ``output.formats`` null, ``pkg.json#models`` a
  name -> path object, extra keys such as ``platformConfig``.

Unknown keys are kept (the spec lets packagers add them); a missing required field is a
:class:`ManifestInvalid` that names the file and the field.

The content digest of a MAP is ``sha256`` over the canonical JSON of both manifests and the digest of
every file under the model root (sorted by path), so the registry can recompute it from the
manifests plus the caller's model-files digest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from hounsfield.errors import Refused

__all__ = [
    "AppManifest",
    "IOSpec",
    "LoadedMap",
    "ManifestInvalid",
    "ManifestIssue",
    "MapManifests",
    "ModelEntry",
    "PkgManifest",
    "Probe",
    "Resources",
    "SemVer",
    "canonical_json",
    "content_digest",
    "load_map",
    "memory_bytes",
    "models_digest",
    "parse_manifests",
]

# semver.org 2.0.0, the regular expression it recommends (numbered groups, anchored).
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SHORT_VERSION = re.compile(r"^(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(Mi|Gi)B?$")
_NESTED = re.compile(r"^([A-Za-z][A-Za-z0-9_.]*): (.+)$", re.DOTALL)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@functools.total_ordering
@dataclass(frozen=True)
class SemVer:
    """A semantic version (semver.org 2.0.0), ordered by precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> SemVer:
        match = _SEMVER.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], semver.org)")
        major, minor, patch, pre, build = match.groups()
        return cls(
            int(major),
            int(minor),
            int(patch),
            tuple(pre.split(".")) if pre else (),
            tuple(build.split(".")) if build else (),
        )

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def _key(self) -> tuple[Any, ...]:
        # A version without pre-release ranks above any of its pre-releases; numeric identifiers rank
        # below alphanumeric ones and compare as numbers; a longer list wins when all else is equal.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SemVer) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()


def _manifest_version(value: Any) -> str:
    """A manifest's version as semver; the packager's numbers (``1.0``, ``1``) are padded to ``1.0.0``."""
    if isinstance(value, bool):
        raise ValueError("a version is a string such as '1.0.0', not a boolean")
    text = repr(value) if isinstance(value, float) else str(value)
    short = _SHORT_VERSION.match(text)
    if short is not None:
        return f"{short.group(1)}.{short.group(2) or 0}.0"
    return str(SemVer.parse(text))


ManifestVersion = Annotated[str, BeforeValidator(_manifest_version)]


def _memory(value: Any) -> str:
    if not isinstance(value, str) or _MEMORY.match(value) is None:
        raise ValueError(f"{value!r} is not a memory size such as '1.5Gi' or '2048Mi' (units Mi, Gi)")
    return value


MemorySize = Annotated[str, BeforeValidator(_memory)]


class _Manifest(BaseModel):
    # Packagers add keys of their own; keep them rather than refuse a MAP that runs.
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True, allow_inf_nan=False)


class Probe(_Manifest):
    """A readiness or liveness probe (``app.json#readiness`` / ``#liveness``)."""

    type: Literal["tcp", "grpc", "http-get", "command"]
    command: list[str] | None = None
    port: int | None = Field(None, ge=1, le=65535)
    path: str | None = None
    initial_delay_seconds: int = Field(1, ge=0, alias="initialDelaySeconds")
    period_seconds: int = Field(10, ge=1, alias="periodSeconds")
    timeout_seconds: int = Field(1, ge=1, alias="timeoutSeconds")
    failure_threshold: int = Field(3, ge=1, alias="failureThreshold")

    @model_validator(mode="after")
    def _fields_for_type(self) -> Probe:
        if self.type == "command" and not self.command:
            raise ValueError("a 'command' probe needs 'command' (an array of strings)")
        if self.type in ("tcp", "grpc", "http-get") and self.port is None:
            raise ValueError(f"a '{self.type}' probe needs 'port'")
        if self.type == "http-get" and not (self.path or "").startswith("/"):
            raise ValueError("an 'http-get' probe needs an absolute 'path'")
        return self


class IOSpec(_Manifest):
    """``app.json#input`` or ``#output``: where the application reads or writes, and in which formats."""

    path: str | None = None
    formats: list[str | dict[str, Any]] | None = None
    """Input formats (required by the spec; the packager writes null); the packager's output formats."""
    format: dict[str, Any] | str | None = None
    """The spec's ``output.format`` (an object)."""

    def declared(self) -> list[str | dict[str, Any]]:
        """The declared formats as one list, whichever form declared them (empty when none)."""
        found: list[str | dict[str, Any]] = list(self.formats or [])
        if self.format is not None:
            found.append(self.format)
        return found


class AppManifest(_Manifest):
    """``/etc/holoscan/app.json``: how to run the application."""

    api_version: ManifestVersion = Field("0.0.0", alias="apiVersion")
    command: str | list[str]
    """A shell command (spec), or the argv as a JSON-encoded string (packager) or as an array."""
    environment: dict[str, str | int | float | bool] = Field(default_factory=dict)
    input: IOSpec
    output: IOSpec
    readiness: Probe | None = None
    liveness: Probe | None = None
    sdk: str | None = None
    sdk_version: str | None = Field(None, alias="sdkVersion")
    timeout: int = Field(0, ge=0, le=2**31 - 1)
    """Seconds the application may run; 0 = no timeout."""
    version: ManifestVersion = "0.0.0"
    working_directory: str = Field("/var/holoscan/", alias="workingDirectory")

    @field_validator("input", mode="before")
    @classmethod
    def _input_formats_key(cls, value: Any) -> Any:
        # Required by the spec; the packager writes it as null, which is read as "not declared".
        if isinstance(value, dict) and "formats" not in value:
            raise ValueError("formats: Field required (the list of accepted input formats)")
        return value

    @field_validator("output", mode="before")
    @classmethod
    def _output_format_key(cls, value: Any) -> Any:
        # The spec requires output.format; the packager writes output.formats (possibly null).
        if isinstance(value, dict) and "format" not in value and "formats" not in value:
            raise ValueError("format: Field required (the format of the outputs; 'formats' is read too)")
        return value

    @model_validator(mode="after")
    def _checks(self) -> AppManifest:
        if not self.argv:
            raise ValueError("command: empty")
        if not self.working_directory.startswith("/"):
            raise ValueError("workingDirectory: must be an absolute path")
        return self

    @property
    def argv(self) -> list[str]:
        """The command as an argument vector, whichever form the manifest used."""
        if isinstance(self.command, list):
            return list(self.command)
        text = self.command.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
                return parsed
        return shlex.split(text)


class ModelEntry(_Manifest):
    """One model of ``pkg.json#models``."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[^\s\x00-\x1f\x7f]+$")
    path: str | None = None
    """Relative to ``modelRoot`` unless absolute; None means ``modelRoot/<name>``."""


def _models(value: Any) -> Any:
    # The packager writes {"name": "/opt/holoscan/models/name"}; the spec an array of {name, path}.
    if isinstance(value, dict):
        return [{"name": name, "path": path} for name, path in value.items()]
    return value


class _ResourceAmounts(_Manifest):
    cpu: float = Field(1, gt=0)
    cpu_limit: float | None = Field(None, gt=0, alias="cpuLimit")
    gpu: float = Field(0, ge=0)
    gpu_limit: float | None = Field(None, ge=0, alias="gpuLimit")
    memory: MemorySize = "1Gi"
    memory_limit: MemorySize | None = Field(None, alias="memoryLimit")
    gpu_memory: MemorySize | None = Field(None, alias="gpuMemory")
    gpu_memory_limit: MemorySize | None = Field(None, alias="gpuMemoryLimit")
    shared_memory: MemorySize = Field("64Mi", alias="sharedMemory")


class Resources(_ResourceAmounts):
    """``pkg.json#resources``: what the application needs to run (per fragment for multi-fragment apps)."""

    fragments: dict[str, _ResourceAmounts] = Field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """cpu, memory, gpu (and GPU memory) as the registry stores them."""
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "memory_mib": _mebibytes(self.memory),
            "gpu": self.gpu,
            "gpu_memory": self.gpu_memory,
        }


def _mebibytes(size: str) -> float:
    number = float(size.rstrip("B")[:-2])
    return number * 1024 if size.rstrip("B").endswith("Gi") else number


def memory_bytes(size: str) -> int:
    """A manifest's memory size (``512Mi``, ``2Gi``, as :class:`Resources` holds it) in bytes."""
    return int(_mebibytes(size) * 2**20)


class PkgManifest(_Manifest):
    """``/etc/holoscan/pkg.json``: the package layout, its models and the resources it needs."""

    api_version: ManifestVersion = Field("0.0.0", alias="apiVersion")
    application_root: str = Field(alias="applicationRoot")
    model_root: str = Field("/opt/holoscan/models/", alias="modelRoot")
    models: Annotated[list[ModelEntry], BeforeValidator(_models)] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    version: ManifestVersion = "0.0.0"

    @model_validator(mode="after")
    def _checks(self) -> PkgManifest:
        for name, value in (("applicationRoot", self.application_root), ("modelRoot", self.model_root)):
            if not value.startswith("/"):
                raise ValueError(f"{name}: must be an absolute path")
        names = [m.name for m in self.models]
        if len(names) != len(set(names)):
            raise ValueError("models: a model name is listed twice")
        return self


@dataclass(frozen=True)
class ManifestIssue:
    """One thing wrong with a manifest: which file, which field, why."""

    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field or '(document)'}: {self.reason}"


class ManifestInvalid(Refused, ValueError):
    """A MAP manifest refused: missing, unreadable, or not following the MAP spec; ``issues`` says where."""

    def __init__(self, issues: list[ManifestIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues))


def _issues(file: str, error: ValidationError) -> list[ManifestIssue]:
    found = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"])
        reason = item["msg"].removeprefix("Value error, ")
        # Validators name a nested field in the message ("formats: Field required"): join it to the path.
        nested = _NESTED.match(reason)
        if nested is not None:
            field = ".".join(part for part in (field, nested.group(1)) if part)
            reason = nested.group(2)
        found.append(ManifestIssue(file, field, reason))
    return found


@dataclass(frozen=True)
class MapManifests:
    """Both manifests of one MAP, parsed, with the documents as given (what the digest covers)."""

    app: AppManifest
    pkg: PkgManifest
    app_raw: dict[str, Any]
    pkg_raw: dict[str, Any]

    def inputs(self) -> dict[str, Any]:
        return {"path": self.app.input.path or "input/", "formats": self.app.input.declared()}

    def outputs(self) -> dict[str, Any]:
        return {"path": self.app.output.path or "output/", "formats": self.app.output.declared()}

    @property
    def timeout_s(self) -> int | None:
        return self.app.timeout or None


def parse_manifests(app: Any, pkg: Any) -> MapManifests:
    """Validate ``app.json`` and ``pkg.json`` (already decoded from JSON); every problem of both is reported."""
    issues: list[ManifestIssue] = []
    parsed: dict[str, BaseModel] = {}
    for file, document, schema in (("app.json", app, AppManifest), ("pkg.json", pkg, PkgManifest)):
        if not isinstance(document, dict):
            issues.append(ManifestIssue(file, "", "must be a JSON object"))
            continue
        try:
            parsed[file] = schema.model_validate(document)
        except ValidationError as error:
            issues.extend(_issues(file, error))
    if issues:
        raise ManifestInvalid(issues)
    app_model, pkg_model = parsed["app.json"], parsed["pkg.json"]
    assert isinstance(app_model, AppManifest) and isinstance(pkg_model, PkgManifest)
    return MapManifests(app=app_model, pkg=pkg_model, app_raw=app, pkg_raw=pkg)


def canonical_json(document: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no insignificant white space, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def models_digest(root: Path) -> tuple[str, int]:
    """``sha256:<hex>`` over every file under ``root`` in sorted path order, and how many files.

    Each file contributes its path relative to ``root`` and its own SHA-256, so renaming or editing a
    file changes the digest. A missing ``root`` (models supplied by the host) digests as empty.
    """
    outer = hashlib.sha256()
    files = (
        sorted((PurePosixPath(p.relative_to(root).as_posix()), p) for p in root.rglob("*") if p.is_file())
        if root.is_dir()
        else []
    )
    for relative, path in files:
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(str(relative).encode() + b"\0" + inner.digest())
    return "sha256:" + outer.hexdigest(), len(files)


def content_digest(app: Any, pkg: Any, model_files: str | None) -> str:
    """The MAP's content digest: ``sha256:<hex>`` of both canonical manifests and the model files' digest."""
    if model_files is not None and _DIGEST.match(model_files) is None:
        raise ValueError("a models digest is 'sha256:' and 64 lower-case hex digits")
    digest = hashlib.sha256()
    digest.update(b"app.json\0" + canonical_json(app) + b"\0")
    digest.update(b"pkg.json\0" + canonical_json(pkg) + b"\0")
    digest.update(b"models\0" + (model_files or "").encode())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class LoadedMap:
    """A MAP read from a folder: its manifests, where they were, and its digests."""

    manifests: MapManifests
    root: Path
    models_root: Path
    model_files: int
    models_digest: str
    content_digest: str


def _read_json(path: Path, file: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ManifestInvalid([ManifestIssue(file, "", f"not found at {path}")]) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestInvalid([ManifestIssue(file, "", f"unreadable: {error}")]) from None


def load_map(path: Path) -> LoadedMap:
    """Read a MAP from a folder and compute its digests.

    Two layouts: a MAP's file system (``etc/holoscan/app.json`` and ``pkg.json``, models under
    ``pkg.json#modelRoot`` taken relative to ``path``), or a build context with ``app.json`` and
    ``pkg.json`` at the top and the models in ``models/`` (or under ``modelRoot`` relative to ``path``).
    """
    path = Path(path)
    holoscan = path / "etc" / "holoscan"
    if (holoscan / "app.json").is_file() or (holoscan / "pkg.json").is_file():
        folder, image_layout = holoscan, True
    else:
        folder, image_layout = path, False
    app = _read_json(folder / "app.json", "app.json")
    pkg = _read_json(folder / "pkg.json", "pkg.json")
    manifests = parse_manifests(app, pkg)
    in_image = path / manifests.pkg.model_root.lstrip("/")
    models_root = in_image if image_layout or not (path / "models").is_dir() else path / "models"
    files_digest, count = models_digest(models_root)
    return LoadedMap(
        manifests=manifests,
        root=path,
        models_root=models_root,
        model_files=count,
        models_digest=files_digest,
        content_digest=content_digest(app, pkg, files_digest),
    )
