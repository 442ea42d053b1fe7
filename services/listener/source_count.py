"""Completion by source count: a study is complete when the index holds as many instances as its source has.

For senders configured as a source PACS with ``query.count_completeness`` on, the listener asks the
source (C-FIND, Study Root, STUDY level) for the study's NumberOfStudyRelatedInstances and declares
the study complete as soon as the index's count reaches it, without waiting for the association
release or the quiet period.

The C-STORE path only calls :meth:`SourceCounter.watch` (a dictionary lookup and a set insert under a
lock); the C-FINDs and index counts run on this component's own thread. The source's answer is
cached per study and asked again only when the cached answer is older than ``refresh_s`` and the
index has reached (or passed) it, so a study costs one C-FIND, two when its transfer outlasts
``refresh_s``. A source that cannot be asked is logged and left to the other triggers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hounsfield.config import Settings, SourceSettings
from hounsfield.db import Database
from hounsfield.db.index import study_instance_count
from hounsfield.listener.qr_client import QueryRetrieveClient, RetrieveError
from hounsfield.logs import log_context

__all__ = ["SourceCounter"]

logger = logging.getLogger(__name__)

_UNREACHABLE_BACKOFF_S = 30.0
"""After a failed C-FIND, leave the study to the other triggers for this long before asking again."""

OnMatch = Callable[[str, str], None]
"""Called with (study UID, calling AE title) when a study's count is reached."""


@dataclass
class _Pending:
    source: str
    calling_ae: str
    generation: int = 0
    checked: int = -1


@dataclass(frozen=True)
class _Expected:
    count: int | None
    asked_at: float


class SourceCounter:
    """Watches studies sent by counting sources and reports when their count is reached."""

    def __init__(
        self,
        clients: Mapping[str, QueryRetrieveClient],
        *,
        count_here: Callable[[str], int],
        refresh_s: float = 2.0,
        interval_s: float = 0.2,
        cache_size: int = 10_000,
    ) -> None:
        """``clients`` maps a calling AE title to the client that queries that source."""
        self._clients = dict(clients)
        self._count_here = count_here
        self._refresh_s = refresh_s
        self._interval_s = interval_s
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._expected: OrderedDict[str, _Expected] = OrderedDict()
        self._unreachable_logged: dict[str, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._on_match: OnMatch | None = None
        self._thread = threading.Thread(target=self._run, name="source-count", daemon=True)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> SourceCounter | None:
        """A counter for the listener's counting sources, or None when no source counts."""
        clients: dict[str, QueryRetrieveClient] = {}
        for name, source in settings.listener.sources.items():
            if _counts(source) and source.ae_title not in clients:
                clients[source.ae_title] = QueryRetrieveClient(name, source, calling_ae=settings.listener.ae_title)
        if not clients:
            return None

        def count_here(study_uid: str) -> int:
            with db.session() as session:
                return study_instance_count(session, study_uid)

        return cls(clients, count_here=count_here)

    def watch(self, study_uid: str, calling_ae: str) -> None:
        """An instance of ``study_uid`` arrived from ``calling_ae`` (the C-STORE path: cheap, never blocks long)."""
        client = self._clients.get(calling_ae)
        if client is None:
            return
        with self._lock:
            pending = self._pending.get(study_uid)
            if pending is None:
                pending = self._pending[study_uid] = _Pending(client.name, calling_ae)
            pending.generation += 1
        self._wake.set()

    def forget(self, study_uid: str) -> None:
        """The study was completed by another trigger: stop watching it until more instances arrive."""
        with self._lock:
            self._pending.pop(study_uid, None)

    def start(self, on_match: OnMatch) -> None:
        self._on_match = on_match
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._refresh_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                due = [(uid, p.generation) for uid, p in self._pending.items()]
            for uid, generation in due:
                with log_context(study_uid=uid):  # this thread looks at one study after another
                    try:
                        self._check(uid, generation)
                    except Exception:  # the index or the network: log and keep watching the other studies
                        logger.exception("source count check failed")
            self._stop.wait(self._interval_s)

    def _ask(self, uid: str, source: str, calling_ae: str) -> _Expected:
        client = self._clients[calling_ae]
        now = time.monotonic()
        try:
            count = client.study_instance_count(uid)
        except RetrieveError as exc:
            if now - self._unreachable_logged.get(source, -1e9) > 60:
                logger.warning("source %s cannot be asked for instance counts: %s", source, exc)
                self._unreachable_logged[source] = now
            return self._remember(uid, _Expected(None, now + _UNREACHABLE_BACKOFF_S))
        return self._remember(uid, _Expected(count, now))

    def _remember(self, uid: str, expected: _Expected) -> _Expected:
        self._expected[uid] = expected
        self._expected.move_to_end(uid)
        while len(self._expected) > self._cache_size:
            self._expected.popitem(last=False)
        return expected

    def _check(self, uid: str, generation: int) -> None:
        with self._lock:
            pending = self._pending.get(uid)
            if pending is None:
                return
            source, calling_ae, fresh_instances = pending.source, pending.calling_ae, pending.checked != generation
            pending.checked = generation
        known = self._expected.get(uid)
        now = time.monotonic()
        stale = known is None or now - known.asked_at >= self._refresh_s
        if not fresh_instances and not stale:
            return  # nothing new since the last look, and the source's answer is recent
        here = self._count_here(uid)
        asked = False
        if known is None or (stale and (known.count is None or here >= known.count)):
            known, asked = self._ask(uid, source, calling_ae), True
        if known.count is None or here < known.count or (here > known.count and not asked):
            return  # still arriving; or the source did not say; or its count is older than what is here
        with self._lock:
            current = self._pending.get(uid)
            if current is not None and current.generation == generation:
                del self._pending[uid]
        logger.info("study complete by source count (%d instance(s), source %s)", here, source)
        if self._on_match is not None:
            self._on_match(uid, calling_ae)


def _counts(source: SourceSettings) -> bool:
    return source.query is not None and source.query.count_completeness
