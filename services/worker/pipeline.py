"""One job, start to finish: workspace, pre-flight, application, validation gate, export.

Framework-free: the Celery task is a thin adapter around :func:`execute_job`. Every state change
is written to the database as it happens.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from hounsfield.catalog.read_model import DeploymentSpec, get_spec
from hounsfield.catalog.schemas import as_utc
from hounsfield.config import Settings
from hounsfield.db import Database, Job, JobState, Result, Series, Session, database_unreachable, utcnow
from hounsfield.db.index import add_event, series_instance_paths
from hounsfield.db.jobs import (
    claim_job,
    claim_waiting_job,
    finish_job,
    first_event_at,
    job_results,
    record_result,
    set_job_state,
    supersede_results,
)
from hounsfield.db.withdrawals import is_withdrawn
from hounsfield.drift import record_profile
from hounsfield.exporter.delivery import DestinationUnreachable, ExportFailed, deliver
from hounsfield.exporter.display import DisplayIdentity, write_display_copies
from hounsfield.exporter.fhir import AnnouncementFailed, announce
from hounsfield.exporter.identity import JobIdentity, check_results
from hounsfield.exporter.validation import GateRejected, ValidationReport, validate_object, validators
from hounsfield.store import StudyStore
from hounsfield.worker.metrics import WorkerMetrics
from hounsfield.worker.preflight import InputRejected, check_series
from hounsfield.worker.runtimes import (
    ApplicationFailed,
    ApplicationRun,
    ApplicationTimedOut,
    InProcessRuntime,
    ResourcesUnavailable,
    Runtime,
    Runtimes,
)

__all__ = ["WorkerContext", "execute_job", "resume_export", "run_and_check", "write_result_context"]

logger = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
"""This worker process, as the study's events name it (host and process id)."""


@dataclass
class WorkerContext:
    """What a worker process keeps between jobs."""

    settings: Settings
    db: Database
    store: StudyStore
    in_process: InitVar[InProcessRuntime | None] = None
    """The in-process runtime the worker warmed its applications in (a fresh one when not given)."""
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    """The worker process's metrics (the one it serves on ``worker.metrics_port``)."""
    runtimes: Runtimes = field(init=False)

    def __post_init__(self, in_process: InProcessRuntime | None) -> None:
        self.runtimes = Runtimes(self.settings, self.store.root, in_process=in_process)


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> float:
        now = time.perf_counter()
        self.timings[stage] = now - self._t
        self._t = now
        return self.timings[stage]


def _inputs(session: Session, job: Job) -> list[tuple[Series, list[Path]]]:
    out = []
    for uid in job.series_instance_uids:
        series = session.get(Series, uid)
        if series is None:
            raise InputRejected(f"series {uid} is no longer indexed")
        out.append((series, [Path(p) for p in series_instance_paths(session, uid)]))
    return out


def execute_job(ctx: WorkerContext, job_id: str, *, redelivered: bool = False) -> JobState | None:
    """Run one job; returns its final state, or None when it was not ours to run.

    Anything unexpected is recorded as the job's failure reason before it propagates, so that no
    job is left running without a worker; except the database going away (:func:`~hounsfield.db.database_unreachable`),
    which propagates as it is: the task runs the job again once the database answers
    (:func:`hounsfield.worker.tasks.run_job`).
    """
    with ctx.db.session() as session:
        job = claim_job(session, job_id, redelivered=redelivered)
        if job is None:
            logger.info("job %s is finished or owned by another worker; skipping", job_id)
            return None
        queue_wait = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
        job.timings = {**job.timings, "queue_wait": round(queue_wait, 3)}
        ctx.metrics.observe_stages(job.model_name, job.model_version, {"queue_wait": queue_wait})
        add_event(session, job.study_instance_uid, "worker", "job-running", job_id=job_id, worker=WORKER_ID)
    watch = _Stopwatch()
    run_id = uuid.uuid4().hex[:12]  # this run's own workspace: a second delivery of the job never shares it
    state: JobState | None = None
    try:
        state = _run_claimed(ctx, job, watch, run_id)
        return state
    except Exception as exc:  # the task boundary: record, then let Celery log it
        if not database_unreachable(exc):  # an unreachable database is not the job's failure: it runs again
            state = _fail(ctx, job, f"internal error: {type(exc).__name__}: {exc}", watch, kind=type(exc).__name__)
        raise
    finally:
        if not ctx.settings.worker.keep_workspaces:
            ctx.store.remove_workspace(job_id, run_id)
            if state is not None and state.final:  # this run ended the job: a killed run's leftovers go too
                ctx.store.remove_workspace(job_id)


