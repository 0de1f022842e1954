"""Send a job to the workers: only its id travels; the database holds everything else.

Call `enqueue_job` after the transaction that created (or re-queued) the job has committed. It
raises `EnqueueError` when the broker cannot be reached; the job is still ``queued`` in the
database, so nothing is lost: the reaper enqueues queued jobs nobody claimed.
"""

from __future__ import annotations

from jobs.settings import Settings, get_settings


class EnqueueError(RuntimeError):
    """The broker did not take the message."""


def enqueue_job(job_id: str, settings: Settings | None = None) -> None:
    """Publish ``run_job(job_id)`` to the ``revtune`` queue."""
    from worker.app import QUEUE, RUN_JOB_TASK, app_for

    celery = app_for(settings or get_settings())
    try:
        celery.send_task(RUN_JOB_TASK, args=[job_id], queue=QUEUE)
    except Exception as e:  # kombu's connection errors have no common base worth naming
        raise EnqueueError(f"could not enqueue job {job_id} on the broker: {e}") from e
