"""How fast a use case is served: which versions serve it, how they are deployed, their measured latency.

A version's latency is taken over its most recent finished jobs (:data:`LATENCY_WINDOW`) and compared
with the use case's objective (per study, or per instance where the guideline states it per slice).
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hounsfield.catalog.models import newest_first
from hounsfield.catalog.schemas import MeasuredLatency, UseCaseVersion, as_utc
from hounsfield.catalog.taxonomy import use_case_row
from hounsfield.db.catalog import LatencyScope, Model, UseCase
from hounsfield.db.deployments import ACTIVE_STAGES, Deployment, Stage
from hounsfield.db.models import Instance, Job, JobState

__all__ = ["LATENCY_WINDOW", "measured_latency", "use_case_versions"]

LATENCY_WINDOW = 500
"""How many of a version's most recent finished jobs its measured latency is taken over."""


def _seconds(later: datetime, earlier: datetime) -> float:
    # SQLite gives naive datetimes (UTC), rows made in this session aware ones: compare both as UTC.
    return (as_utc(later) - as_utc(earlier)).total_seconds()


def _instances(session: Session, series: list[Any]) -> int:
    if not series:
        return 0
    count = session.scalar(select(func.count()).select_from(Instance).where(Instance.series_instance_uid.in_(series)))
    return int(count or 0)


def measured_latency(session: Session, *, use_case: UseCase, model: Model, version: str) -> MeasuredLatency:
    """The latency of a version's most recent finished jobs against ``use_case``'s objective.

    Jobs record the model by the name their deployment gives it; deployments from the settings file
    use the display name, so both the catalog name and the display name are matched. Turnaround is
    taken from the study's completion (the completeness wait in the job's timings) to the result.
    """
    jobs = session.scalars(
        select(Job)
        .where(
            Job.model_name.in_({model.name, model.display_name}),
            Job.model_version == version,
            Job.state == JobState.DONE,
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(LATENCY_WINDOW)
    ).all()
    runs, turnarounds, latencies = [], [], []
    for job in jobs:
        assert job.started_at is not None and job.finished_at is not None
        runs.append(_seconds(job.finished_at, job.started_at))
        turnaround = _seconds(job.finished_at, job.created_at) + float(job.timings.get("completeness", 0.0))
        turnarounds.append(turnaround)
        if use_case.latency_per == LatencyScope.INSTANCE:
            count = _instances(session, job.series_instance_uids)
            if count:
                latencies.append(turnaround / count)
        else:
            latencies.append(turnaround)
    median_latency = statistics.median(latencies) if latencies else None
    objective = use_case.latency_objective_s
    reason = None
    within: bool | None = None
    if objective is None:
        reason = f"the use case states no latency objective ({use_case.objective or 'none'})"
    elif not jobs:
        reason = "no finished job of this version yet"
    elif median_latency is None:
        reason = "the finished jobs' series have no indexed instances to take a per-instance latency over"
    else:
        within = median_latency <= objective
    return MeasuredLatency(
        done_jobs=len(jobs),
        median_run_s=statistics.median(runs) if runs else None,
        median_turnaround_s=statistics.median(turnarounds) if turnarounds else None,
        median_latency_s=median_latency,
        latency_objective_s=objective,
        latency_per=use_case.latency_per,
        within_objective=within,
        reason=reason,
    )


def use_case_versions(session: Session, *, key: str) -> list[UseCaseVersion]:
    """Which model versions serve the use case ``key``, how they are deployed, how fast they have been.

    A version's deployments are those bound to it in the catalog, and configuration-declared ones
    that name the model (by name or display name) and the version.
    """
    use_case = use_case_row(session, key)
    found = []
    for model in use_case.models:
        for row in newest_first(model.versions):
            bound = session.scalars(
                select(Deployment)
                .where(
                    (Deployment.model_version_id == row.id)
                    | (
                        Deployment.model_version_id.is_(None)
                        & Deployment.model_name.in_({model.name, model.display_name})
                        & (Deployment.model_version == row.version)
                    ),
                    Deployment.stage != Stage.RETIRED,
                )
                .order_by(Deployment.name)
            ).all()
            running = [d.stage for d in bound if d.stage in ACTIVE_STAGES]
            mode = next((s.value for s in (Stage.CLINICAL, Stage.RESEARCH, Stage.SHADOW) if s in running), None)
            found.append(
                UseCaseVersion(
                    model_name=model.name,
                    version=row.version,
                    published=row.published,
                    device_uid=row.device_uid,
                    deployments=[{"name": d.name, "stage": d.stage.value, "rule": d.rule_name} for d in bound],
                    mode=mode,
                    latency=measured_latency(session, use_case=use_case, model=model, version=row.version),
                )
            )
    return found