def _run_claimed(ctx: WorkerContext, job: Job, watch: _Stopwatch, run_id: str) -> JobState | None:
    settings, job_id = ctx.settings, job.id
    with ctx.db.session() as session:
        deployment = get_spec(session, job.deployment)
    if deployment is None:
        return _fail(ctx, job, f"deployment {job.deployment!r} is not in the registry", watch, kind="no deployment")
    workspace = ctx.store.workspace(job_id, run_id)
    try:
        with ctx.db.session() as session:
            inputs = _inputs(session, job)
        for series, paths in inputs:
            check_series(series.series_instance_uid, series.series_description, paths)
            ctx.store.link_into(paths, workspace.input)
        write_result_context(
            workspace.work, deployment, mode=job.mode, uid_root=settings.uid_root, job_key=job.idempotency_key
        )
        watch.lap("load")
        sources = [p for _, paths in inputs for p in paths]
        try:
            record_profile(settings, ctx.db, job, sources)
        except Exception as exc:  # input drift is never a reason to fail a job (a header, the database, ...)
            logger.warning("job %s: input not profiled (%s)", job.id, type(exc).__name__)
        watch.lap("profile")
        run = ApplicationRun(job_id, deployment, workspace.input, workspace.output, workspace.work)
        runtime = ctx.runtimes.for_deployment(deployment)
        logger.info("job %s: %s runs in the %s runtime", job_id, deployment.name, runtime.name)
        identity = JobIdentity.of_inputs(job.study_instance_uid, sources)
        reports = run_and_check(runtime, run, identity, validators=validators(settings), lap=watch.lap)
        copies = _display_copies(ctx, job, deployment, reports, sources, workspace.output)
        reports += [validate_object(path, **validators(settings)) for path in copies]
        check_results(reports, identity)
        watch.lap("validate")
    except ApplicationTimedOut as exc:
        watch.lap("inference")
        return _fail(ctx, job, f"timed out: {exc}", watch, state=JobState.TIMED_OUT, kind=type(exc).__name__)
    except GateRejected as exc:
        ctx.metrics.validation_failures.labels(exc.validator).inc()
        return _fail(ctx, job, str(exc), watch, kind=type(exc).__name__)
    except (InputRejected, ResourcesUnavailable, ApplicationFailed) as exc:
        return _fail(ctx, job, str(exc), watch, kind=type(exc).__name__)
    except OSError as exc:
        return _fail(ctx, job, f"workspace error: {exc}", watch, kind=f"workspace {type(exc).__name__}")

    _keep_results(ctx, job_id, reports)
    with ctx.db.session() as session:
        exporting = set_job_state(session, job_id, JobState.EXPORTING, watch.timings)
    if not exporting:
        _ended_elsewhere(job_id)
        return None
    return _export_and_finish(ctx, job, deployment.destinations, watch)


def _ended_elsewhere(job_id: str) -> None:
    """Another run of the job (its message handed out again while this one ran) ended it first: this run
    leaves it as it is and sends nothing."""
    logger.info("job %s was ended by another run of it; this run stops", job_id)


