"""Deployments: a catalog version bound to a rule, destinations and a queue, and their lifecycle.

Lifecycle of a deployment (``hounsfield.db.deployments.Stage``)::

    draft --validate--> validated --> shadow --> clinical --> retired
                                  \\-> research -> shadow

- ``promote`` moves one step (or to a named stage among the allowed ones); from draft it runs the
  validation checks and stays a draft, with the failed checks in the answer, when one fails.
- Clinical is one per model and rule: promoting a second clinical version is refused, unless the
  caller asks to ``supersede`` the current one, which is then retired in the same transaction.
- ``rollback`` undoes the last promotion in one call: a clinical deployment goes back to shadow and
  the clinical deployment it superseded, if any, becomes clinical again.
- ``retire`` stops a deployment for good.

Every move appends a :class:`~hounsfield.db.deployments.DeploymentTransition` (who, when, why).

Deployments declared in the YAML configuration (``deployments:``) are written here at start-up by
:func:`sync_declared`: their definition follows the file, and their ``mode`` is applied when it is
new or changed (so a promotion made through the API is not undone by a restart).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hounsfield import containers
from hounsfield.access import CONFIG_PRINCIPAL, Principal, record
from hounsfield.catalog.manifests import load_map
from hounsfield.catalog.rules import RULE, put_rule
from hounsfield.catalog.schemas import DeploymentCreate, DeploymentPublic, TransitionPublic, ValidationCheck
from hounsfield.config import DeploymentSettings, Settings
from hounsfield.db import Database
from hounsfield.db.catalog import Model, ModelVersion, RegulatoryStatus, UseCase, Workload
from hounsfield.db.deployments import ACTIVE_STAGES, Deployment, DeploymentTransition, RoutingRule, Stage
from hounsfield.db.models import utcnow
from hounsfield.errors import Conflict, Invalid, NotFound

__all__ = [
    "DeploymentChecksFailed",
    "create_deployment",
    "deployment_public",
    "get_deployment",
    "list_deployments",
    "next_stages",
    "promote",
    "promotion_needs_admin",
    "queue_for",
    "retire",
    "rollback",
    "rollback_stage",
    "sync_declared",
    "validation_checks",
]

logger = logging.getLogger(__name__)

_PROMOTIONS: dict[Stage, tuple[Stage, ...]] = {
    Stage.DRAFT: (Stage.VALIDATED,),
    Stage.VALIDATED: (Stage.SHADOW, Stage.RESEARCH),
    Stage.SHADOW: (Stage.CLINICAL,),
    Stage.RESEARCH: (Stage.SHADOW,),
    Stage.CLINICAL: (),
    Stage.RETIRED: (),
}
"""Allowed promotions; the first is the default next step."""

_ROLLBACKS: dict[Stage, Stage] = {
    Stage.VALIDATED: Stage.DRAFT,
    Stage.SHADOW: Stage.VALIDATED,
    Stage.RESEARCH: Stage.VALIDATED,
    Stage.CLINICAL: Stage.SHADOW,
}


class DeploymentChecksFailed(Conflict):
    """A draft refused promotion: its checks failed; ``checks`` says which and why (the good ones too)."""

    def __init__(self, name: str, checks: list[ValidationCheck]) -> None:
        self.checks = checks
        failed = "; ".join(f"{c.check}: {c.detail}" for c in checks if not c.ok)
        super().__init__(f"deployment {name!r} stays a draft: {failed}")


def next_stages(stage: Stage) -> tuple[Stage, ...]:
    """Where a deployment in ``stage`` may be promoted to; the first is the default next step."""
    return _PROMOTIONS[stage]


def promotion_needs_admin(stage: Stage, to: Stage | None) -> bool:
    """Whether promoting from ``stage`` to ``to`` (None: the default next step) reaches clinical, which
    only an administrator may do."""
    target = to or (_PROMOTIONS[stage][0] if _PROMOTIONS[stage] else None)
    return target is Stage.CLINICAL


def rollback_stage(stage: Stage) -> Stage | None:
    """Where a rollback takes a deployment in ``stage``; None: it cannot be rolled back."""
    return _ROLLBACKS.get(stage)


def _deployment(session: Session, name: str) -> Deployment:
    row = session.get(Deployment, name)
    if row is None:
        raise NotFound(f"no deployment named {name!r}")
    return row


def deployment_public(session: Session, row: Deployment) -> DeploymentPublic:
    version = session.get(ModelVersion, row.model_version_id) if row.model_version_id is not None else None
    return DeploymentPublic(
        name=row.name,
        model=row.model_name,
        version=row.model_version,
        catalog_version=version is not None,
        device_uid=version.device_uid if version is not None else None,
        rule=row.rule_name,
        destinations=list(row.destinations),
        queue=row.queue,
        app=row.app,
        model_path=row.model_path,
        manufacturer=row.manufacturer,
        timeout_s=row.timeout_s,
        runtime=row.runtime,
        map_path=row.map_path,
        application_root=row.application_root,
        image=row.image,
        network=row.network,
        stage=row.stage,
        runs=row.stage in ACTIVE_STAGES,
        source=row.source,  # type: ignore[arg-type]
        description=row.description,
        created_at=row.created_at,
        created_by=row.created_by,
        stage_changed_at=row.stage_changed_at,
        stage_changed_by=row.stage_changed_by,
        transitions=[
            TransitionPublic(
                from_stage=t.from_stage,
                to_stage=t.to_stage,
                action=t.action,
                actor=t.actor,
                reason=t.reason,
                details=t.details,
                at=t.at,
            )
            for t in row.transitions
        ],
    )


def list_deployments(
    session: Session, *, stage: Stage | None = None, model: str | None = None
) -> list[DeploymentPublic]:
    statement = select(Deployment).order_by(Deployment.name)
    if stage is not None:
        statement = statement.where(Deployment.stage == stage)
    if model is not None:
        statement = statement.where(Deployment.model_name == model)
    return [deployment_public(session, row) for row in session.scalars(statement)]


def get_deployment(session: Session, name: str) -> DeploymentPublic:
    return deployment_public(session, _deployment(session, name))


def _check_destinations(settings: Settings, destinations: Sequence[str]) -> str | None:
    unknown = [d for d in destinations if d not in settings.destinations]
    if unknown:
        configured = ", ".join(sorted(settings.destinations)) or "none"
        return f"not configured: {', '.join(unknown)} (configured: {configured})"
    return None


_QUEUE_OF_WORKLOAD: dict[Workload, str] = {
    Workload.SYNCHRONOUS: "stat",
    Workload.ASYNC_RESULT: "stat",
    Workload.STREAMING: "stat",
    Workload.ASYNCHRONOUS: "routine",
    Workload.BATCH: "batch",
}
_URGENCY = ("stat", "routine", "batch")


def queue_for(use_cases: Iterable[UseCase]) -> str:
    """The priority queue of a model's jobs: the most urgent its use cases' workloads call for.

    Emergency, quality assurance and interactive use cases are ``stat``, scheduled reading ``routine``,
    retrospective studies ``batch``; a model with no use case is ``routine``.
    """
    queues = {_QUEUE_OF_WORKLOAD[u.workload] for u in use_cases}
    return next((q for q in _URGENCY if q in queues), "routine")


def create_deployment(
    session: Session, principal: Principal, request: DeploymentCreate, settings: Settings
) -> DeploymentPublic:
    """A new draft deployment of a published catalog version (404-free: bad references are :class:`Invalid`)."""
    if session.get(Deployment, request.name) is not None:
        raise Conflict(f"a deployment named {request.name!r} exists already")
    version = session.scalar(
        select(ModelVersion).where(ModelVersion.model_name == request.model, ModelVersion.version == request.version)
    )
    if version is None:
        raise Invalid("version", f"model {request.model!r} has no version {request.version} in the catalog")
    if not version.published:
        raise Invalid("version", f"{request.model} {request.version} is a draft; publish it before deploying it")
    if session.get(RoutingRule, request.rule) is None:
        raise Invalid("rule", f"no routing rule named {request.rule!r} (PUT /rules/{{name}} makes one)")
    problem = _check_destinations(settings, request.destinations)
    if problem:
        raise Invalid("destinations", problem)
    if request.runtime == "container" and not (request.image or version.image):
        raise Invalid("image", f"runtime container needs an image: {request.model} {request.version} has none")
    row = Deployment(
        name=request.name,
        model_name=request.model,
        model_version=request.version,
        model_version_id=version.id,
        rule_name=request.rule,
        destinations=list(request.destinations),
        queue=request.queue or queue_for(version.model.use_cases),
        app=request.app or "",
        model_path=request.model_path,
        manufacturer=request.manufacturer,
        timeout_s=request.timeout_s or float(version.timeout_s or 600),
        runtime=request.runtime,
        map_path=request.map_path,
        application_root=request.application_root,
        image=request.image,
        network=request.network,
        stage=Stage.DRAFT,
        stage_changed_by=principal.subject,
        source="api",
        description=request.description,
        created_by=principal.subject,
    )
    session.add(row)
    _transition(session, row, None, Stage.DRAFT, "create", principal, "created")
    session.flush()
    public = deployment_public(session, row)
    record(session, principal, "deployment.create", "deployment", row.name, after=_audited(public))
    return public


def _audited(public: DeploymentPublic) -> dict[str, Any]:
    return public.model_dump(mode="json", exclude={"transitions"})


def _transition(
    session: Session,
    row: Deployment,
    from_stage: Stage | None,
    to_stage: Stage,
    action: str,
    principal: Principal,
    reason: str,
    details: dict[str, Any] | None = None,
) -> None:
    row.stage = to_stage
    row.stage_changed_at, row.stage_changed_by = utcnow(), principal.subject
    row.transitions.append(
        DeploymentTransition(
            deployment_name=row.name,
            from_stage=from_stage,
            to_stage=to_stage,
            action=action,
            actor=principal.subject,
            reason=reason,
            details=details or {},
        )
    )


def validation_checks(session: Session, row: Deployment, settings: Settings) -> list[ValidationCheck]:
    """What must hold before a deployment may run: rule, destinations, version, runtime, model files."""
    checks: list[ValidationCheck] = []

    def check(name: str, problem: str | None, ok_detail: str) -> None:
        checks.append(ValidationCheck(check=name, ok=problem is None, detail=problem or ok_detail))

    rule = session.get(RoutingRule, row.rule_name)
    rule_problem = None
    if rule is None:
        rule_problem = f"no routing rule named {row.rule_name!r}"
    else:
        try:
            RULE.validate_python(rule.definition)
        except ValueError as exc:
            rule_problem = f"the stored rule no longer parses: {exc}"
    check("rule", rule_problem, f"{row.rule_name} parses")
    check(
        "destinations",
        _check_destinations(settings, row.destinations),
        ", ".join(row.destinations) if row.destinations else "none (results are kept, not sent)",
    )
    version: ModelVersion | None = None
    if row.model_version_id is not None:
        version = session.get(ModelVersion, row.model_version_id)
        problem = None if version is not None and version.published else "the catalog version is not published"
        check("version", problem, f"{row.model_name} {row.model_version} published")
    if row.runtime == "subprocess":
        check("application", _map_problem(row), f"{row.map_path}: app.json and pkg.json valid")
    elif row.runtime == "container":
        image = row.image or (version.image if version is not None else None)
        pull = settings.worker.container.pull
        check("application", _image_problem(image, settings), f"image {image} (pull: {pull})")
        return checks  # its models are in its image
    else:
        module = row.app.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        check("application", None if found else f"module {module!r} is not installed here", f"{module} importable")
    model_path = Path(row.model_path)
    check("model files", None if model_path.exists() else f"{model_path} does not exist", str(model_path))
    return checks


def _image_problem(image: str | None, settings: Settings) -> str | None:
    """Why the container runtime could not start this image (the deployment's, else its version's) here, or None."""
    if not image:
        return "no image: neither the deployment nor its catalog version names one"
    try:
        if containers.image_exists(image) or settings.worker.container.pull != "never":
            return None
    except containers.ContainerEngineMissing as exc:
        return str(exc)
    return f"image {image} is not here and worker.container.pull is never (load it with podman load)"


def _map_problem(row: Deployment) -> str | None:
    """Why the subprocess runtime could not run this deployment's MAP here, or None."""
    if not row.map_path:
        return "no map_path"
    try:
        load_map(Path(row.map_path))
    except (OSError, ValueError) as exc:  # ManifestInvalid is a ValueError
        return f"{row.map_path}: {exc}"
    root = Path(row.application_root or row.map_path)
    return None if root.is_dir() else f"application root {root} is not a folder"


