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
from api import dashboard, errors, uploads
from api.deps import KeyCache, RateLimiter
from api.limits import BodyLimitMiddleware, CrossSiteGuardMiddleware, NulGuardMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.routes import datasets, export, external, health, hyperparameters, jobs, models, steps, templates
from api.routes.examples import router as examples_router
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
        try:  # what an API killed mid-upload left (`api.uploads.STALE_UPLOAD_S` says which files)
            uploads.remove_stale_uploads(settings.datasets_dir)
        except OSError as e:
            log.warning("could not remove stale uploads from %s: %s", settings.datasets_dir, e)
        yield

    app = FastAPI(
        title="revtune",
        version="1",
        summary="Tune thousands of hyperparameters by reversing training (SGD with momentum, Adam) exactly",
        lifespan=lifespan,
        # /docs is api.dashboard's, served from the package (FastAPI's loads a CDN); ReDoc has no such copy
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.sessions = session_factory(settings)
    app.state.enqueue = enqueue
    app.state.broker_check = broker_check or health.broker_check
    app.state.key_cache = KeyCache(settings.auth_cache_s)
    app.state.post_limiter = RateLimiter(settings.post_rate_limit)
    app.state.auth_failures = RateLimiter(settings.auth_failure_limit)
    app.state.local_tenant = None
    app.state.metrics = Metrics()

    app.openapi = lambda: _openapi(app)
    errors.install(app)
    for module in (jobs, external, steps, hyperparameters, datasets, templates, models, health, dashboard):
        app.include_router(module.router)
    app.include_router(export.router)  # GET /v1/jobs/{id}/export, beside the hyperparameters' reads
    app.include_router(examples_router)  # GET /v1/jobs/{id}/training-examples: what example_weight's rows are

    # Outermost last: the body cap sees bytes before anything parses them.
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
        )
    if settings.auth == "off":
        app.add_middleware(
            CrossSiteGuardMiddleware,
            allowed_origins=settings.cors_origins,
            allowed_hosts=settings.allowed_hosts,
        )
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(NulGuardMiddleware)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus `JobSpec` in the components: the job body is validated by hand (the
    limits come from the settings), so FastAPI does not know its model. Every error answer an
    operation can give is documented with the one error body this API sends (`api.errors`), in place
    of FastAPI's default 422 model (which has a ``type`` our answers leave out)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(spec.pop("$defs", {}))
        components["JobSpec"] = spec
        body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
        body["schema"] = {"$ref": "#/components/schemas/JobSpec"}
        _document_errors(schema)
        app.openapi_schema = schema
    return app.openapi_schema


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["loc", "msg"],
                        "properties": {
                            "loc": {
                                "type": "array",
                                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                            },
                            "msg": {"type": "string"},
                        },
                    },
                },
            ]
        }
    },
}

_ERROR_MEANINGS = {
    "400": "the body is malformed: a multipart upload, or a body that is not JSON (the message says how)",
    "401": "no valid, unrevoked API key",
    "404": "no such resource (another tenant's looks the same)",
    "409": "the resource's state forbids this now",
    "413": "the request body is larger than the limit",
    "415": "the body is not sent as application/json",
    "422": "invalid input; each problem names its field",
    "429": "too many POSTs; retry after Retry-After seconds",
    "503": "the database or the broker is unavailable; retry later",
}


def _error_codes(path: str, method: str, operation: dict) -> set[str]:
    """The error statuses an operation can answer (see `api.errors`, `api.deps`, `api.limits`)."""
    if not path.startswith("/v1/"):
        return set()
    codes = {"401", "503"}
    if operation.get("parameters") or "requestBody" in operation:
        codes.add("422")
    if "{" in path:
        codes.add("404")
    if method == "post":
        codes |= {"413", "429"}
    if path in ("/v1/jobs", "/v1/jobs/external") and method == "post":
        codes |= {"409", "415"}
    if method == "post" and path.endswith(("/steps", "/heartbeat", "/finish", "/resume")):
        codes.add("409")  # a library run's writes: not running, not external, a gap (api.routes.external)
    if method == "post" and path.endswith(("/steps", "/finish", "/continue")):
        codes.add("400")  # a body FastAPI cannot read as JSON at all
    if path == "/v1/datasets" and method == "post":
        codes.add("400")
    if path.endswith(("/cancel", "/continue")) or method == "delete":
        codes.add("409")
    return codes


def _document_errors(schema: dict) -> None:
    components = schema["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    readiness = {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}}
    schema["paths"]["/readyz"]["get"]["responses"]["503"] = {
        "description": "not ready: the answer names what is unavailable",
        "content": {"application/json": {"schema": readiness}},
    }
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            for code in sorted(_error_codes(path, method, operation) | (set(responses) & {"422"})):
                responses[code] = {
                    "description": _ERROR_MEANINGS[code],
                    "content": {"application/json": {"schema": ref}},
                }


def check_schema(settings: Settings) -> None:
    """Raise `SchemaOutOfDate` (the message says what to run) unless the schema is current."""
    try:
        problem = migrations.check(settings.database_url)
    except DBAPIError as e:
        log.warning("database unreachable at start-up (%s); /readyz answers 503 until it is back", e.orig)
        return
    if problem is not None:
        raise SchemaOutOfDate(problem)