def write_result_context(
    workdir: Path, deployment: DeploymentSpec, *, mode: str, uid_root: str, job_key: str | None
) -> None:
    """``<workdir>/result_context.json``: who makes the job's results (model, version, device UID, mode) and
    the UID root and job key their UIDs derive from (:class:`hounsfield_operators.result_context.ResultContext`)."""
    (workdir / "result_context.json").write_text(
        json.dumps(
            {
                "model_name": deployment.display_name,
                "model_version": deployment.model_version,
                "manufacturer": deployment.manufacturer,
                "device_uid": deployment.device_uid,
                "deployment_mode": mode,
                "uid_root": uid_root,
                "job_key": job_key,
            }
        )
    )


def run_and_check(
    runtime: Runtime,
    run: ApplicationRun,
    identity: JobIdentity,
    *,
    validators: dict[str, Any],
    lap: Callable[[str], object],
) -> list[ValidationReport]:
    """Run the application, then pass every DICOM object it wrote through the validation gate: each valid
    (highdicom, dciodvfy) and naming the job's patient, study and frame of reference (:func:`check_results`).
    ``lap("inference")`` is called when the application has finished."""
    runtime.run(run)
    lap("inference")
    produced = sorted(run.output_dir.rglob("*.dcm"))
    if not produced:
        raise ApplicationFailed("the application finished without writing any DICOM object")
    reports = [validate_object(path, **validators) for path in produced]
    check_results(reports, identity)  # the application's results name this job's patient and study
    return reports


_OUTPUT_OF_KIND = {"SEG": "seg", "SR": "sr", "SC": "sc", "PR": "gsps"}


def _display_copies(
    ctx: WorkerContext, job: Job, deployment: DeploymentSpec, reports: list[ValidationReport], sources: list[Path],
    output: Path,
) -> list[Path]:  # fmt: skip
    """The SC and GSPS copies of the SEG that the deployment's destinations ask for (none otherwise)."""
    configured = [ctx.settings.destinations[d] for d in deployment.destinations if d in ctx.settings.destinations]
    wanted = {str(output) for d in configured for output in d.outputs} & {"sc", "gsps"}
    seg = next((r.path for r in reports if r.kind == "SEG"), None)
    if not wanted or seg is None:
        return []
    identity = DisplayIdentity(
        model_name=deployment.display_name, model_version=deployment.model_version, uid_root=ctx.settings.uid_root,
        job_key=job.idempotency_key, manufacturer=deployment.manufacturer,
    )  # fmt: skip
    return write_display_copies(seg, sources, wanted, identity, output / "display")


def _export_and_finish(ctx: WorkerContext, job: Job, destinations: Sequence[str], watch: _Stopwatch) -> JobState | None:
    """Send what is not sent yet; done, waiting for an unreachable destination, or failed."""
    mode = _export_mode(ctx, job)
    try:
        _export(ctx, job, destinations, mode)
    except DestinationUnreachable as exc:
        ctx.metrics.export_failures.labels(exc.protocol, exc.kind).inc()
        return _wait_or_fail(ctx, job, destinations, exc, watch)
    except ExportFailed as exc:
        ctx.metrics.export_failures.labels(exc.protocol, exc.kind).inc()
        return _fail(ctx, job, str(exc), watch, kind=type(exc).__name__)
    watch.lap("export")
    waited = _waited_s(ctx, job)
    if waited is not None:
        watch.timings["export_wait"] = waited
    with ctx.db.session() as session:
        ended = finish_job(session, job.id, JobState.DONE, watch.timings)
        if ended:
            supersede_results(session, job.id)  # a re-evaluated study: this job's results are the new version
    if not ended:
        _ended_elsewhere(job.id)
        return None
    _count_finished(ctx, job, JobState.DONE, watch)
    logger.info("job %s done in %.2f s", job.id, sum(watch.timings.values()))
    _announce(ctx, job, mode)
    return JobState.DONE


