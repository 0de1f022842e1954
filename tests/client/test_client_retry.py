"""`revtune.Client` against servers that misbehave on purpose: a real threaded HTTP server on a free
port that drops a kept-alive connection once (closed, or reset with an RST, after reading the
request and before any answer), one that does not answer, and one that answers 503 with
``Retry-After`` before it answers 200.

uvicorn closes the connection after a 500 (and after any error raised once a response has
started), so a pooling client's next, unrelated request can go out on a socket the server has
already closed: the case the first tests rebuild deterministically.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from revtune import Client
from revtune.client import NotFound, Unavailable

JOB = {
    "id": "j1",
    "name": "tiny",
    "status": "succeeded",
    "spec": {},
    "meta_iter": 2,
    "meta_iterations": 2,
    "best": None,
    "error": None,
    "created_at": "2026-01-01T00:00:00Z",
    "started_at": None,
    "finished_at": None,
}


class FakeApi(ThreadingHTTPServer):
    """A tiny stand-in for the API. ``plan`` holds what to do with each coming request, in order
    ("ok", "close": read it and close the connection without an answer, "reset": the same with an
    RST, "hang": no answer until the server stops, then the connection is closed, or an ``int``
    status with ``Retry-After: retry_after``); once it is used up every request is "ok". ``seen``
    records (method, path, connection number, Idempotency-Key, monotonic time) of every request
    received."""

    daemon_threads = True

    def __init__(self, plan: list | None = None, retry_after: str | None = "1"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.plan = list(plan or [])
        self.retry_after = retry_after
        self.stopping = threading.Event()  # set as the server stops: releases the "hang" requests
        self.seen: list[tuple[str, str, int, str | None, float]] = []
        self.connections = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_action(self, method: str, path: str, connection: int, key: str | None) -> object:
        with self.lock:
            self.seen.append((method, path, connection, key, time.monotonic()))
            return self.plan.pop(0) if self.plan else "ok"

    def paths(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path, *_ in self.seen]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn
    server: FakeApi

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.number = self.server.connections

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        action = self.server.next_action(
            self.command, self.path, self.number, self.headers.get("Idempotency-Key")
        )
        if action in ("close", "reset"):
            self.close_connection = True
            if action == "reset":  # no FIN first: close at once with linger 0, which sends an RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.connection.close()
            return
        if action == "hang":  # however slow the client's machine, its timeout comes first
            self.server.stopping.wait(timeout=600)
            self.close_connection = True
            return
        if isinstance(action, int):
            headers = {"Retry-After": self.server.retry_after} if self.server.retry_after else {}
            self._send(action, {"detail": "the database is unavailable; retry in a few seconds"}, headers)
        elif self.command == "DELETE":
            self._send(204, None)
        elif self.path.split("?")[0].endswith("/steps"):
            self._send(200, {"items": [], "next_after": None})
        elif self.path.endswith("/cancel"):
            self._send(202, JOB | {"status": "cancelled"})
        elif self.path == "/v1/jobs/missing":
            self._send(404, {"detail": "no such job"})
        else:
            self._send(201 if self.command == "POST" else 200, JOB)

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(**kwargs) -> Iterator[FakeApi]:
    server = FakeApi(**kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def fake():
    """``fake(plan=..., ...)`` starts a `FakeApi`; all are stopped at the end of the test."""
    started: list[Iterator[FakeApi]] = []

    def start(**kwargs) -> FakeApi:
        gen = serve(**kwargs)
        started.append(gen)
        return next(gen)

    yield start
    for gen in started:
        next(gen, None)


# ---- 1b: a connection the server closed or reset before answering -----------------------------


@pytest.mark.parametrize("drop", ["close", "reset"])
def test_an_idempotent_request_on_a_dropped_kept_alive_connection_is_retried_once(fake, drop):
    server = fake(plan=["ok", drop])
    with Client(server.url, timeout=5) as client:
        assert client.get("j1")["id"] == "j1"  # opens the connection the pool keeps
        assert client.get("j1")["id"] == "j1"  # sent on it, dropped unanswered, sent again
        client.delete("j1")
        client.delete("j1")
    conns = [conn for _, _, conn, _, _ in server.seen]
    assert server.paths() == [("GET", "/v1/jobs/j1")] * 3 + [("DELETE", "/v1/jobs/j1")] * 2
    assert conns[:3] == [1, 1, 2], (
        "the dropped request went out on the reused connection, the retry on a new one"
    )

    server = fake(plan=["ok", drop])
    with Client(server.url, timeout=5) as client:
        client.get("j1")
        client.delete("j1")  # DELETE is idempotent too
    assert server.paths() == [("GET", "/v1/jobs/j1"), ("DELETE", "/v1/jobs/j1"), ("DELETE", "/v1/jobs/j1")]


@pytest.mark.parametrize("drop", ["close", "reset"])
def test_a_post_is_retried_only_with_an_idempotency_key(fake, drop):
    server = fake(plan=["ok", drop, "ok", drop])
    with Client(server.url, timeout=5) as client:
        client.get("j1")
        with pytest.raises(Unavailable) as raised:
            client.submit({"name": "x"})  # no key: the server may have created a job; never twice
        assert raised.value.status_code is None
        client.get("j1")
        with pytest.raises(Unavailable):
            client.cancel("j1")
        assert client.submit({"name": "x"}, idempotency_key="run-1")["id"] == "j1"
    assert server.paths() == [
        ("GET", "/v1/jobs/j1"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/j1"),
        ("POST", "/v1/jobs/j1/cancel"),
        ("POST", "/v1/jobs"),
    ]

    server = fake(plan=["ok", drop])
    with Client(server.url, timeout=5) as client:
        client.get("j1")
        assert client.submit({"name": "x"}, idempotency_key="run-1")["id"] == "j1"
    assert [(m, key) for m, _, _, key, _ in server.seen] == [
        ("GET", None),
        ("POST", "run-1"),
        ("POST", "run-1"),
    ]


def test_the_retry_happens_once_and_a_slow_answer_is_not_retried(fake):
    server = fake(plan=["ok", "close", "close"])
    with Client(server.url, timeout=5) as client:
        client.get("j1")
        with pytest.raises(Unavailable, match="cannot reach"):
            client.get("j1")
    assert server.paths() == [("GET", "/v1/jobs/j1")] * 3

    server = fake(plan=["hang"])
    with Client(server.url, timeout=0.3) as client, pytest.raises(Unavailable):
        client.get("j1")  # a timeout: the server may still be working on it
    assert server.paths() == [("GET", "/v1/jobs/j1")]


# ---- 2: wait() and 503 --------------------------------------------------------------------------


def test_wait_retries_a_503_after_retry_after_seconds(fake):
    server = fake(plan=[503, 503])
    with Client(server.url, timeout=5) as client:
        done = client.wait("j1", progress=False, poll=0.01, timeout=30)
    assert done["status"] == "succeeded"
    gets = [t for method, path, _, _, t in server.seen if path == "/v1/jobs/j1"]
    assert len(gets) == 3
    assert all(b - a >= 0.95 for a, b in zip(gets, gets[1:], strict=False)), "Retry-After: 1 was honoured"


def test_wait_retries_a_503_on_the_steps_too_and_still_raises_other_errors(fake):
    server = fake(plan=["ok", 503])  # the job, then its steps answer 503 once
    with Client(server.url, timeout=5) as client:
        assert client.wait("j1", progress=False, poll=0.01, timeout=30)["status"] == "succeeded"
        with pytest.raises(NotFound):
            client.wait("missing", progress=False, poll=0.01, timeout=30)
    assert server.paths()[:3] == [
        ("GET", "/v1/jobs/j1"),
        ("GET", "/v1/jobs/j1/steps"),
        ("GET", "/v1/jobs/j1/steps"),
    ]
    assert server.paths()[-1] == ("GET", "/v1/jobs/missing")
    assert server.paths().count(("GET", "/v1/jobs/missing")) == 1


def test_wait_gives_up_on_503_at_its_timeout_not_before(fake):
    server = fake(plan=[503] * 100)
    with Client(server.url, timeout=5) as client:
        start = time.monotonic()
        with pytest.raises(Unavailable) as raised:
            client.wait("j1", progress=False, poll=0.01, timeout=2.0)
        elapsed = time.monotonic() - start
    assert raised.value.status_code == 503
    assert 1.9 <= elapsed < 5, elapsed
    # Once a second (Retry-After: 1), not in a loop, and not past the timeout: the second request
    # goes out at least a second after the start, so after it the client sleeps only until the
    # deadline, and asks a last time (fewer on a stalled machine, never more).
    assert 2 <= len(server.seen) <= 3, server.seen

    server = fake(plan=[503], retry_after=None)  # no Retry-After: the poll interval
    with Client(server.url, timeout=5) as client:
        assert client.wait("j1", progress=False, poll=0.2, timeout=30)["status"] == "succeeded"
    gets = [t for _, path, _, _, t in server.seen if path == "/v1/jobs/j1"]
    assert len(gets) == 2 and gets[1] - gets[0] >= 0.15
