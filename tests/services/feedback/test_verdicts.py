"""Radiologists' verdicts on results through the API and the CLI, and what each model version earned.

Real components: the example application run by the worker's pipeline makes the results (SEG, SR),
the registry's API and the CLI on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from hounsfield.access import Principal, Role, create_token
from hounsfield.catalog.models import create_model
from hounsfield.catalog.schemas import ModelCreate
from hounsfield.cli import app as cli
from hounsfield.config import Settings
from hounsfield.db import Event, JobState, Result
from hounsfield.db.access import AuditEntry
from hounsfield.db.catalog import RegulatoryStatus
from hounsfield.registry.app import create_app
from hounsfield.worker.pipeline import execute_job
from tests.support import bearer, routed_job
from tests.support import settings_on_both_backends as settings_on_both_backends  # the settings fixture, on both

MODEL = "ct-lesion-seg"
ADMIN = Principal("tests", Role.ADMIN, "cli")


def test_verdicts_are_kept_audited_and_summed_per_model_version(
    settings: Settings, tokens: dict[Role, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, job = routed_job(tmp_path, settings, seed=61, destinations=[], model_name=MODEL)
    assert execute_job(context, job.id) is JobState.DONE
    with context.db.session() as session:
        results = {r.kind: r for r in session.scalars(select(Result).where(Result.job_id == job.id))}
        _, second = create_token(session, ADMIN, "dr-second", Role.RADIOLOGIST)
        filed = ModelCreate(
            name=MODEL, display_name="CT lesions", intended_use="tests", use_cases=["scheduled", "retrospective"],
            modality="CT", regulatory_status=RegulatoryStatus.RESEARCH_ONLY, owner="tests",
        )  # fmt: skip
        create_model(session, ADMIN, filed)  # a model filed under two use cases counts under both
    seg, sr = results["SEG"], results["SR"]
    radiologist, other, viewer = tokens[Role.RADIOLOGIST], second, tokens[Role.VIEWER]

    with TestClient(create_app(context.settings, enqueue=lambda job: None)) as client:

        def post(reference: object, token: str, **body: object) -> tuple[int, dict]:
            answer = client.post(f"/results/{reference}/feedback", json=body, headers=bearer(token))
            return answer.status_code, answer.json()

        # who may, and what is refused with a reason
        assert post(seg.id, viewer, verdict="accept")[0] == 403
        assert post(seg.id, tokens[Role.MODEL_DEVELOPER], verdict="accept")[0] == 403
        assert post(999999, radiologist, verdict="accept") == (
            404,
            {"detail": "no result with this id or SOP Instance UID"},
        )
        status, answer = post(seg.id, radiologist, verdict="reject")
        assert (
            status == 422
            and "needs a reason" in answer["detail"][0]["msg"]
            and "false-positive" in answer["detail"][0]["msg"]
        )
        status, answer = post(seg.id, radiologist, verdict="reject", reason="other")
        assert status == 422 and answer["detail"][0]["loc"] == ["body", "comment"]
        assert post(seg.id, radiologist, verdict="accept", reason="boundary")[0] == 422
        assert post(seg.id, radiologist, verdict="comment")[0] == 422
        assert post(seg.id, radiologist, verdict="maybe")[0] == 422
        status, answer = post(seg.id, radiologist, verdict="comment", comment="x" * 2001)
        assert status == 422 and "feedback.max_comment_chars" in answer["detail"][0]["msg"]

        # the SEG: rejected, then accepted by the same radiologist (the latest counts); rejected by another
        status, first = post(seg.id, radiologist, verdict="reject", reason="boundary", comment="misses the rim")
        assert status == 201 and first["model_name"] == MODEL and first["model_version"] == "1.0.0"
        assert first["given_by"] == "test-radiologist" and first["job_id"] == job.id
        assert post(seg.id, radiologist, verdict="accept")[0] == 201
        assert post(seg.sop_instance_uid, other, verdict="reject", reason="false-positive")[0] == 201  # by its UID
        # the SR: accepted, commented
        assert post(sr.id, other, verdict="accept")[0] == 201
        assert post(sr.id, radiologist, verdict="comment", comment="long axis agrees with mine")[0] == 201

        listed = client.get(f"/results/{seg.id}/feedback", headers=bearer(viewer)).json()
        assert [(f["kind"], f["reason"]) for f in listed] == [
            ("reject", "false-positive"),
            ("accept", None),
            ("reject", "boundary"),
        ], "newest first, every verdict kept"
        rejections = client.get("/feedback", params={"kind": "reject"}, headers=bearer(viewer)).json()
        assert {(f["reason"], f["comment"]) for f in rejections} == {
            ("boundary", "misses the rim"),
            ("false-positive", None),
        }

        summary = client.get("/feedback/summary", headers=bearer(tokens[Role.MODEL_DEVELOPER])).json()
        assert [(s["use_case"], s["model_name"], s["model_version"]) for s in summary] == [
            ("retrospective", MODEL, "1.0.0"),
            ("scheduled", MODEL, "1.0.0"),
        ]
        assert {k: v for k, v in summary[0].items() if k != "use_case"} == {
            k: v for k, v in summary[1].items() if k != "use_case"
        }
        row = summary[1]
        # latest per result and radiologist: SEG accepted (1st), rejected (2nd); SR accepted (2nd)
        assert (row["accepted"], row["rejected"], row["comments"]) == (2, 1, 1)
        assert row["agreement_rate"] == pytest.approx(2 / 3, abs=1e-4)
        assert row["rejection_reasons"] == {"false-positive": 1}
        assert (row["corrections"], row["mean_correction_dice"]) == (0, None)
        narrowed = client.get(
            "/feedback/summary", params={"use_case": "scheduled", "version": "1.0.0"}, headers=bearer(viewer)
        ).json()
        assert narrowed == [row]
        assert client.get("/feedback/summary", params={"version": "9.9.9"}, headers=bearer(viewer)).json() == []
        assert client.get("/feedback/reasons", headers=bearer(viewer)).json()["boundary"]

    with context.db.session() as session:
        audit = session.scalars(select(AuditEntry).where(AuditEntry.entity == "result").order_by(AuditEntry.id)).all()
        events = session.scalars(select(Event).where(Event.kind == "feedback").order_by(Event.id)).all()
    assert [(a.action, a.actor, a.entity_id) for a in audit[:2]] == [
        ("result.reject", "test-radiologist", str(seg.id)),
        ("result.accept", "test-radiologist", str(seg.id)),
    ]
    assert len(audit) == 5 and audit[0].after["comment"] == "misses the rim"
    assert len(events) == 5 and all(e.study_instance_uid == job.study_instance_uid for e in events)
    assert all("comment" not in e.detail for e in events), "the study's path carries no free text"

    # the CLI: a verdict as the administrator, then the summary as the API gives it
    monkeypatch.setenv("HOUNSFIELD_DATA_DIR", str(context.settings.data_dir))
    if context.settings.database_url:
        monkeypatch.setenv("HOUNSFIELD_DATABASE_URL", context.settings.database_url)
    runner = CliRunner()
    refused = runner.invoke(cli, ["feedback", "give", str(sr.id), "reject"])
    assert refused.exit_code == 2 and "needs a reason" in refused.stderr
    given = runner.invoke(cli, ["feedback", "give", str(sr.id), "reject", "--reason", "measurement"])
    assert given.exit_code == 0, given.output
    shown = runner.invoke(cli, ["feedback", "summary", "--json"])
    assert shown.exit_code == 0, shown.output
    (after,) = [s for s in json.loads(shown.stdout) if s["use_case"] == "scheduled"]
    assert (after["accepted"], after["rejected"]) == (2, 2) and after["rejection_reasons"] == {
        "false-positive": 1,
        "measurement": 1,
    }
    table = runner.invoke(cli, ["feedback", "summary", "--model", MODEL, "--use-case", "scheduled"])
    assert (
        "agreement 50.0% (2 accepted, 2 rejected)" in table.stdout and "false-positive 1, measurement 1" in table.stdout
    )
    listed = runner.invoke(cli, ["feedback", "list", "--kind", "reject"])
    assert listed.exit_code == 0 and listed.stdout.count("\treject\t") == 3
    context.db.dispose()