def _announce(ctx: WorkerContext, job: Job, mode: str) -> None:
    """Announce the results to the RIS/EHR over FHIR when configured for this mode. A failure is recorded
    on the study's path (the results are in the PACS already; the job stays done)."""
    fhir = ctx.settings.fhir
    if fhir is None or mode not in fhir.modes:
        return
    with ctx.db.session() as session:
        if is_withdrawn(session, job.id):
            return
        sr = next(iter(job_results(session, job.id, kind="SR")), None)
    if sr is None:
        return
    try:
        where = announce(Path(sr.path), fhir, model_name=job.model_name, model_version=job.model_version)
    except (AnnouncementFailed, ValueError) as exc:
        # The server's words may quote the report's patient: they are in the study's events, not here.
        logger.warning("job %s: results not announced over FHIR (%s)", job.id, type(exc).__name__)
        with ctx.db.session() as session:
            add_event(session, job.study_instance_uid, "worker", "fhir-failed", job_id=job.id, reason=str(exc))
        return
    with ctx.db.session() as session:
        add_event(session, job.study_instance_uid, "worker", "fhir-announced", job_id=job.id, location=where)


def resume_export(ctx: WorkerContext, job_id: str, *, resumed: bool = False) -> JobState | None:
    """Try a waiting job's export again; None when it is not waiting (another delivery took it).

    ``resumed``: this attempt met an unreachable database before and may take over the job it left exporting.
    """
    with ctx.db.session() as session:
        job = claim_waiting_job(session, job_id, resumed=resumed)
        if job is None:
            return None
        add_event(session, job.study_instance_uid, "worker", "export-retry", job_id=job_id)
    ctx.metrics.export_retries.labels("queued").inc()
    with ctx.db.session() as session:
        deployment = get_spec(session, job.deployment)
    watch = _Stopwatch()
    if deployment is None:
        return _fail(ctx, job, f"deployment {job.deployment!r} is not in the registry", watch, kind="no deployment")
    try:
        return _export_and_finish(ctx, job, deployment.destinations, watch)
    except Exception as exc:  # the task boundary: record, then let Celery log it
        if not database_unreachable(exc):  # not the job's failure: it stays exporting, and runs again
            _fail(ctx, job, f"internal error: {type(exc).__name__}: {exc}", watch, kind=type(exc).__name__)
        raise


def _waited_s(ctx: WorkerContext, job: Job) -> float | None:
    """Seconds since the job first had to wait for a destination; None when it never waited."""
    with ctx.db.session() as session:
        first = first_event_at(session, job.id, "export-waiting")
    return None if first is None else (utcnow() - as_utc(first)).total_seconds()


def _wait_or_fail(
    ctx: WorkerContext, job: Job, destinations: Sequence[str], unreachable: DestinationUnreachable, watch: _Stopwatch
) -> JobState | None:
    configured = [ctx.settings.destinations[d] for d in destinations if d in ctx.settings.destinations]
    limit = min((d.wait_max_s for d in configured), default=86400.0)
    waited = _waited_s(ctx, job) or 0.0
    reason = str(unreachable)
    if waited >= limit:
        ctx.metrics.export_failures.labels(unreachable.protocol, "gave_up").inc()
        return _fail(ctx, job, f"{reason}; gave up after waiting {waited:.0f} s", watch, kind="gave up waiting")
    logger.warning("job %s waits for its destination: %s", job.id, reason)
    with ctx.db.session() as session:
        waiting = set_job_state(session, job.id, JobState.WAITING, watch.timings)
        if waiting:
            add_event(session, job.study_instance_uid, "worker", "export-waiting", job_id=job.id, reason=reason)
    if not waiting:
        _ended_elsewhere(job.id)
        return None
    ctx.metrics.export_waits.inc()
    ctx.metrics.observe_stages(job.model_name, job.model_version, watch.timings)
    return JobState.WAITING


