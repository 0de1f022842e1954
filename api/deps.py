"""Request dependencies: settings, a database session, the caller's tenant, the POST rate limit.

Routes declare them through the ``Annotated`` aliases (`SettingsDep`, `SessionDep`, `TenantDep`,
`RateLimited`) and stay a few lines long. The session is the route's unit of work: the route
commits; anything it does not commit is rolled back when the route returns, before the response is
sent (see `get_session`).

Authentication (``REVTUNE_AUTH=on``): ``Authorization: Bearer rt_<key_id>_<secret>`` or
``X-API-Key: rt_...``. argon2 makes a verification cost tens of milliseconds on purpose, so a key
that verified is remembered in-process (by a SHA-256 of the key, never the key) for
``auth_cache_s``; revocation still takes effect at once, because every request re-reads the key's
row (a primary-key lookup) and refuses a revoked one. Keys that fail verification are counted per
client address: past ``auth_failure_limit`` in a minute the address gets 429 without a verification,
so guessing keys (or just sending garbage) cannot make the API burn a core on argon2. Behind a proxy,
run uvicorn with ``--proxy-headers`` so the address is the client's, not the proxy's. With auth off
every caller is the single tenant ``local``.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs import repository
from jobs.models import ApiKey
from jobs.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """The request's unit of work. What the route did not commit is rolled back, and the session
    closed (its connection back in the pool), before the response is sent: `SessionDep` declares
    ``scope="function"``, whereas FastAPI's default runs a yield dependency's exit after the answer
    has gone out. So a rollback that fails (a connection the database dropped) is this request's
    answer, a 503 through `api.errors`, and never an error raised after a 200, which made uvicorn
    close the connection under a client that would reuse it."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        try:
            if session.in_transaction():
                session.rollback()
        finally:
            session.close()


# The database's integer columns are 32-bit: a larger number in a query could only miss, but would
# reach the driver as an overflow (a 500); query parameters compared with one are capped with it.
MAX_DB_INT = 2**31 - 1

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


class KeyCache:
    """Verified keys: SHA-256 of the key -> (key id, tenant id, expiry on the monotonic clock)."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def get(self, key: str) -> tuple[str, str] | None:
        with self._lock:
            entry = self._entries.get(self._digest(key))
        if entry is None or entry[2] < time.monotonic():
            return None
        return entry[0], entry[1]

    def put(self, key: str, key_id: str, tenant_id: str) -> None:
        if self.ttl_s > 0:
            with self._lock:
                self._entries[self._digest(key)] = (key_id, tenant_id, time.monotonic() + self.ttl_s)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def get_tenant(
    request: Request,
    session: SessionDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """The caller's tenant id (401 without a valid, unrevoked key when auth is on)."""
    state = request.app.state
    if state.settings.auth == "off":
        if state.local_tenant is None:
            try:
                state.local_tenant = repository.get_or_create_tenant(session, repository.LOCAL_TENANT).id
                session.commit()
            except IntegrityError:
                # Two first requests raced to create it; the other one's row is there now.
                session.rollback()
                state.local_tenant = repository.get_or_create_tenant(session, repository.LOCAL_TENANT).id
        return state.local_tenant
    key = x_api_key
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _unauthorized("the Authorization header must be `Bearer <API key>`")
        key = credentials.strip()
    if not key:
        raise _unauthorized(
            "an API key is required: send `Authorization: Bearer <key>` (create one with "
            "`revtune keys create --tenant NAME`)"
        )
    cached = state.key_cache.get(key)
    if cached is not None:
        key_id, tenant_id = cached
        row = session.get(ApiKey, key_id)
        if row is not None and row.revoked_at is None:
            return tenant_id
        state.key_cache.clear()
        raise _unauthorized("this API key was revoked")
    client = request.client.host if request.client else "unknown"
    wait_s = state.auth_failures.wait(client)
    if wait_s is not None:
        raise HTTPException(
            status_code=429,
            detail=(
                f"too many failed authentications from this address: at most "
                f"{state.auth_failures.limit} per minute (REVTUNE_AUTH_FAILURE_LIMIT)"
            ),
            headers={"Retry-After": str(max(1, int(wait_s + 0.999)))},
        )
    tenant_id = repository.authenticate(session, key)
    if tenant_id is None:
        state.auth_failures.hit(client)
        raise _unauthorized("invalid or revoked API key")
    parsed = repository.parse_api_key(key)
    assert parsed is not None
    state.key_cache.put(key, parsed[0], tenant_id)
    return tenant_id


TenantDep = Annotated[str, Depends(get_tenant)]


class RateLimiter:
    """At most ``limit`` events per name (a tenant, a client address) in any ``window_s`` seconds (a
    sliding log, in-process: with several API processes each enforces its own share)."""

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit, self.window_s = limit, window_s
        self._events: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def _prune(self, name: str, now: float) -> collections.deque[float]:
        events = self._events[name]
        while events and events[0] <= now - self.window_s:
            events.popleft()
        return events

    def hit(self, name: str) -> float | None:
        """Record one event; None if allowed, else the seconds until the next one is."""
        now = time.monotonic()
        with self._lock:
            events = self._prune(name, now)
            if len(events) >= self.limit:
                return events[0] + self.window_s - now
            events.append(now)
            return None

    def wait(self, name: str) -> float | None:
        """Without recording anything: None if an event would be allowed now, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            events = self._prune(name, now)
            if not events:
                del self._events[name]  # names seen once do not pile up
                return None
            return events[0] + self.window_s - now if len(events) >= self.limit else None


def rate_limit(request: Request, tenant: TenantDep) -> str:
    wait_s = request.app.state.post_limiter.hit(tenant)
    if wait_s is not None:
        raise HTTPException(
            status_code=429,
            detail=f"too many requests: at most {request.app.state.post_limiter.limit} POSTs per minute",
            headers={"Retry-After": str(max(1, int(wait_s + 0.999)))},
        )
    return tenant


RateLimited = Annotated[str, Depends(rate_limit)]
