"""Index writes and reads for studies, series and instances."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, CursorResult, Dialect, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from hounsfield.db.models import Event, Instance, Series, Study, StudyState, utcnow

__all__ = [
    "IndexedInstance",
    "StudyStatus",
    "add_event",
    "complete_study",
    "indexed_digests",
    "indexed_files",
    "instance_files",
    "list_studies",
    "receiving_studies",
    "record_instance",
    "record_instances",
    "series_facts_rows",
    "series_instance_counts",
    "series_instance_paths",
    "study_events",
    "study_instance_count",
    "study_series_callers",
    "study_state",
    "study_state_counts",
    "upsert_rows",
]


@dataclass(frozen=True)
class IndexedInstance:
    """What the listener learned from one instance's header."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    accession_number: str
    study_date: str
    modality: str
    series_number: int | None
    series_description: str
    instance_number: int | None
    calling_ae: str
    called_ae: str
    tags: dict[str, str]
    path: str
    size: int
    sha256: str
    revision: int


def add_event(
    session: Session, study_uid: str, actor: str, kind: str, job_id: str | None = None, **detail: Any
) -> None:
    """Append one step to a study's path (never updated, never deleted)."""
    session.add(Event(study_instance_uid=study_uid, actor=actor, kind=kind, job_id=job_id, detail=detail))


def record_instance(session: Session | Connection, item: IndexedInstance) -> None:
    """Insert or refresh the study, series and instance rows for one stored instance.

    The study is created or touched (``last_received_at``, back to receiving when it had been
    completed or routed: a new instance reopens it), the series is created once, and the instance
    row is created or, when its bytes changed (a revision), repointed. On SQLite and PostgreSQL this
    is three ``INSERT ... ON CONFLICT`` statements (the listener runs it once per instance, so ORM
    loads and flushes would cost more than the rest of the index write); elsewhere the ORM does it.
    ``session`` may be a Core connection in a transaction (the listener's lighter path).
    """
    connection = session if isinstance(session, Connection) else session.connection()
    dialect = connection.dialect.name
    if dialect in ("sqlite", "postgresql"):
        _upsert_instances(connection, [item], dialect)
        return
    if isinstance(session, Connection):
        with Session(bind=session) as orm_session:
            record_instance(orm_session, item)
            orm_session.flush()
        return
    now = utcnow()
    study = session.get(Study, item.study_instance_uid, with_for_update=True)
    if study is None:
        session.add(
            Study(
                study_instance_uid=item.study_instance_uid,
                patient_id=item.patient_id,
                accession_number=item.accession_number,
                study_date=item.study_date,
                first_received_at=now,
                last_received_at=now,
            )
        )
        session.flush()
    else:
        study.last_received_at = now
        if study.state is not StudyState.RECEIVING:
            study.state = StudyState.RECEIVING
    if session.get(Series, item.series_instance_uid) is None:
        session.add(
            Series(
                series_instance_uid=item.series_instance_uid,
                study_instance_uid=item.study_instance_uid,
                modality=item.modality,
                series_number=item.series_number,
                series_description=item.series_description,
                calling_ae=item.calling_ae,
                called_ae=item.called_ae,
                tags=item.tags,
            )
        )
        session.flush()
    instance = session.get(Instance, item.sop_instance_uid)
    if instance is None:
        session.add(
            Instance(
                sop_instance_uid=item.sop_instance_uid,
                series_instance_uid=item.series_instance_uid,
                sop_class_uid=item.sop_class_uid,
                transfer_syntax_uid=item.transfer_syntax_uid,
                instance_number=item.instance_number,
                path=item.path,
                size=item.size,
                sha256=item.sha256,
                revision=item.revision,
                received_at=now,
            )
        )
    elif instance.sha256 != item.sha256:
        instance.path, instance.size, instance.sha256 = item.path, item.size, item.sha256
        instance.revision, instance.received_at = item.revision, now


@functools.cache
def _upserts(dialect: str) -> tuple[Any, Any, Any]:
    """The study, series and instance upserts, built once per dialect (their compiled form is cached)."""
    insert: Any = sqlite.insert if dialect == "sqlite" else postgresql.insert
    studies, series, instances = Study.__table__, Series.__table__, Instance.__table__
    study = insert(studies)
    study = study.on_conflict_do_update(
        index_elements=[studies.c.study_instance_uid],
        set_={"last_received_at": study.excluded.last_received_at, "state": study.excluded.state},
    )
    one_series = insert(series).on_conflict_do_nothing(index_elements=[series.c.series_instance_uid])
    instance = insert(instances)
    changed = {name: instance.excluded[name] for name in ("path", "size", "sha256", "revision", "received_at")}
    instance = instance.on_conflict_do_update(
        index_elements=[instances.c.sop_instance_uid],
        set_=changed,
        where=instances.c.sha256 != instance.excluded.sha256,
    )
    return study, one_series, instance


