"""From a complete study to jobs: evaluate every deployment's rule on every series.

The deployments are the catalog's running ones (:mod:`hounsfield.catalog.read_model`), read afresh
for every study: a promotion or a rollback applies to the next study routed.

A study can complete more than once: series that arrive after it was routed set it back to
receiving, and its next completion re-evaluates it ("re-evaluated" in its events, with the trigger).
A deployment whose chosen series set changed gets a new job that supersedes the earlier one; an
unchanged set finds its existing job (same idempotency key), so nothing is duplicated.

A completion met by an unreachable database (PostgreSQL restarting) is routed again every
``listener.enqueue_retry_s`` until it answers: its transaction was rolled back whole, so the study is
routed once. A job is committed before its message goes to the broker. When the broker cannot take the message
(Redis restarting), the job is kept and sent again every ``listener.enqueue_retry_s`` until Redis takes
it; a listener that stops meanwhile re-sends every queued job when it starts again
(:meth:`hounsfield.listener.server.Listener.requeue_pending`). A worker claims a job once, so a message
sent twice runs it once.

Each completion also looks for corrected segmentations among the study's SEGs (a radiologist's
correction of one of our results, :mod:`hounsfield.feedback.corrections`), after the routing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from hounsfield.catalog.read_model import DeploymentSpec, load_deployments
from hounsfield.config import Settings
from hounsfield.contracts import Match, SeriesFacts, StudyComplete
from hounsfield.db import Database, Job, Session, Study, StudyState, database_unreachable, take_write_lock, utcnow
from hounsfield.db.index import add_event, complete_study, study_state
from hounsfield.db.jobs import create_job, idempotency_key, supersede_earlier_jobs
from hounsfield.feedback import recognise_corrections
from hounsfield.logs import log_context
from hounsfield.router.dry_run import study_facts
from hounsfield.router.metrics import RoutingMetrics

__all__ = ["Decision", "Router", "RouterThread", "evaluate_deployment"]

logger = logging.getLogger(__name__)

Enqueue = Callable[[Job], None]


@dataclass(frozen=True)
class Decision:
    """Which series of a study a deployment takes, and why."""

    deployment: str
    series_instance_uids: tuple[str, ...]
    explanations: dict[str, Match]

    @property
    def matched(self) -> bool:
        return bool(self.series_instance_uids)


def evaluate_deployment(deployment: DeploymentSpec, facts: list[SeriesFacts]) -> Decision:
    explanations = {f.series_instance_uid: deployment.rule.evaluate(f) for f in facts}
    chosen = tuple(uid for uid, match in explanations.items() if match.matched)
    return Decision(deployment.name, chosen, explanations)


@dataclass(frozen=True)
class _Routed:
    """One study's routing, committed or about to be: its new jobs, and its row (none: nothing done)."""

    jobs: list[Job]
    study: Study | None


