"""The retention policy as data: how long each study is kept, how full the store is, and what a purge takes.

:func:`plan_purge` is the one place that decides; the listener's purger, ``hounsfield store purge``
(and its ``--dry-run``) and ``hounsfield store status`` all call it. It reads, and changes nothing.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from hounsfield.config import Settings
from hounsfield.db import Database, StudyState, utcnow
from hounsfield.db.retention import PURGEABLE_STATES, StudyRetentionFacts, retention_facts

__all__ = [
    "Candidate",
    "KeepPolicy",
    "PurgePlan",
    "Reason",
    "StoreUsage",
    "keep_policy",
    "plan_from_facts",
    "plan_purge",
    "store_usage",
]

Reason = Literal["expired", "high_water"]
"""Why a study goes: its keep ended, or the store passed its high-water mark (the oldest go first)."""
_MB = 1 << 20


@dataclass(frozen=True)
class StoreUsage:
    """The store's file system now, and the marks it is held to."""

    total: int
    free: int
    floor: int
    """The listener's floor (``listener.min_free_disk_mb``): below it instances are refused (0xA700)."""
    margin: int
    high_water_percent: float
    low_water_percent: float

    @property
    def used_percent(self) -> float:
        return 100.0 * (self.total - self.free) / self.total if self.total else 0.0

    @property
    def above_high_water(self) -> bool:
        """Past the high-water mark, or free space within the margin of the floor."""
        return self.used_percent >= self.high_water_percent or self.free < self.floor + self.margin

    @property
    def target_free(self) -> int:
        """Free space at the low-water mark, and at least twice the margin above the floor."""
        return int(max(self.total * (100.0 - self.low_water_percent) / 100.0, self.floor + 2 * self.margin))

    @property
    def bytes_to_free(self) -> int:
        """What a purge must free to reach :attr:`target_free` (0 unless the store is above high water)."""
        if not self.above_high_water:
            return 0
        return max(0, self.target_free - self.free)


def store_usage(root: Path, settings: Settings) -> StoreUsage:
    """The usage of the file system holding ``root`` (the study store), with the configured marks."""
    cfg = settings.retention
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    disk = shutil.disk_usage(path)
    return StoreUsage(
        total=disk.total,
        free=disk.free,
        floor=settings.listener.min_free_disk_mb * _MB,
        margin=cfg.floor_margin_mb * _MB,
        high_water_percent=cfg.high_water_percent,
        low_water_percent=cfg.low_water_percent,
    )


@dataclass(frozen=True)
class KeepPolicy:
    """How long a study is kept: the default, or the longest of the overrides that apply to it."""

    default_days: float
    sources: dict[str, float]
    """Keep days per calling AE title (``listener.sources`` keys already resolved to their AE titles)."""
    deployments: dict[str, float]
    rules: dict[str, float]

    def keep_days(self, facts: StudyRetentionFacts) -> tuple[float, str]:
        """(days, what set them): ``default``, or ``source:AE``, ``deployment:NAME``, ``rule:NAME``."""
        applying = [(self.sources[ae], f"source:{ae}") for ae in facts.calling_aes if ae in self.sources]
        applying += [(self.deployments[n], f"deployment:{n}") for n in facts.deployments if n in self.deployments]
        applying += [(self.rules[n], f"rule:{n}") for n in facts.rules if n in self.rules]
        if not applying:
            return self.default_days, "default"
        return max(applying, key=lambda item: (item[0], item[1]))


def keep_policy(settings: Settings) -> KeepPolicy:
    """The configured policy; a ``retention.sources`` key naming a configured source means its AE title."""
    sources: dict[str, float] = {}
    for key, days in settings.retention.sources.items():
        source = settings.listener.sources.get(key)
        ae = source.ae_title if source is not None else key
        sources[ae] = max(days, sources.get(ae, 0.0))
    cfg = settings.retention
    return KeepPolicy(cfg.keep_days, sources, dict(cfg.deployments), dict(cfg.rules))


@dataclass(frozen=True)
class Candidate:
    """One study a purge would take, and why."""

    study_instance_uid: str
    reason: Reason
    calling_aes: tuple[str, ...]
    reference_at: datetime
    """Its last job's end, or its completion when that is later or it has no job."""
    last_job_end: datetime | None
    keep_days: float
    keep_set_by: str
    due_at: datetime
    instances: int
    bytes: int
    last_received_at: datetime
    """As planned: the claim fails when the study received anything since."""


@dataclass(frozen=True)
class PurgePlan:
    """What a purge would take now (``candidates``, in order) and what it must leave."""

    at: datetime
    usage: StoreUsage
    candidates: list[Candidate]
    held: dict[str, int] = field(default_factory=dict)
    """Studies that are never purged now, by why: receiving, complete (routing pending), job active."""
    waiting: int = 0
    """Purgeable studies still within their keep (and not needed for the high-water mark)."""

    @property
    def bytes(self) -> int:
        return sum(candidate.bytes for candidate in self.candidates)


def _reference(facts: StudyRetentionFacts) -> datetime:
    times = [t for t in (facts.last_job_end, facts.completed_at) if t is not None]
    return max(times) if times else facts.last_received_at


def _oldest_first(candidate: Candidate) -> tuple[datetime, str]:
    return candidate.reference_at, candidate.study_instance_uid


def plan_from_facts(
    facts: Iterable[StudyRetentionFacts], policy: KeepPolicy, usage: StoreUsage, *, now: datetime, limit: int
) -> PurgePlan:
    """Every expired purgeable study (oldest first), then, above high water, the oldest others until the
    low-water mark would be reached; at most ``limit`` studies."""
    held: Counter[str] = Counter()
    expired: list[Candidate] = []
    kept: list[Candidate] = []
    for study in facts:
        if study.state not in PURGEABLE_STATES:
            held["receiving" if study.state is StudyState.RECEIVING else "routing_pending"] += 1
            continue
        if study.active_jobs:
            held["job_active"] += 1
            continue
        days, set_by = policy.keep_days(study)
        reference = _reference(study)
        due = reference + timedelta(days=days)
        candidate = Candidate(
            study_instance_uid=study.study_instance_uid,
            reason="expired" if due <= now else "high_water",
            calling_aes=study.calling_aes,
            reference_at=reference,
            last_job_end=study.last_job_end,
            keep_days=days,
            keep_set_by=set_by,
            due_at=due,
            instances=study.instances,
            bytes=study.bytes,
            last_received_at=study.last_received_at,
        )
        (expired if candidate.reason == "expired" else kept).append(candidate)
    chosen = sorted(expired, key=_oldest_first)
    need = usage.bytes_to_free - sum(c.bytes for c in chosen)
    kept.sort(key=_oldest_first)
    taken = 0
    for candidate in kept:
        if need <= 0:
            break
        chosen.append(candidate)
        need -= candidate.bytes
        taken += 1
    return PurgePlan(now, usage, chosen[:limit], dict(held), waiting=len(kept) - taken)


def plan_purge(settings: Settings, db: Database, root: Path, *, now: datetime | None = None) -> PurgePlan:
    """What a purge of the store at ``root`` would take now, with the configured policy (nothing changes)."""
    with db.session() as session:
        facts = retention_facts(session)
    usage = store_usage(root, settings)
    return plan_from_facts(
        facts, keep_policy(settings), usage, now=now or utcnow(), limit=settings.retention.max_studies_per_run
    )