def _upsert_params(items: Sequence[IndexedInstance]) -> tuple[list[dict[str, Any]], ...]:
    """Parameters of the study, series and instance upserts (studies and series once per batch)."""
    now = utcnow()
    studies: dict[str, dict[str, Any]] = {}
    all_series: dict[str, dict[str, Any]] = {}
    for item in items:
        studies.setdefault(
            item.study_instance_uid,
            {
                "study_instance_uid": item.study_instance_uid,
                "patient_id": item.patient_id,
                "accession_number": item.accession_number,
                "study_date": item.study_date,
                "state": StudyState.RECEIVING,
                "completion_trigger": None,
                "first_received_at": now,
                "last_received_at": now,
                "completed_at": None,
            },
        )
        all_series.setdefault(
            item.series_instance_uid,
            {
                "series_instance_uid": item.series_instance_uid,
                "study_instance_uid": item.study_instance_uid,
                "modality": item.modality,
                "series_number": item.series_number,
                "series_description": item.series_description,
                "calling_ae": item.calling_ae,
                "called_ae": item.called_ae,
                "tags": item.tags,
            },
        )
    instances = [
        {
            "sop_instance_uid": item.sop_instance_uid,
            "series_instance_uid": item.series_instance_uid,
            "sop_class_uid": item.sop_class_uid,
            "transfer_syntax_uid": item.transfer_syntax_uid,
            "instance_number": item.instance_number,
            "path": item.path,
            "size": item.size,
            "sha256": item.sha256,
            "revision": item.revision,
            "received_at": now,
        }
        for item in items
    ]
    return list(studies.values()), list(all_series.values()), instances


def _upsert_instances(connection: Connection, items: Sequence[IndexedInstance], dialect: str) -> None:
    for statement, params in zip(_upserts(dialect), _upsert_params(items), strict=True):
        connection.execute(statement, params)


