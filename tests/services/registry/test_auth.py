"""Access to the registry API: tokens and JWTs, roles, start-up refusal, the audit trail, the CLI."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from hounsfield.access import DEV_TOKEN_FILE, Role, SignInImpossible
from hounsfield.cli import app as cli
from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.db.access import ApiToken
from hounsfield.registry.app import create_app
from hounsfield.registry.auth import Authenticator
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


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, object]:
    """``key``'s public half as a provider publishes it in its JWKS document."""
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return public | {"kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
def provider(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(key, "k1")]}))
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
    assert who(_jwt(key, roles=["rad"], exp=int(time.time()) - 60)) == (401, {"detail": "the JWT has expired"})
    assert who(_jwt(key, kid="unknown", roles=["rad"]))[0] == 401
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert who(_jwt(stranger, roles=["rad"]))[0] == 401, "signed by a key the provider does not publish"


def test_clock_leeway(settings: Settings, provider: tuple[rsa.RSAPrivateKey, Path]) -> None:
    """A token's times may be off this host's clock by ``leeway_s``, no more."""
    key, jwks = provider
    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": jwks, "roles": {"rad": "radiologist"}}
    now = int(time.time())
    expired, early = _jwt(key, roles=["rad"], exp=now - 10), _jwt(key, roles=["rad"], nbf=now + 10)
    for leeway, status in ((30, 200), (0, 401)):
        configured = settings.model_validate(
            settings.model_dump() | {"registry": {"oidc": oidc | {"leeway_s": leeway}}}
        )
        client = TestClient(create_app(configured))
        assert client.get("/whoami", headers=bearer(expired)).status_code == status, f"expired 10 s ago, {leeway=}"
        assert client.get("/whoami", headers=bearer(early)).status_code == status, f"valid in 10 s, {leeway=}"


class _JwksServer:
    """An identity provider's key endpoint on 127.0.0.1 (a real HTTP server in a thread): serves the
    keys last published, each answer ``delay_s`` late, and counts the fetches."""

    def __init__(self) -> None:
        self.document: dict[str, object] = {"keys": []}
        self.fetches = 0
        self.delay_s = 0.0
        self._counting = threading.Lock()
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with served._counting:
                    served.fetches += 1
                time.sleep(served.delay_s)
                body = json.dumps(served.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/realms/radiology/protocol/openid-connect/certs"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, **keys: rsa.RSAPrivateKey) -> None:
        self.document = {"keys": [_jwk(key, kid) for kid, key in keys.items()]}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def jwks_server() -> Iterator[_JwksServer]:
    server = _JwksServer()
    yield server
    server.close()


class _Clock:
    """Monotonic seconds that move only when the test moves them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _served_oidc(settings: Settings, url: str) -> Settings:
    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": url, "roles": {"rad": "radiologist"}}
    return settings.model_validate(settings.model_dump() | {"registry": {"oidc": oidc | {"jwks_refresh_min_s": 60}}})


def test_a_rotated_key_is_fetched_from_the_provider_once(settings: Settings, jwks_server: _JwksServer) -> None:
    old, new = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwks_server.publish(k1=old)
    configured = _served_oidc(settings, jwks_server.url)
    app = create_app(configured)
    assert jwks_server.fetches == 1, "fetched at start"
    clock = _Clock()
    assert configured.registry.oidc is not None
    app.state.auth = Authenticator(app.state.db, configured.registry.oidc, clock=clock)  # the same, on our clock
    assert jwks_server.fetches == 2
    client = TestClient(app)

    def status(token: str) -> int:
        return client.get("/whoami", headers=bearer(token)).status_code

    assert status(_jwt(old, roles=["rad"])) == 200 and jwks_server.fetches == 2, "a known key id: no fetch"
    jwks_server.publish(k2=new)  # the provider rotates its key
    assert status(_jwt(new, kid="k2", roles=["rad"])) == 401, "within jwks_refresh_min_s of the last fetch"
    assert jwks_server.fetches == 2
    clock.now += 60
    assert status(_jwt(new, kid="k2", roles=["rad"])) == 200, "accepted after one fetch"
    assert jwks_server.fetches == 3
    assert status(_jwt(new, kid="k2", roles=["rad"])) == 200 and jwks_server.fetches == 3, "now known"
    assert status(_jwt(old, roles=["rad"])) == 401, "a key the provider no longer publishes"
    assert status(_jwt(new, kid="k3", roles=["rad"])) == 401, "a key id still unknown after the fetch"
    assert jwks_server.fetches == 3


def test_unknown_key_ids_make_at_most_one_fetch_per_interval(settings: Settings, jwks_server: _JwksServer) -> None:
    """A flood of JWTs with made-up key ids, from many threads at once, while the provider answers slowly;
    then tokens signed with a rotated key, all at once: one fetch, and those that came during it wait for it."""
    key, forger = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwks_server.publish(k1=key)
    oidc = _served_oidc(settings, jwks_server.url).registry.oidc
    assert oidc is not None
    clock = _Clock()
    authenticator = Authenticator(Database(settings.sqlalchemy_url), oidc, clock=clock)
    assert jwks_server.fetches == 1
    jwks_server.delay_s = 0.2  # the others arrive while a fetch is under way
    forged = [_jwt(forger, kid=f"forged-{i}", roles=["rad"]) for i in range(64)]

    def refused(token: str) -> int:
        with pytest.raises(HTTPException) as caught:
            authenticator.authenticate(token)
        return caught.value.status_code

    def flood() -> None:
        with ThreadPoolExecutor(max_workers=16) as pool:
            assert set(pool.map(refused, forged)) == {401}

    flood()
    assert jwks_server.fetches == 1, "within jwks_refresh_min_s of the start: no fetch"
    clock.now += 60
    flood()
    assert jwks_server.fetches == 2, "one fetch for the whole flood"
    clock.now += 59
    flood()
    assert jwks_server.fetches == 2
    clock.now += 1
    flood()
    assert jwks_server.fetches == 3
    assert authenticator.authenticate(_jwt(key, roles=["rad"])).subject == "dr.who", "the provider's keys still work"

    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.publish(k2=rotated)
    clock.now += 60
    with ThreadPoolExecutor(max_workers=16) as pool:
        tokens = [_jwt(rotated, kid="k2", roles=["rad"]) for _ in range(32)]
        accepted = list(pool.map(lambda token: authenticator.authenticate(token).subject, tokens))
    assert accepted == ["dr.who"] * 32, "those that came during the fetch waited for its keys"
    assert jwks_server.fetches == 4


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.hospital.example/realms/radiology/protocol/openid-connect/certs",
        "http://10.1.2.3/certs",
        "http://[fe80::1]/certs",
        "file:///etc/hounsfield/jwks.json",
        "idp.hospital.example/certs",
    ],
)
def test_a_key_url_must_be_https_unless_on_loopback(settings: Settings, url: str) -> None:
    with pytest.raises(SignInImpossible, match="jwks_url must use https"):
        create_app(_served_oidc(settings, url))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "[::1]", "localhost", "LOCALHOST"])
def test_plain_http_is_taken_on_loopback(settings: Settings, host: str) -> None:
    """Refused for another reason: nothing answers there (port 1)."""
    with pytest.raises(SignInImpossible, match="keys cannot be loaded"):
        create_app(_served_oidc(settings, f"http://{host}:1/certs"))


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
