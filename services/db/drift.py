"""Input profiles per job and the drift state per model version (input-drift monitoring).

One :class:`InputProfile` row per profiled job: the scanner, slice thickness, pixel spacing and
intensity statistics of its input, with the job's model name and version copied in. No patient data:
no names, identifiers, dates of the study or UIDs (the job's id links it to the study's path).
One :class:`DriftState` row per model version that was profiled: its explicit reference window (when a
model developer set one) and whether it is drifting, so that each crossing is recorded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CursorResult, Float, ForeignKey, Index, Integer, String, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from hounsfield.db.catalog import ModelVersion
from hounsfield.db.models import Base, Job, utcnow

__all__ = [
    "DriftState",
    "InputProfile",
    "add_profile",
    "drift_state",
    "ensure_drift_state",
    "has_profile",
    "profiled_versions",
    "reference_profiles",
    "set_drifting",
    "study_of_job",
    "version_known",
    "window_profiles",
]


class InputProfile(Base):
    """What one job's input looked like (headers of every instance, pixels of a bounded sample)."""

    __tablename__ = "input_profiles"
    __table_args__ = (Index("ix_input_profiles_model_version", "model_name", "model_version", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32))
    profiled_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    scanner: Mapped[str] = mapped_column(String(130), default="")
    """Manufacturer and Manufacturer's Model Name, ``"<manufacturer> / <model>"`` (the most common of the input)."""
    slice_thickness_mm: Mapped[float | None] = mapped_column(Float)
    pixel_spacing_mm: Mapped[float | None] = mapped_column(Float)
    """The mean of the row and column spacing (median over the instances)."""
    instances: Mapped[int] = mapped_column(Integer, default=0)
    sampled_pixels: Mapped[int] = mapped_column(Integer, default=0)
    intensity_mean: Mapped[float | None] = mapped_column(Float)
    intensity_std: Mapped[float | None] = mapped_column(Float)
    intensity_p05: Mapped[float | None] = mapped_column(Float)
    intensity_p50: Mapped[float | None] = mapped_column(Float)
    intensity_p95: Mapped[float | None] = mapped_column(Float)


class DriftState(Base):
    """Per model version: the reference window a model developer set, and the drift last recorded."""

    __tablename__ = "drift_states"

    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(32), primary_key=True)
    reference_start: Mapped[datetime | None]
    reference_end: Mapped[datetime | None]
    """An explicit reference window (profiles taken between the two); none: the version's first jobs."""
    drifting: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_at: Mapped[datetime | None]
    """When ``drifting`` last changed."""


def add_profile(session: Session, job: Job, **values: Any) -> InputProfile:
    """Record the profile of ``job``'s input (its model name and version copied in)."""
    row = InputProfile(job_id=job.id, model_name=job.model_name, model_version=job.model_version, **values)
    session.add(row)
    session.flush()
    return row


def has_profile(session: Session, job_id: str) -> bool:
    return session.scalar(select(InputProfile.id).where(InputProfile.job_id == job_id)) is not None


def ensure_drift_state(session: Session, model_name: str, model_version: str) -> None:
    """Make the version's state row unless it exists (concurrent callers: one row, no error)."""
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert: Any = sqlite.insert if dialect == "sqlite" else postgresql.insert
        statement = insert(DriftState).values(model_name=model_name, model_version=model_version, drifting=False)
        session.execute(statement.on_conflict_do_nothing(index_elements=["model_name", "model_version"]))
    elif session.get(DriftState, (model_name, model_version)) is None:
        session.add(DriftState(model_name=model_name, model_version=model_version, drifting=False))
        session.flush()


def drift_state(session: Session, model_name: str, model_version: str) -> DriftState | None:
    return session.get(DriftState, (model_name, model_version))


def set_drifting(session: Session, model_name: str, model_version: str, drifting: bool) -> bool:
    """Record that the version now is (or is no longer) drifting; True only for the caller that changed it
    (a conditional update: two workers seeing the same crossing record it once)."""
    statement = (
        update(DriftState)
        .where(
            DriftState.model_name == model_name,
            DriftState.model_version == model_version,
            DriftState.drifting.is_not(drifting),
        )
        .values(drifting=drifting, changed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    result = session.execute(statement)
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def _of(model_name: str, model_version: str) -> Any:
    of_version = (InputProfile.model_name == model_name, InputProfile.model_version == model_version)
    return select(InputProfile).where(*of_version)


def reference_profiles(
    session: Session,
    model_name: str,
    model_version: str,
    *,
    limit: int,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Sequence[InputProfile]:
    """The version's reference: its first ``limit`` profiles, or its first ``limit`` taken in ``[start, end]``."""
    query = _of(model_name, model_version)
    if start is not None:
        query = query.where(InputProfile.profiled_at >= start)
    if end is not None:
        query = query.where(InputProfile.profiled_at <= end)
    return session.scalars(query.order_by(InputProfile.id).limit(limit)).all()


def window_profiles(
    session: Session, model_name: str, model_version: str, *, limit: int, after_id: int
) -> Sequence[InputProfile]:
    """The version's last ``limit`` profiles with an id above ``after_id`` (after its reference), oldest first."""
    query = _of(model_name, model_version).where(InputProfile.id > after_id)
    newest = session.scalars(query.order_by(InputProfile.id.desc()).limit(limit)).all()
    return list(reversed(newest))


def profiled_versions(session: Session, *, limit: int, model_name: str | None = None) -> list[tuple[str, str]]:
    """``(model name, version)`` of profiled versions, most recently profiled first (at most ``limit``)."""
    newest = func.max(InputProfile.id)
    query = select(InputProfile.model_name, InputProfile.model_version).group_by(
        InputProfile.model_name, InputProfile.model_version
    )
    if model_name is not None:
        query = query.where(InputProfile.model_name == model_name)
    return [(str(n), str(v)) for n, v in session.execute(query.order_by(newest.desc()).limit(limit))]


def study_of_job(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.study_instance_uid).where(Job.id == job_id))


def version_known(session: Session, model_name: str, model_version: str) -> bool:
    """Whether the version is in the catalog or has profiles (a version of the configuration's deployments)."""
    of_version = (ModelVersion.model_name == model_name, ModelVersion.version == model_version)
    catalogued = select(ModelVersion.id).where(*of_version)
    if session.scalar(catalogued.limit(1)) is not None:
        return True
    return session.scalar(_of(model_name, model_version).with_only_columns(InputProfile.id).limit(1)) is not None
