"""MAP manifests: both forms parsed, missing fields named, semver ordered, folders digested."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hounsfield.catalog.manifests import (
    ManifestInvalid,
    SemVer,
    canonical_json,
    content_digest,
    load_map,
    models_digest,
    parse_manifests,
)


def spec_app(**changes: Any) -> dict[str, Any]:
    """An ``app.json`` in the form the MAP 1.0 spec describes."""
    app: dict[str, Any] = {
        "apiVersion": "1.0.0",
        "command": "python3 -u /opt/holoscan/app/main.py",
        "environment": {"HOLOSCAN_INPUT_PATH": "/var/holoscan/input"},
        "input": {"path": "input/", "formats": [{"type": "dicom", "modality": "CT"}]},
        "output": {"path": "output/", "format": {"type": "dicom", "sopClasses": ["SEG", "SR"]}},
        "readiness": {"type": "command", "command": ["/bin/true"]},
        "liveness": {"type": "http-get", "port": 8080, "path": "/healthz", "periodSeconds": 30},
        "sdk": "monai-deploy",
        "sdkVersion": "4.0.0",
        "timeout": 300,
        "version": "1.2.0",
        "workingDirectory": "/var/holoscan/",
    }
    app.update(changes)
    return app


def spec_pkg(**changes: Any) -> dict[str, Any]:
    """A ``pkg.json`` in the spec's form (``models`` an array of ``{name, path}``)."""
    pkg: dict[str, Any] = {
        "apiVersion": "1.0.0",
        "applicationRoot": "/opt/holoscan/app/",
        "modelRoot": "/opt/holoscan/models/",
        "models": [{"name": "lesion", "path": "lesion"}, {"name": "body"}],
        "resources": {"cpu": 2, "gpu": 1, "memory": "4Gi", "gpuMemory": "6Gi", "sharedMemory": "1Gi"},
        "version": "1.2.0",
    }
    pkg.update(changes)
    return pkg


def sdk_app(**changes: Any) -> dict[str, Any]:
    """An ``app.json`` as the App SDK / Holoscan packager writes it (argv as a JSON string, numbers, nulls)."""
    app: dict[str, Any] = {
        "apiVersion": "1.0.0",
        "command": '["python3", "/opt/holoscan/app"]',
        "environment": {"HOLOSCAN_APPLICATION": "/opt/holoscan/app", "HOLOSCAN_INPUT_PATH": "input/"},
        "input": {"path": "input/", "formats": None},
        "liveness": None,
        "output": {"path": "output/", "formats": None},
        "readiness": None,
        "sdk": "monai-deploy",
        "sdkVersion": "0.6.0",
        "timeout": 0,
        "version": 1.0,
        "workingDirectory": "/var/holoscan",
    }
    app.update(changes)
    return app


def sdk_pkg(**changes: Any) -> dict[str, Any]:
    """A ``pkg.json`` as the packager writes it (``models`` a name -> path object, extra keys)."""
    pkg: dict[str, Any] = {
        "apiVersion": "1.0.0",
        "applicationRoot": "/opt/holoscan/app",
        "modelRoot": "/opt/holoscan/models",
        "models": {"model": "/opt/holoscan/models/model"},
        "resources": {"cpu": 1, "gpu": 1, "memory": "1Gi", "gpuMemory": "6Gi"},
        "version": 1.0,
        "platformConfig": "dgpu",
    }
    pkg.update(changes)
    return pkg


def _issues(error: pytest.ExceptionInfo[ManifestInvalid]) -> set[tuple[str, str]]:
    return {(issue.file, issue.field) for issue in error.value.issues}


def test_spec_form_is_parsed() -> None:
    manifests = parse_manifests(spec_app(), spec_pkg())
    app, pkg = manifests.app, manifests.pkg
    assert app.argv == ["python3", "-u", "/opt/holoscan/app/main.py"]
    assert app.version == "1.2.0" and app.timeout == 300
    assert app.liveness is not None and app.liveness.port == 8080 and app.liveness.period_seconds == 30
    assert app.readiness is not None and app.readiness.command == ["/bin/true"]
    assert [(m.name, m.path) for m in pkg.models] == [("lesion", "lesion"), ("body", None)]
    assert manifests.inputs() == {"path": "input/", "formats": [{"type": "dicom", "modality": "CT"}]}
    assert manifests.outputs() == {"path": "output/", "formats": [{"type": "dicom", "sopClasses": ["SEG", "SR"]}]}
    assert pkg.resources.summary() == {"cpu": 2, "memory": "4Gi", "memory_mib": 4096, "gpu": 1, "gpu_memory": "6Gi"}
    assert manifests.timeout_s == 300