class Router:
    """Turns :class:`StudyComplete` events into job rows and queue messages."""

    def __init__(
        self, settings: Settings, db: Database, enqueue: Enqueue, *, metrics: RoutingMetrics | None = None
    ) -> None:
        self._settings = settings
        self._db = db
        self._enqueue = enqueue
        self._metrics = metrics
        self._unsent: dict[str, Job] = {}
        """Jobs committed whose message the broker did not take yet, by id."""
        self._unsent_lock = threading.Lock()

    @property
    def unsent(self) -> int:
        """How many committed jobs wait for the broker to take their message."""
        with self._unsent_lock:
            return len(self._unsent)

    def _send(self, job: Job) -> bool:
        """Put ``job`` on its queue; False (and kept for :meth:`resend_unsent`) when the broker refused it."""
        try:
            with log_context(job=job.id):
                self._enqueue(job)
        except Exception as exc:  # kombu's OperationalError, a connection error: the broker is away
            with self._unsent_lock:
                self._unsent[job.id] = job
            with log_context(study_uid=job.study_instance_uid, job=job.id):
                logger.warning(
                    "job not queued, the broker did not take it (%s); sending it again in %.0f s",
                    type(exc).__name__, self._settings.listener.enqueue_retry_s,
                )  # fmt: skip
            return False
        with self._unsent_lock:
            self._unsent.pop(job.id, None)
        if self._metrics is not None:
            self._metrics.jobs_enqueued.labels(job.queue).inc()
        return True

    def resend_unsent(self) -> int:
        """Send again the jobs the broker did not take; returns how many it took now."""
        with self._unsent_lock:
            waiting = list(self._unsent.values())
        sent = 0
        for job in waiting:
            if not self._send(job):
                break  # still away: the rest wait for the next round
            sent += 1
            with log_context(study_uid=job.study_instance_uid, job=job.id):
                logger.info("job queued after the broker came back: %s on queue %s", job.deployment, job.queue)
        return sent

    def on_study_complete(self, event: StudyComplete) -> list[Job]:
        """Route one study and look for corrections among its segmentations; returns the jobs created
        (none for no route or a repeat)."""
        with log_context(study_uid=event.study_instance_uid):
            jobs = self.route(event)
            self.look_for_corrections(event.study_instance_uid)
            return jobs

    def route(self, event: StudyComplete) -> list[Job]:
        """Route one study (its jobs committed and sent); the corrections are left to
        :meth:`look_for_corrections`, which the router's thread runs once no other study waits."""
        with log_context(study_uid=event.study_instance_uid):
            return self._route(event)

    def look_for_corrections(self, study_uid: str) -> None:
        """Record the study's segmentations that correct ours (:func:`recognise_corrections`); a failure
        is logged, never raised: the study's routing stands."""
        with log_context(study_uid=study_uid):
            try:
                recognise_corrections(self._settings, self._db, study_uid)
            except Exception:  # the study is routed and its jobs queued: feedback never undoes that
                logger.exception("looking for corrected segmentations failed; the study's routing stands")

    def warm_up(self) -> None:
        """Run the routing's reads once on no study, and connect to the broker (an enqueue with a
        ``warm_up``), so that the first study routed does not pay for compiling the reads and
        connecting (tens of milliseconds each on the reference machine)."""
        with self._db.session() as session:
            study_state(session, "0")
            study_facts(session, "0")
            load_deployments(session)
        connect = getattr(self._enqueue, "warm_up", None)
        if callable(connect):
            connect()

    def route_many(self, events: list[StudyComplete]) -> list[StudyComplete]:
        """Route several completed studies in one transaction (each in a savepoint of its own), then send
        their jobs: what the router's thread does when studies complete together. A study whose routing
        fails is logged and left; returns the studies routed. Raises when the database is unreachable:
        nothing was committed then, every study may be routed again."""
        routed: list[tuple[StudyComplete, _Routed]] = []
        with self._db.session() as session:
            take_write_lock(session)
            deployments = load_deployments(session)  # shadow, research and clinical ones
            for event in events:
                with log_context(study_uid=event.study_instance_uid):
                    try:
                        with session.begin_nested():
                            outcome = self._route_in(session, event, deployments)
                    except Exception as exc:
                        if database_unreachable(exc):
                            raise
                        logger.exception("routing failed for a study (trigger %s)", event.trigger)
                        continue
                routed.append((event, outcome))
        for event, outcome in routed:  # committed: counted, sent and announced once each
            with log_context(study_uid=event.study_instance_uid):
                try:
                    self._announce(event, outcome)
                except Exception:  # its jobs stay queued in the database (re-sent at the next start)
                    logger.exception("announcing a routed study failed")
        return [event for event, _ in routed]

    def _route(self, event: StudyComplete) -> list[Job]:
        with self._db.session() as session:
            take_write_lock(session)
            outcome = self._route_in(session, event, load_deployments(session))
        self._announce(event, outcome)
        return outcome.jobs

    def _announce(self, event: StudyComplete, outcome: _Routed) -> None:
        """Count and send the committed jobs of one routed study."""
        study = outcome.study
        if study is None:
            return
        if self._metrics is not None and study.completed_at is not None:
            completed = study.completed_at
            self._metrics.study_completed(event.trigger, study.first_received_at, study.last_received_at, completed)
        for job in outcome.jobs:
            if self._metrics is not None:
                self._metrics.jobs_created.labels(job.queue).inc()
            if self._send(job):
                if self._metrics is not None:
                    self._metrics.job_queued(job.queue, event.trigger, study.last_received_at, event.at, utcnow())
                with log_context(job=job.id):
                    logger.info("job queued: %s on queue %s", job.deployment, job.queue)
        logger.info("study routed (%s): %d new job(s)", event.trigger, len(outcome.jobs))

    def _route_in(self, session: Session, event: StudyComplete, deployments: list[DeploymentSpec]) -> _Routed:
        """One study's routing in ``session``: its new jobs (not sent yet) and the study's row (none:
        already routed or unknown, nothing done)."""
        uid = event.study_instance_uid
        created: list[Job] = []
        earlier = study_state(session, uid)
        if not complete_study(session, uid, event.trigger):
            logger.info("study already routed or unknown; ignoring %s trigger", event.trigger)
            return _Routed([], None)
        actor = "fetch" if event.trigger == "retrieve" else "listener"
        if earlier is not None and earlier.completed_at is not None:
            previous = earlier.completion_trigger
            add_event(session, uid, actor, "re-evaluated", trigger=event.trigger, previous_trigger=previous)
        else:
            add_event(session, uid, actor, "study-complete", trigger=event.trigger)
        study = session.get(Study, uid)
        assert study is not None  # complete_study matched it
        facts = study_facts(session, uid)
        matched_any = False
        for deployment in deployments:
            decision = evaluate_deployment(deployment, facts)
            if not decision.matched:
                continue
            matched_any = True
            key = idempotency_key(uid, decision.series_instance_uids, deployment.name, deployment.model_version)
            job, is_new = create_job(
                session,
                idempotency_key=key,
                study_instance_uid=uid,
                series_instance_uids=list(decision.series_instance_uids),
                deployment=deployment.name,
                model_name=deployment.model_name,
                model_version=deployment.model_version,
                mode=deployment.mode,
                queue=deployment.queue,
                timings={"completeness": (study.completed_at - study.first_received_at).total_seconds()}
                if study.completed_at
                else {},
            )
            if is_new:
                created.append(job)
                add_event(session, uid, "router", "job-queued", job_id=job.id, deployment=deployment.name)
                supersede_earlier_jobs(session, job)
            else:
                add_event(session, uid, "router", "job-exists", job_id=job.id, deployment=deployment.name)
        study.state = StudyState.ROUTED if matched_any else StudyState.NO_ROUTE
        if not matched_any:
            add_event(session, uid, "router", "no-route", series=len(facts))
        return _Routed(created, study)


