"""A cap on request bodies, enforced while they stream in (before any parsing or spooling).

``Content-Length`` over the cap is refused at once with 413; a body without one (chunked) is
counted as it arrives and cut off at the cap. Dataset uploads get ``REVTUNE_MAX_UPLOAD_BYTES`` plus
room for the multipart envelope; every other request (JSON specs) gets `MAX_JSON_BYTES`.
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_JSON_BYTES = 1024 * 1024
_MULTIPART_SLACK = 64 * 1024
UPLOAD_PATH = "/v1/datasets"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body. An HTTPException, so FastAPI's body parsing (which turns
    other errors into 400) lets it through as the 413 it is."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413, detail=f"the request body is larger than the limit of {limit} bytes"
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app, self.max_upload_bytes = app, max_upload_bytes

    def _limit(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH:
            return self.max_upload_bytes + _MULTIPART_SLACK
        return MAX_JSON_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        received, started = 0, False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"the request body is larger than the limit of {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
