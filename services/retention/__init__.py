"""Retention of the study store: how long studies, results and the audit trail are kept, and purging.

:func:`plan_purge` says what a purge would take and why (the CLI's dry run, the listener's purger,
a retention view); :class:`Purger` carries a plan out safely against arrivals and other purgers.
"""

from __future__ import annotations

from hounsfield.retention.policy import (
    Candidate,
    KeepPolicy,
    PurgePlan,
    Reason,
    StoreUsage,
    keep_policy,
    plan_from_facts,
    plan_purge,
    store_usage,
)
from hounsfield.retention.purge import Purger, PurgeReport, StoreNotMounted, StudyGuard

__all__ = [
    "Candidate",
    "KeepPolicy",
    "PurgePlan",
    "PurgeReport",
    "Purger",
    "Reason",
    "StoreNotMounted",
    "StoreUsage",
    "StudyGuard",
    "keep_policy",
    "plan_from_facts",
    "plan_purge",
    "store_usage",
]
