"""Deployments and routing rules as data: the lifecycle, promote and rollback, one clinical version per rule.

Real components: the whole registry app (``create_app``) on SQLite and PostgreSQL, the catalog's
own registration of versions, API tokens per role, and the router reading the registry's deployments.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from hounsfield.access import CONFIG_PRINCIPAL, Role
from hounsfield.catalog import prepare_database
from hounsfield.catalog.deployments import promote, sync_declared, validation_checks
from hounsfield.catalog.read_model import get_spec, load_deployments
from hounsfield.cli import app as cli
from hounsfield.config import ContainerSettings, DeploymentSettings, DestinationSettings, Settings, load_settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Job
from hounsfield.db.access import AuditEntry
from hounsfield.db.deployments import Deployment, DeploymentTransition, RoutingRule, Stage
from hounsfield.errors import Conflict
from hounsfield.registry.app import create_app
from hounsfield.router.routing import Router
from tests.services.catalog.test_manifests import spec_app, spec_pkg
from tests.support import bearer, index_series

REPO = Path(__file__).resolve().parents[3]
MODEL_FILE = REPO / "operators" / "ct_lesion_seg" / "models" / "model.ts"
APP = "hounsfield_operators.ct_lesion_seg.app:CTLesionSegApp"
CT_RULE = {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, {"kind": "instance_count", "min": 8}]}
STUDY = "1.2.826.0.1.3680043.10.1392.8"


class Api:
    def __init__(self, client: TestClient, db: Database, tokens: dict[Role, str]) -> None:
        self.client, self.db, self.tokens = client, db, tokens

    def get(self, path: str, role: Role = Role.VIEWER) -> Any:
        return self.client.get(path, headers=bearer(self.tokens[role]))

    def send(self, method: str, path: str, body: Any, role: Role = Role.ADMIN) -> Any:
        return self.client.request(method, path, json=body, headers=bearer(self.tokens[role]))

    def promote(self, name: str, role: Role = Role.ADMIN, **body: Any) -> Any:
        return self.send("POST", f"/deployments/{name}/promote", {"reason": "tested", **body}, role)

    def stage(self, name: str) -> str:
        return str(self.get(f"/deployments/{name}").json()["stage"])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No configuration-declared deployment (those have their own tests); a clinical and a research PACS."""
    destinations = {
        "pacs": DestinationSettings(ae_title="PACS", host="127.0.0.1", port=1),
        "research-pacs": DestinationSettings(ae_title="RESEARCH", host="127.0.0.1", port=2, clinical=False),
    }
    return settings.model_copy(update={"deployments": [], "destinations": destinations})


@pytest.fixture
def api(settings: Settings, tokens: dict[Role, str]) -> Iterator[Api]:
    db = Database(settings.sqlalchemy_url)
    with TestClient(create_app(settings, enqueue=lambda job: None)) as client:
        yield Api(client, db, tokens)
    db.dispose()


def _register(
    api: Api, model: str = "liver-lesions", versions: tuple[str, ...] = ("1.0.0",), **model_fields: Any
) -> None:
    body = {
        "name": model,
        "display_name": "Liver lesion segmentation",
        "intended_use": "Segments liver lesions on portal-venous CT.",
        "use_cases": ["scheduled"],
        "modality": "CT",
        "body_part": "ABDOMEN",
        "regulatory_status": "ce-marked",
        "owner": "Radiology AI team",
        **model_fields,
    }
    assert api.send("POST", "/models", body, Role.MODEL_DEVELOPER).status_code == 201
    for version in versions:
        registered = api.send(
            "POST", f"/models/{model}/versions", {"version": version, "app": spec_app(), "pkg": spec_pkg()},
            Role.MODEL_DEVELOPER,
        )  # fmt: skip
        assert registered.status_code == 201, registered.text


def _deployment(name: str, version: str = "1.0.0", **changes: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "model": "liver-lesions",
        "version": version,
        "rule": "abdomen-ct",
        "destinations": ["pacs"],
        "app": APP,
        "model_path": str(MODEL_FILE),
    }
    return {**body, **changes}


