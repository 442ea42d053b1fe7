"""Access to the registry API: tokens and JWTs, roles, start-up refusal, the audit trail, the CLI."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from hounsfield.access import DEV_TOKEN_FILE, Role, SignInImpossible
from hounsfield.cli import app as cli
from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.db.access import ApiToken
from hounsfield.registry.app import create_app
from tests.support import bearer

ISSUER, AUDIENCE = "https://idp.hospital.example/realms/radiology", "hounsfield-registry"


def _with_registry(settings: Settings, **registry: object) -> Settings:
    return settings.model_copy(update={"registry": settings.registry.model_copy(update=registry)})


def test_start_up_refuses_while_nobody_could_sign_in(settings: Settings) -> None:
    with pytest.raises(SignInImpossible, match="hounsfield tokens create"):
        create_app(settings)


def test_development_mode_makes_an_admin_token_only_its_owner_can_read(settings: Settings) -> None:
    app = create_app(_with_registry(settings, development=True))
    path = settings.data_dir / DEV_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    client = TestClient(app, headers=bearer(token))
    assert client.get("/whoami").json() == {"subject": "development-admin", "role": "admin", "via": "token"}
    create_app(_with_registry(settings, development=True))  # a second start makes no second token
    with Database(settings.sqlalchemy_url).session() as session:
        assert len(session.scalars(select(ApiToken)).all()) == 1


def test_a_bootstrap_token_from_the_environment_becomes_the_first_admin(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Helm chart does: an admin token from a Secret, stored (hashed) while nobody could sign in."""
    bootstrapped = _with_registry(settings, bootstrap_admin_token_env="TEST_BOOTSTRAP_TOKEN")
    with pytest.raises(SignInImpossible, match="TEST_BOOTSTRAP_TOKEN is not set"):
        create_app(bootstrapped)
    monkeypatch.setenv("TEST_BOOTSTRAP_TOKEN", "hf_short")
    with pytest.raises(SignInImpossible, match="at least 32 more characters"):
        create_app(bootstrapped)
    token = "hf_" + "b" * 40
    monkeypatch.setenv("TEST_BOOTSTRAP_TOKEN", token)
    client = TestClient(create_app(bootstrapped), headers=bearer(token))
    assert client.get("/whoami").json() == {"subject": "bootstrap-admin", "role": "admin", "via": "token"}
    create_app(bootstrapped)  # a restart stores nothing more
    with Database(settings.sqlalchemy_url).session() as session:
        rows = session.scalars(select(ApiToken)).all()
        assert [(row.name, row.token_sha256 != token) for row in rows] == [("bootstrap-admin", True)]
    assert client.delete(f"/tokens/{rows[0].id}").status_code in (200, 204)
    with pytest.raises(SignInImpossible, match="was revoked"):
        create_app(bootstrapped)  # a revoked bootstrap token is never brought back


def test_reads_writes_and_roles(settings: Settings, tokens: dict[Role, str]) -> None:
    client = TestClient(create_app(settings))
    assert client.get("/health").status_code == 200, "health stays open for probes"
    anonymous = client.get("/studies")
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/studies", headers=bearer("hf_not-a-real-token")).status_code == 401
    for role in (Role.VIEWER, Role.RADIOLOGIST, Role.MODEL_DEVELOPER, Role.ADMIN):
        assert client.get("/studies", headers=bearer(tokens[role])).status_code == 200, role
    refused = client.get("/studies", headers=bearer(tokens[Role.SENDER]))
    assert refused.status_code == 403 and "sender role may not" in refused.json()["detail"]
    viewer_post = client.post("/tokens", json={"name": "x", "role": "viewer"}, headers=bearer(tokens[Role.VIEWER]))
    assert viewer_post.status_code == 403
    assert client.post("/dicomweb/studies", headers=bearer(tokens[Role.VIEWER])).status_code == 403


