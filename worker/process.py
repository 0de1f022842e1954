"""One worker process: the Celery worker (solo pool) plus the reaper thread (``revtune worker``)."""

from __future__ import annotations

import logging
import os
import socket

from sqlalchemy.exc import DBAPIError

from jobs import repository
from jobs.db import session_factory
from jobs.settings import Settings, get_settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings | None = None, *, loglevel: str = "INFO") -> None:
    """Consume jobs one at a time until SIGTERM/SIGINT (warm shutdown: the running job is handed back
    after its current meta-iteration).

    The solo pool runs tasks in this process: JAX is initialised once, here, and never forked.
    Gossip and mingle are off: workers share nothing but the database, and the SQLAlchemy broker has
    no fan-out for them.

    The model plugins ``REVTUNE_MODEL_PLUGINS`` enables are loaded first (a missing one stops the
    start-up, naming it), advertised in the database for the API while the process lives (refreshed
    by every reaper pass, withdrawn at exit), and their queues (`worker.app.plugin_queue`) consumed
    besides the common one.
    """
    settings = settings or get_settings()
    from worker import tasks  # noqa: F401  (registers the task and initialises JAX before consuming)
    from worker.app import QUEUE, app, plugin_queue
    from worker.reaper import start_reaper
    from worker.runner import configure_compilation_cache, load_plugins, prepare_engine

    configure_compilation_cache(settings)
    prepare_engine()
    plugins = load_plugins(settings)
    advertiser = _Advertiser(settings, f"{socket.gethostname()}:{os.getpid()}", plugins)
    if plugins:
        advertiser.advertise()
    reaper = start_reaper(settings, on_pass=advertiser.refresh if plugins else None)
    queues = ",".join([QUEUE, *(plugin_queue(name) for name in plugins)])
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--queues={queues}",
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
        if plugins:
            advertiser.withdraw()


class _Advertiser:
    """This process's plugin advertisements (`jobs.repository.plugins`), each write one transaction."""

    def __init__(self, settings: Settings, worker_id: str, plugins: dict):
        self.sessions = session_factory(settings)
        self.worker_id = worker_id
        self.ads = [plugin.advertisement() for plugin in plugins.values()]

    def advertise(self) -> None:
        with self.sessions.begin() as session:
            repository.advertise_plugins(session, self.worker_id, self.ads)
        log.info("offering model plugins %s", ", ".join(f"{a['name']} {a['version']}" for a in self.ads))

    def refresh(self) -> None:
        with self.sessions.begin() as session:
            repository.refresh_plugins(session, self.worker_id)

    def withdraw(self) -> None:
        try:
            with self.sessions.begin() as session:
                repository.withdraw_plugins(session, self.worker_id)
        except DBAPIError as e:  # its rows stop counting once unrefreshed (Settings.plugin_live_s)
            log.warning("could not withdraw this worker's model plugins: %s", e.orig)
