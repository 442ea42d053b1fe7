"""From a complete study to jobs: evaluate every deployment's rule on every series.

The deployments are the catalog's running ones (:mod:`hounsfield.catalog.read_model`), read afresh
for every study: a promotion or a rollback applies to the next study routed.

A study can complete more than once: series that arrive after it was routed set it back to
receiving, and its next completion re-evaluates it ("re-evaluated" in its events, with the trigger).
A deployment whose chosen series set changed gets a new job that supersedes the earlier one; an
unchanged set finds its existing job (same idempotency key), so nothing is duplicated.

Each completion also looks for corrected segmentations among the study's SEGs (a radiologist's
correction of one of our results, :mod:`hounsfield.feedback.corrections`), after the routing.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hounsfield.catalog.read_model import DeploymentSpec, load_deployments
from hounsfield.config import Settings
from hounsfield.contracts import Match, SeriesFacts, StudyComplete
from hounsfield.db import Database, Job, Study, StudyState
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
            with log_context(job=job.id):
                self._enqueue(job)
                logger.info("job queued: %s on queue %s", job.deployment, job.queue)
            if self._metrics is not None:
                self._metrics.jobs_enqueued.labels(job.queue).inc()
        logger.info("study routed (%s): %d new job(s)", event.trigger, len(created))
        try:
            recognise_corrections(self._settings, self._db, uid)
        except Exception:  # the study is routed and its jobs queued: feedback never undoes that
            logger.exception("looking for corrected segmentations failed; the study's routing stands")
        return created


class RouterThread:
    """Runs the router off the listener's association threads, one study at a time."""

    def __init__(self, router: Router) -> None:
        self._router = router
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
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                with log_context(study_uid=event.study_instance_uid):
                    try:
                        self._router.on_study_complete(event)
                    except Exception:  # keep routing the next study; this one is logged with its cause
                        logger.exception("routing failed for a study (trigger %s)", event.trigger)
            finally:
                self._queue.task_done()
