"""The listener's purger: retention's policies applied in a background thread of the process that owns the store.

Every ``retention.watch_s`` it reads the store's disk usage; past the high-water mark (or near the
listener's floor) it purges at once, oldest first, and otherwise applies every policy each
``retention.interval_s``. With the ingest journal, each study's purge holds the journal's placement
(:meth:`~hounsfield.listener.ingest.JournaledStore.holding_study`), so that no acknowledged instance
of it is lost.
"""

from __future__ import annotations

import logging
import threading
import time

from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.listener.ingest import JournaledStore
from hounsfield.listener.metrics import ListenerMetrics
from hounsfield.retention import Purger, PurgeReport, store_usage
from hounsfield.store import StudyStore

__all__ = ["RetentionThread"]

logger = logging.getLogger(__name__)


class RetentionThread:
    """Runs retention in the listener (see the module's docstring); :meth:`purge_now` runs one pass here."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: StudyStore,
        metrics: ListenerMetrics,
        journal: JournaledStore | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.purger = Purger(
            settings,
            db,
            store,
            guard=journal.holding_study if journal is not None else None,
            on_purged=metrics.retention_purged,
            on_failure=metrics.retention_failed,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def purge_now(self, *, every_policy: bool) -> PurgeReport | None:
        """One pass: the store (and results and audit when ``every_policy``); None when it failed."""
        try:
            report = self.purger.run_policies() if every_policy else self.purger.purge()
        except Exception as exc:  # the thread's boundary (the database unreachable, ...): the next pass tries again
            self.metrics.retention_failed("run")
            logger.error("retention: a purge failed (%s)", type(exc).__name__)
            return None
        self.runs += 1
        return report

    def _run(self) -> None:
        cfg = self.settings.retention
        next_run = time.monotonic() + cfg.watch_s
        while not self._stop.wait(cfg.watch_s):
            due = time.monotonic() >= next_run
            try:
                pressed = store_usage(self.store.root, self.settings).above_high_water
            except OSError as exc:
                self.metrics.retention_failed("files")
                logger.error("retention: cannot read the store's disk usage (%s)", type(exc).__name__)
                continue
            if pressed or due:
                self.purge_now(every_policy=due)
            if due:
                next_run = time.monotonic() + cfg.interval_s