def _other_clinical(session: Session, row: Deployment) -> Deployment | None:
    return session.scalar(
        select(Deployment).where(
            Deployment.model_name == row.model_name,
            Deployment.rule_name == row.rule_name,
            Deployment.stage == Stage.CLINICAL,
            Deployment.name != row.name,
        )
    )


def promote(
    session: Session,
    principal: Principal,
    name: str,
    *,
    reason: str,
    settings: Settings,
    to: Stage | None = None,
    supersede: bool = False,
    action: str = "promote",
) -> DeploymentPublic:
    """Move a deployment one step on (see the module's docstring); audited with before and after."""
    row = _deployment(session, name)
    current = row.stage
    allowed = _PROMOTIONS[current]
    if not allowed:
        about = "is clinical already" if current is Stage.CLINICAL else "is retired (make a new deployment)"
        raise Conflict(f"deployment {name!r} {about}")
    target = to or allowed[0]
    if target not in allowed:
        raise Conflict(
            f"deployment {name!r} is {current.value}: it may go to {', '.join(s.value for s in allowed)}, "
            f"not {target.value}"
        )
    before = _audited(deployment_public(session, row))
    details: dict[str, Any] = {}
    if target is Stage.VALIDATED:
        checks = validation_checks(session, row, settings)
        details["checks"] = [c.model_dump() for c in checks]
        if not all(c.ok for c in checks):
            raise DeploymentChecksFailed(name, checks)
    if target is Stage.CLINICAL:
        _check_clinical_allowed(session, row)
        other = _other_clinical(session, row)
        if other is not None:
            if not supersede:
                raise Conflict(
                    f"{other.name} ({other.model_name} {other.model_version}) is clinical on rule {row.rule_name!r}: "
                    "one clinical version of a model per rule. Promote with supersede to replace it, or retire it"
                )
            _transition(
                session, other, Stage.CLINICAL, Stage.RETIRED, "superseded", principal, reason, {"superseded_by": name}
            )
            session.flush()  # out of clinical before this one goes in (the unique index)
            details["supersedes"] = other.name
    _transition(session, row, current, target, action, principal, reason, details)
    _flush_clinical(session, row)
    after = deployment_public(session, row)
    record(session, principal, f"deployment.{action}", "deployment", name, before=before, after=_audited(after))
    return after


