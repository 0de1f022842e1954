"""One worker process: the Celery worker (solo pool) plus the reaper thread (``revtune worker``)."""

from __future__ import annotations

import os

from jobs.settings import Settings, get_settings


def run_worker(settings: Settings | None = None, *, loglevel: str = "INFO") -> None:
    """Consume jobs one at a time until SIGTERM/SIGINT (warm shutdown: the running job is handed back
    after its current meta-iteration).

    The solo pool runs tasks in this process: JAX is initialised once, here, and never forked.
    Gossip and mingle are off: workers share nothing but the database, and the SQLAlchemy broker has
    no fan-out for them.
    """
    settings = settings or get_settings()
    from worker import tasks  # noqa: F401  (registers the task and initialises JAX before consuming)
    from worker.app import QUEUE, app
    from worker.reaper import start_reaper
    from worker.runner import configure_compilation_cache

    configure_compilation_cache(settings)
    reaper = start_reaper(settings)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--queues={QUEUE}",
                "--without-gossip",
                "--without-mingle",
                # A unique node name per process, so `celery inspect` and `control` can tell apart
                # several workers on one host.
                f"--hostname=revtune-{os.getpid()}@%h",
                f"--loglevel={loglevel}",
            ]
        )
    finally:
        reaper.stop()
