"""input_profiles and drift_states: what each job's input looked like, and input drift per model version

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 20:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "input_profiles",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("profiled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scanner", sa.String(length=130), nullable=False),
        sa.Column("slice_thickness_mm", sa.Float(), nullable=True),
        sa.Column("pixel_spacing_mm", sa.Float(), nullable=True),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("sampled_pixels", sa.Integer(), nullable=False),
        sa.Column("intensity_mean", sa.Float(), nullable=True),
        sa.Column("intensity_std", sa.Float(), nullable=True),
        sa.Column("intensity_p05", sa.Float(), nullable=True),
        sa.Column("intensity_p50", sa.Float(), nullable=True),
        sa.Column("intensity_p95", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id"),
    )
    op.create_index(
        "ix_input_profiles_model_version", "input_profiles", ["model_name", "model_version", "id"], unique=False
    )
    op.create_index("ix_input_profiles_profiled_at", "input_profiles", ["profiled_at"], unique=False)
    op.create_table(
        "drift_states",
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("reference_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reference_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("drifting", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("model_name", "model_version"),
    )


def downgrade() -> None:
    op.drop_table("drift_states")
    op.drop_index("ix_input_profiles_profiled_at", table_name="input_profiles")
    op.drop_index("ix_input_profiles_model_version", table_name="input_profiles")
    op.drop_table("input_profiles")
