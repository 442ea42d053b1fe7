"""``hounsfield models``, ``rules`` and ``deployments``: the catalog from the command line.

Each command is a thin face over :mod:`hounsfield.catalog`, acting as ``cli:<user>`` with the admin
role: every change is audited by the catalog, as through the API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hounsfield.cli._common import (
    ConfigOption,
    ReasonOption,
    cli_principal,
    database,
    err,
    invalid,
    load_yaml,
    session_or_exit,
)

__all__ = ["deployments", "models", "rules"]

models = typer.Typer(help="The model catalog: register MAP versions and list what is registered.")
rules = typer.Typer(help="Routing rules: store them, list them, try them on stored studies.")
deployments = typer.Typer(help="Deployments: a model version on a rule; promote, roll back and retire them.")


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

    from hounsfield.catalog.manifests import ManifestInvalid, load_map
    from hounsfield.catalog.models import register_version
    from hounsfield.catalog.schemas import VersionRegister

    settings, db = database(config)
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
    except (ManifestInvalid, ValidationError) as exc:
        db.dispose()
        err.print(f"[red]{path}: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    with session_or_exit(db) as session:
        registration = register_version(
            session, cli_principal(), model_name=model, request=request, uid_root=settings.uid_root
        )
    registered = registration.version
    typer.echo(
        f"{model} {registered.version}: {registration.outcome} ({registered.content_digest}, "
        f"device UID {registered.device_uid})"
    )


@models.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Every model and its versions, newest first."""
    from hounsfield.catalog.models import list_models, list_versions

    _, db = database(config)
    with db.session() as session:
        for entry in list_models(session):
            versions = ", ".join(
                v.version + ("" if v.published else " (draft)") for v in list_versions(session, model_name=entry.name)
            )
            typer.echo(f"{entry.name}\t{entry.regulatory_status}\t{versions or '-'}")
    db.dispose()


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

    from hounsfield.catalog.read_model import load_deployments
    from hounsfield.contracts.rules import Rule
    from hounsfield.router.dry_run import dry_run, study_facts

    rule = None
    if rule_file is not None:
        try:
            rule = TypeAdapter(Rule).validate_python(yaml.safe_load(rule_file.read_text(encoding="utf-8")))
        except (ValidationError, yaml.YAMLError) as exc:
            err.print(f"[red]{rule_file}: {exc}[/red]", highlight=False)
            raise typer.Exit(2) from None
    _, db = database(config)
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


@rules.command("list")
def rules_list(config: ConfigOption = None) -> None:
    """The stored routing rules and the deployments bound to each."""
    from hounsfield.catalog.rules import list_rules

    _, db = database(config)
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

    from hounsfield.catalog.rules import put_rule
    from hounsfield.catalog.schemas import RulePut

    class _Named(RulePut):
        name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")

    loaded = load_yaml(path)
    try:
        entries = TypeAdapter(list[_Named]).validate_python(loaded if isinstance(loaded, list) else [loaded])
    except ValidationError as exc:
        raise invalid(str(path), exc) from None
    _, db = database(config)
    principal = cli_principal()
    with db.session() as session:
        outcomes = [(e.name, put_rule(session, principal, e.name, e.rule, e.description)[1]) for e in entries]
    db.dispose()
    for name, outcome in outcomes:
        typer.echo(f"{name}: {outcome}")


def _lifecycle_call(config: Path | None, call: str, name: str, **kwargs: object) -> None:
    from hounsfield.catalog import deployments as catalog_deployments

    settings, db = database(config)
    if call == "promote":
        kwargs["settings"] = settings
    with session_or_exit(db) as session:
        changed = getattr(catalog_deployments, call)(session, cli_principal(), name, **kwargs)
    typer.echo(f"{changed.name}: {changed.stage.value}")


