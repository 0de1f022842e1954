"""Request dependencies: settings, a database session, the caller's tenant, the POST rate limit.

Routes declare them through the ``Annotated`` aliases (`SettingsDep`, `SessionDep`, `TenantDep`,
`RateLimited`) and stay a few lines long. The session is the route's unit of work: the route
commits; anything it does not commit is rolled back when the route returns, before the response is
sent (see `get_session`).

Authentication (``REVTUNE_AUTH=on``): ``Authorization: Bearer rt_<key_id>_<secret>`` or
``X-API-Key: rt_...``. argon2 makes a verification cost tens of milliseconds on purpose, so a key
that verified is remembered in-process (by a SHA-256 of the key, never the key) for
``auth_cache_s`` after its last use (a key in steady use is verified once); revocation still takes
effect at once, because every request re-reads the key's row (a primary-key lookup) and refuses a
revoked one. Keys that fail verification are counted per client address, a slot reserved before
each verification (so concurrent bad keys cannot overshoot): past ``auth_failure_limit`` in a minute
the address gets 429 without a verification, so guessing keys (or just sending garbage) cannot make
the API burn a core on argon2, while valid keys from the same address (a NAT) still get in: cached
ones at once, others if their key id exists (see `_verify_key`). Behind a proxy,
run uvicorn with ``--proxy-headers`` so the address is the client's, not the proxy's. With auth off
every caller is the single tenant ``local``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator
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
    """Verified keys: SHA-256 of the key -> (key id, tenant id, expiry on the monotonic clock).
    Each hit pushes the expiry back to ``ttl_s`` from then: a key in steady use stays cached (and
    is never re-verified, nor met by the failed-key limit), one left unused for ``ttl_s`` drops out.
    ``clock`` is the monotonic clock the expiries are read on (a test's own clock, where it needs one
    that a loaded machine cannot stall)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def get(self, key: str) -> tuple[str, str] | None:
        digest, now = self._digest(key), self._clock()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[2] < now:
                del self._entries[digest]
                return None
            self._entries[digest] = (entry[0], entry[1], now + self.ttl_s)
        return entry[0], entry[1]

    def put(self, key: str, key_id: str, tenant_id: str) -> None:
        if self.ttl_s > 0:
            with self._lock:
                self._entries[self._digest(key)] = (key_id, tenant_id, self._clock() + self.ttl_s)

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
    return _verify_key(state, session, key, request.client.host if request.client else "unknown")


# How long a key past its address's failure limit waits for a verification of the same key id that
# is already under way (the first of a client's concurrent requests): about one argon2 verification.
PROBE_PATIENCE_S = 2.0


def _verify_key(state, session: Session, key: str, client: str) -> str:
    """The failed-key limit around one verification of an uncached key: its tenant id, or 401, or 429.

    ``state.auth_failures`` counts failed verifications per client address. A slot is reserved
    *before* verifying (so concurrent bad keys cannot overshoot the limit: the limit is exactly the
    verifications an address can cost in a window) and given back if the key verifies; a key that
    verifies never counts against its address.

    Past the limit an address must not lock out the valid keys of everyone behind it (a proxy, a
    NAT), yet refusing must stay free of argon2 work. So past the limit a key is verified only if
    its key id (the public part, `parse_api_key`) names an existing, unrevoked key (a primary-key
    lookup), and only once per key id, address and window: a failed verification of that key id
    from this address (within the limit or past it) refuses the key id from there for the rest of
    the window, and concurrent tries of one key id wait for the one under way (the legitimate
    client's parallel first requests then find the key cached). A garbage or unknown key past the
    limit is 429 without argon2 work. A verification past the limit that fails is counted too
    (keeping the address limited) and answered 429 as well. Bound: an address costs at most
    ``limit`` plus one per existing key id verifications a window.

    The price: a valid, uncached key whose key id was attacked from the same address in the window
    gets 429 until that failure is a window old (once cached, as a key in use is, it is accepted
    whatever the limiter says); a key that verified from the address clears its key id's failures
    there. And past the limit an existing key id's 429 comes one verification later than an unknown
    one's: a limited address can learn which key ids exist (not secrets: ``revtune keys list``
    shows them; 64 random bits, so not to be enumerated), never anything about a secret.
    """
    failures: RateLimiter = state.auth_failures
    parsed = repository.parse_api_key(key)
    key_id = parsed[0] if parsed else None
    slot = failures.reserve(client)
    past_limit = not isinstance(slot, Reservation)
    if past_limit:
        address_wait_s = slot
        row = session.get(ApiKey, key_id) if key_id else None
        if row is None or row.revoked_at is not None:
            raise _too_many_failures(failures.limit, address_wait_s)
        slot = failures.reserve((client, key_id), limit=1, patience_s=PROBE_PATIENCE_S)
        # A verification of this key id that we waited for may have cached this very key.
        cached = state.key_cache.get(key)
        if cached is not None:
            if isinstance(slot, Reservation):
                failures.release(slot)
            return cached[1]
        if isinstance(slot, float):
            raise _too_many_failures(failures.limit, min(address_wait_s, slot))
    try:
        tenant_id = repository.authenticate(session, key)
    except BaseException:
        failures.release(slot)  # no verdict (the database failed): nothing to count
        raise
    if tenant_id is None:
        failures.keep(slot)
        if past_limit:
            failures.add(client)
            raise _too_many_failures(failures.limit, address_wait_s)
        if key_id is not None:
            failures.add((client, key_id))
        raise _unauthorized("invalid or revoked API key")
    assert key_id is not None
    state.key_cache.put(key, key_id, tenant_id)  # before the slot goes back: waiters find it cached
    failures.release(slot)
    failures.forget((client, key_id))
    return tenant_id


