"""``hounsfield fetch``: find studies on a source PACS and pull here what is missing.

:class:`Fetcher` uses a :class:`~hounsfield.listener.qr_client.QueryRetrieveClient`: it finds the
studies matching an accession number, patient, date range or Study Instance UID, compares the
source's instance counts with the index's, and retrieves only the series that are missing or
incomplete here, so that a study whose series were not all pushed is completed.

Where the instances go depends on the retrieve method:

* **C-MOVE** sends them to the running listener (``move_destination``, the listener's AE title by
  default), which stores them. The source may open one association per transfer syntax, so the
  listener completes nothing on their release (their C-STOREs name a move originator). Once the
  final response has come, the fetcher waits (``wait_s``) until the index holds every instance the
  C-MOVE reported as sent, and then, when the study holds the source's count, completes it (trigger
  ``retrieve``) and routes it; otherwise the listener does, by the source's count or its quiet period.
* **C-GET** brings them back on the fetcher's own association: the fetcher is the storage SCP and
  stores each one through an :class:`~hounsfield.listener.intake.Intake` as the listener and
  STOW-RS do. Each storage class the study holds is proposed once per transfer syntax, so that a
  source that cannot transcode finds the syntax it holds. The intake's tracker completes what the
  retrieve delivered when it ends, whatever its outcome (trigger ``retrieve``), and its router routes it.

Patient IDs and accession numbers travel in the C-FIND identifiers only; they are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from kombu.exceptions import KombuError
from pynetdicom import evt
from rich.table import Table

from hounsfield.catalog import open_database
from hounsfield.config import Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Job, StudyState
from hounsfield.db.index import series_instance_counts, study_state
from hounsfield.errors import HounsfieldError
from hounsfield.listener.intake import Intake
from hounsfield.listener.qr_client import (
    QueryFailed,
    QueryRetrieveClient,
    RetrieveError,
    SourceNotConfigured,
    StudyOnSource,
    StudyQuery,
    Transfer,
)
from hounsfield.listener.storage import Origin, receive_instance
from hounsfield.queues import Enqueuer

__all__ = ["FetchFailed", "FetchReport", "Fetcher", "StudyFetch", "render_report", "run_fetch"]

logger = logging.getLogger(__name__)


class FetchFailed(HounsfieldError):
    """``hounsfield fetch`` could not run at all; ``exit_code`` 2 for bad arguments, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


Outcome = Literal["complete-here", "would-retrieve", "retrieved", "failed"]


@dataclass
class StudyFetch:
    """What happened to one study found on the source."""

    study_instance_uid: str
    accession_number: str
    study_date: str
    on_source: int | None
    here_before: int
    here_after: int
    outcome: Outcome
    series_on_source: int | None = None
    series_to_retrieve: int = 0
    retrieved: int = 0
    failed: int = 0
    reason: str = ""
    state: str | None = None
    completion_trigger: str | None = None