def _check_clinical_allowed(session: Session, row: Deployment) -> None:
    if row.model_version_id is None:
        return
    version = session.get(ModelVersion, row.model_version_id)
    model = session.get(Model, row.model_name)
    if version is None or not version.published:
        raise Conflict(f"{row.model_name} {row.model_version} is not a published catalog version")
    if model is not None and model.regulatory_status is RegulatoryStatus.RESEARCH_ONLY:
        raise Conflict(
            f"model {row.model_name!r} is registered research-only: it may run in shadow or research, not clinical"
        )


def _flush_clinical(session: Session, row: Deployment) -> None:
    """Flush; a second clinical row on the same model and rule (a concurrent promotion) becomes a Conflict."""
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        with session.no_autoflush:
            clash = row.stage is Stage.CLINICAL and _other_clinical(session, row) is not None
        if not clash:
            raise
        raise Conflict(
            f"another version of {row.model_name!r} is clinical on rule {row.rule_name!r} (made at the same time)"
        ) from exc


def rollback(session: Session, principal: Principal, name: str, *, reason: str) -> DeploymentPublic:
    """Undo the last promotion; a clinical deployment's predecessor (the one it superseded) is restored."""
    row = _deployment(session, name)
    current = row.stage
    if current not in _ROLLBACKS:
        raise Conflict(f"deployment {name!r} is {current.value}: nothing to roll back")
    before = _audited(deployment_public(session, row))
    target = _ROLLBACKS[current]
    details: dict[str, Any] = {}
    restored = _superseded_by(session, name) if current is Stage.CLINICAL else None
    if restored is not None:
        details["restores"] = restored.name
    _transition(session, row, current, target, "rollback", principal, reason, details)
    session.flush()
    if restored is not None:
        _transition(
            session, restored, Stage.RETIRED, Stage.CLINICAL, "restore", principal, reason, {"rolled_back": name}
        )
        _flush_clinical(session, restored)
        record(
            session,
            principal,
            "deployment.restore",
            "deployment",
            restored.name,
            after=_audited(deployment_public(session, restored)),
        )
    after = deployment_public(session, row)
    record(session, principal, "deployment.rollback", "deployment", name, before=before, after=_audited(after))
    return after


