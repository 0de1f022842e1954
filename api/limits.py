"""Limits every request meets before a route sees it.

`BodyLimitMiddleware`: a cap on request bodies, enforced while they stream in (before any parsing or
spooling). ``Content-Length`` over the cap is refused at once with 413; a body without one (chunked)
is counted as it arrives and cut off at the cap. Dataset uploads get ``REVTUNE_MAX_UPLOAD_BYTES``
plus room for the multipart envelope; a library run's step (``POST /v1/jobs/{id}/steps``, its
hyperparameters as JSON numbers) `MAX_STEP_BYTES`; every other request (JSON specs) gets
`MAX_JSON_BYTES`.

`NulGuardMiddleware`: a NUL character (``%00``) in the path or the query string. No id, name or
file of ours holds one, PostgreSQL refuses to compare against one and the file system refuses
to open one, so it would reach a driver as a 500: the path answers 404 (nothing is there), the
query 422 naming the parameter.

`CrossSiteGuardMiddleware` (installed with auth off only): a web page can make a browser send a
"simple" cross-site POST (a form, text/plain) without a CORS preflight. With API keys a browser
has nothing to attach, but with auth off (the local default) such a POST would cancel a job or
upload a dataset. So with auth off a POST or DELETE whose ``Origin`` is neither this server nor a
``REVTUNE_CORS_ORIGINS`` entry is refused (403); clients that send no ``Origin`` (scripts, the CLI,
the Python client) are not affected, and the dashboard is same-origin.

A page can also rebind its own domain's DNS to 127.0.0.1 ("DNS rebinding"): its requests are then
same-origin to the browser and would pass the check above, reads included. So with auth off the
``Host`` header must also name this machine: ``localhost``, ``127.0.0.1``, ``::1`` or a
``REVTUNE_ALLOWED_HOSTS`` entry, any port; anything else gets 400. (Auth off is only allowed on a
loopback address, so a legitimate client never sends another name.) The header is parsed strictly
(`parse_host`): exactly one ``Host`` header, ``hostname[:port]`` with the hostname a DNS name, an
IPv4 address or a bracketed IPv6 address and the port digits. A lenient parse let
``evil.example@localhost`` pass as ``localhost``, and a second Host header or an empty one through
unchecked.
"""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import parse_qsl, urlsplit

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_JSON_BYTES = 1024 * 1024
MAX_STEP_BYTES = 32 * 1024 * 1024  # about 1.5 M hyperparameter values written as JSON numbers
_STEP_PATH = re.compile(r"/v1/jobs/[^/]+/steps/?")
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
        if scope["method"] == "POST" and _STEP_PATH.fullmatch(scope["path"]):
            return MAX_STEP_BYTES
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
    await _json_answer(send, 413, {"detail": f"the request body is larger than the limit of {limit} bytes"})


class NulGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if "\x00" in scope["path"]:
                await _json_answer(send, 404, {"detail": "no such resource: the path holds a NUL character"})
                return
            query = scope.get("query_string", b"").decode("latin-1")
            if "%00" in query or "\x00" in query:
                names = sorted({k for k, v in parse_qsl(query, keep_blank_values=True) if "\x00" in k + v})
                detail = [
                    {"loc": ["query", name], "msg": "may not contain a NUL character"}
                    for name in names or ["?"]
                ]
                await _json_answer(send, 422, {"detail": detail})
                return
        await self.app(scope, receive, send)


_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(
    rf"(?:(?P<name>{_DNS_LABEL}(?:\.{_DNS_LABEL})*)|\[(?P<ipv6>[0-9a-f:.]+)\])(?::(?P<port>[0-9]{{1,5}}))?",
    re.ASCII | re.IGNORECASE,
)


def parse_host(value: str) -> str | None:
    """The hostname of a ``Host`` header value (``hostname[:port]``), lower-case, an IPv6 address
    without brackets and compressed (``[0:0::1]`` -> ``::1``); None unless the value is exactly a DNS
    name (at most 253 characters), an IPv4 address or a bracketed IPv6 address (no zone), optionally
    with a port of digits up to 65535. No user info, path, list or space, and never empty."""
    match = _HOST.fullmatch(value.strip(" \t"))
    if match is None or (match["port"] is not None and int(match["port"]) > 65535):
        return None
    if match["ipv6"] is not None:
        try:
            return ipaddress.IPv6Address(match["ipv6"]).compressed
        except ValueError:
            return None
    name = match["name"].lower()
    return name if len(name) <= 253 else None


def _normalised_host(entry: str) -> str:
    """An allowed-host entry (a name, an IPv4 or IPv6 address, brackets or not) as `parse_host`
    returns a header's hostname."""
    name = entry.strip().strip("[]").lower()
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name


class CrossSiteGuardMiddleware:
    def __init__(self, app: ASGIApp, allowed_origins: list[str], allowed_hosts: list[str] = ()) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/").lower() for origin in allowed_origins}
        self.hosts = {_normalised_host(h) for h in (*LOOPBACK_HOSTS, *allowed_hosts)}

    def _host_problem(self, scope: Scope) -> str | None:
        """Why the request's Host is refused (None: it names this machine)."""
        hosts = [value for name, value in scope["headers"] if name.lower() == b"host"]
        if len(hosts) != 1:
            return (
                f"exactly one Host header is required (got {len(hosts)}): this server runs with auth "
                "off and checks the Host of every request"
            )
        host = hosts[0].decode("latin-1")
        hostname = parse_host(host)
        if hostname is None:
            return f"malformed Host header {host!r}: expected hostname[:port]"
        if hostname not in self.hosts:
            return (
                f"host {host.strip()!r} refused: this server runs with auth off and answers only to "
                "localhost, 127.0.0.1 and ::1; list other names in REVTUNE_ALLOWED_HOSTS"
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._host_problem(scope)
            if problem is not None:
                await _json_answer(send, 400, {"detail": problem})
                return
        if scope["type"] == "http" and scope["method"] in _UNSAFE_METHODS:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1").strip().rstrip("/").lower()
            host = headers.get(b"host", b"").decode("latin-1").strip().lower()
            if origin and origin not in self.allowed and urlsplit(origin).netloc != host:
                detail = (
                    f"cross-site {scope['method']} from {origin} refused: this server runs with auth off; "
                    "list the origin in REVTUNE_CORS_ORIGINS to allow it"
                )
                await _json_answer(send, 403, {"detail": detail})
                return
        await self.app(scope, receive, send)


async def _json_answer(send: Send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
