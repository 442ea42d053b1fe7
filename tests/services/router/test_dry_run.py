"""`POST /rules/dry-run` and `hounsfield rules test`: the router's verdicts, explained, with nothing done."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from hounsfield.access import Role
from hounsfield.cli import app as cli
from hounsfield.config import Settings
from hounsfield.db import Database, Event, Job, Study, StudyState
from hounsfield.db.index import IndexedInstance, record_instance
from hounsfield.registry.app import create_app
from tests.support import bearer
from tests.support import settings_on_both_backends as settings_on_both_backends  # the settings fixture, on both

STUDY = "1.2.826.0.1.3680043.10.1392.7"
CT_SERIES, SCOUT_SERIES = f"{STUDY}.1", f"{STUDY}.2"


def _store(settings: Settings) -> None:
    """A CT study: an axial series of 10 instances and a scout of 2 (the example rule wants >= 8)."""
    db = Database(settings.sqlalchemy_url)
    db.create_schema()
    for series, count, description in ((CT_SERIES, 10, "axial 1mm"), (SCOUT_SERIES, 2, "scout")):
        for i in range(count):
            item = IndexedInstance(
                study_instance_uid=STUDY, series_instance_uid=series, sop_instance_uid=f"{series}.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                patient_id="P7", accession_number="A7", study_date="20260101", modality="CT", series_number=1,
                series_description=description, instance_number=i + 1, calling_ae="CT01", called_ae="HOUNSFIELD",
                tags={"Modality": "CT", "SeriesDescription": description}, path=f"/x/{series}.{i}.dcm", size=1,
                sha256="0" * 64, revision=0,
            )  # fmt: skip
            with db.session() as session:
                record_instance(session, item)
    db.dispose()


@pytest.fixture
def client(settings: Settings, tokens: dict[Role, str]) -> TestClient:
    _store(settings)
    return TestClient(create_app(settings), headers=bearer(tokens[Role.RADIOLOGIST]))


def test_a_stored_study_is_explained_and_left_as_it_was(client: TestClient, settings: Settings) -> None:
    answer = client.post("/rules/dry-run", json={"study_instance_uid": STUDY})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["series_count"] == 2
    (deployment,) = body["deployments"]
    assert deployment["deployment"] == "ct-lesion-seg" and deployment["would_run"]
    assert deployment["model"] == "CT lesion segmentation 1.0.0" and deployment["stage"] == "research"
    verdicts = {s["series_instance_uid"]: s for s in deployment["series"]}
    assert verdicts[CT_SERIES]["matched"] and not verdicts[SCOUT_SERIES]["matched"]
    scout = verdicts[SCOUT_SERIES]["explanation"]
    failed = [child for child in scout["children"] if not child["matched"]]
    assert len(failed) == 1 and "2" in failed[0]["reason"], "the instance count is named as the reason"
    with Database(settings.sqlalchemy_url).session() as session:
        assert session.get(Study, STUDY).state is StudyState.RECEIVING, "a dry run completes nothing"
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Event)) == 0


def test_given_facts_and_an_ad_hoc_rule(client: TestClient) -> None:
    facts = [{"series_instance_uid": "1.2.3", "instance_count": 40, "tags": {"SeriesDescription": "SCOUT view"}}]
    rule = {"kind": "not", "rule": {"kind": "series_description", "regex": "(?i)scout"}}
    body = client.post("/rules/dry-run", json={"series": facts, "rule": rule}).json()
    (only,) = body["deployments"]
    assert only["deployment"] == "(ad hoc)" and not only["would_run"]
    assert only["series"][0]["explanation"]["children"][0]["matched"], "the inner regex matched"


@pytest.mark.parametrize(
    ("request_body", "location"),
    [
        ({}, ["body"]),
        ({"study_instance_uid": STUDY, "series": [{"series_instance_uid": "1.2"}]}, ["body"]),
        ({"series": [{"series_instance_uid": "1.2", "tags": {"PatientName": "x"}}]}, ["body", "series", 0, "tags"]),
        ({"series": [{"series_instance_uid": "1.2"}], "rule": {"kind": "modality", "in": "CT", "x": 1}}, None),
        ({"study_instance_uid": STUDY, "verbose": True}, ["body", "verbose"]),
    ],
)
def test_bad_requests_say_where(client: TestClient, request_body: dict, location: list | None) -> None:
    answer = client.post("/rules/dry-run", json=request_body)
    assert answer.status_code == 422, answer.text
    if location is not None:
        assert answer.json()["detail"][0]["loc"][: len(location)] == location


def test_unknown_study_and_roles(client: TestClient, tokens: dict[Role, str]) -> None:
    missing = client.post("/rules/dry-run", json={"study_instance_uid": "1.2.3.4"})
    assert missing.status_code == 404 and "no stored study" in missing.json()["detail"]
    sender = client.post("/rules/dry-run", json={"study_instance_uid": STUDY}, headers=bearer(tokens[Role.SENDER]))
    assert sender.status_code == 403


def test_cli_explains_a_stored_study(settings: Settings, tmp_path: Path) -> None:
    _store(settings)
    config = tmp_path / "hounsfield.yaml"
    deployments = [d.model_dump(mode="json") for d in settings.deployments]
    destinations = {"pacs": {"ae_title": "PACS", "host": "h", "port": 1}}
    config.write_text(
        json.dumps(
            {
                "data_dir": str(settings.data_dir),
                "database_url": settings.sqlalchemy_url,
                "destinations": destinations,
                "deployments": deployments,
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUNSFIELD_")}
    runner = CliRunner()
    test = ["rules", "test", "--study", STUDY, "--config", str(config)]
    result = runner.invoke(cli, test, env=env)
    assert result.exit_code == 0, result.output
    assert "ct-lesion-seg (CT lesion segmentation 1.0.0, research): would run on 1 of 2 series" in result.output
    assert f"series {SCOUT_SERIES}" in result.output and "[no ]" in result.output
    rule = tmp_path / "rule.yaml"
    rule.write_text("kind: series_description\nregex: (?i)scout\n")
    adhoc = runner.invoke(
        cli, ["rules", "test", "--study", STUDY, "--rule", str(rule), "--config", str(config)], env=env
    )
    assert "(ad hoc): would run on 1 of 2 series" in adhoc.output
    rule.write_text("kind: modality\nin: CT\nunknown: 1\n")
    bad = runner.invoke(cli, [*test, "--rule", str(rule)], env=env)
    assert bad.exit_code == 2 and "unknown" in bad.output
    absent = runner.invoke(cli, ["rules", "test", "--study", "1.2.3", "--config", str(config)], env=env)
    assert absent.exit_code == 1 and "no stored study" in absent.output
