"""deployments name applications by their installed import name

The example operators and applications are installed as ``hounsfield_operators`` (the repository's
``operators/`` folder); they were importable as ``operators`` before. A deployment whose ``app``
names the old package would no longer import on a worker, so its reference is rewritten.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 08:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_deployments = sa.table("deployments", sa.column("name", sa.String), sa.column("app", sa.String))


def _rename(old: str, new: str) -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_deployments.c.name, _deployments.c.app).where(_deployments.c.app.like(f"{old}.%"))
    )
    for name, app in rows.all():
        connection.execute(_deployments.update().where(_deployments.c.name == name).values(app=new + app[len(old) :]))


def upgrade() -> None:
    _rename("operators", "hounsfield_operators")


def downgrade() -> None:
    _rename("hounsfield_operators", "operators")
