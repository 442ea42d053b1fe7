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
from hounsfield.db import Database, Job, Study, StudyState, database_unreachable
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
        """Route one study; returns the jobs created (none for no route or a repeat)."""
        with log_context(study_uid=event.study_instance_uid):
            return self._route(event)

    def _route(self, event: StudyComplete) -> list[Job]:
        uid = event.study_instance_uid
        created: list[Job] = []
        with self._db.session() as session:
            earlier = study_state(session, uid)
            if not complete_study(session, uid, event.trigger):
                logger.info("study already routed or unknown; ignoring %s trigger", event.trigger)
                return []
            actor = "fetch" if event.trigger == "retrieve" else "listener"
            if earlier is not None and earlier.completed_at is not None:
                previous = earlier.completion_trigger
                add_event(session, uid, actor, "re-evaluated", trigger=event.trigger, previous_trigger=previous)
            else:
                add_event(session, uid, actor, "study-complete", trigger=event.trigger)
            study = session.get(Study, uid)
            assert study is not None  # complete_study matched it
            if self._metrics is not None and study.completed_at is not None:
                completed = study.completed_at
                self._metrics.study_completed(event.trigger, study.first_received_at, study.last_received_at, completed)
            facts = study_facts(session, uid)
            matched_any = False
            for deployment in load_deployments(session):  # shadow, research and clinical ones
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
                    if self._metrics is not None:
                        self._metrics.jobs_created.labels(job.queue).inc()
                    add_event(session, uid, "router", "job-queued", job_id=job.id, deployment=deployment.name)
                    supersede_earlier_jobs(session, job)
                else:
                    add_event(session, uid, "router", "job-exists", job_id=job.id, deployment=deployment.name)
            study.state = StudyState.ROUTED if matched_any else StudyState.NO_ROUTE
            if not matched_any:
                add_event(session, uid, "router", "no-route", series=len(facts))
        for job in created:
            if self._send(job):
                with log_context(job=job.id):
                    logger.info("job queued: %s on queue %s", job.deployment, job.queue)
        logger.info("study routed (%s): %d new job(s)", event.trigger, len(created))
        try:
            recognise_corrections(self._settings, self._db, uid)
        except Exception:  # the study is routed and its jobs queued: feedback never undoes that
            logger.exception("looking for corrected segmentations failed; the study's routing stands")
        return created


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
        last_resend = time.monotonic()
        while True:
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
                event = self._queue.get(timeout=self._resend_every_s)
            except queue.Empty:
                continue
            try:
                if event is None:
                    return
                with log_context(study_uid=event.study_instance_uid):
                    try:
                        self._router.on_study_complete(event)
                    except Exception as exc:
                        if not database_unreachable(exc):  # keep routing the next study; this one is logged
                            logger.exception("routing failed for a study (trigger %s)", event.trigger)
                            continue
                        logger.warning("routing waits for the database (%s); trying again in %.0f s",
                                       type(exc).__name__, self._resend_every_s)  # fmt: skip
                        self._unrouted.append(event)  # routed again when it answers; nothing was half-done
                        self._route_again_at = time.monotonic() + self._resend_every_s
            finally:
                self._queue.task_done()
