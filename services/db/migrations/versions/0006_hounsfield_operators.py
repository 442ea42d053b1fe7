"""deployments name applications by their installed import name

The example operators and applications are installed as ``hounsfield_operators`` (the repository's
``operators/`` folder); they were installed as ``operators`` before. A deployment whose ``app``
names the old package would no longer import on a worker, and one whose model, MAP or application
root lies in the old package's installed folder (``site-packages/operators/``) would not find it:
both are rewritten.

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

_deployments = sa.table(
    "deployments",
    sa.column("name", sa.String),
    sa.column("app", sa.String),
    sa.column("model_path", sa.Text),
    sa.column("map_path", sa.Text),
    sa.column("application_root", sa.Text),
)
_FOLDERS = ("model_path", "map_path", "application_root")


def _rename(old: str, new: str) -> None:
    connection = op.get_bind()
    columns = [_deployments.c.name, _deployments.c.app, *(_deployments.c[f] for f in _FOLDERS)]
    for row in connection.execute(sa.select(*columns)).mappings().all():
        changes = {}
        if row["app"] and row["app"].startswith(f"{old}."):
            changes["app"] = new + row["app"][len(old) :]
        for folder in _FOLDERS:
            value = row[folder]
            if value and f"/site-packages/{old}/" in value:
                changes[folder] = value.replace(f"/site-packages/{old}/", f"/site-packages/{new}/")
        if changes:
            connection.execute(_deployments.update().where(_deployments.c.name == row["name"]).values(**changes))


def upgrade() -> None:
    _rename("operators", "hounsfield_operators")


def downgrade() -> None:
    _rename("hounsfield_operators", "operators")
