"""`hounsfield registry --port N` on embedded defaults: refuses with no way to sign in, serves once a token exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from hounsfield.demo.orthanc import free_port
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[3]


def _hounsfield(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    return subprocess.run(
        [sys.executable, "-m", "hounsfield.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_embedded_defaults_refuse_then_serve_with_a_token(tmp_path: Path) -> None:
    port = str(free_port())
    refused = _hounsfield("registry", "--port", port, cwd=tmp_path)
    assert refused.returncode == 2 and "hounsfield tokens create" in refused.stderr

    made = _hounsfield("tokens", "create", "ops", "--role", "admin", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert (tmp_path / ".hounsfield" / "hounsfield.db").exists(), "the embedded default data folder"

    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "hounsfield.cli", "registry", "--port", port],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60)
        me = httpx.get(f"{url}/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert me.json() == {"subject": "ops", "role": "admin", "via": "token"}
        use_cases = httpx.get(f"{url}/use-cases", headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
        assert len(use_cases) >= 6, "the taxonomy is seeded at start"
        assert httpx.get(f"{url}/openapi.json", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_up_says_why_it_will_not_start_before_starting_anything(tmp_path: Path) -> None:
    refused = _hounsfield("up", cwd=tmp_path)
    assert refused.returncode == 2 and "hounsfield tokens create" in refused.stderr
    assert not (tmp_path / ".hounsfield" / "redis").exists(), "no service was started"