def test_tokens_are_shown_once_stored_hashed_and_revocable(settings: Settings, tokens: dict[Role, str]) -> None:
    admin = TestClient(create_app(settings), headers=bearer(tokens[Role.ADMIN]))
    made = admin.post("/tokens", json={"name": "pacs-main", "role": "sender"})
    assert made.status_code == 201
    body = made.json()
    token = body["token"]
    assert token.startswith("hf_") and body["role"] == "sender" and body["created_by"] == "test-admin"
    with Database(settings.sqlalchemy_url).session() as session:
        row = session.get(ApiToken, body["id"])
        assert row is not None and token not in (row.token_sha256, row.name), "only a hash is kept"
    listed = admin.get("/tokens").json()
    assert "pacs-main" in [t["name"] for t in listed] and all("token" not in t for t in listed)
    assert admin.post("/tokens", json={"name": "pacs-main", "role": "viewer"}).status_code == 409
    unknown = admin.post("/tokens", json={"name": "x", "role": "viewer", "expires": "never"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "expires"]
    assert admin.post("/tokens", json={"name": "x", "role": "superuser"}).status_code == 422

    pacs = TestClient(admin.app, headers=bearer(token))
    assert pacs.get("/whoami").json()["role"] == "sender"
    assert admin.delete(f"/tokens/{body['id']}").status_code == 204
    assert pacs.get("/whoami").status_code == 401, "a revoked token is refused at once"
    assert admin.delete(f"/tokens/{body['id']}").status_code == 404


def test_every_write_is_in_the_audit_trail_for_admins_only(settings: Settings, tokens: dict[Role, str]) -> None:
    admin = TestClient(create_app(settings), headers=bearer(tokens[Role.ADMIN]))
    token_id = admin.post("/tokens", json={"name": "reader", "role": "viewer"}).json()["id"]
    admin.delete(f"/tokens/{token_id}")
    trail = admin.get("/audit", params={"entity": "api_token", "entity_id": str(token_id)}).json()
    assert [(e["action"], e["actor"], e["actor_role"]) for e in trail] == [
        ("token.revoke", "test-admin", "admin"),
        ("token.create", "test-admin", "admin"),
    ]
    assert trail[1]["after"] == {"name": "reader", "role": "viewer"}
    assert not any("hf_" in json.dumps(e) for e in admin.get("/audit").json()), "no secret in the trail"
    assert admin.get("/audit", headers=bearer(tokens[Role.RADIOLOGIST])).status_code == 403


@pytest.fixture
def provider(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public | {"kid": "k1", "use": "sig", "alg": "RS256"}]}))
    return key, jwks


def _jwt(key: rsa.RSAPrivateKey, *, kid: str = "k1", **claims: object) -> str:
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "dr.who", "exp": int(time.time()) + 300} | claims
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def test_jwts_from_the_configured_provider(settings: Settings, provider: tuple[rsa.RSAPrivateKey, Path]) -> None:
    key, jwks = provider
    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": jwks, "roles": {"rad": "radiologist"}}
    configured = settings.model_validate(settings.model_dump() | {"registry": {"oidc": oidc}})
    client = TestClient(create_app(configured))  # starts: a provider is a way to sign in

    def who(token: str) -> tuple[int, dict]:
        answer = client.get("/whoami", headers=bearer(token))
        return answer.status_code, answer.json()

    assert who(_jwt(key, roles=["rad", "other"])) == (200, {"subject": "dr.who", "role": "radiologist", "via": "oidc"})
    assert who(_jwt(key, roles="rad"))[0] == 200, "a single role as a string"
    assert who(_jwt(key, roles=["nurse"]))[0] == 403
    assert who(_jwt(key, roles=["rad"], aud="someone-else"))[0] == 401
    assert who(_jwt(key, roles=["rad"], iss="https://evil.example"))[0] == 401
    assert who(_jwt(key, roles=["rad"], exp=int(time.time()) - 10)) == (401, {"detail": "the JWT has expired"})
    assert who(_jwt(key, kid="unknown", roles=["rad"]))[0] == 401
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert who(_jwt(stranger, roles=["rad"]))[0] == 401, "signed by a key the provider does not publish"


def test_cli_makes_lists_and_revokes_tokens(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "hounsfield.yaml"
    config.write_text(
        json.dumps({"data_dir": str(settings.data_dir), "database_url": settings.sqlalchemy_url})
    )  # JSON is YAML
    runner = CliRunner()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    refused = runner.invoke(cli, ["registry", "--config", str(config)], env=env)
    assert refused.exit_code == 2 and "hounsfield tokens create" in refused.output

    made = runner.invoke(cli, ["tokens", "create", "ops", "--role", "admin", "--config", str(config)], env=env)
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    client = TestClient(create_app(_with_registry(settings)), headers=bearer(token))
    assert client.get("/whoami").json()["subject"] == "ops"
    assert "ops\tadmin\tactive" in runner.invoke(cli, ["tokens", "list", "--config", str(config)], env=env).output
    bad = runner.invoke(cli, ["tokens", "create", "x", "--role", "root", "--config", str(config)], env=env)
    assert bad.exit_code == 2 and "unknown role" in bad.output
    token_id = client.get("/tokens").json()[0]["id"]
    revoked = runner.invoke(cli, ["tokens", "revoke", str(token_id), "--config", str(config)], env=env)
    assert revoked.exit_code == 0
    assert client.get("/whoami").status_code == 401
