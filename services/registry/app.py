"""The registry's HTTP API: health, studies, jobs, results (read-only), access, the model catalog,
routing rules and deployments, and STOW-RS intake.

The web dashboard is served at ``/dashboard`` (:mod:`hounsfield.registry.dashboard`). Everything else
but ``/health`` and ``/metrics`` needs a bearer credential (:mod:`hounsfield.registry.auth`):
reads are open to viewers, radiologists and model developers, STOW-RS to senders, the rest to the
roles each route names; administrators may do everything. With ``registry.metrics_port`` the metrics
are served on that port instead, and ``/metrics`` on the API's port answers 404.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import redis
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hounsfield import __version__
from hounsfield.access import Role, ensure_sign_in_possible
from hounsfield.catalog import DeploymentChecksFailed, ManifestInvalid, open_database
from hounsfield.config import Settings
from hounsfield.db import DATABASE_UNREACHABLE, Job, database_unreachable, ping
from hounsfield.drift import DriftCollector
from hounsfield.errors import Invalid, NotFound, Refused
from hounsfield.metrics import MetricsEndpoint
from hounsfield.queues import Enqueuer
from hounsfield.registry import (
    access_api,
    catalog_api,
    dashboard,
    deployments_api,
    feedback_api,
    rules_api,
    stow,
    studies_api,
)
from hounsfield.registry.auth import Authenticator, require
from hounsfield.registry.correlation import RequestCorrelation
from hounsfield.registry.deps import SessionDep
from hounsfield.registry.gate import DATABASE_RETRY_AFTER_S, DATABASE_UNREACHABLE_DETAIL, RequestGate
from hounsfield.registry.metrics import RegistryMetrics

__all__ = ["add_exception_handlers", "create_app"]

logger = logging.getLogger(__name__)


health = APIRouter(tags=["health"])


@health.get("/health")
def get_health(request: Request, session: SessionDep) -> dict[str, str]:
    """Liveness of the API and its dependencies (database, broker)."""
    ping(session)
    settings: Settings = request.app.state.settings
    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=1).ping()
        broker = "ok"
    except redis.RedisError:
        broker = "unreachable"
    return {"status": "ok", "database": "ok", "broker": broker, "version": __version__}


def _refused(request: Request, exc: Exception) -> JSONResponse:
    """The one answer to a domain refusal (:mod:`hounsfield.errors`); no route catches them itself.

    404 for :class:`~hounsfield.errors.NotFound`; 409 for :class:`~hounsfield.errors.Conflict` (with every
    check of a draft that failed validation); 422 in FastAPI's validation shape for
    :class:`~hounsfield.errors.Invalid` (each manifest issue with its file and field).
    """
    assert isinstance(exc, Refused)
    if isinstance(exc, ManifestInvalid):
        detail: object = [
            {
                "loc": ["body", issue.file.removesuffix(".json"), *[p for p in issue.field.split(".") if p]],
                "msg": f"{issue.file}: {issue.reason}",
                "type": "map_manifest",
            }
            for issue in exc.issues
        ]
        return JSONResponse(status_code=422, content={"detail": detail})
    if isinstance(exc, Invalid):
        detail = [{"loc": ["body", exc.field], "msg": exc.reason, "type": "value_error"}]
        return JSONResponse(status_code=422, content={"detail": detail})
    if isinstance(exc, NotFound):
        return JSONResponse(status_code=404, content={"detail": str(exc)})
    if isinstance(exc, DeploymentChecksFailed):
        detail = {"message": str(exc), "checks": [c.model_dump() for c in exc.checks]}
        return JSONResponse(status_code=409, content={"detail": detail})
    return JSONResponse(status_code=409, content={"detail": str(exc)})


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


def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with the reason and ``Retry-After`` while the database is not reachable (restarting, failing
    over), instead of a bare 500: the client may try again, and nothing it sent was half-done (the
    request's transaction was rolled back). The driver's message is not given: it can quote SQL."""
    if not database_unreachable(exc):
        raise exc  # a statement's own error: a 500, logged as such
    route = request.scope.get("route")
    where = getattr(route, "path_format", None) or "(no route)"  # the template: a path can carry study UIDs
    logger.warning("database unreachable while answering %s %s (%s)", request.method, where, type(exc).__name__)
    return JSONResponse(
        status_code=503,
        content={"detail": DATABASE_UNREACHABLE_DETAIL},
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def add_exception_handlers(app: FastAPI) -> None:
    """How the app answers what it refuses: a request it cannot validate, the domain's refusals, and a
    database it cannot reach."""
    app.add_exception_handler(RequestValidationError, _unprocessable)
    app.add_exception_handler(Refused, _refused)
    for unreachable in DATABASE_UNREACHABLE:
        app.add_exception_handler(unreachable, _database_unavailable)


def create_app(settings: Settings, *, enqueue: Callable[[Job], None] | None = None) -> FastAPI:
    """The API for ``settings``; the database schema is created when missing.

    Raises :class:`~hounsfield.access.SignInImpossible` when nobody could sign in (see
    :func:`~hounsfield.access.ensure_sign_in_possible`).

    With ``registry.stow_enabled`` the app also takes STOW-RS at ``/dicomweb/studies``; its lifespan
    then runs a completeness tracker and a router that hands jobs to ``enqueue`` (the Celery
    enqueuer when not given).
    """
    db = open_database(settings)  # migrations, the use-case taxonomy, the configuration's deployments
    authenticator = Authenticator(db, settings.registry.oidc)  # SignInImpossible: the OIDC keys cannot be loaded
    ensure_sign_in_possible(settings, db, oidc_configured=authenticator.oidc_configured)
    metrics = RegistryMetrics(settings, db)
    metrics.registry.register(DriftCollector(settings, db))  # input drift, computed from the database at each scrape

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        intake = None
        if settings.registry.stow_enabled:
            if app.state.enqueue is None:
                app.state.enqueue = Enqueuer(settings)
            intake = stow.StowIntake(settings, db, app.state.enqueue)
            intake.start()
            app.state.stow = intake
            metrics.include(intake.metrics.registry)
        served = None
        if settings.registry.metrics_port is not None:  # a port of their own, which the API's Ingress never routes
            served = MetricsEndpoint(metrics.registry, settings.registry.host, settings.registry.metrics_port)
        try:
            yield
        finally:
            if served is not None:
                served.stop()
            if intake is not None:
                metrics.exclude(intake.metrics.registry)
                app.state.stow = None
                intake.stop()

    docs = settings.registry.api_docs
    app = FastAPI(
        title="Hounsfield registry",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.add_middleware(RequestGate, max_body_bytes=settings.registry.max_request_body_mb * 2**20)
    metrics.instrument(app)  # outside the gate: its refusals (401, 413) are counted too
    app.add_middleware(RequestCorrelation)  # added last: outermost, so the gate's lines carry the request's id
    app.state.settings = settings
    app.state.db = db
    app.state.stow = None
    app.state.metrics = metrics
    app.state.auth = authenticator
    app.state.enqueue = enqueue
    app.state.dashboard_sessions = None
    add_exception_handlers(app)
    routers = (access_api.router, catalog_api.router, rules_api.router, deployments_api.router, feedback_api.router)
    for router in (health, studies_api.studies, studies_api.jobs, studies_api.results, *routers):
        app.include_router(router)
    if settings.registry.dashboard.enabled:
        dashboard.install(app, settings, db)  # DashboardKeyMissing: registry.dashboard.session_key_env
    if settings.registry.stow_enabled:
        app.include_router(stow.router, dependencies=[Depends(require(Role.SENDER))])

    if settings.registry.metrics_port is None:

        @app.get("/metrics", include_in_schema=False)
        def get_metrics(request: Request) -> Response:
            """Prometheus metrics: queues, unfinished jobs, HTTP requests, and the STOW-RS intake's."""
            served: RegistryMetrics = request.app.state.metrics
            return Response(generate_latest(served.registry), media_type=CONTENT_TYPE_LATEST)

    return app