@functools.cache
def _compiled_upserts(dialect: Dialect) -> list[tuple[str, list[tuple[str, Callable[[Any], Any] | None]]]]:
    """The upserts as SQL text with, per positional parameter, its name and SQLAlchemy's bind processor."""
    compiled = []
    for statement in _upserts(dialect.name):
        sql = statement.compile(dialect=dialect)
        table = statement.table
        order = [
            (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in sql.positiontup or ()
        ]
        compiled.append((sql.string, order))
    return compiled


def upsert_rows(dialect: Dialect, items: Sequence[IndexedInstance]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """:func:`record_instances` as (SQL, rows) for a DBAPI cursor's ``executemany`` (qmark dialects).

    The same statements and the same value encoding as the SQLAlchemy path (each column's bind
    processor), without an execution context per statement: the listener's group commit on SQLite
    uses it to keep the index write well under a millisecond.
    """
    rows = []
    for (sql, order), params in zip(_compiled_upserts(dialect), _upsert_params(items), strict=True):
        encoded = [tuple(process(row[name]) if process else row[name] for name, process in order) for row in params]
        rows.append((sql, encoded))
    return rows


def record_instances(connection: Connection, items: Sequence[IndexedInstance]) -> None:
    """:func:`record_instance` for several instances in one transaction (the listener's group commit).

    Rows are applied in order, so the last of two copies of one instance is the one indexed.
    """
    if connection.dialect.name in ("sqlite", "postgresql"):
        _upsert_instances(connection, items, connection.dialect.name)
        return
    for item in items:
        record_instance(connection, item)


def complete_study(session: Session, study_uid: str, trigger: str, at: datetime | None = None) -> bool:
    """Mark a receiving study complete; False when it was not receiving (already handled)."""
    statement = update(Study).where(Study.study_instance_uid == study_uid, Study.state == StudyState.RECEIVING)
    values = {"state": StudyState.COMPLETE, "completion_trigger": trigger, "completed_at": at or utcnow()}
    result = cast(CursorResult[Any], session.execute(statement.values(**values)))
    return bool(result.rowcount)


def series_facts_rows(session: Session, study_uid: str) -> list[tuple[Series, int]]:
    """Each series of the study with its instance count (series without instances are left out).

    Counted over the study's own instances (by the index on their series), not the whole table: routing
    runs this for every completed study, whatever the index holds.
    """
    rows = session.execute(
        select(Series, func.count(Instance.sop_instance_uid))
        .join(Instance, Instance.series_instance_uid == Series.series_instance_uid)
        .where(Series.study_instance_uid == study_uid)
        .group_by(Series.series_instance_uid)
        .order_by(Series.series_number)
    )
    return [(series, int(n)) for series, n in rows]


def series_instance_counts(session: Session, study_uid: str) -> dict[str, int]:
    """Instances indexed per series of one study (series without instances are left out)."""
    rows = session.execute(
        select(Instance.series_instance_uid, func.count())
        .join(Series, Series.series_instance_uid == Instance.series_instance_uid)
        .where(Series.study_instance_uid == study_uid)
        .group_by(Instance.series_instance_uid)
    )
    return {uid: int(n) for uid, n in rows}


def study_instance_count(session: Session, study_uid: str) -> int:
    """Instances indexed for one study (through the series index: cheap enough to ask often)."""
    statement = (
        select(func.count())
        .select_from(Instance)
        .join(Series, Series.series_instance_uid == Instance.series_instance_uid)
        .where(Series.study_instance_uid == study_uid)
    )
    return int(session.scalar(statement) or 0)


class StudyStatus(NamedTuple):
    """Where a study is: its state, and the trigger that last completed it and when (None: never yet)."""

    state: StudyState
    completion_trigger: str | None
    completed_at: datetime | None


def study_state(session: Session, study_uid: str) -> StudyStatus | None:
    """A study's state and last completion; None when the study is unknown."""
    row = session.execute(
        select(Study.state, Study.completion_trigger, Study.completed_at).where(Study.study_instance_uid == study_uid)
    ).one_or_none()
    return None if row is None else StudyStatus(StudyState(row.state), row.completion_trigger, row.completed_at)


def list_studies(
    session: Session, *, state: StudyState | None = None, limit: int = 100, offset: int = 0
) -> Sequence[Study]:
    """Studies, the most recently received first."""
    query = select(Study).order_by(Study.last_received_at.desc()).limit(limit).offset(offset)
    if state is not None:
        query = query.where(Study.state == state)
    return session.scalars(query).all()


def study_state_counts(session: Session) -> dict[StudyState, int]:
    """How many studies are in each state (states without studies are left out)."""
    rows = session.execute(select(Study.state, func.count()).group_by(Study.state)).all()
    return {StudyState(state): int(count) for state, count in rows}


def study_events(session: Session, study_uid: str) -> Sequence[Event]:
    """A study's path: every event, in order."""
    return session.scalars(select(Event).where(Event.study_instance_uid == study_uid).order_by(Event.id)).all()


def series_instance_paths(session: Session, series_uid: str) -> list[str]:
    """The files of a series' instances, by instance number."""
    query = select(Instance.path).where(Instance.series_instance_uid == series_uid).order_by(Instance.instance_number)
    return list(session.scalars(query).all())


def indexed_digests(session: Session, sop_uids: Sequence[str]) -> dict[str, str]:
    """The SHA-256 the index holds for each of ``sop_uids`` that it has (asked in batches of 500)."""
    found: dict[str, str] = {}
    for start in range(0, len(sop_uids), 500):
        batch = list(sop_uids[start : start + 500])
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.sha256).where(Instance.sop_instance_uid.in_(batch))
        )
        found.update({uid: digest for uid, digest in rows})
    return found


def indexed_files(session: Session, sop_uids: Sequence[str]) -> dict[str, tuple[str, int, datetime]]:
    """Per indexed instance of ``sop_uids``: its file, revision and when it was received (batches of 500)."""
    found: dict[str, tuple[str, int, datetime]] = {}
    for start in range(0, len(sop_uids), 500):
        batch = list(sop_uids[start : start + 500])
        statement = select(Instance.sop_instance_uid, Instance.path, Instance.revision, Instance.received_at).where(
            Instance.sop_instance_uid.in_(batch)
        )
        for sop_uid, path, revision, received_at in session.execute(statement):
            found[sop_uid] = (path, revision, received_at)
    return found


def receiving_studies(session: Session) -> Sequence[str]:
    """The Study Instance UIDs of studies still receiving, in UID order."""
    query = select(Study.study_instance_uid).where(Study.state == StudyState.RECEIVING)
    return session.scalars(query.order_by(Study.study_instance_uid)).all()


def study_series_callers(session: Session, study_uid: str) -> list[tuple[str, str]]:
    """Each series of a study with the calling AE title that sent it, by series number."""
    rows = session.execute(
        select(Series.series_instance_uid, Series.calling_ae)
        .where(Series.study_instance_uid == study_uid)
        .order_by(Series.series_number, Series.series_instance_uid)
    ).all()
    return [(uid, ae) for uid, ae in rows]


def instance_files(session: Session, series_uids: Sequence[str]) -> list[tuple[str, int]]:
    """Each indexed instance file of the series, with the size the index recorded."""
    rows = session.execute(
        select(Instance.path, Instance.size).where(Instance.series_instance_uid.in_(list(series_uids)))
    )
    return [(path, size) for path, size in rows]