def _ready(api: Api, *names_versions: tuple[str, str]) -> None:
    """The rule, the model with its versions, and one draft deployment per (name, version)."""
    assert api.send("PUT", "/rules/abdomen-ct", {"rule": CT_RULE}).status_code == 201
    _register(api, versions=tuple(v for _, v in names_versions))
    for name, version in names_versions:
        made = api.send("POST", "/deployments", _deployment(name, version), Role.MODEL_DEVELOPER)
        assert made.status_code == 201, made.text


def _to_shadow(api: Api, name: str) -> None:
    assert api.promote(name, Role.MODEL_DEVELOPER).json()["stage"] == "validated"
    assert api.promote(name, Role.MODEL_DEVELOPER).json()["stage"] == "shadow"


# -- rules ----------------------------------------------------------------------------------------


def test_rules_are_stored_replaced_and_deleted_by_admins_with_audit(api: Api) -> None:
    made = api.send("PUT", "/rules/abdomen-ct", {"rule": CT_RULE, "description": "portal-venous CT"})
    assert made.status_code == 201, made.text
    assert made.json()["rule"] == CT_RULE and made.json()["source"] == "api" and made.json()["deployments"] == []
    same = api.send("PUT", "/rules/abdomen-ct", {"rule": CT_RULE, "description": "portal-venous CT"})
    assert same.status_code == 200
    wider = {"kind": "modality", "in": ["CT", "MR"]}
    assert api.send("PUT", "/rules/abdomen-ct", {"rule": wider}).json()["rule"] == wider
    assert [r["name"] for r in api.get("/rules").json()] == ["abdomen-ct"]
    assert api.send("PUT", "/rules/other", {"rule": CT_RULE}, Role.MODEL_DEVELOPER).status_code == 403
    with api.db.session() as session:
        actions = session.scalars(select(AuditEntry.action).where(AuditEntry.entity == "routing_rule")).all()
    assert actions == ["rule.create", "rule.update"]  # the unchanged PUT wrote nothing
    assert api.send("DELETE", "/rules/abdomen-ct", None).status_code == 204
    assert api.get("/rules/abdomen-ct").status_code == 404


def test_a_bad_rule_is_refused_with_the_path_to_the_bad_matcher(api: Api) -> None:
    bad = {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, {"kind": "tag_regex", "tag": "Modality"}]}
    answer = api.send("PUT", "/rules/bad", {"rule": bad})
    assert answer.status_code == 422
    locations = [error["loc"] for error in answer.json()["detail"]]
    assert any(loc[:4] == ["body", "rule", "all", "rules"] and loc[4] == 1 for loc in locations), locations
    unknown = api.send("PUT", "/rules/bad", {"rule": {"kind": "modality", "in": ["CT"], "typo": 1}})
    assert unknown.status_code == 422 and "typo" in json.dumps(unknown.json())
    assert api.get("/rules/bad").status_code == 404


def test_a_rule_bound_to_a_deployment_cannot_be_deleted(api: Api) -> None:
    _ready(api, ("liver-v1", "1.0.0"))
    refused = api.send("DELETE", "/rules/abdomen-ct", None)
    assert refused.status_code == 409 and "liver-v1" in refused.json()["detail"]
    assert api.get("/rules/abdomen-ct").json()["deployments"] == ["liver-v1"]


# -- deployments ----------------------------------------------------------------------------------


