"""Input drift per model version: profiles recorded, windows compared, crossings recorded once.

Each version's *reference* is its first ``drift.reference_jobs`` profiled jobs, or, when a model
developer set a reference window (dates), its first that many profiled in the window. Its *recent
window* is its last ``drift.window_jobs`` profiled jobs after the reference. Each feature is compared
(:mod:`hounsfield.drift.compare`); the version is ``drifting`` when any feature is, ``not_enough_data``
while either window holds fewer jobs than its minimum, ``ok`` otherwise.

When a version starts drifting an event ``drift_detected`` (actor ``drift``) is written on the path of
the study whose job tipped it, once per crossing (the version's state is changed by a conditional
update, so two workers record it once); ``drift_cleared`` when it comes back. ``not_enough_data``
changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from hounsfield.access import Principal, record
from hounsfield.config import DriftSettings, Settings
from hounsfield.db import Database, Job, Session
from hounsfield.db.drift import (
    InputProfile,
    add_profile,
    drift_state,
    ensure_drift_state,
    has_profile,
    profiled_versions,
    reference_profiles,
    set_drifting,
    study_of_job,
    version_known,
    window_profiles,
)
from hounsfield.db.index import add_event
from hounsfield.drift.compare import NUMERIC_FEATURES, FeatureDrift, compare_feature
from hounsfield.drift.profile import Profile, ProfileFailed, profile_input
from hounsfield.errors import Invalid, NotFound

__all__ = [
    "DriftStatus",
    "ReferenceWindow",
    "drift_status",
    "drift_statuses",
    "evaluate",
    "record_profile",
    "set_reference_window",
    "store_profile",
]

logger = logging.getLogger(__name__)


class ReferenceWindow(BaseModel):
    """An explicit reference: the profiles taken from ``start`` to ``end`` (both null: the first jobs)."""

    start: datetime | None = None
    end: datetime | None = None


class DriftStatus(BaseModel):
    """One version's drift, as a dashboard shows it."""

    model_name: str
    model_version: str
    status: Literal["ok", "drifting", "not_enough_data"]
    reference: Literal["first_jobs", "window"]
    """The version's first profiled jobs, or the window a model developer set."""
    reference_start: datetime | None
    reference_end: datetime | None
    reference_jobs: int
    window_jobs: int
    features: list[FeatureDrift]


def evaluate(session: Session, settings: DriftSettings, model_name: str, model_version: str) -> DriftStatus:
    """Compare the version's recent window with its reference (at most ``reference_jobs + window_jobs`` rows read)."""
    status, _ = _evaluate(session, settings, model_name, model_version)
    return status


def _evaluate(
    session: Session, settings: DriftSettings, model_name: str, model_version: str
) -> tuple[DriftStatus, str | None]:
    """The status, and the job of the newest profile in the recent window (None when it is empty)."""
    state = drift_state(session, model_name, model_version)
    start, end = (state.reference_start, state.reference_end) if state is not None else (None, None)
    reference = reference_profiles(
        session, model_name, model_version, limit=settings.reference_jobs, start=start, end=end
    )
    after = reference[-1].id if reference else 0
    window = window_profiles(session, model_name, model_version, limit=settings.window_jobs, after_id=after)
    features = [_compare("scanner", reference, window, settings)]
    features += [_compare(feature, reference, window, settings) for feature in NUMERIC_FEATURES]
    verdict: Literal["ok", "drifting", "not_enough_data"]
    if len(reference) < settings.min_reference_jobs or len(window) < settings.min_window_jobs:
        verdict = "not_enough_data"
    elif any(f.status == "drifting" for f in features):
        verdict = "drifting"
    else:
        verdict = "ok"
    status = DriftStatus(
        model_name=model_name,
        model_version=model_version,
        status=verdict,
        reference="window" if start is not None else "first_jobs",
        reference_start=start,
        reference_end=end,
        reference_jobs=len(reference),
        window_jobs=len(window),
        features=features,
    )
    return status, (window[-1].job_id if window else None)


def _compare(
    feature: str, reference: Sequence[InputProfile], window: Sequence[InputProfile], settings: DriftSettings
) -> FeatureDrift:
    return compare_feature(
        feature, [getattr(p, feature) for p in reference], [getattr(p, feature) for p in window], settings
    )


