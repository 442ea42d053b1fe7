"""The haemorrhage triage model is filed under emergency diagnostics, and its jobs take the stat queue.

Real components: the catalog (taxonomy seeded from ``services/catalog/taxonomy.yaml``, the model
registered from this MAP's own ``app.json`` and ``pkg.json``), a deployment whose queue nobody names,
the router on a head CT study, and the shipped ``deploy/hounsfield.example.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage

from hounsfield.access import Principal, Role
from hounsfield.catalog import prepare_database
from hounsfield.catalog.deployments import create_deployment, promote, queue_for
from hounsfield.catalog.models import create_model, register_version
from hounsfield.catalog.rules import RULE, put_rule
from hounsfield.catalog.schemas import DeploymentCreate, ModelCreate, VersionRegister
from hounsfield.catalog.taxonomy import use_case_row
from hounsfield.config import Settings, load_settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Job
from hounsfield.db.deployments import Stage
from hounsfield.db.index import IndexedInstance, record_instance
from hounsfield.router.routing import Router

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operators" / "ct_ich_triage"
EXAMPLE = REPO / "deploy" / "hounsfield.example.yaml"
APP = "hounsfield_operators.ct_ich_triage.app:CTICHTriageApp"
PRINCIPAL = Principal("tests", Role.ADMIN, "cli")
HEAD_CT_RULE = {
    "kind": "all",
    "rules": [{"kind": "modality", "in": ["CT"]}, {"kind": "body_part", "in": ["HEAD"]}],
}


def _index_study(db: Database, study_uid: str, body_part: str) -> None:
    """One axial CT series of 12 instances, as the listener indexes it."""
    series_uid = f"{study_uid}.1"
    for i in range(12):
        item = IndexedInstance(
            study_instance_uid=study_uid, series_instance_uid=series_uid, sop_instance_uid=f"{series_uid}.{i}",
            sop_class_uid=CTImageStorage, transfer_syntax_uid="1.2.840.10008.1.2.1", patient_id="P",
            accession_number="A", study_date="20260101", modality="CT", series_number=1,
            series_description="head non-contrast", instance_number=i + 1, calling_ae="CT01", called_ae="HOUNSFIELD",
            tags={"Modality": "CT", "BodyPartExamined": body_part, "SeriesDescription": "head non-contrast"},
            path=f"/nonexistent/{series_uid}.{i}.dcm", size=1, sha256="0" * 64, revision=0,
        )  # fmt: skip
        with db.session() as session:
            record_instance(session, item)


def _route(settings: Settings, db: Database, study_uid: str, body_part: str) -> tuple[list[Job], list[Job]]:
    _index_study(db, study_uid, body_part)
    queued: list[Job] = []
    jobs = Router(settings, db, queued.append).on_study_complete(
        StudyComplete(study_instance_uid=study_uid, trigger="manual")
    )
    return jobs, queued


def test_a_deployment_of_the_catalog_model_takes_the_stat_queue(settings: Settings) -> None:
    settings = settings.model_copy(update={"deployments": []})
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    with db.session() as session:
        create_model(
            session,
            PRINCIPAL,
            ModelCreate(
                name="ct-ich-triage",
                display_name="CT haemorrhage triage",
                intended_use="Flags non-contrast head CTs with intracranial haemorrhage for the on-duty radiologist.",
                use_cases=["emergency"],
                modality="CT",
                body_part="HEAD",
                regulatory_status="research-only",
                owner="Hounsfield examples",
            ),
        )
        manifests = {name: json.loads((PACKAGE / f"{name}.json").read_text()) for name in ("app", "pkg")}
        register_version(
            session,
            PRINCIPAL,
            model_name="ct-ich-triage",
            request=VersionRegister(version="1.0.0", **manifests),
            uid_root=settings.uid_root,
        )
        put_rule(session, PRINCIPAL, "head-ct", RULE.validate_python(HEAD_CT_RULE))
        request = DeploymentCreate(
            name="ct-ich-triage-v1",
            model="ct-ich-triage",
            version="1.0.0",
            rule="head-ct",
            app=APP,
            model_path=str(PACKAGE / "models" / "model.ts"),
        )
        made = create_deployment(session, PRINCIPAL, request, settings)
        assert made.queue == "stat", "no queue was named: it follows the emergency use case"
        promote(session, PRINCIPAL, made.name, reason="tested", settings=settings)
        shadow = promote(session, PRINCIPAL, made.name, reason="tested", settings=settings, to=Stage.SHADOW)
        assert shadow.stage is Stage.SHADOW
    jobs, queued = _route(settings, db, "1.2.826.0.1.3680043.10.1392.41", "HEAD")
    assert [(j.deployment, j.queue) for j in jobs] == [("ct-ich-triage-v1", "stat")]
    assert queued == jobs
    missed, _ = _route(settings, db, "1.2.826.0.1.3680043.10.1392.42", "ABDOMEN")
    assert missed == [], "the head CT rule leaves an abdomen alone"
    db.dispose()


def test_the_example_configuration_routes_head_ct_to_the_stat_queue(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE, data_dir=tmp_path / "data", database_url=None)
    (declared,) = [d for d in settings.deployments if d.app == APP]
    assert declared.model_path.is_file(), "the example points at the committed model"
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    with db.session() as session:
        emergency = use_case_row(session, "emergency")
        assert declared.queue == queue_for([emergency]) == "stat"
    jobs, queued = _route(settings, db, "1.2.826.0.1.3680043.10.1392.43", "HEAD")
    assert {(j.deployment, j.queue) for j in jobs} == {("ct-ich-triage", "stat"), ("ct-lesion-seg", "routine")}
    assert {j.id for j in queued} == {j.id for j in jobs}
    db.dispose()


@pytest.mark.parametrize("body_part", ["ABDOMEN", ""])
def test_the_example_sends_no_other_ct_to_triage(tmp_path: Path, body_part: str) -> None:
    settings = load_settings(EXAMPLE, data_dir=tmp_path / "data", database_url=None)
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    jobs, _ = _route(settings, db, "1.2.826.0.1.3680043.10.1392.44", body_part)
    assert [j.deployment for j in jobs] == ["ct-lesion-seg"]
    db.dispose()
