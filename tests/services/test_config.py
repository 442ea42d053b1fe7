from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hounsfield.config import ConfigurationInvalid, load_settings


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "hounsfield.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_embedded() -> None:
    settings = load_settings(None)
    assert settings.listener.ae_title == "HOUNSFIELD"
    assert settings.listener.port == 11112
    assert settings.sqlalchemy_url.startswith("sqlite:///")
    assert settings.redis_url is None and settings.broker_url.startswith("redis://127.0.0.1:")


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, {"listener": {"port": 11113, "ae_title": "FROMYAML"}})
    monkeypatch.setenv("HOUNSFIELD_LISTENER__PORT", "11114")
    settings = load_settings(path)
    assert settings.listener.port == 11114
    assert settings.listener.ae_title == "FROMYAML"


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, {"listener": {"prot": 104}})
    with pytest.raises(ConfigurationInvalid, match=r"listener\.prot: unknown key"):
        load_settings(path)


def test_bad_value_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, {"listener": {"port": 70000}})
    with pytest.raises(ConfigurationInvalid, match=r"listener\.port: Input should be less than or equal to 65535"):
        load_settings(path)


def test_unknown_environment_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOUNSFIELD_LISTNER__PORT", "1")
    with pytest.raises(ConfigurationInvalid, match="HOUNSFIELD_LISTNER__PORT: unknown key"):
        load_settings(None)


def test_bad_rule_points_at_the_rule(tmp_path: Path) -> None:
    deployment = {
        "name": "d", "app": "m:C", "model_path": "x", "model_name": "m", "model_version": "1.0.0",
        "rule": {"kind": "all", "rules": [
            {"kind": "modality", "in": ["CT"]},
            {"kind": "tag_equals", "keyword": "PatientName", "value": "x"},
        ]},
    }  # fmt: skip
    with pytest.raises(
        ConfigurationInvalid, match=r"deployments\.0\.rule\.all\.rules\.1\.tag_equals\.keyword: .*not indexed"
    ):
        load_settings(_write(tmp_path, {"deployments": [deployment]}))


def test_unknown_destination_is_refused(tmp_path: Path) -> None:
    deployment = {
        "name": "d", "app": "m:C", "model_path": "x", "model_name": "m", "model_version": "1.0.0",
        "rule": {"kind": "modality", "in": ["CT"]}, "destinations": ["nowhere"],
    }  # fmt: skip
    with pytest.raises(ConfigurationInvalid, match="unknown destination 'nowhere'"):
        load_settings(_write(tmp_path, {"deployments": [deployment]}))


def test_relative_model_path_resolves_next_to_the_file(tmp_path: Path) -> None:
    deployment = {
        "name": "d", "app": "m:C", "model_path": "models/model.ts", "model_name": "m", "model_version": "1.0.0",
        "rule": {"kind": "modality", "in": ["CT"]},
    }  # fmt: skip
    settings = load_settings(_write(tmp_path, {"deployments": [deployment]}))
    assert settings.deployments[0].model_path == tmp_path.resolve() / "models" / "model.ts"


def test_shipped_example_configuration_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "hounsfield.example.yaml"
    settings = load_settings(example)
    (deployment,) = settings.deployments
    assert deployment.model_path.is_file(), "the example points at the committed model"
    assert deployment.destinations == ["pacs"]
