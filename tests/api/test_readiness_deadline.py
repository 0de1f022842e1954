"""``/readyz`` under a broker that never answers: bounded, single-flight, cached (`api.routes.health`).

A real app on SQLite with an injected broker check that blocks until the test releases it; probes
are sent concurrently through the ASGI interface, so none of them needs a thread of its own.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
from conftest import make_settings

import migrations
from api import create_app
from api.routes.health import Readiness, broker_check


class HungBroker:
    """A broker check that hangs until `release`; counts its calls, and sets `answered` as it returns."""

    def __init__(self):
        self.calls = 0
        self.released = threading.Event()
        self.answered = threading.Event()

    def __call__(self, url: str) -> str:
        self.calls += 1
        self.released.wait(30)
        self.answered.set()
        return "ok"


def _app(tmp_path, check, **settings):
    base = make_settings(f"sqlite:///{tmp_path / 'ready.db'}", tmp_path, **settings)
    migrations.upgrade(base.database_url)
    return create_app(base, enqueue=lambda job_id: None, broker_check=check)


async def _probes(app, n: int) -> list[tuple[int, float]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:

        async def probe():
            start = time.monotonic()
            reply = await client.get("/readyz")
            return reply.status_code, reply.json(), time.monotonic() - start

        return await asyncio.gather(*(probe() for _ in range(n)))


def test_forty_probes_on_a_hung_broker_get_503_within_the_deadline_from_one_check(tmp_path):
    # Each time bound sits a second or more from what a correct readiness takes and from what a
    # broken one would (the 30 s hang; a new timeout_s deadline), so a slow machine does not matter.
    timeout_s, cache_s = 3.0, 0.5
    hung = HungBroker()
    app = _app(tmp_path, hung, readiness_timeout_s=timeout_s, readiness_cache_s=cache_s)
    try:
        start = time.monotonic()
        answers = asyncio.run(_probes(app, 40))
        took = time.monotonic() - start
        assert {status for status, _, _ in answers} == {503}
        not_ready = {"ready": False, "database": "ok", "broker": "unavailable"}
        assert all(body == not_ready for _, body, _ in answers)
        assert took < timeout_s + 1.5, f"40 probes took {took:.1f} s"
        assert hung.calls == 1, "single flight: one check for the whole storm"
        # Within the cache window the answer is reused; past it, the check still running is not
        # started again and the probe answers at once (its deadline has passed), not timeout_s later.
        again = asyncio.run(_probes(app, 5))
        assert {s for s, _, _ in again} == {503} and hung.calls == 1
        time.sleep(cache_s + 0.1)
        late = asyncio.run(_probes(app, 5))
        assert {s for s, _, _ in late} == {503} and hung.calls == 1
        assert max(t for _, _, t in late) < timeout_s - 1.0, f"late probes took {[t for _, _, t in late]}"
    finally:
        hung.released.set()
    # The hung check has answered "ok"; once its run and the cached 503 are older than cache_s, a
    # probe starts a new check (the margin covers the moment between its answer and its run's end).
    assert hung.answered.wait(10), "the hung check did not return after its release"
    time.sleep(cache_s + 0.5)
    recovered = asyncio.run(_probes(app, 3))
    assert {s for s, _, _ in recovered} == {200}
    assert hung.calls == 2, "one new check after the broker came back"


def test_readiness_caches_its_answer_for_cache_s():
    calls = []

    def check() -> str:
        calls.append(1)
        return "ok"

    readiness = Readiness({"broker": check}, timeout_s=1.0, cache_s=30.0)
    for _ in range(5):
        assert asyncio.run(readiness.answer()) == {"broker": "ok"}
    assert len(calls) == 1
    uncached = Readiness({"broker": check}, timeout_s=1.0, cache_s=0.0)
    for _ in range(3):
        asyncio.run(uncached.answer())
    assert len(calls) == 4


def test_a_check_that_raises_reads_unavailable():
    def boom() -> str:
        raise RuntimeError("no")

    assert asyncio.run(Readiness({"x": boom}, timeout_s=1, cache_s=0).answer()) == {"x": "unavailable"}


def test_the_default_broker_check_gives_up_on_a_broker_that_accepts_and_never_replies():
    """A listening socket nobody reads: the TCP handshake completes (the kernel's backlog), the
    PING is never answered, like a frozen Redis."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        start = time.monotonic()
        assert broker_check(url, timeout_s=0.5) == "unavailable"
        assert time.monotonic() - start < 5.0
