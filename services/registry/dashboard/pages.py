"""The dashboard's pages (GET): each needs the role its API route needs, and reads through the same
service functions. Reads of studies, jobs and results are logged as the API's are, without patient data
(:mod:`hounsfield.registry.read_log`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

from hounsfield.catalog import deployments, models, taxonomy
from hounsfield.catalog.schemas import DeploymentPublic
from hounsfield.db import JobState, StudyState
from hounsfield.db.access import list_audit
from hounsfield.db.feedback import feedback_rows
from hounsfield.db.index import list_studies, study_state_counts
from hounsfield.db.jobs import RETRYABLE, get_job, job_state_counts, list_jobs, list_results_of_studies
from hounsfield.db.retention import recent_purges
from hounsfield.drift import DriftStatus, evaluate
from hounsfield.errors import NotFound
from hounsfield.feedback import summarise
from hounsfield.registry.access_api import AuditPublic
from hounsfield.registry.dashboard._callers import AdminCaller, ReaderCaller
from hounsfield.registry.dashboard._render import Paging, render
from hounsfield.registry.deps import SessionDep
from hounsfield.registry.read_log import log_read
from hounsfield.registry.schemas import FeedbackPublic, JobPublic, ResultPublic, StudyPublic
from hounsfield.registry.studies_api import study_detail
from hounsfield.retention import keep_policy, plan_purge
from hounsfield.store import StudyStore

__all__ = ["router"]

router = APIRouter(prefix="/dashboard", include_in_schema=False)

PageNumber = Annotated[int, Query(ge=1, le=1_000_000)]
PageSize = Annotated[int | None, Query(ge=1, le=500)]
Uid = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")]
JobId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]
DeploymentName = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]


def _paging(request: Request, page: int, size: int | None) -> Paging:
    return Paging.of(request.app.state.settings.registry.dashboard, page, size)


def _paged(name: str, rows: Sequence[object], paging: Paging) -> dict[str, object]:
    """A page of ``rows`` (fetched one beyond it) as ``name``, whether more follow, and the paging."""
    return {name: rows[: paging.size], "more": len(rows) > paging.size, "paging": paging}


@router.get("", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep, caller: ReaderCaller) -> HTMLResponse:
    """How many studies and jobs are in each state, and the latest failures."""
    studies = study_state_counts(session)
    jobs = job_state_counts(session)
    failed = [JobPublic.model_validate(j) for j in list_jobs(session, state=JobState.FAILED, limit=5)]
    log_read(request, len(failed))
    context = {"studies": studies, "jobs": jobs, "failed": failed, "StudyState": StudyState, "JobState": JobState}
    return render(request, "overview.html", context)


@router.get("/studies", response_class=HTMLResponse)
def studies_page(
    request: Request,
    session: SessionDep,
    caller: ReaderCaller,
    state: StudyState | None = None,
    page: PageNumber = 1,
    size: PageSize = None,
) -> HTMLResponse:
    paging = _paging(request, page, size)
    found = list_studies(session, state=state, limit=paging.fetch, offset=paging.offset)
    rows = [StudyPublic.model_validate(s) for s in found]
    log_read(request, len(rows[: paging.size]))
    context = {**_paged("studies", rows, paging), "state": state, "states": list(StudyState)}
    return render(request, "studies.html", context)


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_uid: Uid, session: SessionDep, caller: ReaderCaller) -> HTMLResponse:
    """A study's completeness state and its path: series, events, jobs with their timings, results."""
    detail = study_detail(session, request.app.state.settings, study_uid)
    log_read(request, 1)
    return render(request, "study.html", {"study": detail, "retryable": [s.value for s in RETRYABLE]})


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    session: SessionDep,
    caller: ReaderCaller,
    state: JobState | None = None,
    page: PageNumber = 1,
    size: PageSize = None,
) -> HTMLResponse:
    paging = _paging(request, page, size)
    found = list_jobs(session, state=state, limit=paging.fetch, offset=paging.offset)
    rows = [JobPublic.model_validate(j) for j in found]
    log_read(request, len(rows[: paging.size]))
    context = {**_paged("jobs", rows, paging), "state": state, "states": list(JobState)}
    return render(request, "jobs.html", context)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: JobId, session: SessionDep, caller: ReaderCaller) -> HTMLResponse:
    """A job: its state, error, per-stage timings, results, and a retry button when it failed."""
    job = get_job(session, job_id)
    if job is None:
        raise NotFound("no job with this id")
    log_read(request, 1)
    retryable = job.state in RETRYABLE and job.superseded_by is None
    return render(request, "job.html", {"job": JobPublic.model_validate(job), "retryable": retryable})


