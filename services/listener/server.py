"""The listener process: the DICOM engine (storage SCP) wired to the study store, index and router.

The engine (:mod:`hounsfield.listener.engine`) serves C-STORE and C-ECHO on an asyncio loop of its
own; every instance goes through :func:`~hounsfield.listener.storage.receive_instance` in its
thread pool. The association policy decides who may send before anything is stored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from hounsfield import __version__
from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Job, JobState, utcnow
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.engine import DicomServer, EngineConfig
from hounsfield.listener.ingest import JournaledStore
from hounsfield.listener.journal import Journal
from hounsfield.listener.metrics import ListenerMetrics
from hounsfield.listener.policy import AssociationPolicy
from hounsfield.listener.recovery import RecoveryReport, recover_store
from hounsfield.listener.source_count import SourceCounter
from hounsfield.listener.storage import StoreContext
from hounsfield.registry.lifecycle import prepare_database
from hounsfield.router.routing import Router, RouterThread
from hounsfield.store import StudyStore

__all__ = ["Listener", "run"]

logger = logging.getLogger(__name__)


@dataclass
class Listener:
    """A running listener; :meth:`start` returns at once, :meth:`stop` shuts down in order."""

    settings: Settings
    enqueue: Callable[[Job], None]

    def __post_init__(self) -> None:
        # One commit per instance: NORMAL (see Database) keeps it cheap; the instance files are fsynced.
        self.db = Database(self.settings.sqlalchemy_url, synchronous="NORMAL")
        prepare_database(self.db, self.settings)  # schema, taxonomy, the configuration's deployments
        self.store = StudyStore(self.settings.data_dir, min_free_bytes=self.settings.listener.min_free_disk_mb * 2**20)
        self.router_thread = RouterThread(Router(self.settings, self.db, self.enqueue))
        self.tracker = CompletenessTracker(
            self._study_complete,
            complete_on_release=self.settings.listener.complete_on_release,
            quiet_period_s=self.settings.listener.quiet_period_s,
            source_counts=SourceCounter.from_settings(self.settings, self.db),
        )
        self.metrics = ListenerMetrics(self.store)
        self.journal: JournaledStore | None = None
        if self.settings.listener.journal:
            folder = self.settings.data_dir / "journal" / socket.gethostname()
            segment = self.settings.listener.journal_segment_mb << 20
            self.journal = JournaledStore(self.store, self.db, self.tracker, Journal(folder, segment_bytes=segment))
            self.metrics.watch_journal(self.journal.backlog)
        self._server: DicomServer | None = None
        self._clean_marker = self.settings.data_dir / f".listener-stopped-cleanly-{socket.gethostname()}"
        self.recovery: RecoveryReport | None = None
        """What start-up recovery found (after :meth:`start`)."""

    def _study_complete(self, event: StudyComplete) -> None:
        self.router_thread.submit(event)

    def engine_config(self) -> EngineConfig:
        """How the DICOM engine serves, from the listener settings."""
        return EngineConfig.from_settings(self.settings.listener, uid_root=self.settings.uid_root, version=__version__)

    def requeue_pending(self) -> int:
        """Re-send queued jobs whose message may have been lost (a worker claims each once)."""
        with self.db.session() as session:
            jobs = session.scalars(select(Job).where(Job.state == JobState.QUEUED)).all()
        for job in jobs:
            self.enqueue(job)
        return len(jobs)

    def start(self) -> None:
        cfg = self.settings.listener
        # The marker says the last run stopped cleanly; removed now, so that a crash leaves none and the
        # next start walks the whole store for the crash's debris.
        clean = self._clean_marker.exists()
        self._clean_marker.unlink(missing_ok=True)
        if self.journal is not None:
            self.journal.replay()  # before recovery: it rewrites files a crash may have left partial
            self.journal.start()
        self.recovery = recover_store(self.store, self.db, self.tracker, called_ae=cfg.ae_title, scan_files=not clean)
        self.router_thread.start()
        self.tracker.start()
        try:
            pending = self.requeue_pending()
            if pending:
                logger.info("re-queued %d job(s) left queued by an earlier run", pending)
        except Exception:  # the broker may be down; jobs stay queued in the database
            logger.exception("could not re-queue pending jobs")
        leftovers = self.store.clear_spool()
        if leftovers:
            logger.info("removed %d unacknowledged spool file(s) left by an earlier run", leftovers)
        if cfg.metrics_port is not None:
            self.metrics.serve(cfg.host, cfg.metrics_port)
            logger.info("metrics on %s:%d/metrics", cfg.host, cfg.metrics_port)
        context = StoreContext(self.store, self.db, self.tracker, self.metrics, self.journal)
        self._server = DicomServer(self.engine_config(), AssociationPolicy(cfg), context)
        self._server.start()
        tls = f" and TLS on {cfg.host}:{cfg.tls.port}" if cfg.tls is not None else ""
        logger.info("listening as %s on %s:%d%s", cfg.ae_title, cfg.host, cfg.port, tls)
        if cfg.open_mode:
            logger.warning("open mode: callers that are not configured sources are accepted (and logged)")

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every instance acknowledged so far is in the store's files and the index.

        Success is sent once an instance is durable in the ingest journal; its file and index row
        follow within milliseconds. Raises :class:`TimeoutError` when they do not within ``timeout``.
        """
        if self.journal is not None and not self.journal.drain(timeout):
            raise TimeoutError(f"the ingest journal was not applied within {timeout:.0f} s")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # waits for every store job: nothing is half-written after this
            self._server = None
            if self.journal is not None:
                self.journal.stop()  # applies and checkpoints what the journal holds
            self._write_clean_marker()
        elif self.journal is not None:
            self.journal.stop()
        self.metrics.stop()
        self.tracker.stop()
        self.router_thread.stop()
        self.db.dispose()

    def _write_clean_marker(self) -> None:
        try:
            self._clean_marker.parent.mkdir(parents=True, exist_ok=True)
            with self._clean_marker.open("w", encoding="utf-8") as handle:
                handle.write(utcnow().isoformat())
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # the next start scans the whole store, which is only slower
            logger.warning("could not write the clean-stop marker: %s", exc.strerror or exc)


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Serve until ``stop`` is set (or the process is interrupted)."""
    from hounsfield.worker.celery_app import Enqueuer

    listener = Listener(settings, Enqueuer(settings))
    listener.start()
    stop = stop or threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