_BATCH = 64
"""The most completed studies routed in one transaction."""
_QUICK_RETRIES_S = (0.01, 0.05, 0.2)
"""Pauses before routing again at once when the database was unreachable (a busy SQLite file, as a rule)."""


class RouterThread:
    """Runs the router off the listener's association threads, one study at a time."""

    def __init__(self, router: Router, *, resend_every_s: float = 5.0) -> None:
        self._router = router
        self._resend_every_s = resend_every_s
        self._unrouted: list[StudyComplete] = []
        """Completions met by an unreachable database, routed again after ``resend_every_s``."""
        self._route_again_at = 0.0
        self._queue: queue.Queue[StudyComplete | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="router", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, event: StudyComplete) -> None:
        self._queue.put(event)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            self._router.warm_up()
        except Exception as exc:  # the database may be away at start: the first study pays, nothing more
            logger.warning("the router's warm-up failed (%s)", type(exc).__name__)
        last_resend = time.monotonic()
        corrections: list[str] = []
        """Studies routed whose corrections are looked for once no other study waits to be routed."""
        while True:
            while corrections and self._queue.empty():
                self._router.look_for_corrections(corrections.pop(0))
            if self._router.unsent and time.monotonic() - last_resend >= self._resend_every_s:
                last_resend = time.monotonic()
                try:
                    self._router.resend_unsent()
                except Exception:  # keep routing; the jobs stay unsent and queued in the database
                    logger.exception("sending unsent jobs again failed")
            if self._unrouted and time.monotonic() >= self._route_again_at:
                for waiting in self._unrouted:
                    self._queue.put(waiting)
                self._unrouted = []
            try:
                first = self._queue.get(timeout=self._resend_every_s)
            except queue.Empty:
                continue
            batch = [first]  # the studies that completed together are routed together: one transaction
            while batch[-1] is not None and len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = batch[-1] is None
            events = [event for event in batch if event is not None]
            try:
                if events:
                    corrections += [event.study_instance_uid for event in self._route(events)]
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stopping:
                for study_uid in corrections:
                    self._router.look_for_corrections(study_uid)
                return

    def _route(self, events: list[StudyComplete]) -> list[StudyComplete]:
        """Route ``events`` together; when the database is unreachable they wait for the next round.

        A busy SQLite database (another process's commit between this transaction's first read and its
        first write) counts as unreachable too, and is over in milliseconds: tried again at once, a few
        times, before the wait.
        """
        for delay in (*_QUICK_RETRIES_S, None):
            try:
                return self._router.route_many(events)
            except Exception as exc:
                if not database_unreachable(exc):  # not a study's own failure (those are logged per study)
                    logger.exception("routing failed for %d stud(ies)", len(events))
                    return []
                if delay is not None:
                    time.sleep(delay)
                    continue
                logger.warning(
                    "routing waits for the database (%s); trying again in %.0f s",
                    type(exc).__name__, self._resend_every_s,
                )  # fmt: skip
        self._unrouted += events  # routed again when it answers; nothing was half-done
        self._route_again_at = time.monotonic() + self._resend_every_s
        return []
