from __future__ import annotations

import re
import ssl
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


def test_the_registrys_metrics_port_is_not_its_api_port(tmp_path: Path) -> None:
    path = _write(tmp_path, {"registry": {"port": 8470, "metrics_port": 8470}})
    with pytest.raises(ConfigurationInvalid, match=r"registry: Value error, metrics_port must differ from port"):
        load_settings(path)
    assert load_settings(_write(tmp_path, {"registry": {"metrics_port": 9471}})).registry.metrics_port == 9471


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
    assert [d.name for d in settings.deployments] == ["ct-lesion-seg", "ct-ich-triage"]
    for deployment in settings.deployments:
        assert deployment.model_path.is_file(), "the example points at the committed model"
        assert deployment.destinations == ["pacs"]


@pytest.mark.parametrize(
    ("key", "url", "credentials"),
    [
        ("destinations.vna", "http://vna.example.org/dicom-web", {"token_env": "T"}),
        ("destinations.vna", "http://127.0.0.1:8042/dicom-web", {"token_env": "T"}),
        ("destinations.vna", "http://vna.example.org/dicom-web", {"username": "u", "password_env": "P"}),
        ("fhir", "http://ehr.example.org/fhir", {"token_env": "T"}),
        ("fhir", "http://localhost:8080/fhir", {"token_env": "T"}),
    ],
    ids=["stow-token", "stow-token-loopback", "stow-basic", "fhir-token", "fhir-token-loopback"],
)
def test_credentials_never_go_to_an_http_url_unless_allowed(
    tmp_path: Path, key: str, url: str, credentials: dict[str, str]
) -> None:
    """Loopback included: the configuration cannot know that nothing listens in between (a sidecar, a
    tunnel), so sending a credential in clear text is the operator's decision, written down."""

    def config(url: str, **extra: object) -> dict[str, object]:
        if key == "fhir":
            return {"fhir": {"url": url, **credentials, **extra}}
        return {"destinations": {"vna": {"protocol": "stow-rs", "url": url, **credentials, **extra}}}

    with pytest.raises(ConfigurationInvalid, match=rf"{re.escape(key)}: .*url is http:// .*allow_insecure_http"):
        load_settings(_write(tmp_path, config(url)))
    allowed = load_settings(_write(tmp_path, config(url, allow_insecure_http=True)))
    assert (allowed.fhir if key == "fhir" else allowed.destinations["vna"]).allow_insecure_http
    load_settings(_write(tmp_path, config("https://" + url.split("://", 1)[1])))


def test_http_without_credentials_is_taken() -> None:
    settings = load_settings(
        None,
        destinations={"vna": {"protocol": "stow-rs", "url": "http://vna.example.org/dicom-web"}},
        fhir={"url": "http://ehr.example.org/fhir"},
    )
    assert settings.fhir is not None and not settings.fhir.allow_insecure_http


def test_outbound_tls_settings() -> None:
    destination = {"ae_title": "PACS", "host": "pacs.example.org", "port": 2762, "tls": {"ca_bundle": "/ca.pem"}}
    query = {"host": "pacs.example.org", "port": 2762, "tls": {"minimum_version": "1.3"}}
    settings = load_settings(
        None, destinations={"pacs": destination}, listener={"sources": {"pacs": {"ae_title": "PACS", "query": query}}}
    )
    tls = settings.destinations["pacs"].tls
    assert tls is not None and tls.check_hostname and tls.minimum_version == "1.2", "safe defaults"
    source = settings.listener.sources["pacs"].query
    assert source is not None and source.tls is not None and source.tls.minimum_version == "1.3"
    context, name = source.tls.tls_args("pacs.example.org")
    assert name == "pacs.example.org", "the host is the name its certificate must carry"
    assert context.verify_mode == ssl.CERT_REQUIRED and context.minimum_version == ssl.TLSVersion.TLSv1_3
    half = {**destination, "tls": {"certificate": "/client.pem"}}
    with pytest.raises(ConfigurationInvalid, match=r"destinations\.pacs\.tls: .*certificate and private_key go"):
        load_settings(None, destinations={"pacs": half})
    stow = {"protocol": "stow-rs", "url": "https://vna.example.org/dicom-web", "tls": {}}
    with pytest.raises(ConfigurationInvalid, match="tls is for protocol dimse"):
        load_settings(None, destinations={"vna": stow})


def test_a_container_deployment_names_its_image_and_no_model_path(tmp_path: Path) -> None:
    base = {
        "name": "probe", "model_name": "probe", "model_version": "1.0.0", "runtime": "container",
        "rule": {"kind": "modality", "in": ["CT"]},
    }  # fmt: skip
    config = tmp_path / "hounsfield.yaml"
    config.write_text(yaml.safe_dump({"deployments": [base]}))
    with pytest.raises(ConfigurationInvalid, match="runtime container needs image"):
        load_settings(config)
    config.write_text(yaml.safe_dump({"deployments": [{**base, "image": "localhost/probe:1.0.0"}]}))
    (deployment,) = load_settings(config).deployments
    assert (deployment.image, deployment.network, str(deployment.model_path)) == (
        "localhost/probe:1.0.0",
        False,
        "/opt/holoscan/models",
    )
    config.write_text(yaml.safe_dump({"deployments": [{**base, "runtime": "subprocess", "map_path": str(tmp_path)}]}))
    with pytest.raises(ConfigurationInvalid, match="needs model_path"):
        load_settings(config)


def test_logs_are_json_and_study_ids_keyed_by_the_uid_root_unless_a_secret_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(None, uid_root="1.2.3.")
    assert settings.log_format == "json" and settings.log_correlation_key == b"1.2.3."
    path = _write(tmp_path, {"log_format": "text", "log_correlation_key_env": "HF_LOG_KEY"})
    with pytest.raises(ConfigurationInvalid, match=r"HF_LOG_KEY must hold at least 16 characters"):
        load_settings(path)  # named, absent: the processes would disagree on every study's id
    monkeypatch.setenv("HF_LOG_KEY", "short")
    with pytest.raises(ConfigurationInvalid, match=r"HF_LOG_KEY must hold at least 16 characters"):
        load_settings(path)
    monkeypatch.setenv("HF_LOG_KEY", "a-secret-of-this-installation")
    settings = load_settings(path)
    assert settings.log_format == "text" and settings.log_correlation_key == b"a-secret-of-this-installation"
    with pytest.raises(ConfigurationInvalid, match=r"log_format"):
        load_settings(_write(tmp_path, {"log_format": "xml"}))