def _settle(session: Session, status: DriftStatus, job_id: str | None) -> None:
    """Record a crossing (once): ``drift_detected`` or ``drift_cleared`` on the path of ``job_id``'s study."""
    if status.status == "not_enough_data" or job_id is None:
        return
    drifting = status.status == "drifting"
    name, version = status.model_name, status.model_version
    if not set_drifting(session, name, version, drifting):
        return
    study = study_of_job(session, job_id)
    if study is None:
        return
    kind = "drift_detected" if drifting else "drift_cleared"
    shown = [f for f in status.features if f.status == "drifting"] if drifting else status.features
    scores = {f.feature: f.score for f in shown}
    add_event(session, study, "drift", kind, job_id=job_id, model_name=name, model_version=version, scores=scores)
    if drifting:
        logger.warning("%s %s: input drift detected in %s", name, version, ", ".join(scores))
    else:
        logger.info("%s %s: input drift cleared", name, version)


def record_profile(settings: Settings, db: Database, job: Job, paths: Sequence[Path]) -> Profile | None:
    """Profile ``job``'s input, store it and compare the version's windows (recording a crossing).

    None when drift monitoring is off, the job was profiled before (a redelivered job), or the input could
    not be profiled (logged with the error's type
    only; the job goes on: a profile is never a reason to fail one).
    """
    if not settings.drift.enabled:
        return None
    with db.session() as session:
        if has_profile(session, job.id):  # a redelivered job: profiled on its first run
            return None
    try:
        profile = profile_input(paths, settings.drift, seed=job.idempotency_key)
    except ProfileFailed as exc:
        logger.warning("job %s: input not profiled: %s", job.id, exc)
        return None
    store_profile(settings, db, job, profile)
    return profile


def store_profile(settings: Settings, db: Database, job: Job, profile: Profile) -> DriftStatus:
    """Store ``job``'s profile and compare its version's windows again (a crossing recorded once)."""
    with db.session() as session:
        add_profile(session, job, **profile.model_dump())
        ensure_drift_state(session, job.model_name, job.model_version)
        status, _ = _evaluate(session, settings.drift, job.model_name, job.model_version)
        _settle(session, status, job.id)
    return status


def drift_status(session: Session, settings: Settings, *, model_name: str, model_version: str) -> DriftStatus:
    """The version's drift now; :class:`~hounsfield.errors.NotFound` for a version neither catalogued nor profiled."""
    if not version_known(session, model_name, model_version):
        raise NotFound(f"no version {model_version!r} of model {model_name!r} in the catalog or profiled")
    return evaluate(session, settings.drift, model_name, model_version)


def drift_statuses(session: Session, settings: Settings, *, model_name: str | None = None) -> list[DriftStatus]:
    """The drift of the most recently profiled versions (at most ``drift.max_metric_versions``)."""
    versions = profiled_versions(session, limit=settings.drift.max_metric_versions, model_name=model_name)
    return [evaluate(session, settings.drift, name, version) for name, version in versions]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def set_reference_window(
    session: Session,
    principal: Principal,
    settings: Settings,
    *,
    model_name: str,
    model_version: str,
    window: ReferenceWindow,
) -> DriftStatus:
    """Set the version's reference to the profiles taken in ``window`` (both ends null: back to its first
    jobs); audited. The windows are compared again at once and a crossing recorded."""
    if (window.start is None) != (window.end is None):
        raise Invalid("end" if window.end is None else "start", "a reference window needs both its start and end")
    start = _utc(window.start) if window.start is not None else None
    end = _utc(window.end) if window.end is not None else None
    if start is not None and end is not None and start >= end:
        raise Invalid("end", "the reference window must end after it starts")
    if not version_known(session, model_name, model_version):
        raise NotFound(f"no version {model_version!r} of model {model_name!r} in the catalog or profiled")
    ensure_drift_state(session, model_name, model_version)
    state = drift_state(session, model_name, model_version)
    assert state is not None
    session.refresh(state)
    before = {"start": _shown(state.reference_start), "end": _shown(state.reference_end)}
    state.reference_start, state.reference_end = start, end
    session.flush()
    after = {"start": _shown(start), "end": _shown(end)}
    record(session, principal, "model_version.drift_reference", "model_version", f"{model_name}@{model_version}",
           before=before, after=after)  # fmt: skip
    status, job_id = _evaluate(session, settings.drift, model_name, model_version)
    _settle(session, status, job_id)
    return status


def _shown(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).isoformat()