def _superseded_by(session: Session, name: str) -> Deployment | None:
    """The retired deployment that ``name``'s latest promotion to clinical superseded, if still retired."""
    promotion = session.scalar(
        select(DeploymentTransition)
        .where(DeploymentTransition.deployment_name == name, DeploymentTransition.to_stage == Stage.CLINICAL)
        .order_by(DeploymentTransition.id.desc())
        .limit(1)
    )
    if promotion is None or "supersedes" not in promotion.details:
        return None
    previous = session.get(Deployment, promotion.details["supersedes"])
    return previous if previous is not None and previous.stage is Stage.RETIRED else None


def retire(session: Session, principal: Principal, name: str, *, reason: str) -> DeploymentPublic:
    """Stop a deployment for good (its jobs and results stay; queued jobs are not exported clinically)."""
    row = _deployment(session, name)
    if row.stage is Stage.RETIRED:
        raise Conflict(f"deployment {name!r} is retired already")
    before = _audited(deployment_public(session, row))
    _transition(session, row, row.stage, Stage.RETIRED, "retire", principal, reason)
    session.flush()
    after = deployment_public(session, row)
    record(session, principal, "deployment.retire", "deployment", name, before=before, after=_audited(after))
    return after


# -- configuration-declared deployments -----------------------------------------------------------


