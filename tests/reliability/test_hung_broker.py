"""A hung broker: redis-server frozen with SIGSTOP (it keeps its sockets open and answers nothing,
as a broker stuck in a long fork, a full disk or a dead NAT entry does) under a real API process.

The API must stay up: ``/readyz`` answers 503 within its deadline, however many probes arrive;
other routes keep their threads; a submit answers 201 with the job left ``queued`` for the reaper,
which enqueues it once the broker is back. Each freeze is undone (SIGCONT) in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis as redis_lib
from e2e._procs import wait_for

from jobs.settings import Settings
from reliability._service import Service, record, tiny_spec

pytestmark = [pytest.mark.integration]

# The API process runs with the deadlines (readiness, publish) and the readiness cache at their
# defaults, on purpose. Its broker socket timeout is raised to BROKER_SOCKET_TIMEOUT_S: without
# those deadlines a probe or a publish would then hang for 10 s or more, far from the bounds below
# (at the default 2 s it would take about as long as the deadlines themselves).
READINESS_CACHE_S = Settings.model_fields["readiness_cache_s"].default
READINESS_TIMEOUT_S = Settings.model_fields["readiness_timeout_s"].default
BROKER_SOCKET_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def service(tmp_path_factory, make_postgres_database, private_redis):
    folder = tmp_path_factory.mktemp("hung-broker")
    svc = Service(
        folder,
        make_postgres_database("revtune_hung_broker"),
        private_redis.url,
        REVTUNE_BROKER_SOCKET_TIMEOUT_S=str(BROKER_SOCKET_TIMEOUT_S),
    )
    try:
        svc.start_api()
        yield svc
    finally:
        svc.close()


@contextlib.contextmanager
def frozen(redis) -> object:
    """redis-server stopped (SIGSTOP) inside the block, continued (SIGCONT) however it ends."""
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)


def _ready_again(service: Service) -> None:
    """Wait (outside any freeze) until /readyz is 200: the previous test's cached answer is gone."""
    wait_for(lambda: _status(service, "/readyz", 5) == 200, READINESS_CACHE_S + 15, "/readyz to be 200 again")


def _status(service: Service, path: str, timeout_s: float) -> int | None:
    try:
        return httpx.get(service.url + path, timeout=timeout_s).status_code
    except httpx.HTTPError:
        return None


def _fresh(service: Service, method: str, path: str, **kwargs) -> httpx.Response:
    """One request on a new connection, as a new client makes it. The shared client's pooled
    connection sits idle across a freeze, and a server whose event loop the freeze's load delays
    may close it for keep-alive just as a request goes out on it (httpx then reports "Server
    disconnected"): a race of the test's connection pool, not an answer of the API."""
    with httpx.Client(base_url=service.url, headers=service.http.headers) as client:
        return client.request(method, path, **kwargs)


def _timed(call):
    start = time.monotonic()
    try:
        reply = call()
    except httpx.TimeoutException as e:
        reply = e
    return reply, time.monotonic() - start


def _messages_naming(redis, job_id: str) -> int:
    client = redis_lib.Redis.from_url(redis.url, socket_timeout=5)
    try:
        return sum(job_id.encode() in m for m in client.lrange("revtune", 0, -1))
    finally:
        client.close()


def test_readyz_is_503_within_its_deadline_while_the_broker_is_frozen_and_200_after(service, private_redis):
    _ready_again(service)
    with frozen(private_redis):
        time.sleep(READINESS_CACHE_S)  # the 200 cached just before the freeze may be reused until then
        reply, took = _timed(lambda: _fresh(service, "GET", "/readyz", timeout=20))
        assert not isinstance(reply, Exception), f"/readyz gave no answer within {took:.1f} s"
        assert reply.status_code == 503, reply.text
        assert reply.json() == {"ready": False, "database": "ok", "broker": "unavailable"}
        assert took < READINESS_TIMEOUT_S + 4, f"/readyz took {took:.1f} s with the broker frozen"
    thawed = time.monotonic()
    wait_for(
        lambda: _status(service, "/readyz", 5) == 200, READINESS_CACHE_S + 4, "/readyz 200 after SIGCONT"
    )
    record(
        "broker frozen",
        "redis-server SIGSTOPped; one /readyz",
        "503 naming the broker within the deadline; 200 again soon after SIGCONT",
        readyz_s=round(took, 2),
        ready_again_s=round(time.monotonic() - thawed, 2),
    )