def _keep_results(ctx: WorkerContext, job_id: str, reports: list[ValidationReport]) -> None:
    """Move validated objects out of the workspace into the store's results folder and record them."""
    folder = ctx.store.root / "results" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    with ctx.db.session() as session:
        for report in reports:
            target = folder / f"{report.kind.lower()}-{report.sop_instance_uid}.dcm"
            report.path.replace(target)
            record_result(
                session,
                job_id=job_id,
                kind=report.kind,
                sop_class_uid=report.sop_class_uid,
                sop_instance_uid=report.sop_instance_uid,
                series_instance_uid=report.series_instance_uid,
                path=str(target),
                summary={"validator_warnings": report.warnings},
            )


def _export_mode(ctx: WorkerContext, job: Job) -> str:
    """The job's mode, unless its deployment has since left research or clinical (a rollback, a retirement):
    then its results are held back from clinical destinations like a shadow job's."""
    with ctx.db.session() as session:
        now = get_spec(session, job.deployment)
    if job.mode != "shadow" and (now is None or now.stage.value not in ("research", "clinical")):
        stage = now.stage.value if now is not None else "gone"
        with ctx.db.session() as session:
            add_event(session, job.study_instance_uid, "worker", "export-held", job_id=job.id, stage=stage)
        return "shadow"
    return job.mode


def _export(ctx: WorkerContext, job: Job, names: Sequence[str], mode: str) -> None:
    """Send the job's results to each destination that does not have them yet.

    Each delivery is recorded (``Result.exported_to``) as soon as the destination took it, so that
    a retry after an outage sends only what is missing.
    """
    with ctx.db.session() as session:
        if is_withdrawn(session, job.id):
            logger.info("job %s: its results were withdrawn; nothing more is sent", job.id)
            add_event(session, job.study_instance_uid, "worker", "export-withdrawn", job_id=job.id)
            return
        results = job_results(session, job.id)
    for name in names:
        destination = ctx.settings.destinations.get(name)
        if destination is None:
            raise ExportFailed(f"destination {name!r} is not configured on this worker", kind="not_configured")
        if mode == "shadow" and destination.clinical:
            logger.info("job %s: shadow results are never sent to clinical destination %s", job.id, name)
            continue
        pending = [
            r for r in results if name not in r.exported_to and _OUTPUT_OF_KIND.get(r.kind) in destination.outputs
        ]
        if not pending:
            continue
        try:
            attempts = deliver([Path(r.path) for r in pending], destination, calling_ae=ctx.settings.listener.ae_title)
        except DestinationUnreachable:
            ctx.metrics.export_retries.labels("delivery").inc(destination.retries)
            raise
        ctx.metrics.export_retries.labels("delivery").inc(attempts - 1)
        with ctx.db.session() as session:
            for result in pending:
                row = session.get(Result, result.id, with_for_update=True)
                assert row is not None
                if name not in row.exported_to:  # an overlapping run of the job may have recorded it first
                    row.exported_to = [*row.exported_to, name]
                result.exported_to = row.exported_to


def _fail(
    ctx: WorkerContext, job: Job, reason: str, watch: _Stopwatch, *, kind: str, state: JobState = JobState.FAILED
) -> JobState | None:
    """Record the job's end with ``reason`` (its error, shown by the registry); the log says only ``kind``:
    a reason may quote an application's, a validator's or a library's words, and those may quote a patient.
    None when another run of the job ended it first (its end stands)."""
    with ctx.db.session() as session:
        ended = finish_job(session, job.id, state, watch.timings, error=reason)
    if not ended:
        _ended_elsewhere(job.id)
        return None
    logger.warning("job %s %s (%s); the reason is the job's error", job.id, state.value, kind)
    _count_finished(ctx, job, state, watch)
    return state


def _count_finished(ctx: WorkerContext, job: Job, state: JobState, watch: _Stopwatch) -> None:
    """The metrics of a run that ended the job: the stages it timed, and its outcome."""
    ctx.metrics.observe_stages(job.model_name, job.model_version, watch.timings)
    ctx.metrics.jobs_finished.labels(job.model_name, job.model_version, state.value).inc()
