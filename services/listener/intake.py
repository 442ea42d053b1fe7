"""Where an instance goes once it has arrived, whatever carried it: one wiring for every transport.

An :class:`Intake` holds the study store, the index (through the database), the completeness
tracker and the router behind it, and the :class:`~hounsfield.listener.storage.StoreContext` that
:func:`~hounsfield.listener.storage.receive_instance` writes through. Every process that receives
instances builds one:

=====================  ==========================  ===========================================
who                    transports                  how its studies complete
=====================  ==========================  ===========================================
the listener           C-STORE (plain and TLS),    association release (not a C-MOVE's), the
                       C-MOVE arrivals             source's count, the quiet period; through
                                                   the ingest journal
the registry           STOW-RS                     the quiet period (a request is no association)
``hounsfield fetch``   C-GET arrivals              the retrieve's end, whatever its outcome
                                                   (:meth:`CompletenessTracker.retrieve_finished`);
                                                   a C-MOVE's end, once the listener has indexed
                                                   what it sent (:meth:`Intake.route`)
=====================  ==========================  ===========================================

Completed studies go to the router's thread (:class:`~hounsfield.router.routing.RouterThread`), one
at a time, and its jobs to ``enqueue``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Job
from hounsfield.listener.completeness import CompletenessTracker
from hounsfield.listener.ingest import JournaledStore
from hounsfield.listener.journal import Journal
from hounsfield.listener.metrics import ListenerMetrics
from hounsfield.listener.source_count import SourceCounter
from hounsfield.listener.storage import StoreContext
from hounsfield.router.routing import Router, RouterThread
from hounsfield.store import StudyStore

__all__ = ["Intake"]


class Intake:
    """The store, index, tracker and router that arriving instances go through (see the module's docstring).

    ``complete_on_release``: an association's release completes its studies (the listener, per
    ``listener.complete_on_release``). ``count_sources``: studies from sources with
    ``query.count_completeness`` complete when the index holds the source's count. ``journal``:
    instances become durable in the ingest journal of this host (``data_dir/journal/<host>``) before
    their Success; without it each instance's file is fsynced and indexed first.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        enqueue: Callable[[Job], None],
        *,
        complete_on_release: bool = False,
        count_sources: bool = False,
        journal: bool = False,
    ) -> None:
        self.settings = settings
        self.db = db
        self.store = StudyStore(settings.data_dir, min_free_bytes=settings.listener.min_free_disk_mb * 2**20)
        self.metrics = ListenerMetrics(self.store)
        self.router = Router(settings, db, enqueue, metrics=self.metrics.routing)
        self.router_thread = RouterThread(self.router, resend_every_s=settings.listener.enqueue_retry_s)
        self.tracker = CompletenessTracker(
            self.router_thread.submit,
            complete_on_release=complete_on_release,
            quiet_period_s=settings.listener.quiet_period_s,
            source_counts=SourceCounter.from_settings(settings, db) if count_sources else None,
        )
        self.journal: JournaledStore | None = None
        if journal:
            folder = settings.data_dir / "journal" / socket.gethostname()
            segment = settings.listener.journal_segment_mb << 20
            self.journal = JournaledStore(self.store, db, self.tracker, Journal(folder, segment_bytes=segment))
            self.metrics.watch_journal(self.journal.backlog)
        self.context = StoreContext(
            self.store,
            db,
            self.tracker,
            self.metrics,
            self.journal,
            max_inflated=settings.listener.max_inflated_mb << 20,
        )

    def route(self, event: StudyComplete) -> list[Job]:
        """Complete and route one study now, in this thread; returns the jobs made."""
        return self.router.on_study_complete(event)

    def start(self) -> None:
        """Route completed studies from now on: the router's thread, then the tracker's."""
        self.router_thread.start()
        self.tracker.start()

    def stop(self) -> None:
        """Stop completing studies, then routing them (a study completed meanwhile is routed first)."""
        self.tracker.stop()
        self.router_thread.stop()
