"""The ``hounsfield`` command."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from hounsfield.config import ConfigError, Settings, load_settings
from hounsfield.db.migrate import db_app
from hounsfield.logs import setup_logging

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from hounsfield.db import Database
    from hounsfield.registry.auth import Principal

__all__ = ["app"]

app = typer.Typer(help="Hounsfield: from a trained MONAI model to a result in the PACS.", no_args_is_help=True)
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML configuration file (default: $HOUNSFIELD_CONFIG).", exists=True, dir_okay=False
    ),
]


def _settings(config: Path | None, process: str, **overrides: object) -> Settings:
    try:
        settings = load_settings(config, **overrides)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    setup_logging(settings.log_level, process)
    return settings


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command()
def up(config: ConfigOption = None) -> None:
    """Run every service in the foreground (redis-server too when no Redis URL is set). Ctrl-C stops them."""
    from hounsfield.db import Database
    from hounsfield.registry.auth import Authenticator, AuthSetupError, ensure_sign_in_possible
    from hounsfield.supervisor import run_up

    settings = _settings(config, "up")
    from hounsfield.registry.catalog import CatalogError
    from hounsfield.registry.lifecycle import prepare_database

    db = Database(settings.sqlalchemy_url)
    try:
        prepare_database(db, settings)  # a declared deployment the registry refuses stops here
        # The registry would refuse to start: say so before starting anything.
        ensure_sign_in_possible(settings, db, Authenticator(db, settings.registry.oidc))
    except (AuthSetupError, CatalogError) as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    finally:
        db.dispose()
    raise typer.Exit(run_up(settings, config, _stop_on_signals()))


@app.command()
def listener(config: ConfigOption = None) -> None:
    """The DICOM listener (C-ECHO, C-STORE) with the router."""
    from hounsfield.listener.server import run

    settings = _settings(config, "listener")
    run(settings, _stop_on_signals())


@app.command()
def worker(config: ConfigOption = None) -> None:
    """A Celery worker that runs the deployed applications."""
    from hounsfield.worker.service import run

    run(_settings(config, "worker"))


@app.command()
def registry(
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="Port (default from the configuration).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
) -> None:
    """The registry HTTP API."""
    import uvicorn

    from hounsfield.registry.app import create_app
    from hounsfield.registry.auth import AuthSetupError

    settings = _settings(config, "registry")
    try:
        api = create_app(settings)
    except AuthSetupError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    uvicorn.run(
        api,
        host=host or settings.registry.host,
        port=port or settings.registry.port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


@app.command()
def echo(
    host: Annotated[str, typer.Option(help="The DICOM node's host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Its port.", min=1, max=65535)] = 11112,
    called_ae: Annotated[str, typer.Option("--called-ae", help="Its AE title.")] = "HOUNSFIELD",
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="Our AE title (a source it accepts).")] = "HF_ECHO",
    timeout: Annotated[float, typer.Option(help="Seconds for each step.", min=0.1)] = 10.0,
) -> None:
    """Send one C-ECHO (the listener's readiness probe); exit 0 only when it answers Success."""
    from hounsfield.listener.echo import echo as send_echo

    outcome = send_echo(host, port, called_ae=called_ae, calling_ae=calling_ae, timeout_s=timeout)
    (Console() if outcome.ok else err).print(outcome.detail, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if outcome.ok else 1)


@app.command()
def fetch(
    source: Annotated[str, typer.Option("--source", "-s", help="A source in listener.sources with query settings.")],
    accession: Annotated[str | None, typer.Option("--accession", help="Accession number.")] = None,
    patient_id: Annotated[str | None, typer.Option("--patient-id", help="Patient ID.")] = None,
    study_date: Annotated[
        str | None, typer.Option("--study-date", help="Study date, YYYYMMDD or YYYYMMDD-YYYYMMDD.")
    ] = None,
    study_uid: Annotated[str | None, typer.Option("--study-uid", help="Study Instance UID.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Query and compare; retrieve nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Handle at most this many of the matching studies.")] = 100,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the listener to complete C-MOVEd studies.")
    ] = 10.0,
    config: ConfigOption = None,
) -> None:
    """Find studies on a source PACS (C-FIND) and retrieve here what is missing (C-MOVE or C-GET)."""
    from hounsfield.listener.retrieve import FetchFailed, render_report, run_fetch

    settings = _settings(config, "fetch")
    try:
        report = run_fetch(
            settings, source, dry_run=dry_run, limit=limit, wait_s=wait,
            accession_number=accession, patient_id=patient_id, study_date=study_date, study_instance_uid=study_uid,
        )  # fmt: skip
    except FetchFailed as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, "error": str(exc)}))
        err.print(f"[red]fetch failed:[/red] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from exc
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        Console().print(render_report(report))
    for problem in report.problems:
        err.print(f"[red]{problem}[/red]", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


app.add_typer(db_app, name="db")
tokens = typer.Typer(help="API tokens of the registry (shown once when made; only their hash is kept).")
app.add_typer(tokens, name="tokens")


def _database(config: Path | None) -> tuple[Settings, Database]:
    """The settings and the migrated database, for commands that work on the database directly."""
    from hounsfield.db import Database
    from hounsfield.registry.catalog import CatalogError
    from hounsfield.registry.lifecycle import prepare_database

    settings = _settings(config, "cli")
    db = Database(settings.sqlalchemy_url)
    try:
        prepare_database(db, settings)
    except CatalogError as exc:  # a declared deployment clashes with the registry
        db.dispose()
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    return settings, db


@contextmanager
def _session_or_exit(db: Database) -> Iterator[Session]:
    """A session on ``db`` (disposed after); a refusal of the registry is printed and exits 1."""
    from hounsfield.registry.catalog import CatalogError

    try:
        with db.session() as session:
            yield session
    except CatalogError as exc:
        for check in getattr(exc, "checks", []):  # a failed validation: every check, good and bad
            mark = "ok " if check.ok else "[red]bad[/red]"
            err.print(f"{mark} {check.check}: {check.detail}", highlight=False)
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.dispose()


def _cli_principal() -> Principal:
    """The CLI acts as an administrator (it runs with access to the configuration and database)."""
    import getpass

    from hounsfield.registry.auth import Principal, Role

    return Principal(f"cli:{getpass.getuser()}", Role.ADMIN, "cli")


@tokens.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who or what will use it (unique).")],
    role: Annotated[str, typer.Option(help="viewer, radiologist, model-developer, admin or sender.")] = "viewer",
    config: ConfigOption = None,
) -> None:
    """Make an API token and print it (the only time it is shown)."""
    from sqlalchemy.exc import IntegrityError

    from hounsfield.registry.audit import record
    from hounsfield.registry.auth import Role, create_token

    try:
        chosen = Role(role)
    except ValueError:
        err.print(f"[red]unknown role {role!r}: one of {', '.join(r.value for r in Role)}[/red]", highlight=False)
        raise typer.Exit(2) from None
    _, db = _database(config)
    principal = _cli_principal()
    try:
        with db.session() as session:
            row, token = create_token(session, name, chosen, principal.subject)
            record(session, principal, "token.create", "api_token", str(row.id), after={"name": name, "role": role})
    except IntegrityError:
        err.print(f"[red]a token named {name!r} exists already[/red]", highlight=False)
        raise typer.Exit(2) from None
    finally:
        db.dispose()
    typer.echo(token)


@tokens.command("list")
def tokens_list(config: ConfigOption = None) -> None:
    """The API tokens (never the tokens themselves)."""
    from sqlalchemy import select

    from hounsfield.db.access import ApiToken

    _, db = _database(config)
    with db.session() as session:
        for row in session.scalars(select(ApiToken).order_by(ApiToken.id)):
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            typer.echo(f"{row.id}\t{row.name}\t{row.role}\t{state}")
    db.dispose()


@tokens.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (tokens list).")], config: ConfigOption = None
) -> None:
    """Revoke an API token at once."""
    from hounsfield.registry.audit import record
    from hounsfield.registry.auth import revoke_token

    _, db = _database(config)
    principal = _cli_principal()
    with db.session() as session:
        revoked = revoke_token(session, token_id)
        if revoked:
            record(session, principal, "token.revoke", "api_token", str(token_id), after={"revoked": True})
    db.dispose()
    if not revoked:
        err.print(f"[red]no active token with id {token_id}[/red]", highlight=False)
        raise typer.Exit(1)
    typer.echo(f"revoked {token_id}")


