"""The FastAPI application factory.

``uvicorn api:create_app --factory`` builds it from the ``REVTUNE_*`` environment. At start-up it
checks the database schema: an old one stops the server with the command that fixes it (``revtune
db upgrade``); an unreachable database only logs (``/readyz`` answers 503 until it is back).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from sqlalchemy.exc import DBAPIError

import migrations
from api import dashboard, errors
from api.deps import KeyCache, RateLimiter
from api.limits import BodyLimitMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.routes import datasets, health, hyperparameters, jobs, steps, templates
from jobs.db import session_factory
from jobs.settings import Settings, get_settings
from jobs.spec import JobSpec

log = logging.getLogger("revtune.api")


class SchemaOutOfDate(RuntimeError):
    """The database schema is not the one this revtune expects."""


def create_app(
    settings: Settings | None = None,
    enqueue: Callable[[str], None] | None = None,
    broker_check: Callable[[str], str] | None = None,
) -> FastAPI:
    """The API. ``enqueue(job_id)`` sends a committed job to the workers (default:
    `worker.enqueue.enqueue_job` on ``settings.broker_url``); ``broker_check(url) -> "ok" | reason``
    is what ``/readyz`` asks about the broker. Tests inject both."""
    settings = settings or get_settings()
    if enqueue is None:
        from worker.enqueue import enqueue_job

        def enqueue(job_id: str) -> None:
            enqueue_job(job_id, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        check_schema(settings)
        yield

    app = FastAPI(
        title="revtune",
        version="1",
        summary="Tune thousands of hyperparameters by exactly reversing SGD with momentum",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = session_factory(settings)
    app.state.enqueue = enqueue
    app.state.broker_check = broker_check or health.broker_check
    app.state.key_cache = KeyCache(settings.auth_cache_s)
    app.state.post_limiter = RateLimiter(settings.post_rate_limit)
    app.state.local_tenant = None
    app.state.metrics = Metrics()

    app.openapi = lambda: _openapi(app)
    errors.install(app)
    for module in (jobs, steps, hyperparameters, datasets, templates, health, dashboard):
        app.include_router(module.router)

    # Outermost last: the body cap sees bytes before anything parses them.
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
        )
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus `JobSpec` in the components: the job body is validated by hand (the
    limits come from the settings), so FastAPI does not know its model."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(spec.pop("$defs", {}))
        components["JobSpec"] = spec
        body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
        body["schema"] = {"$ref": "#/components/schemas/JobSpec"}
        app.openapi_schema = schema
    return app.openapi_schema


def check_schema(settings: Settings) -> None:
    """Raise `SchemaOutOfDate` (the message says what to run) unless the schema is current."""
    try:
        problem = migrations.check(settings.database_url)
    except DBAPIError as e:
        log.warning("database unreachable at start-up (%s); /readyz answers 503 until it is back", e.orig)
        return
    if problem is not None:
        raise SchemaOutOfDate(problem)
