"""``/healthz`` (the process answers), ``/readyz`` (database and broker reachable, schema current),
``/metrics`` (Prometheus).

``/readyz`` must answer even when what it checks does not: a broker or database that accepts
connections and never replies (a frozen Redis) would otherwise hold one thread per probe, and a
storm of probes (each orchestrator retries after its own 1 s timeout) would take every thread the
other routes need. So the route is async and never waits longer than ``readiness_timeout_s``: each
check runs in one thread of its own at a time (single flight: probes arriving meanwhile wait for the
same run, without a thread), a check past its deadline counts as ``unavailable`` (503), and the
answer is reused for ``readiness_cache_s``, so a storm costs one round trip to each server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hmac
import logging
import threading
import time
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text

import migrations
from jobs.models import Job
from jobs.states import Status

log = logging.getLogger("revtune.api")
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when the database answers with the current schema and the broker accepts a connection;
    503 naming what is not ready otherwise (also when a check does not answer in time)."""
    checks = await _readiness(request.app.state).answer()
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, **checks})


def _readiness(state) -> Readiness:
    """The app's `Readiness`, made on the first probe (on the event loop: no race)."""
    readiness = getattr(state, "readiness", None)
    if readiness is None:
        settings = state.settings

        def broker() -> str:
            check = state.broker_check
            if check is broker_check:  # the default: give it the settings' socket deadline
                check = functools.partial(broker_check, timeout_s=settings.broker_socket_timeout_s)
            return check(settings.broker_url)

        readiness = state.readiness = Readiness(
            {"database": functools.partial(_database, state), "broker": broker},
            timeout_s=settings.readiness_timeout_s,
            cache_s=settings.readiness_cache_s,
        )
    return readiness


@dataclasses.dataclass
class _Run:
    started: float
    future: concurrent.futures.Future
    finished: float | None = None
    late_logged: bool = False

    def fresh(self, now: float, cache_s: float) -> bool:
        """Still running, or finished less than ``cache_s`` ago: probes share it."""
        return self.finished is None or now - self.finished < cache_s


class Readiness:
    """Blocking checks (``name -> check() -> "ok" | reason``) made safe to call from every probe:
    at most one run of each check at a time, each run waited for at most ``timeout_s`` after it
    started (then it reads ``unavailable``), and the last answer reused for ``cache_s`` seconds.
    `answer` is a coroutine for the event loop; the checks run in daemon threads, so one that
    never returns holds one thread and never the process's exit."""

    def __init__(self, checks: dict[str, Callable[[], str]], *, timeout_s: float, cache_s: float):
        self.checks, self.timeout_s, self.cache_s = checks, timeout_s, cache_s
        self._runs: dict[str, _Run] = {}
        self._answer: tuple[float, dict[str, str]] | None = None

    async def answer(self) -> dict[str, str]:
        now = time.monotonic()
        if self._answer is not None and now - self._answer[0] < self.cache_s:
            return self._answer[1]
        runs = {}
        for name, check in self.checks.items():
            run = self._runs.get(name)
            if run is None or not run.fresh(now, self.cache_s):  # a run still going is never doubled
                run = self._runs[name] = self._start(name, check, now)
            runs[name] = run
        for run in runs.values():
            remaining = run.started + self.timeout_s - time.monotonic()
            if not run.future.done() and remaining > 0:
                # asyncio.wait, not wait_for: a timeout must not cancel the shared run.
                await asyncio.wait({asyncio.wrap_future(run.future)}, timeout=remaining)
        result = {name: self._outcome(name, run) for name, run in runs.items()}
        self._answer = (time.monotonic(), result)
        return result

    @staticmethod
    def _start(name: str, check: Callable[[], str], now: float) -> _Run:
        future: concurrent.futures.Future = concurrent.futures.Future()
        run = _Run(now, future)

        def target() -> None:
            try:
                result = check()
            except Exception as e:
                run.finished = time.monotonic()
                future.set_exception(e)
            else:
                run.finished = time.monotonic()
                future.set_result(result)

        threading.Thread(target=target, name=f"revtune-readyz-{name}", daemon=True).start()
        return run

    def _outcome(self, name: str, run: _Run) -> str:
        if not run.future.done():
            if not run.late_logged:
                run.late_logged = True
                log.warning("readiness: the %s check gave no answer within %g s", name, self.timeout_s)
            return "unavailable"
        try:
            return run.future.result()
        except Exception as e:  # a check that raises instead of answering: not ready
            log.warning("readiness: the %s check failed: %s", name, e)
            return "unavailable"


def _database(state) -> str:
    try:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))
        return migrations.check(state.settings.database_url) or "ok"
    except Exception as e:  # any failure means "not ready"; the reason is logged, not shown
        log.warning("readiness: database check failed: %s", e)
        return "unavailable"


def broker_check(url: str, timeout_s: float = 2.0) -> str:
    """``"ok"`` if a connection to the broker opens, and a Redis broker answers its PING, within
    about ``timeout_s`` per attempt (two attempts). Every Redis socket read has that deadline too:
    a frozen Redis accepts the connection and never replies."""
    from kombu import Connection

    options: dict = {"max_retries": 1}
    if url.startswith(("redis://", "rediss://")):
        options |= {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
    try:
        with Connection(url, connect_timeout=timeout_s, transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
        return "ok"
    except Exception as e:  # kombu and the transports raise many kinds; all mean "not reachable"
        log.warning("readiness: broker check failed: %s", e)
        return "unavailable"


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus metrics: request counts and latencies, and job counts by status over all tenants
    (numbers only). With ``REVTUNE_METRICS_TOKEN`` set, only a scraper sending it may read them."""
    state = request.app.state
    token = state.settings.metrics_token
    if token:
        scheme, _, sent = (request.headers.get("authorization") or "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), expected):
            return Response(
                "metrics need `Authorization: Bearer <REVTUNE_METRICS_TOKEN>`\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": "Bearer"},
            )
    try:
        with state.sessions() as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        for status in Status:
            state.metrics.jobs.labels(status=status.value).set(counts.get(status.value, 0))
    except Exception as e:  # metrics must answer even while the database is down
        log.warning("metrics: job counts unavailable: %s", e)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