def test_packager_form_is_parsed() -> None:
    manifests = parse_manifests(sdk_app(), sdk_pkg())
    assert manifests.app.argv == ["python3", "/opt/holoscan/app"]
    assert manifests.app.version == "1.0.0" and manifests.pkg.version == "1.0.0"
    assert [(m.name, m.path) for m in manifests.pkg.models] == [("model", "/opt/holoscan/models/model")]
    assert manifests.inputs() == {"path": "input/", "formats": []}
    assert manifests.outputs() == {"path": "output/", "formats": []}
    assert manifests.timeout_s is None  # 0 = no timeout
    # Keys the spec does not name are kept, not refused.
    assert manifests.pkg.model_extra == {"platformConfig": "dgpu"}
    assert manifests.app_raw is not None and manifests.app_raw["version"] == 1.0


def test_missing_required_fields_are_named_with_their_file() -> None:
    app = spec_app()
    del app["command"]
    del app["input"]["formats"]
    del app["output"]["format"]
    pkg = spec_pkg(models=[{"path": "lesion"}])
    del pkg["applicationRoot"]
    with pytest.raises(ManifestInvalid) as error:
        parse_manifests(app, pkg)
    assert _issues(error) == {
        ("app.json", "command"),
        ("app.json", "input.formats"),
        ("app.json", "output.format"),
        ("pkg.json", "applicationRoot"),
        ("pkg.json", "models.0.name"),
    }
    assert "app.json: command: Field required" in str(error.value)


@pytest.mark.parametrize(
    ("app", "pkg", "where"),
    [
        (spec_app(liveness={"type": "http-get", "path": "/healthz"}), spec_pkg(), ("app.json", "liveness")),
        (spec_app(readiness={"type": "command"}), spec_pkg(), ("app.json", "readiness")),
        (spec_app(timeout=-1), spec_pkg(), ("app.json", "timeout")),
        (spec_app(version="1.2.x"), spec_pkg(), ("app.json", "version")),
        (spec_app(version="v1.2.0"), spec_pkg(), ("app.json", "version")),
        (spec_app(workingDirectory="var/holoscan"), spec_pkg(), ("app.json", "workingDirectory")),
        (spec_app(input="input/"), spec_pkg(), ("app.json", "input")),
        (spec_app(), spec_pkg(modelRoot="models"), ("pkg.json", "modelRoot")),
        (spec_app(), spec_pkg(resources={"memory": "4GB"}), ("pkg.json", "resources.memory")),
        (spec_app(), spec_pkg(resources={"cpu": 0}), ("pkg.json", "resources.cpu")),
        (spec_app(), spec_pkg(models=[{"name": "a b"}]), ("pkg.json", "models.0.name")),
        (spec_app(), spec_pkg(models=[{"name": "a"}, {"name": "a"}]), ("pkg.json", "models")),
        (spec_app(), ["not", "an", "object"], ("pkg.json", "")),
    ],
)
def test_invalid_values_are_refused_with_the_field(app: Any, pkg: Any, where: tuple[str, str]) -> None:
    with pytest.raises(ManifestInvalid) as error:
        parse_manifests(app, pkg)
    assert _issues(error) == {where}


def test_short_version_strings_of_the_packager_are_padded() -> None:
    # `monai-deploy package --version 1.0` writes "1.0"; the manifest's own version is read as 1.0.0.
    assert parse_manifests(spec_app(version="1.0"), spec_pkg(version=2)).pkg.version == "2.0.0"


@pytest.mark.parametrize(
    "text",
    [
        "1.0.0",
        "0.0.4",
        "1.2.3-alpha.1",
        "1.0.0-0.3.7",
        "1.0.0-x-y-z.--",
        "1.0.0+20130313144700",
        "1.0.0-beta+exp.sha.5114f85",
    ],
)
def test_semver_accepts_what_semver_org_allows(text: str) -> None:
    assert str(SemVer.parse(text)) == text


@pytest.mark.parametrize("text", ["1", "1.2", "01.2.3", "1.2.3-01", "1.2.3-", "1.2.3+", "v1.2.3", "1.2.3.4", " 1.2.3"])
def test_semver_refuses_what_semver_org_does_not(text: str) -> None:
    with pytest.raises(ValueError, match="not a semantic version"):
        SemVer.parse(text)


