"""Carrying out a purge plan: claim each study in the database, then remove the files of the rows removed.

Files are removed only after the claim's commit and only those its deleted rows named; each is first
renamed aside (under a temporary name that start-up recovery clears), and put back if an instance
row points at it again by then (the same bytes resent to another process that found them already
stored). Folders are removed only when empty. Within the listener, ``guard`` holds the ingest
journal's placement for the study (:meth:`hounsfield.listener.ingest.JournaledStore.holding_study`):
a study with acknowledged instances not yet applied is skipped, and no instance of it is placed
while its files go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from hounsfield.access import Principal, Role, record
from hounsfield.config import Settings
from hounsfield.db import Database, utcnow
from hounsfield.db.retention import claim_study_purge, delete_audit_before, finished_jobs_before, indexed_paths
from hounsfield.errors import HounsfieldError
from hounsfield.logs import log_context
from hounsfield.retention.policy import Candidate, PurgePlan, Reason, plan_purge, store_usage
from hounsfield.store import StudyStore

__all__ = ["RETENTION_PRINCIPAL", "PurgeReport", "Purger", "StoreNotMounted", "StudyGuard"]

logger = logging.getLogger(__name__)

StudyGuard = Callable[[str], AbstractContextManager[bool]]
"""Held around one study's purge; yields False when the study must not be purged now."""


class StoreNotMounted(HounsfieldError):
    """The configured study store is not there (a host without the volume): nothing is purged, since the
    database's rows would go and the files stay."""


RETENTION_PRINCIPAL = Principal("retention", Role.ADMIN, "cli")
"""Who the listener's purges are audited as."""


@contextlib.contextmanager
def _unguarded(study_uid: str) -> Iterator[bool]:
    yield True


@dataclass
class PurgeReport:
    """What one purge did."""

    studies: dict[str, int] = field(default_factory=dict)
    """Studies purged, by reason."""
    bytes: dict[str, int] = field(default_factory=dict)
    instances: int = 0
    skipped: int = 0
    """Candidates left alone: received again, a job queued, another purger first, or held by the journal."""
    failures: int = 0
    results_removed: int = 0
    events_deleted: int = 0
    audit_deleted: int = 0


