"""The initial schema: studies, series, instances, jobs, results, events.

Exactly what ``Base.metadata.create_all`` made before migrations existed, so a database from then is
stamped at this revision (see :func:`hounsfield.db.migrate.upgrade`). Enums are stored as strings
(``native_enum=False``, no CHECK constraint), JSON as JSON, times as timezone-aware timestamps.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 16:28:29.378312
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("actor", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_at", "events", ["at"], unique=False)
    op.create_index("ix_events_study_instance_uid", "events", ["study_instance_uid"], unique=False)

    op.create_table(
        "studies",
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column(
            "state",
            sa.Enum("RECEIVING", "COMPLETE", "ROUTED", "NO_ROUTE", name="studystate", native_enum=False),
            nullable=False,
        ),
        sa.Column("completion_trigger", sa.String(length=32), nullable=True),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("study_instance_uid"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uids", sa.JSON(), nullable=False),
        sa.Column("deployment", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "QUEUED", "RUNNING", "EXPORTING", "DONE", "FAILED", "SUPERSEDED", name="jobstate", native_enum=False
            ),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("supersedes", sa.String(length=36), nullable=True),
        sa.Column("superseded_by", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_instance_uid"],
            ["studies.study_instance_uid"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key", name="uq_jobs_idempotency_key"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"], unique=False)
    op.create_index("ix_jobs_study_instance_uid", "jobs", ["study_instance_uid"], unique=False)
    op.create_index("ix_jobs_superseded_by", "jobs", ["superseded_by"], unique=False)

    op.create_table(
        "series",
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("called_ae", sa.String(length=16), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_instance_uid"],
            ["studies.study_instance_uid"],
        ),
        sa.PrimaryKeyConstraint("series_instance_uid"),
    )
    op.create_index("ix_series_study_instance_uid", "series", ["study_instance_uid"], unique=False)

    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_instance_uid"],
            ["series.series_instance_uid"],
        ),
        sa.PrimaryKeyConstraint("sop_instance_uid"),
    )
    op.create_index("ix_instances_series_instance_uid", "instances", ["series_instance_uid"], unique=False)

    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("exported_to", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_by", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid", name="uq_results_sop_instance_uid"),
    )
    op.create_index("ix_results_job_id", "results", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_results_job_id", table_name="results")

    op.drop_table("results")
    op.drop_index("ix_instances_series_instance_uid", table_name="instances")

    op.drop_table("instances")
    op.drop_index("ix_series_study_instance_uid", table_name="series")

    op.drop_table("series")
    op.drop_index("ix_jobs_superseded_by", table_name="jobs")
    op.drop_index("ix_jobs_study_instance_uid", table_name="jobs")
    op.drop_index("ix_jobs_state", table_name="jobs")

    op.drop_table("jobs")
    op.drop_table("studies")
    op.drop_index("ix_events_study_instance_uid", table_name="events")
    op.drop_index("ix_events_at", table_name="events")

    op.drop_table("events")