def test_a_deployment_starts_as_a_draft_that_does_not_run(api: Api) -> None:
    _ready(api, ("liver-v1", "1.0.0"))
    shown = api.get("/deployments/liver-v1").json()
    assert shown["stage"] == "draft" and shown["runs"] is False and shown["catalog_version"] is True
    assert shown["device_uid"] == api.get("/models/liver-lesions/versions/1.0.0").json()["device_uid"]
    assert shown["timeout_s"] == 300  # the version's app.json timeout
    assert shown["queue"] == "routine"  # filed under "scheduled": an asynchronous workload
    assert [t["action"] for t in shown["transitions"]] == ["create"]
    assert shown["transitions"][0]["actor"] == "test-model-developer"
    with api.db.session() as session:
        assert load_deployments(session) == []


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"version": "9.9.9"}, "version", "no version 9.9.9"),
        ({"rule": "nowhere"}, "rule", "no routing rule named 'nowhere'"),
        ({"destinations": ["nowhere"]}, "destinations", "not configured: nowhere"),
    ],
)
def test_bad_references_are_422_naming_the_field(api: Api, changes: dict[str, Any], field: str, words: str) -> None:
    _ready(api, ("liver-v1", "1.0.0"))
    answer = api.send("POST", "/deployments", _deployment("liver-v2", **changes), Role.MODEL_DEVELOPER)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", field] and words in error["msg"]
    assert api.get("/deployments/liver-v2").status_code == 404


def test_requests_refuse_unknown_fields_and_viewers(api: Api) -> None:
    _ready(api, ("liver-v1", "1.0.0"))
    typo = api.send("POST", "/deployments", {**_deployment("liver-v2"), "stage": "clinical"}, Role.MODEL_DEVELOPER)
    assert typo.status_code == 422 and typo.json()["detail"][0]["loc"] == ["body", "stage"]
    assert api.send("POST", "/deployments", _deployment("liver-v2"), Role.VIEWER).status_code == 403
    assert api.send("POST", "/deployments", _deployment("liver-v1"), Role.MODEL_DEVELOPER).status_code == 409
    assert api.send("POST", "/deployments/liver-v1/promote", {}, Role.MODEL_DEVELOPER).status_code == 422  # no reason


def test_validation_runs_the_checks_and_keeps_a_failing_draft(api: Api, tmp_path: Path) -> None:
    _ready(api, ("liver-v1", "1.0.0"))
    missing = tmp_path / "absent.ts"
    body = _deployment("liver-broken", model_path=str(missing), app="not_installed.module:App")
    assert api.send("POST", "/deployments", body, Role.MODEL_DEVELOPER).status_code == 201
    refused = api.promote("liver-broken", Role.MODEL_DEVELOPER)
    assert refused.status_code == 409
    checks = {c["check"]: c for c in refused.json()["detail"]["checks"]}
    assert not checks["model files"]["ok"] and str(missing) in checks["model files"]["detail"]
    assert not checks["application"]["ok"] and "not_installed.module" in checks["application"]["detail"]
    assert checks["rule"]["ok"] and checks["destinations"]["ok"] and checks["version"]["ok"]
    assert api.stage("liver-broken") == "draft"

    validated = api.promote("liver-v1", Role.MODEL_DEVELOPER).json()
    assert validated["stage"] == "validated"
    kept = validated["transitions"][-1]
    assert kept["action"] == "promote" and kept["reason"] == "tested" and kept["actor"] == "test-model-developer"
    assert {c["check"] for c in kept["details"]["checks"]} == {
        "rule",
        "destinations",
        "version",
        "application",
        "model files",
    }


def test_the_lifecycle_moves_one_step_at_a_time_and_clinical_needs_an_admin(api: Api) -> None:
    _ready(api, ("liver-v1", "1.0.0"))
    assert api.promote("liver-v1", Role.MODEL_DEVELOPER, to="shadow").status_code == 409  # a draft is validated first
    _to_shadow(api, "liver-v1")
    assert api.promote("liver-v1", Role.MODEL_DEVELOPER).status_code == 403
    assert api.promote("liver-v1", Role.MODEL_DEVELOPER, to="clinical").status_code == 403
    clinical = api.promote("liver-v1", Role.ADMIN)
    assert clinical.status_code == 200 and clinical.json()["stage"] == "clinical"
    assert api.promote("liver-v1").status_code == 409  # clinical already
    history = api.get("/deployments/liver-v1").json()["transitions"]
    assert [(t["from_stage"], t["to_stage"]) for t in history] == [
        (None, "draft"), ("draft", "validated"), ("validated", "shadow"), ("shadow", "clinical"),
    ]  # fmt: skip
    assert (
        api.send("POST", "/deployments/liver-v1/retire", {"reason": "recalled"}, Role.MODEL_DEVELOPER).status_code
        == 403
    )
    retired = api.send("POST", "/deployments/liver-v1/retire", {"reason": "recalled by the vendor"})
    assert (
        retired.json()["stage"] == "retired" and retired.json()["transitions"][-1]["reason"] == "recalled by the vendor"
    )
    assert api.promote("liver-v1").status_code == 409
    assert api.send("POST", "/deployments/liver-v1/rollback", {"reason": "x"}).status_code == 409


