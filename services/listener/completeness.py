"""When is a study complete? On association release, after a quiet period, or by the source's count.

The tracker remembers, per association (or STOW-RS request, or C-GET: any hashable key), which
studies it delivered, and per study when its last instance arrived. It hands
:class:`~hounsfield.contracts.StudyComplete` events to a callback that must return quickly (the
listener puts them on the router's queue).

A C-MOVE's sub-operations may come over several associations (Orthanc opens one per transfer
syntax), so the release of an association that carried them completes nothing: the source's count,
the quiet period, or the fetch that asked for the C-MOVE (once its final response has come and what
it reported is indexed) do. The end of a C-GET completes what it delivered (trigger ``retrieve``).

With a :class:`~hounsfield.listener.source_count.SourceCounter`, studies sent by a source PACS that
can be queried are also complete as soon as the index holds as many instances as the source reports
(trigger ``source-count``); the counter does its C-FINDs on its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable

from hounsfield.contracts import CompletionTrigger, StudyComplete
from hounsfield.db import utcnow
from hounsfield.listener.source_count import SourceCounter
from hounsfield.logs import log_context

__all__ = ["CompletenessTracker"]

logger = logging.getLogger(__name__)


class CompletenessTracker:
    """Association-release, quiet-period and source-count completion of studies."""

    def __init__(
        self,
        on_complete: Callable[[StudyComplete], None],
        *,
        complete_on_release: bool,
        quiet_period_s: float,
        source_counts: SourceCounter | None = None,
    ) -> None:
        self._on_complete = on_complete
        self._source_counts = source_counts
        self._complete_on_release = complete_on_release
        self._quiet_period_s = quiet_period_s
        self._lock = threading.Lock()
        self._by_assoc: dict[Hashable, set[str]] = {}
        self._last_seen: dict[str, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="completeness", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if self._source_counts is not None:
            self._source_counts.start(self._source_count_reached)

    def stop(self) -> None:
        self._stop.set()
        if self._source_counts is not None:
            self._source_counts.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def instance_received(self, key: Hashable, study_uid: str, calling_ae: str) -> None:
        with self._lock:
            self._by_assoc.setdefault(key, set()).add(study_uid)
            self._last_seen[study_uid] = (time.monotonic(), calling_ae)
        if self._source_counts is not None:
            self._source_counts.watch(study_uid, calling_ae)

    def association_released(
        self, key: Hashable, calling_ae: str, *, moved: bool = False, refused: bool = False
    ) -> None:
        """The association ``key`` was released. ``moved``: its C-STORE requests were a C-MOVE's
        sub-operations (they named a move originator), which may go on over other associations: its
        studies are left to the source's count and the quiet period, as after an abort. ``refused``: it
        had an instance refused (the disk at its floor, ...), which its sender will send again: its
        studies are left to the quiet period too, from now, so that a study is not routed without it."""
        with self._lock:
            studies = self._by_assoc.pop(key, set())
            if refused:
                now = time.monotonic()
                for uid in studies:
                    self._last_seen[uid] = (now, calling_ae)
            if not self._complete_on_release or moved or refused:
                return
            for uid in studies:
                self._last_seen.pop(uid, None)
        for uid in sorted(studies):
            self._emit(uid, "association-release", calling_ae)

    def resume(self, studies: Iterable[tuple[str, str]]) -> None:
        """Watch studies an earlier run left receiving: ``(StudyInstanceUID, calling AE title)`` pairs.

        After a restart no association is open, so only the quiet period can complete them; each gets
        a full one from now (a sender retrying after the outage still belongs to the same study).
        Called by start-up recovery (:mod:`hounsfield.listener.recovery`).
        """
        now = time.monotonic()
        with self._lock:
            for study_uid, calling_ae in studies:
                self._last_seen.setdefault(study_uid, (now, calling_ae))

    def retrieve_finished(self, key: Hashable, calling_ae: str) -> list[str]:
        """A C-GET ``key`` has ended, whatever its outcome: complete the studies it delivered (trigger
        ``retrieve``), since nothing more of the retrieve can come; returns their UIDs."""
        with self._lock:
            studies = sorted(self._by_assoc.pop(key, set()))
            for uid in studies:
                self._last_seen.pop(uid, None)
        for uid in studies:
            self._emit(uid, "retrieve", calling_ae)
        return studies

    def association_aborted(self, key: Hashable) -> None:
        # What arrived stays; the quiet period decides when the study is complete.
        with self._lock:
            self._by_assoc.pop(key, None)

    def _source_count_reached(self, study_uid: str, calling_ae: str) -> None:
        # Complete now; the study's release or quiet period, still ahead, would only repeat it.
        with self._lock:
            self._last_seen.pop(study_uid, None)
            for studies in self._by_assoc.values():
                studies.discard(study_uid)
        self._emit(study_uid, "source-count", calling_ae)

    def _emit(self, study_uid: str, trigger: CompletionTrigger, calling_ae: str) -> None:
        if self._source_counts is not None and trigger != "source-count":
            self._source_counts.forget(study_uid)
        with log_context(study_uid=study_uid):  # the timer's thread works for one study after another
            try:
                event = StudyComplete(study_instance_uid=study_uid, trigger=trigger, calling_ae=calling_ae, at=utcnow())
                self._on_complete(event)
            except Exception:  # the callback belongs to another room: never kill the tracker
                logger.exception("study completion handler failed")

    def _watch(self) -> None:
        tick = min(1.0, self._quiet_period_s / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                busy = {uid for uids in self._by_assoc.values() for uid in uids}
                due = [
                    (uid, ae)
                    for uid, (seen, ae) in self._last_seen.items()
                    if now - seen >= self._quiet_period_s and uid not in busy
                ]
                for uid, _ in due:
                    del self._last_seen[uid]
            for uid, ae in due:
                self._emit(uid, "quiet-period", ae)
