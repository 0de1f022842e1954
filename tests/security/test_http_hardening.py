"""HTTP-level hardening of the API: where a request's unit of work ends, what a ``Host`` header may
be with auth off, and which bytes a JSON body may be.

- The database session ends (commit/rollback/close) before the response is sent, so a rollback
  that fails (a connection the database dropped) is the request's answer, a 503, and not an error
  raised after a 200 had gone out, which made uvicorn close the connection under the client.
- With auth off the DNS-rebinding guard parses ``Host`` strictly: exactly one header, ``hostname
  [:port]``. The malformed cases are sent as raw bytes to a real uvicorn process: an HTTP client
  (Starlette's TestClient included) would not send an empty Host or two of them.
- A job spec is UTF-8 JSON: UTF-16 and UTF-32 (which ``json.loads`` would guess and accept) and a
  declared ``charset`` other than UTF-8 are 415.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from api_support import TINY_SPEC, TestClient, submit
from e2e._procs import Processes, free_port, start_api
from security_support import post_raw
from sqlalchemy import text
from sqlalchemy.orm import Session

import migrations
from jobs import repository

ROOT = Path(__file__).resolve().parents[2]


# ---- 1a: the unit of work ends inside the request ------------------------------------------------


def test_the_session_is_closed_before_the_response_starts(service, monkeypatch):
    """Every outcome (200, 201, 404, 422, 500): the session's close comes before the answer."""
    events: list[str] = []
    real_close = Session.close

    def close(self: Session) -> None:
        events.append("session closed")
        real_close(self)

    monkeypatch.setattr(Session, "close", close)

    async def recording(scope, receive, send):
        async def recording_send(message):
            if message["type"] == "http.response.start":
                events.append(f"response {message['status']}")
            await send(message)

        await service.app(scope, receive, recording_send)

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    headers = {"Authorization": f"Bearer {service.keys['alice']}"}
    with TestClient(recording, headers=headers, raise_server_exceptions=False) as client:
        job = submit(client)
        for method, path, body, status in [
            ("GET", "/v1/jobs", None, 200),
            ("GET", f"/v1/jobs/{job['id']}", None, 200),
            ("POST", "/v1/jobs", TINY_SPEC, 201),
            ("POST", f"/v1/jobs/{job['id']}/cancel", None, 202),
            ("GET", "/v1/jobs/no-such-job", None, 404),
            ("POST", "/v1/jobs", {"name": "x"}, 422),
            ("GET", "/v1/datasets", None, 500),
        ]:
            if status == 500:
                monkeypatch.setattr(repository, "list_datasets", boom)
            events.clear()
            reply = client.request(method, path, json=body)
            assert reply.status_code == status, reply.text
            assert events == ["session closed", f"response {status}"], (method, path)
        # What the routes committed stayed committed.
        monkeypatch.undo()
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
        assert len(client.get("/v1/jobs").json()["items"]) == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_rollback_that_fails_on_a_dropped_connection_is_a_503_not_a_200(service, monkeypatch):
    """The route's read succeeded, then the database dropped the connection (a restart, a failover,
    an idle timeout): the rollback that ends the unit of work fails, and that is the answer."""
    admin = service.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    real_list_jobs = repository.list_jobs
    dropped: list[int] = []

    def list_jobs_then_lose_the_connection(session, *args, **kwargs):
        page = real_list_jobs(session, *args, **kwargs)
        if not dropped:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s, 10000)", [pid])  # waits until it is gone
            dropped.append(pid)
        return page

    monkeypatch.setattr(repository, "list_jobs", list_jobs_then_lose_the_connection)
    headers = {"Authorization": f"Bearer {service.keys['alice']}"}
    with TestClient(service.app, headers=headers, raise_server_exceptions=False) as client:
        submit(client)
        reply = client.get("/v1/jobs")
        assert dropped, "the route ran"
        assert reply.status_code == 503, reply.text
        assert reply.headers["Retry-After"] == "5" and "retry" in reply.json()["detail"]
        again = client.get("/v1/jobs")  # a new connection from the pool
        assert again.status_code == 200 and len(again.json()["items"]) == 1


# ---- 3: the Host header with auth off, as raw bytes to a real uvicorn ---------------------------