def test_a_research_only_model_never_goes_clinical(api: Api) -> None:
    assert api.send("PUT", "/rules/abdomen-ct", {"rule": CT_RULE}).status_code == 201
    _register(api, regulatory_status="research-only")
    assert api.send("POST", "/deployments", _deployment("liver-v1"), Role.MODEL_DEVELOPER).status_code == 201
    _to_shadow(api, "liver-v1")
    refused = api.promote("liver-v1")
    assert refused.status_code == 409 and "research-only" in refused.json()["detail"]
    research = api.send("POST", "/deployments", _deployment("liver-research"), Role.MODEL_DEVELOPER)
    assert research.status_code == 201
    assert api.promote("liver-research", Role.MODEL_DEVELOPER).status_code == 200
    assert api.promote("liver-research", Role.MODEL_DEVELOPER, to="research").json()["stage"] == "research"


def test_two_clinical_versions_on_one_rule_are_refused_and_supersede_then_rollback_restores(api: Api) -> None:
    _ready(api, ("liver-v1", "1.0.0"), ("liver-v2", "1.1.0"))
    for name in ("liver-v1", "liver-v2"):
        _to_shadow(api, name)
    assert api.promote("liver-v1").json()["stage"] == "clinical"

    refused = api.promote("liver-v2")
    assert refused.status_code == 409 and "liver-v1" in refused.json()["detail"]
    assert api.stage("liver-v2") == "shadow" and api.stage("liver-v1") == "clinical"

    replaced = api.send(
        "POST", "/deployments/liver-v2/promote", {"reason": "v2 better on the audit", "supersede": True}
    )
    assert replaced.status_code == 200 and replaced.json()["transitions"][-1]["details"] == {"supersedes": "liver-v1"}
    assert api.stage("liver-v1") == "retired" and api.stage("liver-v2") == "clinical"
    superseded = api.get("/deployments/liver-v1").json()["transitions"][-1]
    assert superseded["action"] == "superseded" and superseded["details"] == {"superseded_by": "liver-v2"}

    rolled = api.send("POST", "/deployments/liver-v2/rollback", {"reason": "false positives on the ward"})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["stage"] == "shadow" and rolled.json()["transitions"][-1]["details"] == {
        "restores": "liver-v1"
    }
    assert api.stage("liver-v1") == "clinical"
    restored = api.get("/deployments/liver-v1").json()["transitions"][-1]
    assert restored["action"] == "restore" and restored["reason"] == "false positives on the ward"
    with api.db.session() as session:
        actions = session.scalars(
            select(AuditEntry.action).where(AuditEntry.entity == "deployment").order_by(AuditEntry.id)
        ).all()
    assert actions[-3:] == ["deployment.promote", "deployment.restore", "deployment.rollback"]

    by_version = {u["version"]: u for u in api.get("/use-cases/scheduled/versions").json()}
    assert by_version["1.0.0"]["mode"] == "clinical" and by_version["1.1.0"]["mode"] == "shadow"
    assert by_version["1.0.0"]["deployments"] == [{"name": "liver-v1", "stage": "clinical", "rule": "abdomen-ct"}]


