"""Migrations: the chain builds exactly the models' schema, on SQLite and PostgreSQL.

The comparison is what keeps model changes honest: a model changed without a migration (or a model
module in ``MODEL_MODULES`` whose tables no migration creates) fails ``test_migrations_match_models``.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util.exc import CommandError
from sqlalchemy import Connection, MetaData, Table, inspect, select, text
from typer.testing import CliRunner

from hounsfield.cli.database import db as db_app
from hounsfield.db import Database, Study, StudyState
from hounsfield.db.migrate import (
    INITIAL_REVISION,
    INITIAL_TABLES,
    current_revision,
    head_revision,
    migrated_tables,
    target_metadata,
    upgrade,
)
from tests.services.db import postgres


def _differences(connection: Connection, metadata: MetaData | None = None) -> list[Any]:
    """Autogenerate's differences between the database and ``metadata`` (default: the migrated models).

    Tables in scope: those the database has (what the migrations made) and the expected ones, so a
    model table that no migration creates shows up as ``add_table``.
    """
    if metadata is None:
        metadata, expected = target_metadata(), {t.name for t in migrated_tables()}
    else:
        expected = set(metadata.tables)
    in_scope = (set(inspect(connection).get_table_names()) | expected) - {"alembic_version"}

    def include(_obj: Any, name: str | None, type_: str, _reflected: bool, _compare_to: Any) -> bool:
        return name in in_scope if type_ == "table" else True

    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include})
    return list(compare_metadata(context, metadata))


def _explain(differences: list[Any]) -> str:
    missing = [d[1].name for d in differences if isinstance(d, tuple) and d[0] == "add_table"]
    lines = [f"tables without a migration: {', '.join(missing)}"] if missing else []
    return "\n".join([*lines, "schema differs from the models (add a migration):", *map(repr, differences)])


def test_migrations_match_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert current_revision(database.engine) is None
        assert upgrade(database.engine) == head_revision()  # every migration, from an empty database
        with database.engine.connect() as connection:
            differences = _differences(connection)
            tables = set(inspect(connection).get_table_names())
        assert not differences, _explain(differences)
        assert {t.name for t in migrated_tables()} | {"alembic_version"} == tables
    finally:
        database.dispose()


def test_fast_path_equals_migration_chain(database_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """create_schema on an empty database (create_all + stamp) makes what the migrations make."""
    with ExitStack() as stack:
        if database_url.startswith("sqlite"):
            chain_url = f"sqlite:///{tmp_path / 'chain.db'}"
        else:
            chain_url = stack.enter_context(postgres.scratch_database(request.getfixturevalue("postgres_server")))
        fast, chained = Database(database_url), Database(chain_url)
        stack.callback(fast.dispose)
        stack.callback(chained.dispose)

        fast.create_schema()
        upgrade(chained.engine)

        assert current_revision(fast.engine) == current_revision(chained.engine) == head_revision()
        reflected = MetaData()
        reflected.reflect(fast.engine, only=[t.name for t in migrated_tables()])
        with chained.engine.connect() as connection:
            differences = _differences(connection, reflected)
        assert not differences, _explain(differences)


def test_create_all_database_is_stamped_and_upgraded(database_url: str) -> None:
    """A database made by create_all before migrations existed keeps its rows and reaches head."""
    database = Database(database_url)
    try:
        initial = [t for t in migrated_tables() if t.name in INITIAL_TABLES]
        target_metadata().create_all(database.engine, tables=initial)
        with database.session() as session:
            session.add(Study(study_instance_uid="1.2.3", patient_id="", study_date="20260101"))
        assert current_revision(database.engine) is None

        database.create_schema()

        assert current_revision(database.engine) == head_revision()
        with database.session() as session:
            study = session.scalars(select(Study)).one()
            assert (study.study_instance_uid, study.state) == ("1.2.3", StudyState.RECEIVING)
        with database.engine.connect() as connection:
            differences = _differences(connection)
        assert not differences, _explain(differences)
    finally:
        database.dispose()


def test_stamped_initial_revision_upgrades(database_url: str) -> None:
    """upgrade() on a create_all database goes through the initial revision (not the empty fast path)."""
    database = Database(database_url)
    try:
        initial = [t for t in migrated_tables() if t.name in INITIAL_TABLES]
        target_metadata().create_all(database.engine, tables=initial)
        assert upgrade(database.engine, INITIAL_REVISION) == INITIAL_REVISION
        assert upgrade(database.engine) == head_revision()
    finally:
        database.dispose()


def test_create_schema_is_idempotent(db: Database) -> None:
    before = set(inspect(db.engine).get_table_names())
    started = time.perf_counter()
    db.create_schema()
    elapsed = time.perf_counter() - started
    assert set(inspect(db.engine).get_table_names()) == before
    assert current_revision(db.engine) == head_revision()
    assert elapsed < 1.0, f"create_schema on a database at head took {elapsed:.3f} s"


def test_a_database_a_newer_version_migrated_is_refused_with_its_revision(database_url: str) -> None:
    """After `helm rollback` past a migration: the older version names the revision it does not know and
    changes nothing, rather than work on a schema it was not written for (docs/install.md, upgrades)."""
    database = Database(database_url)
    try:
        database.create_schema()
        with database.transaction() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
        older = Database(database_url)
        with pytest.raises(CommandError, match="Can't locate revision identified by 'f00dfeedbeef'"):
            older.create_schema()
        older.dispose()
        assert current_revision(database.engine) == "f00dfeedbeef"
    finally:
        database.dispose()


def test_cli_current_and_upgrade(database_url: str) -> None:
    runner = CliRunner()
    behind = runner.invoke(db_app, ["current", "--url", database_url])
    assert behind.exit_code == 1, behind.output
    assert "revision none" in behind.output

    upgraded = runner.invoke(db_app, ["upgrade", "--url", database_url])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"at revision {head_revision()}" in upgraded.output

    current = runner.invoke(db_app, ["current", "--url", database_url])
    assert current.exit_code == 0, current.output
    assert f"revision {head_revision()} (head)" in current.output


def test_concurrent_upgrades_run_the_chain_once(database_url: str) -> None:
    """What a Helm upgrade does: the migration Job and starting services upgrade the same empty
    database at the same moment. The lock serializes them: every one succeeds, the chain runs once."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo), "HOUNSFIELD_CONFIG": ""}
    argv = [sys.executable, "-m", "hounsfield.cli", "db", "upgrade", "--url", database_url]
    runs = [subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    runs += [subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]  # fmt: skip
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], "\n".join(outputs)
    assert all(f"at revision {head_revision()}" in output for output in outputs)
    assert current_revision(database_url) == head_revision()
    db = Database(database_url)
    try:
        with db.engine.connect() as connection:
            assert _differences(connection) == []
            versions = connection.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
        assert versions == [(head_revision(),)]
    finally:
        db.dispose()