def test_semver_precedence_follows_semver_org() -> None:
    ordered = [
        "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
        "1.0.0-rc.1", "1.0.0", "1.9.0", "1.10.0", "2.0.0",
    ]  # fmt: skip
    shuffled = ordered[5:] + ordered[:5]
    assert [str(v) for v in sorted(SemVer.parse(t) for t in shuffled)] == ordered
    assert SemVer.parse("1.0.0+a") == SemVer.parse("1.0.0+b")  # build metadata has no precedence


def test_content_digest_is_canonical_and_covers_every_part() -> None:
    app, pkg = spec_app(), spec_pkg()
    reordered = dict(reversed(list(app.items())))
    files = "sha256:" + "a" * 64
    assert canonical_json(reordered) == canonical_json(app)
    assert content_digest(reordered, pkg, files) == content_digest(app, pkg, files)
    others = {
        content_digest(spec_app(timeout=301), pkg, files),
        content_digest(app, spec_pkg(version="1.2.1"), files),
        content_digest(app, pkg, "sha256:" + "b" * 64),
        content_digest(app, pkg, None),
    }
    assert content_digest(app, pkg, files) not in others and len(others) == 4
    with pytest.raises(ValueError, match="models digest"):
        content_digest(app, pkg, "md5:abc")


def write_map(root: Path, *, image_layout: bool, weights: bytes = b"weights-1") -> Path:
    manifests = root / "etc" / "holoscan" if image_layout else root
    models = root / "opt" / "holoscan" / "models" if image_layout else root / "models"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "app.json").write_text(json.dumps(spec_app(), indent=2))
    (manifests / "pkg.json").write_text(json.dumps(spec_pkg(), indent=2))
    (models / "lesion").mkdir(parents=True, exist_ok=True)
    (models / "body").mkdir(parents=True, exist_ok=True)
    (models / "lesion" / "model.ts").write_bytes(weights)
    (models / "body" / "model.ts").write_bytes(b"body-weights")
    (models / "lesion" / "config.json").write_text("{}")
    return models


@pytest.mark.parametrize("image_layout", [True, False], ids=["etc-holoscan", "folder-root"])
def test_load_map_reads_both_layouts_and_digests_the_model_files(tmp_path: Path, image_layout: bool) -> None:
    models = write_map(tmp_path, image_layout=image_layout)
    loaded = load_map(tmp_path)
    assert loaded.models_root == models and loaded.model_files == 3
    assert loaded.manifests.app.version == "1.2.0"
    assert loaded.models_digest == models_digest(models)[0]
    assert loaded.content_digest == content_digest(spec_app(), spec_pkg(), loaded.models_digest)
    assert load_map(tmp_path).content_digest == loaded.content_digest  # stable

    (models / "lesion" / "model.ts").write_bytes(b"weights-2")
    changed = load_map(tmp_path)
    assert changed.models_digest != loaded.models_digest and changed.content_digest != loaded.content_digest

    (models / "lesion" / "model.ts").write_bytes(b"weights-1")
    assert load_map(tmp_path).content_digest == loaded.content_digest
    (models / "lesion" / "model.ts").rename(models / "lesion" / "model2.ts")  # same bytes, other path
    assert load_map(tmp_path).content_digest != loaded.content_digest


def test_both_layouts_of_the_same_map_have_the_same_digest(tmp_path: Path) -> None:
    write_map(tmp_path / "image", image_layout=True)
    write_map(tmp_path / "context", image_layout=False)
    assert load_map(tmp_path / "image").content_digest == load_map(tmp_path / "context").content_digest


def test_load_map_names_a_missing_or_broken_manifest(tmp_path: Path) -> None:
    (tmp_path / "app.json").write_text(json.dumps(spec_app()))
    with pytest.raises(ManifestInvalid, match=r"pkg\.json: \(document\): not found"):
        load_map(tmp_path)
    (tmp_path / "pkg.json").write_text("{not json")
    with pytest.raises(ManifestInvalid, match=r"pkg\.json: \(document\): unreadable"):
        load_map(tmp_path)
    (tmp_path / "pkg.json").write_text(json.dumps(spec_pkg(resources={"gpu": -1})))
    with pytest.raises(ManifestInvalid) as error:
        load_map(tmp_path)
    assert _issues(error) == {("pkg.json", "resources.gpu")}


def test_models_supplied_by_the_host_digest_as_empty(tmp_path: Path) -> None:
    (tmp_path / "app.json").write_text(json.dumps(sdk_app()))
    (tmp_path / "pkg.json").write_text(json.dumps(sdk_pkg()))
    loaded = load_map(tmp_path)
    assert loaded.model_files == 0 and loaded.manifests.pkg.models[0].name == "model"