def test_the_database_itself_refuses_a_second_clinical_row(api: Api) -> None:
    _ready(api, ("liver-v1", "1.0.0"), ("liver-v2", "1.1.0"))
    with api.db.session() as session:
        session.get(Deployment, "liver-v1").stage = Stage.CLINICAL  # type: ignore[union-attr]
    with pytest.raises(IntegrityError), api.db.session() as session:
        session.get(Deployment, "liver-v2").stage = Stage.CLINICAL  # type: ignore[union-attr]
    with api.db.session() as session:  # another rule: allowed
        session.add(RoutingRule(name="chest-ct", definition=CT_RULE))
        row = session.get(Deployment, "liver-v2")
        row.rule_name, row.stage = "chest-ct", Stage.CLINICAL  # type: ignore[union-attr]
    assert api.stage("liver-v2") == "clinical"


def test_the_router_and_dry_runs_follow_the_registry(api: Api, settings: Settings) -> None:
    _ready(api, ("liver-v1", "1.0.0"), ("liver-v2", "1.1.0"))
    index_series(api.db, STUDY, f"{STUDY}.1", 10, description="portal venous")
    _to_shadow(api, "liver-v1")

    dry = api.send("POST", "/rules/dry-run", {"study_instance_uid": STUDY}, Role.VIEWER).json()
    assert [(d["deployment"], d["stage"], d["would_run"]) for d in dry["deployments"]] == [("liver-v1", "shadow", True)]
    named = api.send("POST", "/rules/dry-run", {"study_instance_uid": STUDY, "deployments": ["liver-v2"]}, Role.VIEWER)
    assert [(d["deployment"], d["stage"], d["would_run"]) for d in named.json()["deployments"]] == [
        ("liver-v2", "draft", False)
    ]
    assert api.send("POST", "/rules/dry-run", {"study_instance_uid": STUDY, "deployments": ["nope"]}).status_code == 404

    queued: list[Job] = []
    jobs = Router(settings, api.db, queued.append).on_study_complete(
        StudyComplete(study_instance_uid=STUDY, trigger="manual")
    )
    assert [(j.deployment, j.mode, j.model_name, j.model_version) for j in jobs] == [
        ("liver-v1", "shadow", "liver-lesions", "1.0.0")
    ]
    assert queued == jobs


# -- the configuration's deployments --------------------------------------------------------------


def _declared(settings: Settings, mode: str = "research", **changes: Any) -> Settings:
    declared = {
        "name": "ct-lesion-seg", "app": APP, "model_path": MODEL_FILE, "model_name": "CT lesion segmentation",
        "model_version": "1.0.0", "mode": mode, "rule": CT_RULE, "destinations": ["pacs"], **changes,
    }  # fmt: skip
    return settings.model_copy(update={"deployments": [DeploymentSettings.model_validate(declared)]})


def _stage(db: Database, name: str = "ct-lesion-seg") -> Stage:
    with db.session() as session:
        row = session.get(Deployment, name)
        assert row is not None
        return row.stage


def test_declared_deployments_follow_the_file_and_keep_api_decisions(settings: Settings) -> None:
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, _declared(settings, "research"))
    assert _stage(db) == Stage.RESEARCH
    assert sync_declared(db, _declared(settings, "research")) == []  # nothing changed: nothing written

    with db.session() as session:  # an administrator moves it to shadow through the API
        promote(session, CONFIG_PRINCIPAL, "ct-lesion-seg", reason="r", settings=settings)
    assert _stage(db) == Stage.SHADOW
    sync_declared(db, _declared(settings, "research"))  # a restart with the same file
    assert _stage(db) == Stage.SHADOW

    changes = sync_declared(db, _declared(settings, "clinical", queue="stat"))  # the file now says clinical
    assert _stage(db) == Stage.CLINICAL and changes == ["deployment ct-lesion-seg (queue, stage)"]
    with db.session() as session:
        spec = get_spec(session, "ct-lesion-seg")
        assert spec is not None and spec.queue == "stat" and spec.device_uid is None  # not in the catalog
        trail = session.scalars(select(DeploymentTransition).order_by(DeploymentTransition.id)).all()
    assert [(t.action, t.actor, t.to_stage.value) for t in trail] == [
        ("config", "config", "research"), ("promote", "config", "shadow"), ("config", "config", "clinical"),
    ]  # fmt: skip

    sync_declared(db, settings.model_copy(update={"deployments": []}))  # removed from the file
    assert _stage(db) == Stage.RETIRED
    db.dispose()


