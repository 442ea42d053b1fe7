"""Routing rules as stored data: named, typed (:data:`~hounsfield.contracts.rules.Rule`), audited.

A deployment is bound to one stored rule. Rules made through the API or CLI have source ``api``;
rules of configuration-declared deployments have source ``config`` and follow the file.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session

from hounsfield.access import Principal, record
from hounsfield.catalog.schemas import RulePublic
from hounsfield.contracts.rules import Rule
from hounsfield.db.deployments import Deployment, RoutingRule
from hounsfield.db.models import utcnow
from hounsfield.errors import Conflict, NotFound

__all__ = ["RULE", "compiled_rule", "delete_rule", "get_rule", "list_rules", "put_rule", "rule_definition"]

RULE: TypeAdapter[Rule] = TypeAdapter(Rule)
"""Validates a rule (JSON or Python data) into its typed matchers."""


@lru_cache(maxsize=256)
def _compiled(definition: str) -> Rule:
    return RULE.validate_json(definition)


def compiled_rule(definition: dict[str, Any]) -> Rule:
    """A stored definition as a rule, its patterns compiled (cached per definition)."""
    return _compiled(json.dumps(definition, sort_keys=True))


def rule_definition(rule: Rule) -> dict[str, Any]:
    """A rule as stored: JSON with the matchers' aliases (``in``)."""
    return RULE.dump_python(rule, mode="json", by_alias=True, exclude_none=True)  # type: ignore[no-any-return]


def _rule_public(session: Session, row: RoutingRule) -> RulePublic:
    bound = session.scalars(select(Deployment.name).where(Deployment.rule_name == row.name).order_by(Deployment.name))
    return RulePublic(
        name=row.name,
        description=row.description,
        rule=row.definition,
        source=row.source,  # type: ignore[arg-type]
        deployments=list(bound),
        created_at=row.created_at,
        created_by=row.created_by,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )


def list_rules(session: Session) -> list[RulePublic]:
    return [_rule_public(session, row) for row in session.scalars(select(RoutingRule).order_by(RoutingRule.name))]


def get_rule(session: Session, name: str) -> RulePublic:
    row = session.get(RoutingRule, name)
    if row is None:
        raise NotFound(f"no routing rule named {name!r}")
    return _rule_public(session, row)


def put_rule(
    session: Session, principal: Principal, name: str, rule: Rule, description: str = "", *, source: str = "api"
) -> tuple[RulePublic, str]:
    """Store ``rule`` under ``name``; returns it and ``created``, ``updated`` or ``unchanged``. Audited."""
    definition = rule_definition(rule)
    row = session.get(RoutingRule, name)
    before = _rule_public(session, row).model_dump(mode="json") if row is not None else None
    if row is None:
        row = RoutingRule(
            name=name,
            definition=definition,
            description=description,
            source=source,
            created_by=principal.subject,
            updated_by=principal.subject,
        )
        session.add(row)
    elif row.definition == definition and row.description == description and row.source == source:
        return _rule_public(session, row), "unchanged"
    else:
        row.definition, row.description, row.source = definition, description, source
        row.updated_at, row.updated_by = utcnow(), principal.subject
    session.flush()
    after = _rule_public(session, row)
    record(
        session,
        principal,
        "rule.create" if before is None else "rule.update",
        "routing_rule",
        name,
        before=before,
        after=after.model_dump(mode="json"),
    )
    return after, "created" if before is None else "updated"


def delete_rule(session: Session, principal: Principal, name: str) -> None:
    """Delete a rule no deployment is bound to (deployments keep their rule for their history)."""
    row = session.get(RoutingRule, name)
    if row is None:
        raise NotFound(f"no routing rule named {name!r}")
    before = _rule_public(session, row)
    if before.deployments:
        raise Conflict(f"routing rule {name!r} is bound to deployments: {', '.join(before.deployments)}")
    session.delete(row)
    record(session, principal, "rule.delete", "routing_rule", name, before=before.model_dump(mode="json"))
