"""Send a job to the workers: only its id travels; the database holds everything else.

Call `enqueue_job` after the transaction that created (or re-queued) the job has committed. It
raises `EnqueueError` when the broker cannot be reached or does not take the message within
``settings.publish_timeout_s``; the job is still ``queued`` in the database, so nothing is lost:
the reaper enqueues queued jobs nobody claimed.

Why a deadline on top of the socket timeouts (`worker.app.redis_transport_options`): a publish is
several broker round trips (connect, the new channel's PING, the queue binding, the LPUSH), each
retried by the publish retry policy, so a broker that accepts connections and never answers (a
frozen Redis) costs a multiple of the socket timeout, about 20 s with the old settings. The publish
runs in a daemon thread and the caller waits for it at most ``publish_timeout_s``. The thread itself
ends within the socket timeouts; at most `MAX_PUBLISHES` run at once per process, and a caller that
finds none free within its deadline fails the same way. A publish that finishes after its caller
gave up still delivers its message: the reaper may then enqueue the job a second time, which is
harmless (only one worker can claim a job).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from hypercore.families import PLUGIN_KIND
from jobs import repository
from jobs.db import session_factory
from jobs.models import Job
from jobs.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Publishes in flight at once per process; more wait (within their deadline) for a free one.
MAX_PUBLISHES = 8

_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


class EnqueueError(RuntimeError):
    """The broker did not take the message."""


def _publish_slots() -> threading.BoundedSemaphore:
    """This process's publish slots (a forked child gets its own: its parent's threads are gone)."""
    with _slots_lock:
        return _slots.setdefault(os.getpid(), threading.BoundedSemaphore(MAX_PUBLISHES))


def job_queue(job_id: str, settings: Settings) -> str:
    """The queue for the job: `worker.app.QUEUE`, or, for a model plugin that a live worker offers,
    that plugin's queue (only its workers consume it). A plugin no live worker offers any more goes to
    `QUEUE`, where any worker claims the job and fails it, saying the plugin is gone, rather than
    leave it in a queue nobody reads."""
    from worker.app import QUEUE, plugin_queue

    with session_factory(settings)() as session:
        spec = session.scalar(select(Job.spec).where(Job.id == job_id))
        model = (spec or {}).get("model") or {}
        if model.get("kind") != PLUGIN_KIND:
            return QUEUE
        offered = repository.offered_plugin(
            session, model.get("name", ""), live_within_s=settings.plugin_live_s
        )
    return QUEUE if offered is None else plugin_queue(offered.name)


def enqueue_job(job_id: str, settings: Settings | None = None) -> None:
    """Publish ``run_job(job_id)`` to the job's queue (`job_queue`), within ``settings.publish_timeout_s``."""
    from worker.app import QUEUE, RUN_JOB_TASK, app_for

    settings = settings or get_settings()
    try:
        queue = job_queue(job_id, settings)
    except DBAPIError as e:
        # A worker that takes a plugin job it lacks sends it on to the plugin's queue (`worker.runner`).
        log.warning("could not read job %s's model (%s): sending it to %s", job_id, e.orig, QUEUE)
        queue = QUEUE
    celery = app_for(settings)
    timeout_s = settings.publish_timeout_s
    deadline = time.monotonic() + timeout_s
    slots = _publish_slots()
    if not slots.acquire(timeout=timeout_s):
        raise EnqueueError(
            f"could not enqueue job {job_id}: {MAX_PUBLISHES} publishes are still waiting on the broker"
        )
    done = threading.Event()
    failure: list[BaseException] = []

    def publish() -> None:
        try:
            celery.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)
        except Exception as e:  # kombu's connection errors have no common base worth naming
            failure.append(e)
        finally:
            slots.release()
            done.set()

    threading.Thread(target=publish, name=f"revtune-publish-{job_id}", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise EnqueueError(
            f"could not enqueue job {job_id}: the broker did not answer within {timeout_s:g} s"
        )
    if failure:
        raise EnqueueError(f"could not enqueue job {job_id} on the broker: {failure[0]}") from failure[0]