def test_stored_applications_follow_the_installed_import_name(database_url: str) -> None:
    """Revision 0006: a deployment stored with ``operators....`` (the folder's old import name) runs on."""
    from hounsfield.db.deployments import Deployment, RoutingRule, Stage

    database = Database(database_url)
    try:
        assert upgrade(database.engine, "0005") == "0005"
        with database.session() as session:
            session.add(RoutingRule(name="ct", definition={"kind": "modality", "in": ["CT"]}))
            session.flush()
            installed = "/opt/hounsfield/lib/python3.12/site-packages/operators/ct_lesion_seg"
            # The schema of 0005, not today's model: only the columns it had, with the model's defaults.
            present = {column["name"] for column in inspect(session.connection()).get_columns("deployments")}
            as_of_0005 = Table(
                "deployments", MetaData(), *(c._copy() for c in Deployment.__table__.columns if c.name in present)
            )
            for name, app, model in (
                ("old", "operators.ct_lesion_seg.app:CTLesionSegApp", f"{installed}/models/model.ts"),
                ("other", "mypkg.app:App", "/srv/operators/model.ts"),
            ):
                session.execute(
                    as_of_0005.insert().values(
                        name=name, model_name="m", model_version="1.0.0", rule_name="ct", app=app,
                        model_path=model, map_path=installed if name == "old" else None, stage=Stage.DRAFT,
                    )
                )  # fmt: skip
        assert upgrade(database.engine) == head_revision()
        with database.session() as session:
            rows = {d.name: (d.app, d.model_path, d.map_path) for d in session.scalars(select(Deployment))}
        moved = "/opt/hounsfield/lib/python3.12/site-packages/hounsfield_operators/ct_lesion_seg"
        assert rows == {
            "old": ("hounsfield_operators.ct_lesion_seg.app:CTLesionSegApp", f"{moved}/models/model.ts", moved),
            "other": ("mypkg.app:App", "/srv/operators/model.ts", None),
        }
    finally:
        database.dispose()


def test_model_versions_registered_before_have_no_image_and_take_one(database_url: str) -> None:
    """Revision 0008: ``model_versions.image`` added (nullable); the versions already there keep their rows."""
    from alembic import command

    from hounsfield.db import utcnow
    from hounsfield.db.catalog import Model, ModelVersion
    from hounsfield.db.migrate import alembic_config

    database = Database(database_url)
    try:
        assert upgrade(database.engine, "0007") == "0007"
        with database.transaction() as connection:
            connection.execute(
                Model.__table__.insert().values(
                    name="m", display_name="M", intended_use="Tests.", modality="CT", regulatory_status="other",
                    owner="tests", documentation_urls=[], created_at=utcnow(),
                )
            )  # fmt: skip
            present = {column["name"] for column in inspect(connection).get_columns("model_versions")}
            assert "image" not in present
            as_of_0007 = Table(
                "model_versions", MetaData(), *(c._copy() for c in ModelVersion.__table__.columns if c.name in present)
            )
            connection.execute(
                as_of_0007.insert().values(
                    model_name="m", version="1.0.0", published=True, map_manifest={}, device_uid="1.2.3",
                    content_digest="sha256:" + "0" * 64, inputs={}, outputs={}, resources={}, created_at=utcnow(),
                )
            )  # fmt: skip
        assert upgrade(database.engine) == head_revision()
        image = "localhost/m@sha256:" + "a" * 64
        with database.session() as session:
            (row,) = session.scalars(select(ModelVersion))
            assert (row.version, row.image) == ("1.0.0", None)
            row.image = image
        with database.session() as session:
            assert session.scalars(select(ModelVersion.image)).one() == image
        command.downgrade(alembic_config(database_url), "0007")
        with database.engine.connect() as connection:
            assert "image" not in {c["name"] for c in inspect(connection).get_columns("model_versions")}
            assert connection.execute(text("SELECT version FROM model_versions")).scalars().all() == ["1.0.0"]
    finally:
        database.dispose()
