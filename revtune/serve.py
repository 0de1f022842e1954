"""``revtune serve``: the embedded default, one supervisor for the API and N workers.

The supervisor imports neither FastAPI nor JAX: it applies the migrations, then starts the API
(uvicorn) and each worker (``revtune worker``) as child processes configured through the same
``REVTUNE_*`` environment variables production uses, waits until the API answers ``/healthz``,
prints the dashboard URL, and on Ctrl-C or SIGTERM stops every child: SIGTERM first (a worker
finishes or releases its current meta-iteration, the job resumes later from its checkpoint),
SIGKILL after ``grace_s`` seconds or on a second Ctrl-C. If a child exits on its own, the others
are stopped too and the exit status is 1: a half-running service is never left behind silently.

Embedded defaults, each overridden by its environment variable when set:
``REVTUNE_DATABASE_URL`` = SQLite (WAL) at ``DATA_DIR/revtune.db``;
``REVTUNE_BROKER_URL`` = Celery's SQLAlchemy transport on SQLite at ``DATA_DIR/broker.db``;
``REVTUNE_AUTH`` = ``off`` on a loopback host, ``on`` otherwise (``off`` is refused elsewhere).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = ".revtune"
_WORKER_COMMAND = [
    sys.executable,
    "-c",
    "import sys; from revtune.cli import main; sys.exit(main())",
    "worker",
]


class ServeError(Exception):
    """A configuration the embedded server refuses (unsafe auth, bad data folder)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def embedded_environment(
    host: str, data_dir: Path, auth: str | None, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The ``REVTUNE_*`` variables every child gets: the caller's where set, else the embedded defaults.

    ``auth`` is the ``--auth`` option (``None`` when not given). Raises `ServeError` when auth would
    be off on a host other than loopback: the API would be open to the network.
    """
    data_dir = data_dir.resolve()
    auth = auth or environ.get("REVTUNE_AUTH") or ("off" if is_loopback(host) else "on")
    if auth not in ("on", "off"):
        raise ServeError(f"auth must be 'on' or 'off', got {auth!r}")
    if auth == "off" and not is_loopback(host):
        raise ServeError(
            f"refusing to serve with auth off on {host}, which is reachable from other machines: "
            "bind 127.0.0.1 or use --auth on (then create a key with `revtune keys create --tenant NAME`)"
        )
    env = dict(environ)
    env["REVTUNE_DATA_DIR"] = str(data_dir)
    env["REVTUNE_AUTH"] = auth
    env.setdefault("REVTUNE_DATABASE_URL", f"sqlite:///{data_dir / 'revtune.db'}")
    env.setdefault("REVTUNE_BROKER_URL", f"sqla+sqlite:///{data_dir / 'broker.db'}")
    return env


def enable_wal(url: str) -> None:
    """Put a SQLite database in WAL mode (persistent in the file), so the API reads while a worker writes."""
    for prefix in ("sqla+sqlite:///", "sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            with sqlite3.connect(url[len(prefix) :]) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            return


@dataclass
class _Child:
    name: str
    process: subprocess.Popen


def _start(name: str, command: list[str], env: dict[str, str]) -> _Child:
    # A session of its own, so the terminal's Ctrl-C reaches only the supervisor, which then stops
    # the children in order.
    return _Child(name, subprocess.Popen(command, env=env, start_new_session=True))


def _api_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(children: list[_Child], grace_s: float, kill_now: threading.Event) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(c.process.poll() is None for c in children):
        if kill_now.is_set() or time.monotonic() > deadline:
            for child in children:
                if child.process.poll() is None:
                    print(f"revtune: killing {child.name}", file=sys.stderr, flush=True)
                    child.process.kill()
            for child in children:
                child.process.wait()
            return
        kill_now.wait(0.1)


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: Path | str | None = None,
    workers: int = 1,
    auth: str | None = None,
    grace_s: float = 30.0,
) -> int:
    """Run the API and ``workers`` workers until Ctrl-C or SIGTERM; returns the exit status."""
    if workers < 0:
        raise ServeError(f"--workers must be 0 or more, got {workers}")
    data_dir = Path(data_dir or os.environ.get("REVTUNE_DATA_DIR") or DEFAULT_DATA_DIR)
    env = embedded_environment(host, data_dir, auth)
    Path(env["REVTUNE_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    enable_wal(env["REVTUNE_DATABASE_URL"])
    enable_wal(env["REVTUNE_BROKER_URL"])

    import migrations

    migrations.upgrade(env["REVTUNE_DATABASE_URL"])

    stop, kill_now = threading.Event(), threading.Event()

    def on_signal(signum, frame):
        (kill_now if stop.is_set() else stop).set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    api_command = [sys.executable, "-m", "uvicorn", "api:create_app", "--factory"]
    api_command += ["--host", host, "--port", str(port)]
    children = [_start("the API", api_command, env)]
    children += [_start(f"worker {i + 1}", _WORKER_COMMAND, env) for i in range(workers)]
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{url_host}:{port}"
    announced = False
    status = 0
    try:
        while not stop.is_set():
            exited = next((c for c in children if c.process.poll() is not None), None)
            if exited is not None:
                print(
                    f"revtune: {exited.name} exited with status {exited.process.returncode}; stopping",
                    file=sys.stderr,
                    flush=True,
                )
                status = 1
                break
            if not announced and _api_ready(url):
                announced = True
                print(f"revtune: dashboard at {url}/  (API at {url}/v1, docs at {url}/docs)", flush=True)
                print(f"revtune: data in {env['REVTUNE_DATA_DIR']}; Ctrl-C stops", flush=True)
            stop.wait(0.2)
    finally:
        _stop(children, grace_s, kill_now)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return status
