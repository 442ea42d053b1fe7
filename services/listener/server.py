"""The listener process: a pynetdicom storage SCP wired to the study store, index and router."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from services.config import Settings
from services.contracts import StudyComplete
from services.db import Database, Job, JobState
from services.listener.completeness import CompletenessTracker
from services.listener.storage import Origin, StoreContext, receive_instance
from services.router.routing import Router, RouterThread
from services.store import StudyStore

__all__ = ["Listener", "run"]

logger = logging.getLogger(__name__)


def _handle_echo(event: evt.Event) -> int:
    return 0x0000


def _origin(assoc: Any) -> Origin:
    return Origin(id(assoc), assoc.requestor.ae_title.strip(), assoc.acceptor.ae_title.strip())


def _handle_store(event: evt.Event, context: StoreContext) -> int:
    """pynetdicom's C-STORE event, handed to the transport-neutral receiver."""
    request = event.request
    received = receive_instance(
        context,
        event.encoded_dataset(include_meta=False),
        str(event.context.transfer_syntax),
        _origin(event.assoc),
        expected_sop_instance_uid=str(getattr(request, "AffectedSOPInstanceUID", "") or ""),
        expected_sop_class_uid=str(getattr(request, "AffectedSOPClassUID", "") or ""),
    )
    return received.status


def _log_association(event: evt.Event) -> None:
    requestor = event.assoc.requestor
    logger.info("association from %s (%s)", requestor.ae_title.strip(), requestor.address)


@dataclass
class Listener:
    """A running listener; :meth:`start` returns at once, :meth:`stop` shuts down in order."""

    settings: Settings
    enqueue: Callable[[Job], None]

    def __post_init__(self) -> None:
        self.db = Database(self.settings.sqlalchemy_url)
        self.db.create_schema()
        self.store = StudyStore(self.settings.data_dir, min_free_bytes=self.settings.listener.min_free_disk_mb * 2**20)
        self.router_thread = RouterThread(Router(self.settings, self.db, self.enqueue))
        self.tracker = CompletenessTracker(
            self._study_complete,
            complete_on_release=self.settings.listener.complete_on_release,
            quiet_period_s=self.settings.listener.quiet_period_s,
        )
        self._server: object | None = None

    def _study_complete(self, event: StudyComplete) -> None:
        self.router_thread.submit(event)

    def _build_ae(self) -> AE:
        cfg = self.settings.listener
        ae = AE(ae_title=cfg.ae_title)
        ae.acse_timeout = cfg.acse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.maximum_associations = 32
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    def requeue_pending(self) -> int:
        """Re-send queued jobs whose message may have been lost (a worker claims each once)."""
        with self.db.session() as session:
            jobs = session.scalars(select(Job).where(Job.state == JobState.QUEUED)).all()
        for job in jobs:
            self.enqueue(job)
        return len(jobs)

    def start(self) -> None:
        cfg = self.settings.listener
        self.router_thread.start()
        self.tracker.start()
        try:
            pending = self.requeue_pending()
            if pending:
                logger.info("re-queued %d job(s) left queued by an earlier run", pending)
        except Exception:  # the broker may be down; jobs stay queued in the database
            logger.exception("could not re-queue pending jobs")
        context = StoreContext(self.store, self.db, self.tracker)
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, _handle_store, [context]),
            (evt.EVT_ACCEPTED, _log_association),
            (evt.EVT_RELEASED, lambda e: self.tracker.association_released(id(e.assoc), _origin(e.assoc).calling_ae)),
            (evt.EVT_ABORTED, lambda e: self.tracker.association_aborted(id(e.assoc))),
        ]
        self._server = self._build_ae().start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers)
        logger.info("listening as %s on %s:%d", cfg.ae_title, cfg.host, cfg.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
        self.tracker.stop()
        self.router_thread.stop()
        self.db.dispose()


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Serve until ``stop`` is set (or the process is interrupted)."""
    from services.worker.celery_app import Enqueuer

    listener = Listener(settings, Enqueuer(settings))
    listener.start()
    stop = stop or threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
