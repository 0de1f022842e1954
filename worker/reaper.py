"""The reaper: hands jobs that no worker is running back to the queue.

Two kinds of job are stranded:
- ``running`` jobs whose heartbeat is older than ``settings.heartbeat_timeout_s``: their worker was
  killed (kill -9, OOM, lost machine) after its last commit;
- ``queued`` jobs not claimed within ``settings.queued_timeout_s``: the enqueue after the commit
  failed (broker down), or the broker lost the message. Or the message is fine and the job waits
  behind others: so each re-publication of a job waits twice as long as the one before (up to
  ``settings.queued_max_backoff_s``), and a long queue gains a duplicate per job only a logarithmic
  number of times.

Each is set back to ``queued`` (a running one resumes from its last checkpoint) and enqueued
again, after the commit. The repository's ``requeue`` is conditional, so when several workers'
reapers race, one re-queues and the others see nothing to do; a duplicate message is harmless
anyway, since only one worker can claim a job. Every worker process runs the reaper in a thread
(`start_reaper`); tests call `reap` directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError

from jobs import repository
from jobs.db import session_factory
from jobs.settings import Settings, get_settings
from worker.enqueue import EnqueueError, enqueue_job

log = logging.getLogger(__name__)


def reap(
    settings: Settings | None = None,
    *,
    sessions=None,
    enqueue: Callable[[str], None] | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Re-queue the stranded jobs once; returns their ids (in the order enqueued)."""
    settings = settings or get_settings()
    sessions = sessions or session_factory(settings)
    enqueue = enqueue or (lambda job_id: enqueue_job(job_id, settings))
    now = now or datetime.now(UTC)
    with sessions() as session:
        job_ids = repository.stale_jobs(
            session,
            now=now,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            queued_timeout_s=settings.queued_timeout_s,
        )
        requeued = [
            job_id
            for job_id in job_ids
            if repository.requeue(
                session,
                job_id,
                now=now,
                heartbeat_timeout_s=settings.heartbeat_timeout_s,
                queued_timeout_s=settings.queued_timeout_s,
                max_backoff_s=settings.queued_max_backoff_s,
            )
        ]
        session.commit()
    for job_id in requeued:
        log.warning("re-queued stranded job %s", job_id)
        try:
            enqueue(job_id)
        except EnqueueError as e:
            # Still `queued` with a fresh enqueued_at: a later pass tries again.
            log.warning("%s; will retry", e)
    return requeued


class Reaper(threading.Thread):
    """Calls `reap` every ``interval_s`` seconds until `stop`; an outage is logged, never fatal."""

    def __init__(self, settings: Settings, interval_s: float):
        super().__init__(name="revtune-reaper", daemon=True)
        self.settings, self.interval_s = settings, interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        sessions = session_factory(self.settings)
        while not self._stop_event.wait(self.interval_s):
            try:
                reap(self.settings, sessions=sessions)
            except (DBAPIError, OSError) as e:
                log.warning("reaper pass failed, will retry: %s", e)
            except Exception:
                log.exception("reaper pass failed, will retry")

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def start_reaper(settings: Settings | None = None) -> Reaper:
    settings = settings or get_settings()
    reaper = Reaper(settings, settings.reaper_interval_s)
    reaper.start()
    return reaper
