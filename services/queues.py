"""The job queues on Redis: the Celery application, its queues and task names.

The router puts each job on the queue of its priority (:class:`Enqueuer`); workers consume them
(:mod:`hounsfield.worker.tasks` defines the tasks, by the names here). Queues are ``stat``,
``routine`` and ``batch`` (from the model's use cases); messages are acknowledged late, so that a
job whose worker died is handed to another one.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from celery import Celery
from kombu import Queue
from kombu.transport.redis import PRIORITY_STEPS, Channel

from hounsfield.access import Principal, record
from hounsfield.config import Settings
from hounsfield.db import Database, Job
from hounsfield.db.jobs import get_job, requeue_failed_job
from hounsfield.errors import Conflict, NotFound
from hounsfield.logs import study_correlation_id

__all__ = [
    "EXPORT_JOB_TASK",
    "QUEUES",
    "RUN_JOB_TASK",
    "STUDY_HEADER",
    "Enqueuer",
    "make_celery",
    "queue_depths",
    "retry_job",
]

QUEUES = ("stat", "routine", "batch")
RUN_JOB_TASK = "hounsfield.run_job"
STUDY_HEADER = "hounsfield_study"
"""The message header that carries the job's study correlation id (:func:`hounsfield.logs.study_correlation_id`)."""
EXPORT_JOB_TASK = "hounsfield.export_job"
_TASKS_MODULE = "hounsfield.worker.tasks"
"""Where a worker finds the tasks (imported by name when the worker starts; senders never import it)."""


def make_celery(settings: Settings, *, longest_timeout_s: float | None = None) -> Celery:
    """A Celery app configured for ``settings`` (no connection is made until it is used).

    A job's message is redelivered when its worker has not acknowledged it within the visibility
    timeout (acks_late: a worker that died mid-job). It is set well above ``longest_timeout_s``, the
    longest timeout of any deployed version (the worker passes the registry's), so that a job still
    running is never handed to a second worker.
    """
    longest = max((d.timeout_s for d in settings.deployments), default=600.0)
    longest = max(longest, longest_timeout_s or 0.0)
    app = Celery("hounsfield", broker=settings.broker_url, include=[_TASKS_MODULE])
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="routine",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": int(settings.worker.visibility_timeout_s or longest * 2 + 300)},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    app.conf.hounsfield_settings = settings
    return app


class Enqueuer:
    """Puts jobs on their priority queue (the router's side of the broker)."""

    def __init__(self, settings: Settings) -> None:
        self._app = make_celery(settings)
        self._correlation_key = settings.log_correlation_key

    def warm_up(self) -> None:
        """Connect to the broker and declare the queues now: the first job sent otherwise pays for it
        (a tenth of a second on the reference machine). Raises when the broker cannot be reached."""
        with self._app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
            for queue in self._app.amqp.queues.values():
                queue.bind(producer.channel).declare()
        _ = self._app.backend  # the result backend, which send_task loads (an entry-point scan) on first use

    def __call__(self, job: Job) -> None:
        # The study's correlation id travels beside the job's id, so that the worker's lines carry both.
        headers = {STUDY_HEADER: study_correlation_id(job.study_instance_uid, self._correlation_key)}
        self._app.send_task(RUN_JOB_TASK, args=[job.id], queue=job.queue, headers=headers)


def retry_job(db: Database, job_id: str, *, principal: Principal, enqueue: Callable[[Job], None]) -> Job:
    """Run a failed or timed-out job again: back to queued (audited as ``job.retry``, a ``job-retried``
    event on the study's path), committed, then put on its queue.

    :class:`~hounsfield.errors.NotFound` for no such job; :class:`~hounsfield.errors.Conflict` when it did
    not fail (or time out), or a newer job of the same study and deployment superseded it.
    """
    with db.session() as session:
        found = get_job(session, job_id)
        if found is None:
            raise NotFound("no job with this id")
        before = found.state.value
        job = requeue_failed_job(session, job_id, actor=principal.subject)
        if job is None:
            why = "only a failed or timed-out job that nothing superseded can be retried"
            raise Conflict(f"{why} (this one: {before})")
        record(session, principal, "job.retry", "job", job_id, before={"state": before}, after={"state": "queued"})
    enqueue(job)
    return job


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Messages waiting on each queue, as kombu's Redis transport keeps them: one list per queue and
    priority step (``routine``, ``routine\\x06\\x163``, ...). Messages a worker holds (unacknowledged) and
    export retries waiting for their countdown are not counted. Raises :class:`redis.RedisError`."""
    keys = [(name, f"{name}{Channel.sep}{step}" if step else name) for name in QUEUES for step in PRIORITY_STEPS]
    with client.pipeline(transaction=False) as pipe:
        for _, key in keys:
            pipe.llen(key)
        sizes = pipe.execute()
    depths = dict.fromkeys(QUEUES, 0)
    for (name, _), size in zip(keys, sizes, strict=True):
        depths[name] += int(size)
    return depths
