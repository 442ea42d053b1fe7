"""feedback: radiologists' verdicts, comments and corrections on results, per model version

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 16:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("given_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("correction_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("dice", sa.JSON(), nullable=False),
        sa.Column("mean_dice", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("correction_sop_instance_uid"),
    )
    op.create_index("ix_feedback_job_id", "feedback", ["job_id"], unique=False)
    op.create_index("ix_feedback_model_name", "feedback", ["model_name"], unique=False)
    op.create_index("ix_feedback_result_id", "feedback", ["result_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_feedback_result_id", table_name="feedback")
    op.drop_index("ix_feedback_model_name", table_name="feedback")
    op.drop_index("ix_feedback_job_id", table_name="feedback")
    op.drop_table("feedback")