@router.get("/results", response_class=HTMLResponse)
def results_page(
    request: Request, session: SessionDep, caller: ReaderCaller, page: PageNumber = 1, size: PageSize = None
) -> HTMLResponse:
    paging = _paging(request, page, size)
    found = list_results_of_studies(session, limit=paging.fetch, offset=paging.offset)
    rows = [(ResultPublic.model_validate(r), study_uid) for r, study_uid in found]
    log_read(request, len(rows[: paging.size]))
    return render(request, "results.html", _paged("results", rows, paging))


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep, caller: ReaderCaller) -> HTMLResponse:
    """Models, their versions and deployments, by use case of the taxonomy."""
    use_cases = {u.key: u for u in taxonomy.list_use_cases(session)}
    filed = models.list_models(session, limit=500)
    by_model: dict[str, list[DeploymentPublic]] = defaultdict(list)
    for deployment in deployments.list_deployments(session):
        by_model[deployment.model].append(deployment)
    groups: dict[str, list[object]] = defaultdict(list)
    for model in filed:
        for key in model.use_cases:
            groups[key].append(model)
    catalogued = {m.name for m in filed}
    unfiled = [d for name, ds in sorted(by_model.items()) if name not in catalogued for d in ds]
    drift_settings = request.app.state.settings.drift
    drift: dict[tuple[str, str], DriftStatus] = {}
    for deployment in (d for ds in by_model.values() for d in ds):
        version = (deployment.model, deployment.version)
        if version not in drift:  # each version read once: at most reference_jobs + window_jobs profiles
            drift[version] = evaluate(session, drift_settings, *version)
    context = {"use_cases": use_cases, "groups": dict(sorted(groups.items())), "deployments": by_model}
    return render(request, "models.html", {**context, "unfiled": unfiled, "drift": drift})


@router.get("/deployments/{name}", response_class=HTMLResponse)
def deployment_page(request: Request, name: DeploymentName, session: SessionDep, caller: ReaderCaller) -> HTMLResponse:
    """A deployment, its transitions, and the promotions and rollback its stage allows."""
    deployment = deployments.get_deployment(session, name)
    stages = deployments.next_stages(deployment.stage)
    context = {
        "deployment": deployment,
        "next_stages": stages,
        "rollback_to": deployments.rollback_stage(deployment.stage),
        "needs_admin": {s.value: deployments.promotion_needs_admin(deployment.stage, s) for s in stages},
    }
    return render(request, "deployment.html", context)


@router.get("/feedback", response_class=HTMLResponse)
def feedback_page(
    request: Request, session: SessionDep, caller: ReaderCaller, page: PageNumber = 1, size: PageSize = None
) -> HTMLResponse:
    """Per use case and version: agreement and rejections; then the latest verdicts."""
    paging = _paging(request, page, size)
    summary = summarise(request.app.state.db)
    rows = [FeedbackPublic.model_validate(f) for f in feedback_rows(session, limit=paging.fetch, offset=paging.offset)]
    log_read(request, len(summary) + len(rows[: paging.size]))
    return render(request, "feedback.html", {"summary": summary, **_paged("verdicts", rows, paging)})


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request, session: SessionDep, caller: AdminCaller, page: PageNumber = 1, size: PageSize = None
) -> HTMLResponse:
    """The audit trail, newest first (administrators, as ``GET /audit``)."""
    paging = _paging(request, page, size)
    rows = [AuditPublic.model_validate(a) for a in list_audit(session, limit=paging.fetch, offset=paging.offset)]
    return render(request, "audit.html", _paged("entries", rows, paging))


@router.get("/retention", response_class=HTMLResponse)
def retention_page(request: Request, session: SessionDep, caller: ReaderCaller) -> HTMLResponse:
    """The study store's disk and marks, the retention policy, what a purge would take now (a dry run:
    nothing is deleted) and the latest purges."""
    settings = request.app.state.settings
    plan = plan_purge(settings, request.app.state.db, StudyStore(settings.data_dir).root)
    shown = settings.registry.dashboard.page_size
    purges = recent_purges(session, limit=shown)
    log_read(request, min(len(plan.candidates), shown) + len(purges))
    context = {
        "plan": plan,
        "candidates": plan.candidates[:shown],
        "policy": keep_policy(settings),
        "retention": settings.retention,
        "purges": purges,
    }
    return render(request, "retention.html", context)
