"""The model catalog over HTTP: the taxonomy, models, versions from MAP manifests, latency per use case.

Real components: the catalog router on a FastAPI app with a SQLite file database, API tokens made by
the registry's own auth (one per role), requests through ``TestClient``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hounsfield.access import Role
from hounsfield.catalog.manifests import load_map
from hounsfield.catalog.models import device_uid
from hounsfield.catalog.taxonomy import load_taxonomy, seed_taxonomy
from hounsfield.config import Settings
from hounsfield.db import Database, Instance, Job, JobState, Series, Study, utcnow
from hounsfield.db.access import AuditEntry
from hounsfield.db.catalog import UseCase
from hounsfield.registry.app import add_exception_handlers
from hounsfield.registry.auth import Authenticator
from hounsfield.registry.catalog_api import router
from tests.services.catalog.test_manifests import sdk_app, sdk_pkg, spec_app, spec_pkg, write_map
from tests.support import bearer

UID = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$")


class Api:
    """A client of the catalog app with a token per role, and its database."""

    def __init__(self, client: TestClient, db: Database, tokens: dict[Role, str]) -> None:
        self.client, self.db, self.tokens = client, db, tokens

    def get(self, path: str, role: Role = Role.VIEWER, **kwargs: Any) -> Any:
        return self.client.get(path, headers=bearer(self.tokens[role]), **kwargs)

    def post(self, path: str, body: Any, role: Role = Role.ADMIN) -> Any:
        # Encoded here: httpx would refuse NaN and Infinity, which a careless client does send.
        headers = {**bearer(self.tokens[role]), "Content-Type": "application/json"}
        return self.client.post(path, content=json.dumps(body), headers=headers)


def _app(settings: Settings, db: Database) -> FastAPI:
    app = FastAPI()
    app.state.db, app.state.settings, app.state.auth = db, settings, Authenticator(db)
    app.include_router(router)
    add_exception_handlers(app)
    return app


@pytest.fixture
def api(settings: Settings, tokens: dict[Role, str]) -> Iterator[Api]:
    db = Database(settings.sqlalchemy_url)
    db.create_schema()
    with db.session() as session:
        seed_taxonomy(session)
    with TestClient(_app(settings, db)) as client:
        yield Api(client, db, tokens)
    db.dispose()


def _model(name: str = "head-ct-bleed", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "display_name": "Head CT haemorrhage",
        "description": "Flags intracranial haemorrhage on non-contrast head CT.",
        "intended_use": "Worklist prioritisation; not for diagnosis.",
        "use_cases": ["emergency"],
        "modality": "CT",
        "body_part": "HEAD",
        "regulatory_status": "research-only",
        "owner": "Radiology AI team",
        "documentation_urls": ["https://example.org/models/head-ct-bleed"],
    }
    body.update(changes)
    return body


def _version(
    version: str, app: dict[str, Any] | None = None, pkg: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"version": version, "app": app or spec_app(), "pkg": pkg or spec_pkg(), **extra}


def _audit(db: Database, action: str) -> list[AuditEntry]:
    with db.session() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


# -- taxonomy -------------------------------------------------------------------------------------


def test_taxonomy_follows_the_monai_deployment_report(api: Api) -> None:
    found = {u["key"]: u for u in api.get("/use-cases").json()}
    expected = {  # standards.md: category, workload type, objective, capacity tier
        "metadata-qa": ("quality-assurance", "synchronous", 0.5, "instance", "reserved"),
        "image-quality": ("quality-assurance", "async-result", 610, "study", "reserved"),
        "emergency": ("ai-diagnostics", "async-result", 600, "study", "shared"),
        "scheduled": ("ai-diagnostics", "asynchronous", None, "study", "shared"),
        "interactive": ("ai-diagnostics", "streaming", 1, "study", "reserved"),
        "retrospective": ("research-development", "batch", None, "study", "on-demand"),
    }
    assert set(found) == set(expected)
    for key, (category, workload, objective, per, tier) in expected.items():
        u = found[key]
        assert (u["category"], u["workload"], u["latency_objective_s"], u["latency_per"], u["capacity_tier"]) == (
            category, workload, objective, per, tier,
        ), key  # fmt: skip
        assert u["builtin"] is True and u["objective"]
    assert found["scheduled"]["objective"] == "1,500 studies/day, < 1 % failures"
    assert api.get("/use-cases/emergency").json()["name"] == "Emergency diagnostics"
    missing = api.get("/use-cases/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_seeding_is_idempotent_and_keeps_what_administrators_did(api: Api) -> None:
    assert api.post("/use-cases", {"key": "stroke-triage", "name": "Stroke triage", "category": "ai-diagnostics",
                                   "workload": "async-result", "latency_objective_s": 300, "capacity_tier": "shared"}
                    ).status_code == 201  # fmt: skip
    with api.db.session() as session:
        session.get_one(UseCase, "emergency").latency_objective_s = 420  # a site tightened its objective
    with api.db.session() as session:
        assert seed_taxonomy(session) == 0
    with api.db.session() as session:
        assert session.scalar(select(func.count()).select_from(UseCase)) == len(load_taxonomy().use_cases) + 1
        assert session.get_one(UseCase, "emergency").latency_objective_s == 420
        assert session.get_one(UseCase, "stroke-triage").builtin is False
        session.delete(session.get_one(UseCase, "interactive"))
    with api.db.session() as session:
        assert seed_taxonomy(session) == 1  # a missing built-in comes back
    assert api.get("/use-cases/interactive").json()["workload"] == "streaming"


def test_only_administrators_add_use_cases(api: Api) -> None:
    body = {"key": "lung-nodule-screening", "name": "Lung nodule screening", "category": "ai-diagnostics",
            "workload": "asynchronous", "capacity_tier": "shared", "objective": "results before the read"}  # fmt: skip
    assert api.post("/use-cases", body, role=Role.MODEL_DEVELOPER).status_code == 403
    assert api.client.post("/use-cases", json=body).status_code == 401
    created = api.post("/use-cases", body)
    assert created.status_code == 201, created.text
    assert created.json()["builtin"] is False and created.json()["latency_objective_s"] is None
    assert api.get("/use-cases/lung-nodule-screening").json()["objective"] == "results before the read"
    again = api.post("/use-cases", body)
    assert again.status_code == 409 and "exists already" in again.json()["detail"]
    (entry,) = _audit(api.db, "use_case.create")
    assert entry.entity_id == "lung-nodule-screening" and entry.actor == "test-admin" and entry.after is not None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"surprise": 1}, "surprise"),
        ({"workload": "realtime"}, "workload"),
        ({"category": "billing"}, "category"),
        ({"capacity_tier": "gold"}, "capacity_tier"),
        ({"latency_objective_s": 0}, "latency_objective_s"),
        ({"key": "Has Spaces"}, "key"),
    ],
)
def test_bad_use_cases_are_422_with_the_field(api: Api, change: dict[str, Any], field: str) -> None:
    body = {"key": "x-ray-qa", "name": "X-ray QA", "category": "quality-assurance", "workload": "synchronous",
            "capacity_tier": "reserved", **change}  # fmt: skip
    answer = api.post("/use-cases", body)
    assert answer.status_code == 422
    assert [d["loc"][-1] for d in answer.json()["detail"]] == [field]


# -- models -------------------------------------------------------------------------------------


def test_model_developers_file_models_under_use_cases(api: Api) -> None:
    assert api.post("/models", _model(), role=Role.VIEWER).status_code == 403
    created = api.post("/models", _model(use_cases=["emergency", "scheduled", "emergency"]), role=Role.MODEL_DEVELOPER)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["use_cases"] == ["emergency", "scheduled"] and body["versions"] == []
    assert body["created_by"] == "test-model-developer"
    assert body["documentation_urls"] == ["https://example.org/models/head-ct-bleed"]
    assert api.get("/models/head-ct-bleed").json() == body
    api.post("/models", _model("spine-qa", use_cases=["metadata-qa"], regulatory_status="ce-marked"))
    assert [m["name"] for m in api.get("/models").json()] == ["head-ct-bleed", "spine-qa"]
    assert [m["name"] for m in api.get("/models", params={"use_case": "metadata-qa"}).json()] == ["spine-qa"]
    assert api.get("/models", params={"use_case": "nope"}).status_code == 404
    assert api.get("/models/unknown").status_code == 404
    assert api.post("/models", _model()).status_code == 409
    entries = _audit(api.db, "model.create")
    assert [(e.entity_id, e.actor_role) for e in entries] == [
        ("head-ct-bleed", "model-developer"),
        ("spine-qa", "admin"),
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"weights_url": "x"}, "weights_url"),
        ({"regulatory_status": "approved"}, "regulatory_status"),
        ({"use_cases": []}, "use_cases"),
        ({"use_cases": ["emergency", "no-such-use-case"]}, "use_cases"),
        ({"modality": "ct"}, "modality"),
        ({"name": "Head CT"}, "name"),
        ({"documentation_urls": ["not a url"]}, 0),
        ({"intended_use": ""}, "intended_use"),
    ],
)
def test_bad_models_are_422_with_the_field(api: Api, change: dict[str, Any], field: str | int) -> None:
    answer = api.post("/models", _model(**change))
    assert answer.status_code == 422, answer.text
    assert [d["loc"][-1] for d in answer.json()["detail"]] == [field]
    assert api.get("/models").json() == []


# -- versions -----------------------------------------------------------------------------------


def test_a_version_is_registered_from_spec_manifests(api: Api, settings: Settings) -> None:
    api.post("/models", _model())
    answer = api.post("/models/head-ct-bleed/versions", _version("1.2.0"), role=Role.MODEL_DEVELOPER)
    assert answer.status_code == 201, answer.text
    v = answer.json()
    assert v["published"] is True and v["published_at"] is not None
    assert v["inputs"] == {"path": "input/", "formats": [{"type": "dicom", "modality": "CT"}]}
    assert v["outputs"]["formats"] == [{"type": "dicom", "sopClasses": ["SEG", "SR"]}]
    assert v["resources"] == {"cpu": 2, "memory": "4Gi", "memory_mib": 4096, "gpu": 1, "gpu_memory": "6Gi"}
    assert v["timeout_s"] == 300
    assert v["map_manifest"] == {"app": spec_app(), "pkg": spec_pkg()}
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", v["content_digest"]) and v["models_digest"] is None
    assert v["device_uid"].startswith(settings.uid_root) and UID.match(v["device_uid"]) and len(v["device_uid"]) <= 64
    assert api.get("/models/head-ct-bleed/versions/1.2.0").json() == v
    assert api.get("/models/head-ct-bleed/versions/9.9.9").status_code == 404
    assert api.post("/models/unknown/versions", _version("1.0.0")).status_code == 404
    (entry,) = _audit(api.db, "model_version.create")
    assert entry.entity_id == "head-ct-bleed@1.2.0" and entry.before is None


def test_a_version_is_registered_from_packager_manifests(api: Api) -> None:
    api.post("/models", _model())
    answer = api.post("/models/head-ct-bleed/versions", _version("0.6.0", sdk_app(), sdk_pkg()))
    assert answer.status_code == 201, answer.text
    v = answer.json()
    assert v["inputs"] == {"path": "input/", "formats": []} and v["timeout_s"] is None
    assert v["resources"]["gpu_memory"] == "6Gi" and v["map_manifest"]["pkg"]["models"] == sdk_pkg()["models"]


def test_versions_are_semver_and_listed_newest_first_with_a_device_uid_each(api: Api) -> None:
    api.post("/models", _model())
    for version in ["1.9.0", "1.10.0", "2.0.0-rc.1", "2.0.0-beta.2", "1.10.0+build.7"]:
        assert api.post("/models/head-ct-bleed/versions", _version(version)).status_code == 201
    listed = api.get("/models/head-ct-bleed/versions").json()
    # semver precedence; build metadata has none, so of 1.10.0 and 1.10.0+build.7 the later registration is first
    assert [v["version"] for v in listed] == ["2.0.0-rc.1", "2.0.0-beta.2", "1.10.0+build.7", "1.10.0", "1.9.0"]
    assert len({v["device_uid"] for v in listed}) == 5
    assert api.get("/models/head-ct-bleed").json()["versions"] == [v["version"] for v in listed]
    for bad in ["1.0", "v1.0.0", "01.0.0", "1.0.0-"]:
        answer = api.post("/models/head-ct-bleed/versions", _version(bad))
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "version"], bad


def test_device_uid_is_made_under_the_configured_root(api: Api, settings: Settings) -> None:
    other = settings.model_copy(update={"uid_root": "1.2.826.0.1.3680043.10.9999."})
    with TestClient(_app(other, api.db)) as client:
        answer = client.post("/models", json=_model(), headers=bearer(api.tokens[Role.ADMIN]))
        assert answer.status_code == 201
        v = client.post(
            "/models/head-ct-bleed/versions", json=_version("1.0.0"), headers=bearer(api.tokens[Role.ADMIN])
        )
    uid = v.json()["device_uid"]
    assert uid.startswith("1.2.826.0.1.3680043.10.9999.") and UID.match(uid)
    assert uid == device_uid(other.uid_root, "head-ct-bleed", "1.0.0", v.json()["content_digest"])
    assert device_uid(settings.uid_root, "head-ct-bleed", "1.0.0", v.json()["content_digest"]) != uid
    with pytest.raises(ValueError, match="UID root"):
        device_uid("1.2.x.", "m", "1.0.0", "sha256:" + "0" * 64)


def test_a_published_version_is_immutable(api: Api) -> None:
    api.post("/models", _model())
    first = api.post("/models/head-ct-bleed/versions", _version("1.0.0")).json()
    same = api.post("/models/head-ct-bleed/versions", _version("1.0.0"))
    assert same.status_code == 200 and same.json() == first
    changed = api.post("/models/head-ct-bleed/versions", _version("1.0.0", spec_app(timeout=600)))
    assert changed.status_code == 409
    assert "immutable" in changed.json()["detail"] and first["content_digest"] in changed.json()["detail"]
    assert api.get("/models/head-ct-bleed/versions/1.0.0").json() == first
    assert len(_audit(api.db, "model_version.create")) == 1  # the idempotent repeat wrote nothing


def test_a_draft_may_be_replaced_then_published(api: Api) -> None:
    api.post("/models", _model())
    draft = api.post("/models/head-ct-bleed/versions", _version("1.1.0", published=False)).json()
    assert draft["published"] is False and draft["published_at"] is None
    replaced = api.post("/models/head-ct-bleed/versions", _version("1.1.0", spec_app(timeout=900), published=False))
    assert replaced.status_code == 200 and replaced.json()["timeout_s"] == 900
    assert replaced.json()["content_digest"] != draft["content_digest"]
    published = api.post("/models/head-ct-bleed/versions", _version("1.1.0", spec_app(timeout=900)))
    assert published.status_code == 200 and published.json()["published"] is True
    assert api.post("/models/head-ct-bleed/versions", _version("1.1.0")).status_code == 409
    (replace,) = _audit(api.db, "model_version.replace")
    assert replace.before is not None and replace.before["timeout_s"] == 300 and replace.after is not None
    assert len(_audit(api.db, "model_version.publish")) == 1


def test_bad_manifests_are_422_naming_the_file_and_field(api: Api) -> None:
    api.post("/models", _model())
    app = spec_app()
    del app["command"]
    answer = api.post("/models/head-ct-bleed/versions", _version("1.0.0", app, spec_pkg(resources={"memory": "1G"})))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert {tuple(d["loc"]) for d in detail} == {("body", "app", "command"), ("body", "pkg", "resources", "memory")}
    assert any(d["msg"].startswith("app.json: ") for d in detail)
    unknown = api.post("/models/head-ct-bleed/versions", _version("1.0.0", extra_field=True))
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "extra_field"]
    assert api.get("/models/head-ct-bleed/versions").json() == []


def test_a_map_folder_is_registered_with_its_digest_checked(api: Api, tmp_path: Path) -> None:
    api.post("/models", _model())
    write_map(tmp_path, image_layout=True)
    loaded = load_map(tmp_path)
    body = _version("3.0.0", loaded.manifests.app_raw, loaded.manifests.pkg_raw,
                    models_digest=loaded.models_digest, content_digest=loaded.content_digest)  # fmt: skip
    answer = api.post("/models/head-ct-bleed/versions", body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["content_digest"] == loaded.content_digest
    assert answer.json()["models_digest"] == loaded.models_digest
    (tmp_path / "opt" / "holoscan" / "models" / "lesion" / "model.ts").write_bytes(b"retrained")
    tampered = dict(body, content_digest=load_map(tmp_path).content_digest)
    answer = api.post("/models/head-ct-bleed/versions", tampered)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "content_digest"]
    retrained = dict(
        body, models_digest=load_map(tmp_path).models_digest, content_digest=load_map(tmp_path).content_digest
    )
    assert api.post("/models/head-ct-bleed/versions", retrained).status_code == 409  # same version, new weights


# -- use case -> versions -----------------------------------------------------------------------


def _jobs(
    db: Database, model: str, version: str, runs: list[float], *, instances: int = 0, completeness: float = 0
) -> None:
    """Finished jobs of ``model``/``version`` that ran ``runs`` seconds each (queued 1 s before), plus a failed one.

    Each job reads one series of ``instances`` indexed instances; ``completeness`` is the wait recorded
    before the study was complete.
    """
    study = f"1.2.826.0.1.3680043.10.1392.7.{sum(map(ord, model + version))}.{len(runs)}"
    series = f"{study}.1"
    now = utcnow()
    with db.session() as session:
        session.add(Study(study_instance_uid=study))
        session.flush()
        session.add(Series(series_instance_uid=series, study_instance_uid=study, modality="CT"))
        session.flush()
        for i in range(instances):
            session.add(
                Instance(
                    sop_instance_uid=f"{series}.{i}", series_instance_uid=series, sop_class_uid="1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"/x/{i}", size=1, sha256="0" * 64,
                )
            )  # fmt: skip
        common = {"study_instance_uid": study, "series_instance_uids": [series], "deployment": "d",
                  "model_name": model, "model_version": version, "mode": "shadow", "queue": "default"}  # fmt: skip
        for i, run in enumerate(runs):
            start = now - timedelta(seconds=run)
            session.add(
                Job(
                    id=f"{model}-{version}-{i}", idempotency_key=f"{model}-{version}-{i}", state=JobState.DONE,
                    timings={"completeness": completeness}, created_at=start - timedelta(seconds=1),
                    started_at=start, finished_at=now, **common,
                )
            )  # fmt: skip
        hour_ago = now - timedelta(hours=1)
        session.add(
            Job(
                id=f"{model}-{version}-failed", idempotency_key=f"{model}-{version}-failed", state=JobState.FAILED,
                created_at=hour_ago, started_at=hour_ago, finished_at=now, **common,
            )
        )  # fmt: skip


def test_use_case_versions_compare_measured_latency_with_the_objective(api: Api) -> None:
    api.post("/models", _model(use_cases=["emergency", "scheduled"]))
    for version in ["1.0.0", "2.0.0", "3.0.0"]:
        api.post("/models/head-ct-bleed/versions", _version(version))
    _jobs(api.db, "head-ct-bleed", "1.0.0", [100, 200, 300], completeness=30)  # turnaround median 231 s
    _jobs(api.db, "Head CT haemorrhage", "2.0.0", [700, 800, 900])  # recorded by display name; 801 s > 600 s

    found = {v["version"]: v for v in api.get("/use-cases/emergency/versions").json()}
    assert list(found) == ["3.0.0", "2.0.0", "1.0.0"]
    fast, slow, unmeasured = found["1.0.0"], found["2.0.0"], found["3.0.0"]
    assert fast["deployments"] == [] and fast["mode"] is None and fast["model_name"] == "head-ct-bleed"
    assert fast["latency"]["done_jobs"] == 3  # the failed job is not counted
    assert fast["latency"]["median_run_s"] == pytest.approx(200, abs=0.01)
    assert fast["latency"]["median_turnaround_s"] == pytest.approx(231, abs=0.01)
    assert fast["latency"]["latency_objective_s"] == 600 and fast["latency"]["within_objective"] is True
    assert slow["latency"]["median_latency_s"] == pytest.approx(801, abs=0.01)
    assert slow["latency"]["within_objective"] is False
    assert unmeasured["latency"]["within_objective"] is None and "no finished job" in unmeasured["latency"]["reason"]

    scheduled = api.get("/use-cases/scheduled/versions").json()
    assert len(scheduled) == 3 and all(v["latency"]["within_objective"] is None for v in scheduled)
    assert "no latency objective" in scheduled[0]["latency"]["reason"]
    assert api.get("/use-cases/retrospective/versions").json() == []
    assert api.get("/use-cases/nope/versions").status_code == 404


def test_per_slice_objectives_are_measured_per_instance(api: Api) -> None:
    api.post("/models", _model("laterality-check", use_cases=["metadata-qa"]))
    api.post("/models/laterality-check/versions", _version("1.0.0"))
    api.post("/models/laterality-check/versions", _version("1.1.0"))
    _jobs(api.db, "laterality-check", "1.0.0", [9.0], instances=40)  # (9 + 1) s / 40 = 0.25 s per slice
    _jobs(api.db, "laterality-check", "1.1.0", [39.0], instances=40)  # 1 s per slice: over 0.5 s
    found = {v["version"]: v["latency"] for v in api.get("/use-cases/metadata-qa/versions").json()}
    assert found["1.0.0"]["latency_per"] == "instance"
    assert found["1.0.0"]["median_latency_s"] == pytest.approx(0.25, abs=1e-3)
    assert found["1.0.0"]["within_objective"] is True and found["1.1.0"]["within_objective"] is False


def test_what_json_cannot_carry_is_422_not_a_server_error(api: Api) -> None:
    api.post("/models", _model())
    nan_extra = api.post("/models/head-ct-bleed/versions", _version("1.0.0", spec_app(x=float("nan"))))
    assert nan_extra.status_code == 422 and nan_extra.json()["detail"][0]["loc"] == ["body", "app"]
    nan_field = api.post(
        "/models/head-ct-bleed/versions", _version("1.0.0", pkg=spec_pkg(resources={"cpu": float("inf")}))
    )
    assert nan_field.status_code == 422 and nan_field.json()["detail"][0]["loc"] == ["body", "pkg", "resources", "cpu"]
    body = {"key": "k", "name": "n", "category": "ai-diagnostics", "workload": "batch", "capacity_tier": "on-demand"}
    assert api.post("/use-cases", {**body, "name": "a\x00b"}).status_code == 422
    assert api.get("/models/head-ct-bleed/versions").json() == [] and api.get("/use-cases/k").status_code == 404
