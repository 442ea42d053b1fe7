"""The registry's HTTP API: health, studies, jobs, results (read-only), access, the model catalog,
routing rules and deployments, and STOW-RS intake.

Everything but ``/health`` and ``/metrics`` needs a bearer credential (:mod:`hounsfield.registry.auth`):
reads are open to viewers, radiologists and model developers, STOW-RS to senders, the rest to the
roles each route names; administrators may do everything.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import redis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from hounsfield import __version__
from hounsfield.config import Settings
from hounsfield.db import Database, Job, JobState, StudyState
from hounsfield.exporter.withdrawal import NoSuchJob, WithdrawalRefused, withdraw_job
from hounsfield.registry import access_api, audit, catalog_api, deployments_api, queries, rules_api, stow
from hounsfield.registry.auth import READERS, Authenticator, Role, ensure_sign_in_possible, require
from hounsfield.registry.deps import Limit, Offset, Radiologist, SessionDep
from hounsfield.registry.lifecycle import prepare_database
from hounsfield.registry.schemas import (
    JobPublic,
    ResultPublic,
    StudyDetail,
    StudyPublic,
    WithdrawalPublic,
    WithdrawRequest,
)

__all__ = ["create_app"]


health = APIRouter(tags=["health"])
_readers = [Depends(require(*READERS))]
studies = APIRouter(prefix="/studies", tags=["studies"], dependencies=_readers)
jobs = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=_readers)
results = APIRouter(prefix="/results", tags=["results"], dependencies=_readers)


@health.get("/health")
def get_health(request: Request, session: SessionDep) -> dict[str, str]:
    """Liveness of the API and its dependencies (database, broker)."""
    session.execute(text("SELECT 1"))
    settings: Settings = request.app.state.settings
    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=1).ping()
        broker = "ok"
    except redis.RedisError:
        broker = "unreachable"
    return {"status": "ok", "database": "ok", "broker": broker, "version": __version__}


@studies.get("", response_model=list[StudyPublic])
def list_studies(
    session: SessionDep, state: StudyState | None = None, limit: Limit = 100, offset: Offset = 0
) -> list[StudyPublic]:
    return [
        StudyPublic.model_validate(s) for s in queries.list_studies(session, state=state, limit=limit, offset=offset)
    ]


@studies.get("/{study_uid}", response_model=StudyDetail)
def get_study(study_uid: str, session: SessionDep) -> StudyDetail:
    detail = queries.get_study(session, study_uid=study_uid)
    if detail is None:
        raise HTTPException(status_code=404, detail="no study with this Study Instance UID")
    return detail


@jobs.get("", response_model=list[JobPublic])
def list_jobs(
    session: SessionDep,
    state: JobState | None = None,
    study_uid: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[JobPublic]:
    found = queries.list_jobs(session, state=state, study_uid=study_uid, limit=limit, offset=offset)
    return [JobPublic.model_validate(j) for j in found]


@jobs.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep) -> JobPublic:
    job = queries.get_job(session, job_id=job_id)
    if job is None:
        raise HTTPException(status_code=404, detail="no job with this id")
    return JobPublic.model_validate(job)


@jobs.post(
    "/{job_id}/withdraw",
    response_model=WithdrawalPublic,
    responses={404: {"description": "no such job"}, 409: {"description": "no results, or withdrawn for other reasons"}},
)
def withdraw_job_results(job_id: str, request: WithdrawRequest, caller: Radiologist, http: Request) -> WithdrawalPublic:
    """Withdraw the job's results: each PACS that received them gets an IOCM rejection note (KOS).

    Answers with each destination's note: delivered, or the reason it is not yet (call again to
    send what is missing). Radiologists and administrators may withdraw.
    """

    try:
        made = withdraw_job(
            http.app.state.settings,
            http.app.state.db,
            job_id,
            reason=request.reason,
            comment=request.comment,
            requested_by=caller.subject,
            on_recorded=audit.withdrawal_recorder(caller),
        )
    except NoSuchJob as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except WithdrawalRefused as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return WithdrawalPublic.model_validate(made)


@results.get("", response_model=list[ResultPublic])
def list_results(
    session: SessionDep, job_id: str | None = None, limit: Limit = 100, offset: Offset = 0
) -> list[ResultPublic]:
    return [
        ResultPublic.model_validate(r) for r in queries.list_results(session, job_id=job_id, limit=limit, offset=offset)
    ]


async def _unprocessable(request: Request, exc: Exception) -> JSONResponse:
    """422 with each error's location and reason; the offending input is echoed only when it is JSON.

    FastAPI's own handler echoes the input and fails (500) on values JSON cannot carry (NaN, Infinity).
    """
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        shown = {key: error[key] for key in ("type", "loc", "msg") if key in error}
        try:
            shown["input"] = jsonable_encoder(error.get("input"))
            json.dumps(shown["input"], allow_nan=False)
        except (TypeError, ValueError):
            shown.pop("input", None)
        errors.append(shown)
    return JSONResponse(status_code=422, content={"detail": errors})


def create_app(settings: Settings, *, enqueue: Callable[[Job], None] | None = None) -> FastAPI:
    """The API for ``settings``; the database schema is created when missing.

    Raises :class:`~hounsfield.registry.auth.AuthSetupError` when nobody could sign in (see
    :func:`~hounsfield.registry.auth.ensure_sign_in_possible`).

    With ``registry.stow_enabled`` the app also takes STOW-RS at ``/dicomweb/studies``; its lifespan
    then runs a completeness tracker and a router that hands jobs to ``enqueue`` (the Celery
    enqueuer when not given).
    """
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)  # migrations, the use-case taxonomy, the configuration's deployments
    authenticator = Authenticator(db, settings.registry.oidc)
    ensure_sign_in_possible(settings, db, authenticator)  # AuthSetupError: nobody could sign in

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.registry.stow_enabled:
            yield
            return
        if enqueue is None:
            from hounsfield.worker.celery_app import Enqueuer

            intake = stow.StowIntake(settings, db, Enqueuer(settings))
        else:
            intake = stow.StowIntake(settings, db, enqueue)
        intake.start()
        app.state.stow = intake
        try:
            yield
        finally:
            app.state.stow = None
            intake.stop()

    app = FastAPI(title="Hounsfield registry", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    app.state.stow = None
    app.state.auth = authenticator
    app.add_exception_handler(RequestValidationError, _unprocessable)
    routers = (access_api.router, catalog_api.router, rules_api.router, deployments_api.router)
    for router in (health, studies, jobs, results, *routers):
        app.include_router(router)
    if settings.registry.stow_enabled:
        app.include_router(stow.router, dependencies=[Depends(require(Role.SENDER))])

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus metrics of the STOW-RS intake (instances by outcome, bytes, free disk)."""
        intake = request.app.state.stow
        registry = intake.metrics.registry if intake is not None else CollectorRegistry()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