models = typer.Typer(help="The model catalog: register MAP versions and list what is registered.")
app.add_typer(models, name="models")


@models.command("register")
def models_register(
    path: Annotated[Path, typer.Argument(help="A MAP folder: etc/holoscan/{app,pkg}.json, or a build context.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The catalog model it is a version of.")],
    version: Annotated[str | None, typer.Option(help="Semantic version (default: pkg.json's version).")] = None,
    draft: Annotated[bool, typer.Option(help="Register unpublished (a draft may be replaced).")] = False,
    config: ConfigOption = None,
) -> None:
    """Register a model version from a MAP: manifests validated, digests taken, a device UID given."""
    from pydantic import ValidationError

    from hounsfield.registry.audit import record
    from hounsfield.registry.catalog import CatalogError, register_version
    from hounsfield.registry.catalog_schemas import VersionRegister
    from hounsfield.registry.map_manifest import ManifestError, load_map

    settings, db = _database(config)
    try:
        loaded = load_map(path)
        chosen = version or str(
            loaded.manifests.pkg_raw.get("version") or loaded.manifests.app_raw.get("version") or ""
        )
        request = VersionRegister(
            version=chosen,
            app=loaded.manifests.app_raw,
            pkg=loaded.manifests.pkg_raw,
            models_digest=loaded.models_digest,
            published=not draft,
        )
    except (ManifestError, ValidationError) as exc:
        err.print(f"[red]{path}: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    principal = _cli_principal()
    try:
        with db.session() as session:
            registration = register_version(
                session, model_name=model, request=request, uid_root=settings.uid_root, actor=principal.subject
            )
            if registration.outcome != "unchanged":
                before = registration.before.model_dump(mode="json") if registration.before else None
                action = {"created": "create", "published": "publish", "replaced": "replace"}[registration.outcome]
                record(
                    session, principal, f"model_version.{action}", "model_version",
                    f"{model}@{request.version}", before=before, after=registration.version.model_dump(mode="json"),
                )  # fmt: skip
    except (CatalogError, ManifestError) as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    registered = registration.version
    typer.echo(
        f"{model} {registered.version}: {registration.outcome} ({registered.content_digest}, "
        f"device UID {registered.device_uid})"
    )


@models.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Every model and its versions, newest first."""
    from hounsfield.registry.catalog import list_models, list_versions

    _, db = _database(config)
    with db.session() as session:
        for entry in list_models(session):
            versions = ", ".join(
                v.version + ("" if v.published else " (draft)") for v in list_versions(session, model_name=entry.name)
            )
            typer.echo(f"{entry.name}\t{entry.regulatory_status}\t{versions or '-'}")
    db.dispose()


rules = typer.Typer(help="Routing rules: store them, list them, try them on stored studies.")
app.add_typer(rules, name="rules")


@rules.command("test")
def rules_test(
    study: Annotated[str, typer.Option("--study", help="A stored study's Study Instance UID.")],
    rule_file: Annotated[
        Path | None, typer.Option("--rule", exists=True, dir_okay=False, help="A YAML rule to try instead.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Which deployments would run on a stored study, and why each rule matched each series or not."""
    import yaml
    from pydantic import TypeAdapter, ValidationError

    from hounsfield.registry.lifecycle import load_deployments
    from hounsfield.router.dry_run import dry_run, study_facts
    from hounsfield.router.rules import Rule

    rule = None
    if rule_file is not None:
        try:
            rule = TypeAdapter(Rule).validate_python(yaml.safe_load(rule_file.read_text(encoding="utf-8")))
        except (ValidationError, yaml.YAMLError) as exc:
            err.print(f"[red]{rule_file}: {exc}[/red]", highlight=False)
            raise typer.Exit(2) from None
    _, db = _database(config)
    with db.session() as session:
        facts = study_facts(session, study)
        running = load_deployments(session)
    db.dispose()
    if not facts:
        err.print("[red]no stored study with this Study Instance UID[/red]", highlight=False)
        raise typer.Exit(1)
    for verdict in dry_run(running, facts, rule):
        taken = verdict.series_instance_uids
        about = f" ({verdict.model}, {verdict.stage})" if verdict.model else ""
        outcome = f"would run on {len(taken)} of {len(facts)} series" if taken else "would not run"
        typer.echo(f"{verdict.deployment}{about}: {outcome}")
        for uid, match in verdict.verdicts.items():
            typer.echo(f"  series {uid}")
            typer.echo(match.explain(indent=2))


def _load_yaml(path: Path) -> object:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        err.print(f"[red]{path}: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None


def _invalid(source: str, exc: Exception) -> typer.Exit:
    """Print a validation failure with each error's location; the exit to raise."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        for item in exc.errors():
            where = ".".join(str(part) for part in item["loc"]) or "(top level)"
            err.print(f"[red]{source}: {where}: {item['msg']}[/red]", highlight=False)
    else:
        err.print(f"[red]{source}: {exc}[/red]", highlight=False)
    return typer.Exit(2)


@rules.command("list")
def rules_list(config: ConfigOption = None) -> None:
    """The stored routing rules and the deployments bound to each."""
    from hounsfield.registry.lifecycle import list_rules

    _, db = _database(config)
    with db.session() as session:
        for rule in list_rules(session):
            bound = ", ".join(rule.deployments) or "-"
            typer.echo(f"{rule.name}\t{rule.source}\t{bound}\t{json.dumps(rule.rule)}")
    db.dispose()


@rules.command("apply")
def rules_apply(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="YAML: a list of {name, rule, description}.")
    ],
    config: ConfigOption = None,
) -> None:
    """Store routing rules from a YAML file (made or replaced; all or none, each error located)."""
    from pydantic import Field, TypeAdapter, ValidationError

    from hounsfield.registry.deployment_schemas import RulePut
    from hounsfield.registry.lifecycle import put_rule

    class _Named(RulePut):
        name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")

    loaded = _load_yaml(path)
    try:
        entries = TypeAdapter(list[_Named]).validate_python(loaded if isinstance(loaded, list) else [loaded])
    except ValidationError as exc:
        raise _invalid(str(path), exc) from None
    _, db = _database(config)
    principal = _cli_principal()
    with db.session() as session:
        outcomes = [(e.name, put_rule(session, principal, e.name, e.rule, e.description)[1]) for e in entries]
    db.dispose()
    for name, outcome in outcomes:
        typer.echo(f"{name}: {outcome}")


deployments = typer.Typer(help="Deployments: a model version on a rule; promote, roll back and retire them.")
app.add_typer(deployments, name="deployments")

ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (kept with the transition and audited).")]


def _lifecycle_call(config: Path | None, call: str, name: str, **kwargs: object) -> None:
    from hounsfield.registry import lifecycle

    settings, db = _database(config)
    if call == "promote":
        kwargs["settings"] = settings
    with _session_or_exit(db) as session:
        changed = getattr(lifecycle, call)(session, _cli_principal(), name, **kwargs)
    typer.echo(f"{changed.name}: {changed.stage.value}")


@deployments.command("list")
def deployments_list(
    stage: Annotated[str | None, typer.Option(help="Only those in this stage.")] = None, config: ConfigOption = None
) -> None:
    """Every deployment: name, stage, model and version, rule, destinations."""
    from hounsfield.db.deployments import Stage
    from hounsfield.registry.lifecycle import list_deployments

    try:
        chosen = Stage(stage) if stage else None
    except ValueError:
        err.print(f"[red]unknown stage {stage!r}: one of {', '.join(s.value for s in Stage)}[/red]", highlight=False)
        raise typer.Exit(2) from None
    _, db = _database(config)
    with db.session() as session:
        for d in list_deployments(session, stage=chosen):
            to = ",".join(d.destinations) or "-"
            typer.echo(f"{d.name}\t{d.stage.value}\t{d.model} {d.version}\trule {d.rule}\tto {to}")
    db.dispose()


@deployments.command("show")
def deployments_show(name: str, config: ConfigOption = None) -> None:
    """One deployment as JSON, with every transition (who, when, why)."""
    from hounsfield.registry.lifecycle import get_deployment

    _, db = _database(config)
    with _session_or_exit(db) as session:
        shown = get_deployment(session, name)
    typer.echo(shown.model_dump_json(indent=2))


@deployments.command("create")
def deployments_create(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="YAML: the deployment (as POST /deployments).")
    ],
    config: ConfigOption = None,
) -> None:
    """Make a draft deployment of a registered model version (see docs/registry.md for the fields)."""
    from pydantic import ValidationError

    from hounsfield.registry.deployment_schemas import DeploymentCreate
    from hounsfield.registry.lifecycle import create_deployment

    try:
        request = DeploymentCreate.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise _invalid(str(path), exc) from None
    settings, db = _database(config)
    with _session_or_exit(db) as session:
        made = create_deployment(session, _cli_principal(), request, settings)
    typer.echo(f"{made.name}: {made.stage.value} ({made.model} {made.version} on rule {made.rule})")


@deployments.command("promote")
def deployments_promote(
    name: str,
    reason: ReasonOption,
    to: Annotated[str | None, typer.Option(help="validated, shadow, research or clinical (default: the next).")] = None,
    supersede: Annotated[bool, typer.Option(help="Retire the model's clinical version on this rule.")] = False,
    config: ConfigOption = None,
) -> None:
    """One step on: draft -> validated (checks) -> shadow | research -> clinical."""
    from hounsfield.db.deployments import Stage

    try:
        target = Stage(to) if to else None
    except ValueError:
        err.print(f"[red]unknown stage {to!r}[/red]", highlight=False)
        raise typer.Exit(2) from None
    _lifecycle_call(config, "promote", name, reason=reason, to=target, supersede=supersede)


@deployments.command("rollback")
def deployments_rollback(name: str, reason: ReasonOption, config: ConfigOption = None) -> None:
    """Undo the last promotion (clinical -> shadow, restoring the clinical version it replaced)."""
    _lifecycle_call(config, "rollback", name, reason=reason)


@deployments.command("retire")
def deployments_retire(name: str, reason: ReasonOption, config: ConfigOption = None) -> None:
    """Stop a deployment for good."""
    _lifecycle_call(config, "retire", name, reason=reason)


results_app = typer.Typer(help="Results: take a job's results back from the PACS (IHE IOCM rejection notes).")
app.add_typer(results_app, name="results")


@results_app.command("withdraw")
def results_withdraw(
    job_id: str,
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="quality (113001) or patient-safety (113037 where supported).")
    ],
    comment: Annotated[str | None, typer.Option(help="Why, in words (no patient data).")] = None,
    config: ConfigOption = None,
) -> None:
    """Withdraw a job's results: each PACS that has them gets a rejection note. Run it again to send the
    notes a destination could not take yet; exits 1 while any is missing."""
    from hounsfield.exporter.withdrawal import NoSuchJob, WithdrawalRefused, withdraw_job
    from hounsfield.registry.audit import withdrawal_recorder

    if reason not in ("quality", "patient-safety"):
        err.print(f"[red]unknown reason {reason!r}: quality or patient-safety[/red]", highlight=False)
        raise typer.Exit(2)
    settings, db = _database(config)
    principal = _cli_principal()

    try:
        made = withdraw_job(
            settings, db, job_id, reason=reason, comment=comment,  # type: ignore[arg-type]
            requested_by=principal.subject, on_recorded=withdrawal_recorder(principal),
        )  # fmt: skip
    except (NoSuchJob, WithdrawalRefused) as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    missing = 0
    for name, note in sorted(made.notes.items()):
        if note.get("delivered_at"):
            typer.echo(f"{name}\tdelivered\t{note['title']}\t{note['sop_instance_uid']}")
        else:
            missing += 1
            typer.echo(f"{name}\tnot delivered\t{note.get('error')}")
    if not made.notes:
        typer.echo(f"job {job_id}: withdrawn; no destination had received its results")
    if missing:
        raise typer.Exit(1)


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Validate the configuration and print it as JSON."""
    settings = _settings(config, "config")
    typer.echo(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2))


@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    keep: Annotated[bool, typer.Option(help="Keep the demo's data folder and leave nothing running.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the results.")] = 300.0,
) -> None:
    """Send a synthetic CT study to Hounsfield and show its SEG and SR arriving in a local Orthanc."""
    from hounsfield.demo.run import DemoError, print_summary, run_demo

    setup_logging("WARNING", "demo")
    try:
        summary = run_demo(timeout_s=timeout, keep=keep, progress=None if as_json else err)
    except DemoError as exc:
        err.print(f"[red]demo failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_summary(summary, Console())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
