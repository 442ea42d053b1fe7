"""The listener process: the DICOM engine (storage SCP) in front of the listener's :class:`Intake`.

The engine (:mod:`hounsfield.listener.engine`) serves C-STORE and C-ECHO on an asyncio loop of its
own; every instance goes through :func:`~hounsfield.listener.storage.receive_instance` in its
thread pool, into the intake (ingest journal, store, index, completeness, router). The association
policy decides who may send before anything is stored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hounsfield import __version__
from hounsfield.catalog import open_database
from hounsfield.config import Settings
from hounsfield.db import Job, utcnow
from hounsfield.db.jobs import queued_jobs
from hounsfield.listener.engine import DicomServer, EngineConfig
from hounsfield.listener.intake import Intake
from hounsfield.listener.policy import AssociationPolicy
from hounsfield.listener.recovery import RecoveryReport, recover_store
from hounsfield.listener.retention import RetentionThread
from hounsfield.queues import Enqueuer

__all__ = ["Listener", "run"]

logger = logging.getLogger(__name__)


@dataclass
class Listener:
    """A running listener; :meth:`start` returns at once, :meth:`stop` shuts down in order."""

    settings: Settings
    enqueue: Callable[[Job], None]

    def __post_init__(self) -> None:
        # One commit per instance: NORMAL (see Database) keeps it cheap; the instance files are fsynced.
        # No commit checkpoints SQLite's log on its way (a routing commit would wait for the disk): the
        # ingest journal's applier does, with its own checkpoint, when it can wait.
        self.db = open_database(
            self.settings, synchronous="NORMAL", autocheckpoint=self.settings.listener.journal is False
        )
        cfg = self.settings.listener
        self.intake = Intake(
            self.settings,
            self.db,
            self.enqueue,
            complete_on_release=cfg.complete_on_release,
            count_sources=True,
            journal=cfg.journal,
        )
        self.store, self.tracker, self.metrics = self.intake.store, self.intake.tracker, self.intake.metrics
        self.journal = self.intake.journal
        self._server: DicomServer | None = None
        self._clean_marker = self.settings.data_dir / f".listener-stopped-cleanly-{socket.gethostname()}"
        self.recovery: RecoveryReport | None = None
        """What start-up recovery found (after :meth:`start`)."""
        self.retention: RetentionThread | None = None
        if self.settings.retention.enabled:
            self.retention = RetentionThread(self.settings, self.db, self.store, self.metrics, self.journal)

    def engine_config(self) -> EngineConfig:
        """How the DICOM engine serves, from the listener settings."""
        return EngineConfig.from_settings(self.settings.listener, uid_root=self.settings.uid_root, version=__version__)

    def requeue_pending(self) -> int:
        """Re-send queued jobs whose message may have been lost (a worker claims each once)."""
        with self.db.session() as session:
            jobs = queued_jobs(session)
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
        self.intake.start()
        if self.retention is not None:
            self.retention.start()
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
        self._server = DicomServer(self.engine_config(), AssociationPolicy(cfg), self.intake.context)
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
        if self.retention is not None:
            self.retention.stop()
        if self._server is not None:
            self._server.stop()  # waits for every store job: nothing is half-written after this
            self._server = None
            if self.journal is not None:
                self.journal.stop()  # applies and checkpoints what the journal holds
            self._write_clean_marker()
        elif self.journal is not None:
            self.journal.stop()
        self.metrics.stop()
        self.intake.stop()
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
    listener = Listener(settings, Enqueuer(settings))
    listener.start()
    stop = stop or threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
