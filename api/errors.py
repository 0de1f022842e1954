"""The one table from errors to HTTP answers; every error body is ``{"detail": str | [{"loc", "msg"}]}``.

=====================================================  ======================================
error                                                  answer
=====================================================  ======================================
`jobs.errors.NotFound` (also another tenant's ids)     404
`jobs.errors.Conflict` (incl. illegal transitions)     409
`jobs.spec.SpecError`, `jobs.errors.InvalidInput`,     422, each problem with the field's
FastAPI's request validation                           ``loc`` and a ``msg``
the database unreachable (``OperationalError``, a      503, "retry later"
dropped connection, pool timeout)
anything else                                          500, logged with a reference; the
                                                       body never shows internals
=====================================================  ======================================

An unexpected error becomes its 500 inside the app (`AnswerUnexpectedErrors`), not in Starlette's
outermost error middleware, which sends the 500 and then re-raises to the server: uvicorn then
closes the connection, and a pooling client's next, unrelated request on it fails.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.errors import Conflict, InvalidInput, NotFound
from jobs.spec import SpecError

log = logging.getLogger("revtune.api")


def _problems(errors) -> list[dict]:
    # Only loc and msg: echoing the offending input could reflect megabytes (or secrets) back.
    return [{"loc": list(e["loc"]), "msg": e["msg"]} for e in errors]


def _unavailable(what: str) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"detail": f"{what} is unavailable; retry in a few seconds"},
        headers={"Retry-After": "5"},
    )


class AnswerUnexpectedErrors:
    """Answer an error no handler took with the 500 of `_internal`, and end the request there, so
    that the connection stays usable. An error after the answer has started is re-raised (the
    server must then drop the half-sent answer)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            await _internal(Request(scope), exc)(scope, receive, send)


def install(app: FastAPI) -> None:
    """The handlers of the table above; call before adding other middleware (this adds the
    innermost one, `AnswerUnexpectedErrors`)."""
    app.add_middleware(AnswerUnexpectedErrors)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(SpecError)
    async def bad_spec(request: Request, exc: SpecError) -> JSONResponse:
        body = [{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in exc.errors]
        return JSONResponse(status_code=422, content={"detail": body})

    @app.exception_handler(InvalidInput)
    async def invalid(request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [{"loc": exc.loc, "msg": exc.msg}]})

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _problems(exc.errors())})

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc.orig)
            return _unavailable("the database")
        return _internal(request, exc)

    @app.exception_handler(PoolTimeout)
    async def pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free for %s %s", request.method, request.url.path)
        return _unavailable("the database")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return _internal(request, exc)


def _internal(request: Request, exc: Exception) -> JSONResponse:
    reference = uuid.uuid4().hex[:12]
    log.error("unhandled error %s in %s %s", reference, request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        status_code=500,
        content={"detail": f"internal error (reference {reference}); the server log has the details"},
    )
