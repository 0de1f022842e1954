"""One live revtune service shared by the client, CLI and dashboard tests.

The embedded configuration a user gets from ``revtune serve``: SQLite database and Celery's
SQLAlchemy transport on SQLite in a temporary folder, migrations applied with ``revtune db upgrade``,
the API under uvicorn on a free port, and one real ``revtune worker``, each a child process in its
own process group. It is started once per test session (the first test that asks for it) and killed
at the session's end, so the three folders pay the worker's JAX start-up once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from revtune.serve import enable_wal

_CLI = [sys.executable, "-c", "import sys; from revtune.cli import main; sys.exit(main())"]

# Small enough for seconds of CPU, big enough that the schedules have layers and steps to draw.
TINY_SPEC = {
    "name": "tiny-digits",
    "dataset": {"name": "digits", "train": 200, "valid": 100, "test": 100, "batch_size": 50},
    "model": {"kind": "mlp", "hidden": [16], "activation": "tanh"},
    "training": {"steps": 12},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "layer_step", "learn": True},
        "init_scale": {"init": 0.1, "granularity": "layer", "learn": True},
        "l2": {"init": 0.0, "granularity": "layer", "learn": False},
    },
    "objective": "valid_loss",
    "meta": {"iterations": 4, "optimizer": "adam", "learning_rate": 0.04},
    "seed": 0,
}
TINY_LAYERS = 4  # layer0.W, layer0.b, layer1.W, layer1.b

# A job that succeeds with warnings: a learning rate of 4e5 on 100 digits, at the edge of what the
# weights' fixed point holds, diverges in meta-iterations 1 and 2 of 4; the chaos guard backs off from
# both and the next draws train. Its warnings are `diverged` (2 of 4), then `chaos_guard` (twice).
WARNED_SPEC = {
    "name": "sometimes-diverging",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 4e5, "granularity": "global", "learn": True}},
    "meta": {"iterations": 4},
    "seed": 0,
}


def tiny_spec(**changes) -> dict:
    """A copy of `TINY_SPEC` with top-level sections replaced (``meta={...}``) or updated."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_SPEC.items()}
    for key, value in changes.items():
        spec[key] = value
    return spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    env: dict[str, str]
    folder: Path
    children: list[subprocess.Popen] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.children.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}:\n{p.read_text()[-3000:]}" for p in sorted(self.folder.glob("*.log")))

    def check_alive(self) -> None:
        dead = [p.args for p in self.children if p.poll() is not None]
        assert not dead, f"service child exited: {dead}\n{self.logs()}"

    def stop(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.children:
            proc.wait(timeout=30)


def _wait_healthy(service: Service, api: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert api.poll() is None, f"the API exited\n{service.logs()}"
        try:
            if httpx.get(f"{service.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the API did not answer /healthz in {timeout_s} s\n{service.logs()}")


def start_service(
    folder: Path, workers: int = 1, auth: str = "off", settings: dict[str, str] | None = None
) -> Service:
    """``settings``: more ``REVTUNE_*`` environment variables for every process (short timeouts)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        REVTUNE_DATA_DIR=str(folder),
        REVTUNE_DATABASE_URL=f"sqlite:///{folder / 'revtune.db'}",
        REVTUNE_BROKER_URL=f"sqla+sqlite:///{folder / 'broker.db'}",
        REVTUNE_AUTH=auth,
        JAX_PLATFORMS="cpu",
        **(settings or {}),
    )
    service = Service(url=f"http://127.0.0.1:{port}", env=env, folder=folder)
    for url in (env["REVTUNE_DATABASE_URL"], env["REVTUNE_BROKER_URL"]):
        enable_wal(url)
    migrate = subprocess.run([*_CLI, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, f"revtune db upgrade failed:\n{migrate.stdout}\n{migrate.stderr}"
    try:
        api = service.start(
            "api", [sys.executable, "-m", "uvicorn", "api:create_app", "--factory", "--port", str(port)]
        )
        for i in range(workers):
            service.start(f"worker{i}", [*_CLI, "worker"])
        _wait_healthy(service, api)
    except BaseException:
        service.stop()
        raise
    return service


_shared: Service | None = None


def shared_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Service:
    """The session's service, started on first use; killed when pytest finishes."""
    global _shared
    if _shared is None:
        _shared = start_service(tmp_path_factory.mktemp("revtune-service"))
        request.config.add_cleanup(_stop_shared)
    _shared.check_alive()
    return _shared


def _stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None
