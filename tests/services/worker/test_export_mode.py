"""A job queued before its deployment left clinical is not exported to a clinical destination.

Real components: the registry's tables (SQLite and PostgreSQL), the router making the job from a
stored study, the lifecycle moving the deployment, and the worker's own export decision.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from hounsfield.access import CONFIG_PRINCIPAL
from hounsfield.catalog import deployments, prepare_database
from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Event, Job
from hounsfield.router.routing import Router
from hounsfield.store import StudyStore
from hounsfield.worker.pipeline import WorkerContext, _export_mode
from tests.support import index_series

STUDY = "1.2.826.0.1.3680043.10.1392.9"


@pytest.fixture
def context(settings: Settings, database_url: str) -> WorkerContext:
    declared = settings.deployments[0].model_copy(update={"mode": "clinical"})
    settings = settings.model_copy(update={"database_url": database_url, "deployments": [declared]})
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    return WorkerContext(settings=settings, db=db, store=StudyStore(settings.data_dir))


def _queued_job(ctx: WorkerContext) -> Job:
    index_series(ctx.db, STUDY, f"{STUDY}.1", 8)
    (job,) = Router(ctx.settings, ctx.db, lambda job: None).on_study_complete(
        StudyComplete(study_instance_uid=STUDY, trigger="manual")
    )
    assert job.mode == "clinical"
    return job


def test_a_clinical_job_exports_clinically_while_its_deployment_is_clinical(context: WorkerContext) -> None:
    assert _export_mode(context, _queued_job(context)) == "clinical"


@pytest.mark.parametrize("move", ["rollback", "retire"])
def test_results_are_held_back_once_the_deployment_left_clinical(context: WorkerContext, move: str) -> None:
    job = _queued_job(context)
    with context.db.session() as session:
        getattr(deployments, move)(session, CONFIG_PRINCIPAL, "ct-lesion-seg", reason="recalled")
    assert _export_mode(context, job) == "shadow"  # shadow: never to a clinical destination
    with context.db.session() as session:
        held = session.scalars(select(Event).where(Event.kind == "export-held")).all()
    assert [(e.job_id, e.detail["stage"]) for e in held] == [(job.id, "shadow" if move == "rollback" else "retired")]
