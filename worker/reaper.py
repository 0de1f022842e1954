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

A running job's stale heartbeat is its worker's death: the job's ``deaths`` goes up, and the job
whose worker died ``settings.max_attempts`` times (``REVTUNE_MAX_ATTEMPTS``) ends ``failed``
instead, saying so (a job that needs more memory than a worker has would otherwise be handed to one
worker after another, each killed by the kernel). A database outage silences every worker at once:
a job whose heartbeat stopped before the end of an outage this reaper saw (a pass that failed on the
database) is re-queued without counting a death (`Reaper`).

Ages are measured by the database's clock (`jobs.models.db_now`), never this process's: a worker
whose clock runs fast must not take live jobs for dead ones.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from jobs import repository
from jobs.db import session_factory
from jobs.models import db_now
from jobs.settings import Settings, get_settings
from worker.enqueue import EnqueueError, enqueue_job

log = logging.getLogger(__name__)


def reap(
    settings: Settings | None = None,
    *,
    sessions=None,
    enqueue: Callable[[str], None] | None = None,
    now: datetime | None = None,
    deaths_after: datetime | None = None,
) -> list[str]:
    """Re-queue the stranded jobs once; returns their ids (in the order enqueued). A dead worker's
    job that reached ``settings.max_attempts`` deaths ends ``failed`` instead (not returned).

    ``now``: a fixed time instead of the database's clock (tests). ``deaths_after``: a silence that
    began before it (the end of a database outage) is not counted as a death."""
    settings = settings or get_settings()
    sessions = sessions or session_factory(settings)
    enqueue = enqueue or (lambda job_id: enqueue_job(job_id, settings))
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
                max_deaths=settings.max_attempts,
                deaths_after=deaths_after,
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


def database_time(sessions) -> datetime:
    """The database server's clock now."""
    with sessions() as session:
        return session.scalar(select(db_now()))


class Reaper(threading.Thread):
    """Calls `reap` every ``interval_s`` seconds until `stop`; an outage is logged, never fatal.

    After a pass that failed on the database, the next one that reaches it reads the database's
    time: silences that began before it (``deaths_after``) were the outage's, not deaths, since no
    worker could beat while the database was down. (A reaper started after an outage, or whose
    passes all fell outside it, cannot tell; outages shorter than ``heartbeat_timeout_s`` minus the
    heartbeat period silence no live worker for long enough to matter.)"""

    def __init__(self, settings: Settings, interval_s: float, on_pass: Callable[[], None] | None = None):
        super().__init__(name="revtune-reaper", daemon=True)
        self.settings, self.interval_s = settings, interval_s
        # Also run on every pass: the worker's refresh of its plugin advertisements (`worker.process`).
        self.on_pass = on_pass
        self._stop_event = threading.Event()
        self.outage = False  # a pass failed on the database since the last one that worked
        self.deaths_after: datetime | None = None

    def run(self) -> None:
        sessions = session_factory(self.settings)
        while not self._stop_event.wait(self.interval_s):
            self.reap_once(sessions)

    def reap_once(self, sessions) -> list[str] | None:
        """One pass; None when it failed (logged)."""
        try:
            if self.outage:
                self.deaths_after = database_time(sessions)
                self.outage = False
                log.warning(
                    "the database is back; jobs silent since before %s are not counted as deaths",
                    self.deaths_after,
                )
            if self.on_pass is not None:
                self.on_pass()
            return reap(self.settings, sessions=sessions, deaths_after=self.deaths_after)
        except (DBAPIError, OSError) as e:
            self.outage = True
            log.warning("reaper pass failed, will retry: %s", e)
        except Exception:
            log.exception("reaper pass failed, will retry")
        return None

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def start_reaper(settings: Settings | None = None, on_pass: Callable[[], None] | None = None) -> Reaper:
    settings = settings or get_settings()
    reaper = Reaper(settings, settings.reaper_interval_s, on_pass)
    reaper.start()
    return reaper
