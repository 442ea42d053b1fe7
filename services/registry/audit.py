"""The audit trail of the registry: one appended row per write, with the entity before and after.

:func:`record` is called inside the write's own transaction, so a change and its audit row are
committed together or not at all. The API exposes the trail read-only to administrators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from hounsfield.db.access import AuditEntry
from hounsfield.db.withdrawals import Withdrawal
from hounsfield.registry.auth import Principal

__all__ = ["record", "withdrawal_recorder"]


def record(
    session: Session,
    principal: Principal,
    action: str,
    entity: str,
    entity_id: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Append one audit row (``action`` such as ``model.create``; ``before``/``after`` JSON-able, no secrets)."""
    session.add(
        AuditEntry(
            actor=principal.subject,
            actor_role=principal.role.value,
            via=principal.via,
            action=action,
            entity=entity,
            entity_id=entity_id,
            before=before,
            after=after,
        )
    )


def withdrawal_recorder(principal: Principal) -> Callable[[Session, Withdrawal], None]:
    """The audit row of a results withdrawal, written in the withdrawal's own transaction."""

    def record_withdrawal(session: Session, made: Withdrawal) -> None:
        after = {"job_id": made.job_id, "reason": made.reason, "comment": made.comment}
        record(session, principal, "results.withdraw", "job", made.job_id, after=after)

    return record_withdrawal