@dataclass
class FetchReport:
    """The answer of one ``hounsfield fetch``."""

    source: str
    method: str
    dry_run: bool
    matched: int
    studies: list[StudyFetch] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Failures beside the studies' own (e.g. jobs that could not be put on the queue)."""

    @property
    def ok(self) -> bool:
        return not self.problems and all(study.outcome != "failed" for study in self.studies)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class Fetcher:
    """Finds studies on a source and retrieves what the index lacks (see the module docstring).

    C-GET arrivals go through ``intake`` (its store, index and tracker: start it first), which
    completes and routes them when the retrieve ends; C-MOVEd studies are completed (``retrieve``)
    and routed through ``intake``'s router once the listener has indexed what the C-MOVE sent, which
    the fetcher waits for up to ``wait_s``.
    """

    def __init__(self, settings: Settings, source_name: str, *, intake: Intake, wait_s: float = 10.0) -> None:
        sources = settings.listener.sources
        if source_name not in sources:
            known = ", ".join(sorted(sources)) or "none"
            raise SourceNotConfigured(f"no source named {source_name!r} (listener.sources; configured: {known})")
        self.source = sources[source_name]
        self.client = QueryRetrieveClient(source_name, self.source, calling_ae=settings.listener.ae_title)
        assert self.source.query is not None  # the client checked
        self.method = self.source.query.retrieve
        self.destination = self.source.query.move_destination or settings.listener.ae_title
        self._settings = settings
        self._intake = intake
        self._db = intake.db
        self._wait_s = wait_s

    def run(self, query: StudyQuery, *, dry_run: bool = False, limit: int = 100) -> FetchReport:
        """Find, compare, retrieve. Raises :class:`RetrieveError` when the source cannot be queried at all."""
        found = self.client.find_studies(query)
        report = FetchReport(self.client.name, self.method, dry_run, matched=len(found))
        for study in found[:limit]:
            report.studies.append(self._fetch_study(study, dry_run))
        return report

    def _here(self, study_uid: str) -> dict[str, int]:
        with self._db.session() as session:
            return series_instance_counts(session, study_uid)

    def _study_state(self, study_uid: str) -> tuple[str | None, str | None, datetime | None]:
        with self._db.session() as session:
            found = study_state(session, study_uid)
        if found is None:
            return None, None, None
        state, trigger, completed_at = found
        return state.value, trigger, completed_at

    def _fetch_study(self, study: StudyOnSource, dry_run: bool) -> StudyFetch:
        uid = study.study_instance_uid
        here = self._here(uid)
        before = sum(here.values())
        state, trigger, _ = self._study_state(uid)
        result = StudyFetch(
            uid, study.accession_number, study.study_date, study.instance_count, before, before, "complete-here",
            series_on_source=study.series_count, state=state, completion_trigger=trigger,
        )  # fmt: skip
        if study.instance_count is not None and before >= study.instance_count:
            return result
        try:
            series = self.client.find_series(uid)
        except RetrieveError as exc:
            result.outcome, result.reason = "failed", str(exc)
            return result
        result.series_on_source = len(series)
        missing = [
            s for s in series if s.instance_count is None or here.get(s.series_instance_uid, 0) < s.instance_count
        ]
        result.series_to_retrieve = len(missing)
        if not missing:
            return result
        if dry_run:
            result.outcome = "would-retrieve"
            return result
        missing_uids = [s.series_instance_uid for s in missing]
        series_uids = None if not here else missing_uids
        started = datetime.now(UTC)
        refused: list[str] = []
        completing: list[str] = []
        try:
            if self.method == "c-get":
                transfer = self._get(study, series_uids, missing_uids, refused, completing)
            else:
                transfer = self.client.move(uid, series_uids, self.destination)
        except RetrieveError as exc:
            result.outcome, result.reason = "failed", str(exc)
            if completing:
                self._wait_for_completion(uid, started)
            result.here_after = sum(self._here(uid).values())
            result.state, result.completion_trigger, _ = self._study_state(uid)
            return result
        result.retrieved, result.failed = transfer.completed, transfer.failed
        expected = study.instance_count
        if self.method == "c-move":
            sent = self._wait_for_index(uid, series_uids, transfer.completed)
            result.here_after = sum(self._here(uid).values())
            whole = result.here_after >= expected if expected is not None else transfer.ok
            if sent >= transfer.completed and whole:
                # The C-MOVE has ended, what it delivered is indexed and the study holds the source's
                # count: complete it now (the listener's releases of a C-MOVE complete nothing).
                complete = StudyComplete(study_instance_uid=uid, trigger="retrieve", calling_ae=self.source.ae_title)
                self._intake.route(complete)
        else:
            if completing:
                self._wait_for_completion(uid, started)
            result.here_after = sum(self._here(uid).values())
            sent = transfer.completed
        if not transfer.ok or sent < transfer.completed or (expected is not None and result.here_after < expected):
            result.outcome = "failed"
            result.reason = transfer.reason(self.destination if self.method == "c-move" else None)
            if not result.reason and sent < transfer.completed:
                result.reason = (
                    f"the listener had indexed {sent} of the {transfer.completed} instance(s) the source sent after "
                    f"{self._wait_s:g} s; it completes the study by the source's count or its quiet period"
                )
            elif not result.reason:
                result.reason = f"{result.here_after} of {expected} instance(s) are here after the retrieve"
            if refused:
                result.reason += f"; {len(refused)} refused here, first because {refused[0]}"
        else:
            result.outcome = "retrieved"
        result.state, result.completion_trigger, _ = self._study_state(uid)
        logger.info(
            "fetch from %s (%s): %d retrieved, %d failed, %s", self.client.name, self.method, transfer.completed,
            transfer.failed, result.outcome,
        )  # fmt: skip
        return result

    def _get(
        self,
        study: StudyOnSource,
        series_uids: list[str] | None,
        missing_uids: list[str],
        refused: list[str],
        completing: list[str],
    ) -> Transfer:
        """C-GET with this process as the storage SCP; reasons for instances refused here go to ``refused``.

        Every instance goes through the intake, whose tracker hears of it as the listener's does (the
        C-GET's association is its key); when the retrieve ends, whatever its outcome, the tracker
        completes the studies it delivered (trigger ``retrieve``; their UIDs go to ``completing``) and
        the intake's router thread routes them.
        """
        context = self._intake.context
        key = ("c-get", id(self), study.study_instance_uid)
        origin = Origin(key, self.source.ae_title, self._settings.listener.ae_title)

        def on_store(event: evt.Event) -> int:
            request = event.request
            received = receive_instance(
                context,
                event.encoded_dataset(include_meta=False),
                str(event.context.transfer_syntax),
                origin,
                expected_sop_instance_uid=str(getattr(request, "AffectedSOPInstanceUID", "") or ""),
                expected_sop_class_uid=str(getattr(request, "AffectedSOPClassUID", "") or ""),
            )
            if not received.ok:
                refused.append(received.reason)
            return received.status

        try:
            # The classes the study holds: one context per (class, transfer syntax) fits the association.
            classes = list(study.sop_class_uids)
            if not classes:
                try:
                    classes = self.client.find_sop_classes(study.study_instance_uid, missing_uids)
                except QueryFailed:  # no IMAGE-level queries there: a common set of classes is proposed
                    classes = []
            return self.client.get(study.study_instance_uid, series_uids, classes, on_store)
        finally:
            completing.extend(self._intake.tracker.retrieve_finished(key, self.source.ae_title))

    def _wait_for_index(self, study_uid: str, series_uids: list[str] | None, sent: int) -> int:
        """How many instances of the retrieved series (the whole study when None) the index holds, once it
        holds the ``sent`` the C-MOVE reported as completed or the fetch's wait is over.

        The listener acknowledges each instance once it is in its ingest journal; the index row follows
        within moments, and the last association of a C-MOVE may still be applied after its final response.
        """
        deadline = time.monotonic() + self._wait_s
        while True:
            here = self._here(study_uid)
            held = sum(n for series, n in here.items() if series_uids is None or series in series_uids)
            if held >= sent or time.monotonic() >= deadline:
                return held
            time.sleep(0.05)

    def _wait_for_completion(self, study_uid: str, started: datetime) -> None:
        """Wait (at most the fetch's wait) until the study was completed after ``started`` (by the intake's router)."""
        deadline = time.monotonic() + self._wait_s
        while time.monotonic() < deadline:
            state, _, completed_at = self._study_state(study_uid)
            if state not in (None, StudyState.RECEIVING.value) and completed_at and _aware(completed_at) >= started:
                return
            time.sleep(0.02)


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back (stored as UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def render_report(report: FetchReport) -> Table:
    """The report as a rich table, one row per study (accession number and date, never the patient)."""
    title = f"{report.matched} stud{'y' if report.matched == 1 else 'ies'} on {report.source} ({report.method})"
    if report.dry_run:
        title += ", dry run"
    if report.matched > len(report.studies):
        title += f"; the first {len(report.studies)} handled (raise --limit for more)"
    table = Table(title=title, title_justify="left")
    for column in ("Study Instance UID", "Accession", "Date", "On source", "Here", "Series to get", "Retrieved"):
        table.add_column(column, overflow="fold")
    table.add_column("Outcome")
    table.add_column("Completion")
    table.add_column("Reason", overflow="fold")
    colours = {"failed": "red", "retrieved": "green", "would-retrieve": "yellow", "complete-here": "cyan"}
    for s in report.studies:
        here = str(s.here_before) if s.here_after == s.here_before else f"{s.here_before} -> {s.here_after}"
        table.add_row(
            s.study_instance_uid,
            s.accession_number,
            s.study_date,
            "?" if s.on_source is None else str(s.on_source),
            here,
            str(s.series_to_retrieve),
            f"{s.retrieved}" + (f" ({s.failed} failed)" if s.failed else ""),
            f"[{colours[s.outcome]}]{s.outcome}[/]",
            f"{s.state or '-'}" + (f" ({s.completion_trigger})" if s.completion_trigger else ""),
            s.reason,
        )
    return table


def run_fetch(
    settings: Settings,
    source: str,
    *,
    dry_run: bool = False,
    limit: int = 100,
    wait_s: float = 10.0,
    enqueue: Callable[[Job], None] | None = None,
    **keys: str | None,
) -> FetchReport:
    """``hounsfield fetch``: query ``source`` for the studies matching ``keys`` (see :class:`StudyQuery`).

    Retrieved studies are completed and routed here (jobs go to ``enqueue``, the Celery broker by
    default): C-GET ones by this process's intake when the retrieve ends, C-MOVEd ones once the
    listener has indexed what the C-MOVE delivered. Jobs that cannot be queued stay queued in the
    database and are named in the report's problems.
    Raises :class:`FetchFailed` for bad arguments, an unknown source, or a source that cannot be queried.
    """
    try:
        query = StudyQuery(**keys)
    except ValueError as exc:
        raise FetchFailed(str(exc), exit_code=2) from exc
    db = open_database(settings)
    try:
        unsent: list[str] = []
        sender = enqueue

        def send(job: Job) -> None:
            nonlocal sender
            if sender is None:
                sender = Enqueuer(settings)
            try:
                sender(job)
            except KombuError:
                unsent.append(job.id)

        intake = Intake(settings, db, send)  # its tracker completes what a C-GET brings, its router thread routes
        try:
            fetcher = Fetcher(settings, source, intake=intake, wait_s=wait_s)
        except SourceNotConfigured as exc:
            raise FetchFailed(str(exc), exit_code=2) from exc
        intake.start()
        try:
            report = fetcher.run(query, dry_run=dry_run, limit=limit)
        except RetrieveError as exc:
            raise FetchFailed(str(exc)) from exc
        finally:
            intake.stop()  # what was completed is routed (and its jobs queued) first
        if unsent:
            report.problems.append(
                f"{len(unsent)} job(s) could not be put on the queue (is the broker running?); they stay "
                "queued in the database and the listener re-queues them when it starts"
            )
        return report
    finally:
        db.dispose()
