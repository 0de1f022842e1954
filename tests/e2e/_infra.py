"""A Redis database for the end-to-end tests (PostgreSQL comes from tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

REDIS_BASE = os.environ.get("REVTUNE_TEST_REDIS", "redis://127.0.0.1:6379")
# tests/conftest.py reserves 13 and 14 for these tests (the worker tests use no broker). Each session
# leases one, so a second session on the same machine runs beside the first instead of flushing its
# queue and taking its messages.
REDIS_DBS_E2E = (13, 14)
_LEASE_KEY = "revtune-e2e-lease"
_LEASE_S = 900


@contextlib.contextmanager
def fresh_redis(wait_s: float = 300) -> Iterator[str]:
    """An emptied Redis database that no other test session uses until this one releases it."""
    token = uuid.uuid4().hex
    clients = {
        db: redis.Redis.from_url(f"{REDIS_BASE}/{db}", socket_connect_timeout=3) for db in REDIS_DBS_E2E
    }
    try:
        clients[REDIS_DBS_E2E[0]].ping()
    except redis.RedisError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_BASE} is required under CI=true but unavailable: {e}")
        pytest.skip(f"Redis at {REDIS_BASE} unavailable: {e}")
    deadline = time.monotonic() + wait_s
    db = None
    while db is None:
        db = next((d for d, c in clients.items() if c.set(_LEASE_KEY, token, nx=True, ex=_LEASE_S)), None)
        if db is None:
            assert time.monotonic() < deadline, (
                f"Redis databases {REDIS_DBS_E2E} stayed leased by other sessions"
            )
            time.sleep(1)
    client = clients[db]
    for key in client.scan_iter():
        if key != _LEASE_KEY.encode():
            client.delete(key)
    try:
        yield f"{REDIS_BASE}/{db}"
    finally:
        client.flushdb()
        for c in clients.values():
            c.close()
