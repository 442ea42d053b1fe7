"""`hounsfield models register` with the example MAP in this repository, then through the API."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hounsfield.access import Role
from hounsfield.cli import app as cli
from hounsfield.config import Settings
from hounsfield.registry.app import create_app
from tests.support import bearer
from tests.support import settings_on_both_backends as settings_on_both_backends  # the settings fixture, on both

EXAMPLE_MAP = Path(__file__).resolve().parents[3] / "operators" / "ct_lesion_seg"


def test_the_example_map_registers_once_and_is_listed(
    settings: Settings, tokens: dict[Role, str], tmp_path: Path
) -> None:
    api = TestClient(create_app(settings), headers=bearer(tokens[Role.MODEL_DEVELOPER]))
    model = {
        "name": "ct-lesion-seg", "display_name": "CT lesion segmentation", "intended_use": "Research only.",
        "use_cases": ["scheduled"], "modality": "CT", "regulatory_status": "research-only", "owner": "Hounsfield",
    }  # fmt: skip
    assert api.post("/models", json=model).status_code == 201
    config = tmp_path / "hounsfield.yaml"
    config.write_text(json.dumps({"data_dir": str(settings.data_dir), "database_url": settings.sqlalchemy_url}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    runner = CliRunner()
    argv = ["models", "register", str(EXAMPLE_MAP), "--model", "ct-lesion-seg", "--config", str(config)]

    first = runner.invoke(cli, argv, env=env)
    again = runner.invoke(cli, argv, env=env)
    unknown = runner.invoke(cli, [*argv[:3], "--model", "nobody", "--config", str(config)], env=env)

    assert first.exit_code == 0, first.output
    assert "ct-lesion-seg 1.0.0: created" in first.output
    assert again.exit_code == 0 and "1.0.0: unchanged" in again.output, "the same MAP again changes nothing"
    assert unknown.exit_code == 1
    version = api.get("/models/ct-lesion-seg/versions/1.0.0").json()
    assert version["published"] and version["content_digest"].startswith("sha256:")
    assert version["device_uid"].startswith(settings.uid_root) and f"device UID {version['device_uid']}" in first.output
    listed = runner.invoke(cli, ["models", "list", "--config", str(config)], env=env)
    assert "ct-lesion-seg\tresearch-only\t1.0.0" in listed.output
    trail = TestClient(api.app, headers=bearer(tokens[Role.ADMIN])).get("/audit", params={"entity": "model_version"})
    assert [entry["action"] for entry in trail.json()] == ["model_version.create"]