class Purger:
    """Purges the study store by the configured policies; ``on_purged(reason, bytes)`` and
    ``on_failure(kind)`` are told of each study purged and each failure (the listener's counters)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: StudyStore,
        *,
        guard: StudyGuard | None = None,
        on_purged: Callable[[Reason, int], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        principal: Principal | None = None,
    ) -> None:
        self.settings, self.db, self.store = settings, db, store
        self._principal = principal
        self._guard = guard or _unguarded
        self._on_purged = on_purged or (lambda reason, size: None)
        self._on_failure = on_failure or (lambda kind: None)

    def plan(self) -> PurgePlan:
        return plan_purge(self.settings, self.db, self.store.root)

    def purge(self, plan: PurgePlan | None = None) -> PurgeReport:
        """Purge the studies of ``plan`` (a fresh one by default), in its order; those taken for the
        high-water mark only until the store's free space reaches the plan's low-water target."""
        report = PurgeReport()
        try:
            self._purge_studies(plan or self.plan(), report)
        finally:
            self._audit(report)  # each purge that removed something is audited, a failed one too
        return report

    def _purge_studies(self, plan: PurgePlan, report: PurgeReport) -> None:
        if plan.candidates and not self.store.studies.is_dir():
            raise StoreNotMounted(f"no study store at the configured data_dir ({self.store.studies} is missing)")
        for candidate in plan.candidates:
            if candidate.reason == "high_water" and store_usage(self.store.root, self.settings).free >= (
                plan.usage.target_free
            ):
                break
            with log_context(study_uid=candidate.study_instance_uid):  # its lines carry the study's id
                try:
                    purged = self._purge_study(candidate)
                except OSError as exc:  # the database row says purged; the files left are logged, counted
                    report.failures += 1
                    self._on_failure("files")
                    logger.error("retention: removing a study's files failed (%s)", type(exc).__name__)
                    continue
            if purged is None:
                report.skipped += 1
                continue
            report.studies[candidate.reason] = report.studies.get(candidate.reason, 0) + 1
            report.bytes[candidate.reason] = report.bytes.get(candidate.reason, 0) + purged[1]
            report.instances += purged[0]
            self._on_purged(candidate.reason, purged[1])
        if report.studies:
            logger.info(
                "retention: purged %d study(ies), %d instance(s), %d MiB (%s)",
                sum(report.studies.values()), report.instances, sum(report.bytes.values()) >> 20,
                ", ".join(f"{reason} {n}" for reason, n in sorted(report.studies.items())),
            )  # fmt: skip

    def _purge_study(self, candidate: Candidate) -> tuple[int, int] | None:
        """(instances, bytes) removed; None when the study was not claimed (or is held)."""
        uid = candidate.study_instance_uid
        with self._guard(uid) as clear:
            if not clear:
                return None
            detail = {
                "reason": candidate.reason,
                "keep_days": candidate.keep_days,
                "keep_set_by": candidate.keep_set_by,
                "reference_at": candidate.reference_at.isoformat(),
            }
            with self.db.session() as session:
                files = claim_study_purge(
                    session, uid, folder=f"{self.store.studies / uid}{os.sep}",
                    last_received_at=candidate.last_received_at, detail=detail,
                )  # fmt: skip
            if files is None:
                return None
            self._remove_files([path for path, _ in files])
            self._remove_empty_folders(uid)
        return len(files), sum(size for _, size in files)

    def _remove_files(self, paths: list[str]) -> None:
        aside: list[tuple[Path, Path]] = []
        for name in paths:
            path = Path(name)
            moved = path.with_name(f".incoming-purged-{path.name}")  # start-up recovery clears leftovers
            try:
                os.rename(path, moved)
            except FileNotFoundError:
                continue
            aside.append((path, moved))
        with self.db.session() as session:
            back = indexed_paths(session, [str(path) for path, _ in aside])
        for path, moved in aside:
            if str(path) in back:  # indexed again meanwhile: the same bytes were resent and found stored
                with contextlib.suppress(FileExistsError):  # never over a file written there since (indexed)
                    os.link(moved, path)
                logger.warning("retention: an instance was received again during its study's purge; kept")
            moved.unlink(missing_ok=True)

    def _remove_empty_folders(self, study_uid: str) -> None:
        folder = self.store.studies / study_uid
        if not folder.is_dir():
            return
        for series in folder.iterdir():
            if series.is_dir():
                with contextlib.suppress(OSError):  # not empty: something arrived; it stays
                    series.rmdir()
        with contextlib.suppress(OSError):
            folder.rmdir()

    def purge_results(self) -> int:
        """Remove result files and workspaces of jobs that ended ``results_keep_days`` ago; how many jobs."""
        days = self.settings.retention.results_keep_days
        if days is None:
            return 0
        with self.db.session() as session:
            jobs = finished_jobs_before(session, utcnow() - timedelta(days=days))
        removed = 0
        for job_id in jobs:
            for folder in (self.store.root / "results" / job_id, self.store.jobs / job_id):
                if folder.is_dir():
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        return removed

    def purge_audit(self) -> tuple[int, int]:
        """Delete events and audit rows older than ``audit_keep_days`` (never when unset)."""
        days = self.settings.retention.audit_keep_days
        if days is None:
            return 0, 0
        with self.db.session() as session:
            return delete_audit_before(session, utcnow() - timedelta(days=days))

    def run_policies(self) -> PurgeReport:
        """Everything retention does on its interval: the store, then results and the audit trail."""
        report = PurgeReport()
        try:
            self._purge_studies(self.plan(), report)
            try:
                report.results_removed = self.purge_results()
                report.events_deleted, report.audit_deleted = self.purge_audit()
            except OSError as exc:
                report.failures += 1
                self._on_failure("results")
                logger.error("retention: removing results failed (%s)", type(exc).__name__)
        finally:
            self._audit(report)
        return report

    def _audit(self, report: PurgeReport) -> None:
        """One ``store.purge`` audit row per run that did something, and per run an operator asked for
        (``principal`` given) even when it found nothing: who purged, and how much, by reason."""
        done = report.studies or report.results_removed or report.events_deleted or report.audit_deleted
        if not done and not report.failures and self._principal is None:
            return
        after = {
            "studies": report.studies, "bytes": report.bytes, "instances": report.instances,
            "skipped": report.skipped, "failures": report.failures, "results_removed": report.results_removed,
            "events_deleted": report.events_deleted, "audit_deleted": report.audit_deleted,
        }  # fmt: skip
        with self.db.session() as session:
            record(session, self._principal or RETENTION_PRINCIPAL, "store.purge", "store", "studies", after=after)