@deployments.command("list")
def deployments_list(
    stage: Annotated[str | None, typer.Option(help="Only those in this stage.")] = None, config: ConfigOption = None
) -> None:
    """Every deployment: name, stage, model and version, rule, destinations."""
    from hounsfield.catalog.deployments import list_deployments
    from hounsfield.db.deployments import Stage

    try:
        chosen = Stage(stage) if stage else None
    except ValueError:
        err.print(f"[red]unknown stage {stage!r}: one of {', '.join(s.value for s in Stage)}[/red]", highlight=False)
        raise typer.Exit(2) from None
    _, db = database(config)
    with db.session() as session:
        for d in list_deployments(session, stage=chosen):
            to = ",".join(d.destinations) or "-"
            typer.echo(f"{d.name}\t{d.stage.value}\t{d.model} {d.version}\trule {d.rule}\tto {to}")
    db.dispose()


@deployments.command("show")
def deployments_show(name: str, config: ConfigOption = None) -> None:
    """One deployment as JSON, with every transition (who, when, why)."""
    from hounsfield.catalog.deployments import get_deployment

    _, db = database(config)
    with session_or_exit(db) as session:
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

    from hounsfield.catalog.deployments import create_deployment
    from hounsfield.catalog.schemas import DeploymentCreate

    try:
        request = DeploymentCreate.model_validate(load_yaml(path))
    except ValidationError as exc:
        raise invalid(str(path), exc) from None
    settings, db = database(config)
    with session_or_exit(db) as session:
        made = create_deployment(session, cli_principal(), request, settings)
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


@models.command("drift")
def models_drift(
    model: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None,
    version: Annotated[str | None, typer.Argument(help="Only this version (with the model).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, as the API's .../versions/{version}/drift.")] = False,
    config: ConfigOption = None,
) -> None:
    """Input drift per model version: ok, drifting or not_enough_data, with each feature's score."""
    from hounsfield.drift import drift_status, drift_statuses

    settings, db = database(config)
    with session_or_exit(db) as session:
        if version is not None and model is not None:
            statuses = [drift_status(session, settings, model_name=model, model_version=version)]
        else:
            statuses = drift_statuses(session, settings, model_name=model)
    if as_json:
        typer.echo(json.dumps([s.model_dump(mode="json") for s in statuses], indent=2))
        return
    if not statuses:
        typer.echo("no profiled jobs yet")
    for s in statuses:
        reference = "first jobs"
        if s.reference == "window":
            reference = f"{s.reference_start:%Y-%m-%d %H:%M} to {s.reference_end:%Y-%m-%d %H:%M}"
        typer.echo(
            f"{s.model_name} {s.model_version}\t{s.status}\treference {reference} ({s.reference_jobs} jobs)\t"
            f"recent {s.window_jobs} jobs"
        )
        for f in s.features:
            score = "-" if f.score is None else f"{f.score:.3f}"
            typer.echo(f"  {f.feature}\t{f.status}\t{f.statistic} {score} (threshold {f.threshold})")


@models.command("drift-reference")
def models_drift_reference(
    model: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[str, typer.Argument(help="Its version.")],
    start: Annotated[str | None, typer.Option(help="ISO date or time the reference window starts (UTC).")] = None,
    end: Annotated[str | None, typer.Option(help="ISO date or time it ends (UTC).")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Back to the version's first jobs.")] = False,
    config: ConfigOption = None,
) -> None:
    """Set the jobs a version's recent inputs are compared with (audited, as the CLI's administrator)."""
    from datetime import datetime

    from hounsfield.drift import ReferenceWindow, set_reference_window

    if clear == (start is not None or end is not None):
        err.print("[red]give --start and --end, or --clear[/red]", highlight=False)
        raise typer.Exit(2)
    try:
        window = ReferenceWindow(
            start=datetime.fromisoformat(start) if start else None, end=datetime.fromisoformat(end) if end else None
        )
    except ValueError as exc:
        err.print(f"[red]not an ISO date or time: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    settings, db = database(config)
    with session_or_exit(db) as session:
        status = set_reference_window(
            session, cli_principal(), settings, model_name=model, model_version=version, window=window
        )
    typer.echo(f"{model} {version}: reference {status.reference} ({status.reference_jobs} jobs), {status.status}")