def _catalog_version(session: Session, declared: DeploymentSettings) -> ModelVersion | None:
    """The catalog version a declared deployment names (by model name or display name), if registered."""
    return session.scalar(
        select(ModelVersion)
        .join(Model, Model.name == ModelVersion.model_name)
        .where(
            (Model.name == declared.model_name) | (Model.display_name == declared.model_name),
            ModelVersion.version == declared.model_version,
            ModelVersion.published.is_(True),
        )
        .limit(1)
    )


def _declared_fields(session: Session, declared: DeploymentSettings) -> dict[str, Any]:
    version = _catalog_version(session, declared)
    return {
        "model_name": declared.model_name,
        "model_version": declared.model_version,
        "model_version_id": version.id if version is not None else None,
        "rule_name": declared.name,
        "destinations": list(declared.destinations),
        "queue": declared.queue,
        "app": declared.app or "",
        "model_path": str(declared.model_path),
        "manufacturer": declared.manufacturer,
        "timeout_s": declared.timeout_s,
        "runtime": declared.runtime,
        "map_path": str(declared.map_path) if declared.map_path else None,
        "application_root": str(declared.application_root) if declared.application_root else None,
        "image": declared.image,
        "network": declared.network,
    }


def _sync_once(session: Session, settings: Settings) -> list[str]:
    changes: list[str] = []
    principal = CONFIG_PRINCIPAL
    declared_names = set()
    for declared in settings.deployments:
        declared_names.add(declared.name)
        existing_rule = session.get(RoutingRule, declared.name)
        if existing_rule is not None and existing_rule.source != "config":
            raise Conflict(f"routing rule {declared.name!r} was made through the API; rename deployment in the file")
        _, outcome = put_rule(session, principal, declared.name, declared.rule, source="config")
        if outcome != "unchanged":
            changes.append(f"rule {declared.name} {outcome}")
        fields = _declared_fields(session, declared)
        row = session.get(Deployment, declared.name)
        mode = Stage(declared.mode)
        if row is None:
            row = Deployment(
                name=declared.name, source="config", declared_mode=declared.mode, created_by="config", **fields
            )
            session.add(row)
            _transition(session, row, None, mode, "config", principal, "declared in the configuration")
            _flush_clinical_declared(session, row)
            record(
                session,
                principal,
                "deployment.create",
                "deployment",
                row.name,
                after=_audited(deployment_public(session, row)),
            )
            changes.append(f"deployment {row.name} ({mode.value})")
            continue
        if row.source != "config":
            raise Conflict(f"deployment {declared.name!r} was made through the API; rename it in the configuration")
        before = _audited(deployment_public(session, row))
        changed = {key for key, value in fields.items() if getattr(row, key) != value}
        for key in changed:
            setattr(row, key, fields[key])
        if row.declared_mode != declared.mode:
            row.declared_mode = declared.mode
            if row.stage is not mode:
                reason = f"mode {declared.mode} in the configuration"
                _transition(session, row, row.stage, mode, "config", principal, reason)
                changed.add("stage")
        if changed:
            _flush_clinical_declared(session, row)
            record(
                session,
                principal,
                "deployment.config",
                "deployment",
                row.name,
                before=before,
                after=_audited(deployment_public(session, row)),
            )
            changes.append(f"deployment {row.name} ({', '.join(sorted(changed))})")
    gone = session.scalars(
        select(Deployment).where(
            Deployment.source == "config", Deployment.stage != Stage.RETIRED, Deployment.name.not_in(declared_names)
        )
    ).all()
    for row in gone:
        before = _audited(deployment_public(session, row))
        _transition(session, row, row.stage, Stage.RETIRED, "config", principal, "removed from the configuration")
        session.flush()
        record(
            session,
            principal,
            "deployment.retire",
            "deployment",
            row.name,
            before=before,
            after=_audited(deployment_public(session, row)),
        )
        changes.append(f"deployment {row.name} retired")
    return changes


def _flush_clinical_declared(session: Session, row: Deployment) -> None:
    try:
        _flush_clinical(session, row)
    except Conflict as exc:
        other = _other_clinical(session, row)
        name = other.name if other is not None else "another deployment"
        raise Conflict(
            f"deployment {row.name!r}: mode clinical, but {name} is clinical for {row.model_name!r} on the same rule"
        ) from exc


def sync_declared(db: Database, settings: Settings) -> list[str]:
    """Write the configuration's deployments (and their rules) into the registry; returns what changed.

    Several processes start together (``hounsfield up``): one that loses an insert race retries and
    then finds the rows made.

    Raises
    ------
    Conflict
        A declared deployment clashes with the registry (a name taken through the API, a second
        clinical version on one rule).
    """
    for attempt in range(3):
        try:
            with db.session() as session:
                changes = _sync_once(session, settings)
            if changes:
                logger.info("configuration deployments written to the registry: %s", "; ".join(changes))
            return changes
        except IntegrityError:
            if attempt == 2:
                raise
    return []  # pragma: no cover - the loop returns or raises
