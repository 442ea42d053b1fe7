"""Retention's statements: what the policy needs to know of each study, and the purge's claim.

A purge claims a study with one conditional ``UPDATE`` (still routed or without a route, not
received since it was planned, no job queued, running, exporting or waiting) that marks it purged,
and deletes its instance rows in the same transaction; only the files of the rows it deleted are
removed afterwards. Two purgers at once: the second's ``UPDATE`` matches nothing. An instance
arriving meanwhile: its index write sets the study back to receiving (after the claim's commit on
PostgreSQL, whose row lock it waits for; SQLite serializes writers), so the study starts over.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, exists, func, select, update
from sqlalchemy.orm import Session

from hounsfield.db.access import AuditEntry
from hounsfield.db.deployments import Deployment
from hounsfield.db.index import add_event
from hounsfield.db.models import Event, Instance, Job, JobState, Series, Study, StudyState

__all__ = [
    "ACTIVE_JOB_STATES",
    "PURGEABLE_STATES",
    "StudyRetentionFacts",
    "claim_study_purge",
    "delete_audit_before",
    "finished_jobs_before",
    "indexed_paths",
    "recent_purges",
    "retention_facts",
]

ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.EXPORTING, JobState.WAITING)
"""A study with a job in one of these states is never purged: the job reads or may read its files."""
PURGEABLE_STATES = (StudyState.ROUTED, StudyState.NO_ROUTE)
"""Receiving and complete (routing pending) studies are never purged, nor purged ones again."""


def _aware(value: datetime | None) -> datetime | None:
    """SQLite gives datetimes back without their zone; every one Hounsfield writes is UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@dataclass(frozen=True)
class StudyRetentionFacts:
    """What the retention policy reads of one study (no patient data)."""

    study_instance_uid: str
    state: StudyState
    completed_at: datetime | None
    last_received_at: datetime
    last_job_end: datetime | None
    """When its last job ended (a job superseded before it ran: when it was made); None without jobs."""
    active_jobs: int
    calling_aes: tuple[str, ...]
    deployments: tuple[str, ...]
    rules: tuple[str, ...]
    instances: int
    bytes: int


def retention_facts(session: Session) -> list[StudyRetentionFacts]:
    """Every study not yet purged, with its jobs' end, its senders, deployments and rules, and its size."""
    studies = session.execute(
        select(Study.study_instance_uid, Study.state, Study.completed_at, Study.last_received_at).where(
            Study.state != StudyState.PURGED
        )
    ).all()
    sizes = {
        uid: (int(n), int(total or 0))
        for uid, n, total in session.execute(
            select(Series.study_instance_uid, func.count(), func.sum(Instance.size))
            .join(Instance, Instance.series_instance_uid == Series.series_instance_uid)
            .group_by(Series.study_instance_uid)
        )
    }
    callers: dict[str, set[str]] = defaultdict(set)
    for uid, calling_ae in session.execute(select(Series.study_instance_uid, Series.calling_ae).distinct()):
        if calling_ae:
            callers[uid].add(calling_ae)
    rule_of = {name: rule for name, rule in session.execute(select(Deployment.name, Deployment.rule_name))}
    ends: dict[str, datetime] = {}
    active: dict[str, int] = defaultdict(int)
    deployments: dict[str, set[str]] = defaultdict(set)
    rows = session.execute(select(Job.study_instance_uid, Job.deployment, Job.state, Job.finished_at, Job.created_at))
    for uid, deployment, state, finished_at, created_at in rows:
        deployments[uid].add(deployment)
        if JobState(state) in ACTIVE_JOB_STATES:
            active[uid] += 1
            continue
        end = _aware(finished_at or created_at)
        if end is not None and (uid not in ends or end > ends[uid]):
            ends[uid] = end
    facts = []
    for uid, study_state, completed_at, last_received_at in studies:
        instances, size = sizes.get(uid, (0, 0))
        names = tuple(sorted(deployments[uid]))
        facts.append(
            StudyRetentionFacts(
                study_instance_uid=uid,
                state=StudyState(study_state),
                completed_at=_aware(completed_at),
                last_received_at=cast(datetime, _aware(last_received_at)),
                last_job_end=ends.get(uid),
                active_jobs=active[uid],
                calling_aes=tuple(sorted(callers[uid])),
                deployments=names,
                rules=tuple(sorted({rule_of[name] for name in names if name in rule_of})),
                instances=instances,
                bytes=size,
            )
        )
    return facts


def claim_study_purge(
    session: Session, study_uid: str, *, folder: str, last_received_at: datetime, detail: dict[str, Any]
) -> list[tuple[str, int]] | None:
    """Mark a study purged and delete its instance rows whose file lies under ``folder`` (the study's own
    folder of the store, ending with a separator: a row another study's instance took over, by a reused
    series or SOP UID, points elsewhere and is left alone); the (path, size) of each row deleted.

    None (nothing changed) unless the study is still routed or without a route, was last received at
    ``last_received_at`` (as planned), and has no job queued, running, exporting or waiting. The
    study's path gets a ``purged`` event by ``retention`` with ``detail`` and the instances and bytes.
    """
    busy = exists().where(Job.study_instance_uid == Study.study_instance_uid, Job.state.in_(ACTIVE_JOB_STATES))
    claimed = session.execute(
        update(Study)
        .where(
            Study.study_instance_uid == study_uid,
            Study.state.in_(PURGEABLE_STATES),
            Study.last_received_at == last_received_at,
            ~busy,
        )
        .values(state=StudyState.PURGED)
        .execution_options(synchronize_session=False)
    )
    if not cast(CursorResult[Any], claimed).rowcount:
        return None
    series = select(Series.series_instance_uid).where(Series.study_instance_uid == study_uid)
    own = (Instance.series_instance_uid.in_(series), func.substr(Instance.path, 1, len(folder)) == folder)
    files = [(path, int(size)) for path, size in session.execute(select(Instance.path, Instance.size).where(*own))]
    session.execute(delete(Instance).where(*own).execution_options(synchronize_session=False))
    add_event(
        session, study_uid, "retention", "purged", **detail, instances=len(files), bytes=sum(size for _, size in files)
    )
    return files


def indexed_paths(session: Session, paths: Sequence[str]) -> set[str]:
    """Which of ``paths`` an instance row points at now (asked in batches of 500)."""
    found: set[str] = set()
    for start in range(0, len(paths), 500):
        batch = list(paths[start : start + 500])
        found.update(session.scalars(select(Instance.path).where(Instance.path.in_(batch))))
    return found


def finished_jobs_before(session: Session, before: datetime) -> list[str]:
    """The ids of jobs in a final state that ended (or, superseded unrun, were made) before ``before``."""
    final = [state for state in JobState if state.final]
    query = select(Job.id).where(Job.state.in_(final), func.coalesce(Job.finished_at, Job.created_at) < before)
    return list(session.scalars(query.order_by(Job.id)))


def delete_audit_before(session: Session, before: datetime) -> tuple[int, int]:
    """Delete events and audit-log rows older than ``before``; (events, audit rows) deleted."""
    events = cast(CursorResult[Any], session.execute(delete(Event).where(Event.at < before)))
    audit = cast(CursorResult[Any], session.execute(delete(AuditEntry).where(AuditEntry.at < before)))
    return int(events.rowcount), int(audit.rowcount)


def recent_purges(session: Session, *, limit: int) -> Sequence[Event]:
    """The latest ``purged`` events (the retention view's history), newest first."""
    query = select(Event).where(Event.actor == "retention", Event.kind == "purged")
    return session.scalars(query.order_by(Event.id.desc()).limit(limit)).all()
