"""Index writes and reads for studies, series and instances."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from services.db.models import Event, Instance, Series, Study, StudyState, utcnow

__all__ = ["IndexedInstance", "add_event", "complete_study", "record_instance", "series_facts_rows"]


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


def record_instance(session: Session, item: IndexedInstance) -> None:
    """Insert or refresh the study, series and instance rows for one stored instance."""
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


def complete_study(session: Session, study_uid: str, trigger: str, at: datetime | None = None) -> bool:
    """Mark a receiving study complete; False when it was not receiving (already handled)."""
    statement = update(Study).where(Study.study_instance_uid == study_uid, Study.state == StudyState.RECEIVING)
    values = {"state": StudyState.COMPLETE, "completion_trigger": trigger, "completed_at": at or utcnow()}
    result = cast(CursorResult[Any], session.execute(statement.values(**values)))
    return bool(result.rowcount)


def series_facts_rows(session: Session, study_uid: str) -> list[tuple[Series, int]]:
    """Each series of the study with its instance count."""
    counts = (
        select(Instance.series_instance_uid, func.count().label("n")).group_by(Instance.series_instance_uid).subquery()
    )
    rows = session.execute(
        select(Series, counts.c.n)
        .join(counts, counts.c.series_instance_uid == Series.series_instance_uid)
        .where(Series.study_instance_uid == study_uid)
        .order_by(Series.series_number)
    )
    return [(series, int(n)) for series, n in rows]