@pytest.fixture(scope="module")
def local_api(tmp_path_factory) -> Iterator[int]:
    """The port of a uvicorn serving the API with auth off (as ``revtune serve`` on 127.0.0.1) on a
    migrated SQLite database, ``revtune.lan`` in REVTUNE_ALLOWED_HOSTS."""
    folder = tmp_path_factory.mktemp("local-api")
    database_url = f"sqlite:///{folder / 'revtune.db'}"
    migrations.upgrade(database_url)
    env = dict(os.environ)
    env.update(
        REVTUNE_DATA_DIR=str(folder / "data"),
        REVTUNE_DATABASE_URL=database_url,
        REVTUNE_BROKER_URL=f"sqla+sqlite:///{folder / 'broker.db'}",
        REVTUNE_AUTH="off",
        REVTUNE_ALLOWED_HOSTS='["revtune.lan"]',
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    procs = Processes(folder)
    try:
        port = free_port()
        start_api(procs, env, port)
        yield port
    finally:
        procs.close()


def raw_get(port: int, header_lines: list[bytes], path: bytes = b"/healthz") -> tuple[int, bytes]:
    """Send ``GET path HTTP/1.1`` with exactly these header lines (and ``Connection: close``);
    the status and the body of the answer."""
    request = b"GET " + path + b" HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in header_lines)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(request + b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


REFUSED_HOSTS = [
    [b"Host: evil.example@localhost"],  # userinfo: urlsplit's hostname said "localhost"
    [b"Host: evil.example@localhost:8000"],
    [b"Host: evil.example:x@127.0.0.1"],
    [b"Host:"],  # empty
    [b"Host: "],
    [],  # none at all
    [b"Host: evil.example", b"Host: localhost"],  # two: one check, the other used elsewhere
    [b"Host: localhost", b"Host: evil.example"],
    [b"Host: localhost", b"Host: localhost"],
    [b"Host: localhost,evil.example"],  # how a proxy may join two
    [b"Host: localhost:8000:80"],
    [b"Host: localhost:"],
    [b"Host: localhost:http"],
    [b"Host: localhost:99999"],
    [b"Host: localhost/evil"],
    [b"Host: localhost#@evil.example"],
    [b"Host: local_host"],
    [b"Host: ::1"],  # IPv6 without brackets
    [b"Host: [::1"],
    [b"Host: [::1]x"],
    [b"Host: [::1%25lo]:8000"],
    [b"Host: [localhost]"],
    [b"Host: localhost\xc2\xa0"],
]


def test_with_auth_off_a_malformed_or_repeated_host_header_is_400(local_api):
    for lines in REFUSED_HOSTS:
        status, body = raw_get(local_api, lines)
        assert status == 400, (lines, body)
        assert "Host" in json.loads(body)["detail"], (lines, body)
    # Reads of data are refused too, not only the probe.
    status, body = raw_get(local_api, [b"Host: evil.example", b"Host: localhost"], path=b"/v1/jobs")
    assert status == 400, body


def test_with_auth_off_well_formed_loopback_hosts_still_pass(local_api):
    for host in [
        b"localhost",
        b"LOCALHOST:8000",
        b"127.0.0.1",
        b"127.0.0.1:1",
        b"[::1]",
        b"[::1]:8000",
        b"[0:0:0:0:0:0:0:1]:8000",
        b"revtune.lan",
        b"revtune.lan:80",
    ]:
        status, body = raw_get(local_api, [b"Host: " + host])
        assert status == 200, (host, body)
    status, body = raw_get(local_api, [b"Host: localhost:8000"], path=b"/v1/jobs")
    assert status == 200 and json.loads(body)["items"] == [], body
    for host in [b"evil.example", b"127.0.0.1.nip.io", b"[::2]", b"127.0.0.2"]:
        status, body = raw_get(local_api, [b"Host: " + host])
        assert status == 400 and b"REVTUNE_ALLOWED_HOSTS" in body, (host, body)


# ---- 4: a JSON body is UTF-8 -----------------------------------------------------------------------


def test_a_spec_in_utf16_or_utf32_is_415(service):
    text_ = json.dumps(TINY_SPEC)
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
        reply = post_raw(service.alice, "/v1/jobs", text_.encode(encoding))
        assert reply.status_code == 415, (encoding, reply.text)
        assert "UTF-8" in reply.json()["detail"], reply.text
    for content_type in (
        "application/json; charset=utf-16",
        'application/json; charset="UTF-16LE"',
        "application/json; charset=latin-1",
        "application/vnd.revtune+json; charset=utf-32",
    ):
        reply = post_raw(service.alice, "/v1/jobs", text_.encode(), content_type)
        assert reply.status_code == 415, (content_type, reply.text)
        assert "UTF-8" in reply.json()["detail"], reply.text
    assert service.enqueued == []
    assert service.alice.get("/v1/jobs").json()["items"] == []


def test_utf8_declared_in_any_spelling_is_accepted(service):
    body = json.dumps(TINY_SPEC | {"name": "réglage"}, ensure_ascii=False).encode()
    for content_type in (
        "application/json; charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/json;charset=utf8",
        "application/json",
    ):
        reply = post_raw(service.alice, "/v1/jobs", body, content_type)
        assert reply.status_code == 201, (content_type, reply.text)
        assert reply.json()["name"] == "réglage"


# ---- 1c: a 500 leaves the connection usable ------------------------------------------------------


def test_after_a_500_the_same_connection_serves_the_next_request(service, monkeypatch):
    """An unexpected error is answered 500 inside the app, so uvicorn keeps the connection: before,
    Starlette re-raised it after sending the 500 and uvicorn closed the connection under a pooling
    client, whose next, unrelated request then failed. Real uvicorn, one keep-alive socket."""
    import threading
    import time

    import uvicorn

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(repository, "list_datasets", boom)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        key = service.alice.headers["Authorization"].encode()

        def ask(sock: socket.socket, path: bytes) -> tuple[int, bytes]:
            sock.sendall(
                b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + key + b"\r\n\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                assert chunk, f"the server closed the connection after {answer[:200]!r}"
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(
                next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[
                    1
                ]
            )
            while len(body) < length:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection mid-answer"
                body += chunk
            return int(head.split(b" ", 2)[1]), head

        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            status, head = ask(sock, b"/v1/datasets")
            assert status == 500 and b"connection: close" not in head.lower()
            for _ in range(3):  # the same socket: unrelated requests, then the failing one again
                assert ask(sock, b"/v1/jobs")[0] == 200
                assert ask(sock, b"/v1/datasets")[0] == 500
    finally:
        server.should_exit = True
        thread.join(timeout=10)
