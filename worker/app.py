"""The Celery application, configured from `jobs.settings.Settings`; it imports no engine.

Delivery is at-least-once and the database decides who runs a job: messages are acknowledged
after the task returns (``acks_late``) and re-delivered when the worker process dies
(``task_reject_on_worker_lost``); each worker takes one message at a time
(``worker_prefetch_multiplier=1``), so a long job never holds others hostage. A redelivered
message for a job that is already running elsewhere or finished is a no-op
(`jobs.repository.claim_job`). Every task goes to the explicit queue `QUEUE`, except
a job whose model is a plugin (`hypercore.plugins`): it goes to that plugin's queue (`plugin_queue`),
which only the workers that load the plugin consume (`worker.enqueue.job_queue` decides).

The task itself lives in ``worker.tasks`` (which imports JAX) under the name `RUN_JOB_TASK`;
producers (`worker.enqueue`) send by that constant and never import the task module.
"""

from __future__ import annotations

from celery import Celery

from jobs.settings import Settings, get_settings

QUEUE = "revtune"
RUN_JOB_TASK = "revtune.run_job"


def plugin_queue(name: str) -> str:
    """The queue of the jobs whose model is the plugin ``name``: its workers consume it besides `QUEUE`."""
    return f"{QUEUE}.plugin.{name}"


def make_app(settings: Settings | None = None) -> Celery:
    """A Celery app on ``settings.broker_url`` (results are not kept: the database has them)."""
    settings = settings or get_settings()
    celery = Celery("revtune", broker=settings.broker_url, set_as_current=False)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_routes={RUN_JOB_TASK: {"queue": QUEUE}},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # A publish while the broker is down fails within seconds: the API keeps the job queued
        # and the reaper enqueues it again later, instead of hanging the request. A broker that
        # accepts connections but never answers is bounded by the socket timeouts below, and a
        # whole publish by `worker.enqueue`'s deadline (``settings.publish_timeout_s``).
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        broker_connection_timeout=settings.broker_socket_timeout_s,
        worker_hijack_root_logger=False,
    )
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Socket timeouts are Redis transport options; the embedded SQLAlchemy transport rejects them.
        celery.conf.broker_transport_options = redis_transport_options(settings)
    return celery


def redis_transport_options(settings: Settings) -> dict:
    """kombu's Redis transport options: every socket read and connect has a deadline
    (``settings.broker_socket_timeout_s``; without one a frozen Redis, which keeps its sockets open,
    holds a publish or a ping forever). It stays above kombu's 1 s BRPOP, which a worker waits on."""
    timeout = settings.broker_socket_timeout_s
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout, "max_retries": 2}


_apps: dict[str, Celery] = {}


def app_for(settings: Settings) -> Celery:
    """The process's app for ``settings.broker_url`` (one connection pool per broker)."""
    if settings.broker_url not in _apps:
        _apps[settings.broker_url] = make_app(settings)
    return _apps[settings.broker_url]


app = app_for(get_settings())