def test_a_declared_deployment_cannot_take_an_api_deployments_name(api: Api, settings: Settings) -> None:
    _ready(api, ("ct-lesion-seg", "1.0.0"))
    with pytest.raises(Conflict, match="made through the API"):
        sync_declared(api.db, _declared(settings))


def test_cli_applies_rules_and_moves_deployments(api: Api, settings: Settings, tmp_path: Path) -> None:
    _register(api)
    config = tmp_path / "hounsfield.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(settings.data_dir),
                "database_url": settings.sqlalchemy_url,
                "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
            }
        )
    )
    load_settings(config)  # the file is valid
    runner = CliRunner()

    class Ran:
        def __init__(self, args: tuple[str, ...]) -> None:
            result = runner.invoke(cli, [*args, "--config", str(config)])
            self.exit_code, self.output, self.errors = result.exit_code, result.stdout, result.stderr

    def run(*args: str) -> Ran:
        return Ran(args)

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump([{"name": "abdomen-ct", "rule": CT_RULE}, {"name": "bad", "rule": {"kind": "x"}}]))
    refused = run("rules", "apply", str(rules))
    assert refused.exit_code == 2 and "1.rule" in refused.errors
    assert api.get("/rules").json() == []  # all or none
    rules.write_text(yaml.safe_dump([{"name": "abdomen-ct", "rule": CT_RULE}]))
    assert run("rules", "apply", str(rules)).output.strip() == "abdomen-ct: created"

    body = tmp_path / "deployment.yaml"
    body.write_text(yaml.safe_dump(_deployment("liver-v1")))
    made = run("deployments", "create", str(body))
    assert made.exit_code == 0, made.output
    assert "liver-v1: draft" in made.output
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(_deployment("liver-broken", model_path=str(tmp_path / "absent.ts"))))
    assert run("deployments", "create", str(broken)).exit_code == 0
    failed = run("deployments", "promote", "liver-broken", "--reason", "try")
    assert failed.exit_code == 1 and "bad model files" in failed.errors and "ok  rule" in failed.errors
    for expected in ("validated", "shadow", "clinical"):
        moved = run("deployments", "promote", "liver-v1", "--reason", "governance board 2026-11")
        assert moved.exit_code == 0 and moved.output.strip() == f"liver-v1: {expected}", moved.output
    assert "liver-v1\tclinical\tliver-lesions 1.0.0" in run("deployments", "list").output
    assert run("deployments", "rollback", "liver-v1", "--reason", "drift").output.strip() == "liver-v1: shadow"
    assert run("deployments", "retire", "liver-v1", "--reason", "replaced").output.strip() == "liver-v1: retired"
    again = run("deployments", "promote", "liver-v1", "--reason", "x")
    assert again.exit_code == 1 and "retired" in again.errors
    shown = json.loads(run("deployments", "show", "liver-v1").output)
    assert [t["action"] for t in shown["transitions"]] == [
        "create",
        "promote",
        "promote",
        "promote",
        "rollback",
        "retire",
    ]
    assert {t["actor"] for t in shown["transitions"][1:]} == {f"cli:{__import__('getpass').getuser()}"}


