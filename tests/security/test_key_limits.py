"""The failed-key limit under load: a flood of bad keys from one address (a proxy, a NAT) costs at
most ``REVTUNE_AUTH_FAILURE_LIMIT`` argon2 verifications however concurrent it is, and does not lock
the address's other tenants out; a key in steady use stays cached instead of being re-verified.

A reproduced failure: 300 bad keys from 30 concurrent clients cost 128 verifications with a limit of
100 (the limit was checked before verifying and counted after), and then valid keys from the same
address got 429 (the limit refused any key not in the cache, and a cached key fell out of the cache
``REVTUNE_AUTH_CACHE_S`` after its first verification however often it was used)::

    CI=true .venv/bin/python -m pytest -q tests/security/test_key_limits.py -p no:cacheprovider
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from api_support import TestClient

from api import create_app
from api.deps import KeyCache
from jobs import repository
from jobs.repository import keys as repository_keys

LIMIT = 100
FLOOD = 300
THREADS = 30


@pytest.fixture
def verifications(monkeypatch) -> list[str]:
    """The hashes argon2 verified against, one entry per verification, in order. Each verification
    takes 20 ms, as a real argon2 does (tens of milliseconds), so concurrent requests overlap in it:
    with the limit checked before verifying and counted after, those in flight overshot it."""
    seen: list[str] = []
    lock = threading.Lock()
    hasher = repository_keys._hasher

    class Counting:
        def hash(self, secret):
            return hasher.hash(secret)

        def verify(self, hash_, secret):
            with lock:
                seen.append(hash_)
            time.sleep(0.02)
            return hasher.verify(hash_, secret)

    monkeypatch.setattr(repository_keys, "_hasher", Counting())
    return seen


def _app(service, **changes):
    settings = service.settings.model_copy(update={"auth_failure_limit": LIMIT, **changes})
    return create_app(settings, enqueue=lambda job_id: None)


def _bad_keys(n: int) -> list[str]:
    """Keys no tenant has: unknown key ids with secrets of the right shape, and malformed ones."""
    unknown = [f"rt_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}" for _ in range(n - n // 3)]
    return unknown + [f"garbage-{i}" for i in range(n // 3)]


def _get_all(client: TestClient, keys: list[str]) -> list[int]:
    """GET /v1/jobs once per key, ``THREADS`` at a time, all from the one client address."""

    def get(key: str) -> int:
        return client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(get, keys))


def _new_key(service, tenant: str) -> str:
    with service.sessions() as s:
        key = repository.create_api_key(s, tenant)[1]
        s.commit()
    return key


def test_concurrent_bad_keys_cost_exactly_the_limit_in_verifications(service, verifications):
    with TestClient(_app(service)) as client:
        codes = _get_all(client, _bad_keys(FLOOD))
        assert len(verifications) == LIMIT, "a slot is reserved before verifying: no overshoot"
        assert sorted(codes) == [401] * LIMIT + [429] * (FLOOD - LIMIT)
        verifications.clear()
        for key in _bad_keys(6):
            refused = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
            assert refused.status_code == 429 and "REVTUNE_AUTH_FAILURE_LIMIT" in refused.json()["detail"]
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert verifications == [], "an unknown key past the limit is refused without argon2 work"


def test_valid_keys_from_a_limited_address_are_accepted_cached_and_fresh(service, verifications):
    app = _app(service)
    carol = _new_key(service, "carol")
    with (
        TestClient(app) as client,
        TestClient(app, headers={"Authorization": f"Bearer {service.keys['alice']}"}) as alice,
        TestClient(app, headers={"X-API-Key": service.keys["bob"]}) as bob,
    ):
        assert alice.get("/v1/jobs").status_code == 200  # verified and cached before the flood
        _get_all(client, _bad_keys(FLOOD))
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer nonsense"}).status_code == 429
        verifications.clear()
        assert alice.get("/v1/jobs").status_code == 200, "a cached key is accepted"
        assert verifications == [], "from the cache"
        assert bob.get("/v1/jobs").status_code == 200, "a fresh valid key is verified and accepted"
        assert len(verifications) == 1
        assert bob.get("/v1/jobs").status_code == 200 and len(verifications) == 1, "and cached"
        # concurrent first uses of one valid key: all accepted, one verification (the rest wait for it)
        assert _get_all(client, [carol] * THREADS) == [200] * THREADS
        assert len(verifications) == 2
        another = _new_key(service, "alice")
        assert client.get("/v1/jobs", headers={"X-API-Key": another}).status_code == 200
        assert len(verifications) == 3


def test_past_the_limit_a_real_key_id_costs_one_verification_however_many_tries(service, verifications):
    with TestClient(_app(service)) as client:
        _get_all(client, _bad_keys(FLOOD))
        verifications.clear()
        key_id, secret = repository.parse_api_key(service.keys["bob"])
        wrong = [f"rt_{key_id}_{secrets.token_urlsafe(32)}" for _ in range(THREADS)]
        assert _get_all(client, wrong) == [429] * THREADS
        assert len(verifications) == 1, "one failure marks the key id: no more verifications for it"
        assert client.get("/v1/jobs", headers={"X-API-Key": wrong[0]}).status_code == 429
        with service.sessions() as s:
            revoked_id, revoked = repository.create_api_key(s, "bob")
            repository.revoke_api_key(s, revoked_id)
            s.commit()
        assert client.get("/v1/jobs", headers={"X-API-Key": revoked}).status_code == 429
        assert len(verifications) == 1, "a revoked key id past the limit costs no verification"
        fresh = _new_key(service, "carol")
        assert client.get("/v1/jobs", headers={"X-API-Key": fresh}).status_code == 200
        assert len(verifications) == 2


def test_a_key_in_steady_use_stays_cached_past_its_first_expiry(service, verifications):
    """On the cache's own clock, moved by hand: on wall time a loaded CI machine stalled long enough
    between two uses for the entry to expire honestly, and the test failed with the cache right."""
    ttl_s = 60.0
    now = [1_000.0]
    app = _app(service, auth_cache_s=ttl_s, auth_failure_limit=3)
    app.state.key_cache = KeyCache(ttl_s, clock=lambda: now[0])
    with (
        TestClient(app) as client,
        TestClient(app, headers={"Authorization": f"Bearer {service.keys['alice']}"}) as alice,
    ):
        assert alice.get("/v1/jobs").status_code == 200
        assert len(verifications) == 1
        # the address is past its limit: had the key fallen out of the cache, it would need the limiter
        assert [client.get("/v1/jobs", headers={"X-API-Key": k}).status_code for k in _bad_keys(4)] == [
            401,
            401,
            401,
            429,
        ]
        verifications.clear()
        codes = []
        for _ in range(6):  # three lifetimes of the entry, a use every half lifetime
            now[0] += ttl_s / 2
            codes.append(alice.get("/v1/jobs").status_code)
        assert codes == [200] * 6
        assert verifications == [], "each use refreshed the entry: never re-verified"
        now[0] += ttl_s * 1.5  # unused for longer than its lifetime: it drops out
        assert alice.get("/v1/jobs").status_code == 200, "a valid key from a limited address is verified"
        assert len(verifications) == 1, "re-verified once, after it dropped out"
        assert alice.get("/v1/jobs").status_code == 200 and len(verifications) == 1, "and cached again"
