"""``/healthz`` (the process answers), ``/readyz`` (database and broker reachable, schema current),
``/metrics`` (Prometheus)."""

from __future__ import annotations

import hmac
import logging

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
def readyz(request: Request) -> JSONResponse:
    """200 when the database answers with the current schema and the broker accepts a connection;
    503 naming what is not ready otherwise."""
    state = request.app.state
    checks = {"database": _database(state), "broker": state.broker_check(state.settings.broker_url)}
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, **checks})


def _database(state) -> str:
    try:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))
        return migrations.check(state.settings.database_url) or "ok"
    except Exception as e:  # any failure means "not ready"; the reason is logged, not shown
        log.warning("readiness: database check failed: %s", e)
        return "unavailable"


def broker_check(url: str) -> str:
    """``"ok"`` if a connection to the broker opens within a couple of seconds."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2, transport_options={"max_retries": 1}) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
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