@pytest.mark.parametrize(
    ("use_cases", "queue"),
    [
        (["emergency"], "stat"),
        (["metadata-qa"], "stat"),
        (["interactive"], "stat"),
        (["scheduled"], "routine"),
        (["retrospective"], "batch"),
        (["retrospective", "emergency"], "stat"),
        (["retrospective", "scheduled"], "routine"),
    ],
)
def test_the_queue_follows_the_models_use_cases(api: Api, use_cases: list[str], queue: str) -> None:
    assert api.send("PUT", "/rules/abdomen-ct", {"rule": CT_RULE}).status_code == 201
    _register(api, use_cases=use_cases)
    made = api.send("POST", "/deployments", _deployment("liver-v1"), Role.MODEL_DEVELOPER)
    assert made.status_code == 201 and made.json()["queue"] == queue
    chosen = api.send("POST", "/deployments", _deployment("liver-v1b", queue="batch"), Role.MODEL_DEVELOPER)
    assert chosen.json()["queue"] == "batch", "an explicit queue wins"


def test_a_subprocess_deployment_names_its_map_and_validation_reads_it(api: Api, tmp_path: Path) -> None:
    _ready(api, ("liver-v1", "1.0.0"))
    body = {**_deployment("liver-isolated", runtime="subprocess"), "app": None}
    missing = api.send("POST", "/deployments", body, Role.MODEL_DEVELOPER)
    assert missing.status_code == 422 and "needs map_path" in missing.text
    broken = {**body, "map_path": str(tmp_path)}  # no manifests there
    assert api.send("POST", "/deployments", broken, Role.MODEL_DEVELOPER).status_code == 201
    refused = api.promote("liver-isolated", Role.MODEL_DEVELOPER)
    checks = {c["check"]: c for c in refused.json()["detail"]["checks"]}
    assert (
        refused.status_code == 409 and not checks["application"]["ok"] and "app.json" in checks["application"]["detail"]
    )
    good = {**body, "name": "liver-isolated-2", "map_path": str(REPO / "operators" / "ct_lesion_seg"),
            "application_root": str(REPO)}  # fmt: skip
    made = api.send("POST", "/deployments", good, Role.MODEL_DEVELOPER)
    assert made.status_code == 201 and made.json()["runtime"] == "subprocess"
    assert api.promote("liver-isolated-2", Role.MODEL_DEVELOPER).json()["stage"] == "validated"


def test_a_container_deployment_runs_an_image_without_network_unless_asked(api: Api) -> None:
    _ready(api, ("liver-v1", "1.0.0"))
    image = "registry.hospital.local/maps/liver@sha256:" + "ab" * 32
    body = {key: value for key, value in _deployment("liver-container", runtime="container").items() if key != "app"}
    del body["model_path"]  # a container's models are in its image
    refused = api.send("POST", "/deployments", body, Role.MODEL_DEVELOPER)
    assert refused.status_code == 422 and "needs an image" in refused.text, refused.text
    in_process = {key: value for key, value in _deployment("liver-no-model").items() if key != "model_path"}
    answer = api.send("POST", "/deployments", in_process, Role.MODEL_DEVELOPER)
    assert answer.status_code == 422 and "needs model_path" in answer.text
    made = api.send("POST", "/deployments", {**body, "image": image}, Role.MODEL_DEVELOPER)
    assert made.status_code == 201, made.text
    assert (made.json()["runtime"], made.json()["network"], made.json()["image"]) == ("container", False, image)
    networked = api.send("POST", "/deployments", {**body, "name": "liver-net", "image": image, "network": True})
    assert networked.status_code == 201 and networked.json()["network"] is True
    settings: Settings = api.client.app.state.settings  # type: ignore[attr-defined]
    never = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"container": ContainerSettings(pull="never")})}
    )
    with api.db.session() as session:
        spec = get_spec(session, "liver-container")
        networked_spec = get_spec(session, "liver-net")
        row = session.get(Deployment, "liver-container")
        assert row is not None
        pulled = {c.check: c for c in validation_checks(session, row, settings)}
        local_only = {c.check: c for c in validation_checks(session, row, never)}
    assert spec is not None and networked_spec is not None
    assert (spec.runtime, spec.image, spec.network, networked_spec.network) == ("container", image, False, True)
    assert pulled["application"].ok, pulled["application"].detail
    assert "model files" not in pulled, "the models are in the image: no model path to check"
    assert not local_only["application"].ok and "not here" in local_only["application"].detail