def _too_many_failures(limit: int, wait_s: float) -> HTTPException:
    return HTTPException(
        status_code=429,
        detail=(
            f"too many failed authentications from this address: at most {limit} per minute "
            "(REVTUNE_AUTH_FAILURE_LIMIT); keys verified before are still accepted"
        ),
        headers={"Retry-After": str(max(1, int(wait_s + 0.999)))},
    )


TenantDep = Annotated[str, Depends(get_tenant)]


@dataclasses.dataclass(frozen=True, eq=False)
class Reservation:
    """An event `RateLimiter.reserve` counted ahead of time: `RateLimiter.keep` it if it happened,
    `RateLimiter.release` it if it did not."""

    name: Hashable
    at: float


class RateLimiter:
    """At most ``limit`` events per name (a tenant, a client address, any hashable) in any
    ``window_s`` seconds (a sliding log, in-process: with several API processes each enforces its
    own share).

    `hit` counts an event as it happens. `reserve` counts one ahead of an expensive operation whose
    outcome decides whether it was an event at all (an argon2 verification that may fail): checking
    first and counting afterwards let concurrent callers all pass the check and overshoot the limit
    together; a reservation is counted at once, then kept or given back. `add` counts an event even
    past the limit, `forget` drops a name's events. Names without events are swept once a window."""

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit, self.window_s = limit, window_s
        self._events: dict[Hashable, collections.deque[float]] = {}
        self._pending: collections.Counter[Hashable] = collections.Counter()  # reservations unsettled
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._swept_at = time.monotonic()

    def _prune(self, name: Hashable, now: float) -> collections.deque[float]:
        if now - self._swept_at >= self.window_s:
            self._swept_at = now
            for other in list(self._events):
                if other != name:
                    self._drop_if_idle(other, self._prune_one(other, now))
        return self._prune_one(name, now)

    def _prune_one(self, name: Hashable, now: float) -> collections.deque[float]:
        events = self._events.setdefault(name, collections.deque())
        while events and events[0] <= now - self.window_s:
            events.popleft()
        return events

    def _drop_if_idle(self, name: Hashable, events: collections.deque[float]) -> None:
        if not events and not self._pending[name]:
            self._events.pop(name, None)  # names seen once do not pile up

    def _wait_s(self, events: collections.deque[float], limit: int, now: float) -> float | None:
        return events[-limit] + self.window_s - now if len(events) >= limit else None

    def hit(self, name: Hashable) -> float | None:
        """Record one event; None if allowed, else the seconds until the next one is."""
        now = time.monotonic()
        with self._lock:
            events = self._prune(name, now)
            wait_s = self._wait_s(events, self.limit, now)
            if wait_s is None:
                events.append(now)
            return wait_s

    def reserve(
        self, name: Hashable, limit: int | None = None, patience_s: float = 0.0
    ) -> Reservation | float:
        """Count one event now, before knowing whether it happens (see the class docstring): a
        `Reservation`, or the seconds until one is possible. ``limit`` overrides the limiter's own
        for this name. While the name is full but holds reservations not yet settled, wait up to
        ``patience_s`` for them (one given back frees its slot)."""
        limit = self.limit if limit is None else limit
        deadline = time.monotonic() + patience_s
        with self._lock:
            while True:
                now = time.monotonic()
                events = self._prune(name, now)
                wait_s = self._wait_s(events, limit, now)
                if wait_s is None:
                    events.append(now)
                    self._pending[name] += 1
                    return Reservation(name, now)
                if not self._pending[name] or now >= deadline:
                    return wait_s
                self._settled.wait(min(deadline - now, wait_s))

    def keep(self, reservation: Reservation) -> None:
        """The reserved event happened: it stays counted (from the time it was reserved)."""
        with self._lock:
            self._settle(reservation.name)

    def release(self, reservation: Reservation) -> None:
        """The reserved event did not happen: its slot is free again."""
        with self._lock:
            events = self._events.get(reservation.name)
            if events is not None and reservation.at in events:  # (unless already out of the window)
                events.remove(reservation.at)
            self._settle(reservation.name)

    def _settle(self, name: Hashable) -> None:
        self._pending[name] -= 1
        if self._pending[name] <= 0:
            del self._pending[name]
            self._drop_if_idle(name, self._events.get(name, collections.deque()))
        self._settled.notify_all()

    def add(self, name: Hashable) -> None:
        """Count one event that happened, even past the limit (it keeps the name limited longer)."""
        now = time.monotonic()
        with self._lock:
            self._prune(name, now).append(now)

    def forget(self, name: Hashable) -> None:
        """Drop the name's events (reservations under way settle as if they had none)."""
        with self._lock:
            events = self._events.get(name)
            if events is not None:
                events.clear()
                self._drop_if_idle(name, events)
            self._settled.notify_all()


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