def test_a_storm_of_readiness_probes_leaves_the_other_routes_their_threads(service, private_redis):
    _ready_again(service)
    job_id = service.submit(tiny_spec("before-the-freeze"))
    stop = threading.Event()
    first_503 = threading.Event()
    first_503_at: list[float] = []
    probes: list[tuple[float, int | None]] = []  # (sent, status or None for a client timeout)

    def probe() -> None:  # a readiness probe with a 1 s timeout, again and again, on one client
        with httpx.Client(base_url=service.url, timeout=1.0) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.get("/readyz").status_code
                except httpx.HTTPError:
                    status = None
                if status == 503 and not first_503.is_set():
                    first_503_at.append(time.monotonic())
                    first_503.set()
                probes.append((sent, status))

    with frozen(private_redis):
        stale_until = time.monotonic() + READINESS_CACHE_S  # the 200 cached before may be reused
        storm = [threading.Thread(target=probe, daemon=True) for _ in range(40)]
        try:
            for thread in storm:
                thread.start()
            # The first 503 comes once the cached 200 has expired and the new check's deadline has
            # passed; on a thread-per-probe API every probe would hold a thread (and time out)
            # until the broker socket timeout, the first 503 much later or never.
            first_503.wait(READINESS_CACHE_S + READINESS_TIMEOUT_S + 10)
            time.sleep(1.5)  # the probes go on, each thread's again and again
            reply, took = _timed(lambda: _fresh(service, "GET", f"/v1/jobs/{job_id}", timeout=30))
        finally:
            stop.set()
            for thread in storm:
                thread.join(timeout=5)
    assert not isinstance(reply, Exception), f"GET /v1/jobs/{{id}} gave no answer within {took:.1f} s"
    assert reply.status_code == 200 and reply.json()["id"] == job_id, reply.text
    assert took < 8.0, f"GET /v1/jobs/{{id}} took {took:.1f} s during the probe storm"
    expired = [status for sent, status in probes if sent > stale_until]  # past the cached 200
    assert expired and set(expired) <= {503, None}, sorted(set(expired), key=str)
    assert first_503_at, f"none of {len(expired)} probes past the cached 200 got a 503"
    later = [status for sent, status in probes if sent > min(first_503_at)]
    assert later and later.count(503) >= len(later) // 2, (
        f"{later.count(503)} of {len(later)} probes sent after the first 503 answered 503"
    )
    record(
        "broker frozen, probe storm",
        "redis-server SIGSTOPped; 40 /readyz probes in a loop (1 s client timeout)",
        "GET /v1/jobs/{id} answered at once; the probes got 503",
        get_s=round(took, 2),
        probes=len(expired),
        probes_503=expired.count(503),
    )


def test_a_submit_while_the_broker_is_frozen_is_201_and_the_reaper_enqueues_it_after(service, private_redis):
    from worker.reaper import reap

    _ready_again(service)
    with frozen(private_redis):
        reply, took = _timed(
            lambda: _fresh(service, "POST", "/v1/jobs", json=tiny_spec("during-the-freeze"), timeout=30)
        )
        assert not isinstance(reply, Exception), f"POST /v1/jobs gave no answer within {took:.1f} s"
        assert reply.status_code == 201, reply.text
        assert took < 6.0, f"POST /v1/jobs took {took:.1f} s with the broker frozen"
        job_id = reply.json()["id"]
        job, _ = _timed(lambda: _fresh(service, "GET", f"/v1/jobs/{job_id}", timeout=10))
        assert not isinstance(job, Exception) and job.json()["status"] == "queued"
    _ready_again(service)
    assert service.job(job_id)["status"] == "queued", "nobody claimed it: no worker runs here"
    # The reaper's pass (what every worker process runs), a queued-timeout later, on the thawed broker.
    settings = Settings(
        database_url=service.env["REVTUNE_DATABASE_URL"],
        broker_url=service.env["REVTUNE_BROKER_URL"],
        data_dir=service.env["REVTUNE_DATA_DIR"],
        queued_timeout_s=5,
    )
    before = _messages_naming(private_redis, job_id)
    requeued = reap(settings, now=datetime.now(UTC) + timedelta(seconds=60))
    assert job_id in requeued
    assert _messages_naming(private_redis, job_id) == before + 1, "the reaper's message is on the queue"
    assert service.job(job_id)["status"] == "queued"
    record(
        "broker frozen, submit",
        "redis-server SIGSTOPped; POST /v1/jobs",
        "201 with the job queued; enqueued by the reaper after SIGCONT",
        post_s=round(took, 2),
    )
