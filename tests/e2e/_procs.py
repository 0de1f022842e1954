"""Child processes for the end-to-end tests: start them in their own session, always kill them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

WORKER_COMMAND = [
    sys.executable,
    "-c",
    "import sys; from revtune.cli import main; sys.exit(main())",
    "worker",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Started children, each in its own process group; `close` SIGKILLs whatever is still alive."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[subprocess.Popen] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.children)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        proc.log_path = log.name
        self.children.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def close(self) -> None:
        for proc in self.children:
            try:
                self.kill(proc)
            except ProcessLookupError:
                pass

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.args[-1] if p.args else p.pid} ({p.log_path}):\n{Path(p.log_path).read_text()[-4000:]}"
            for p in self.children
        )


def start_api(procs: Processes, env: dict[str, str], port: int) -> str:
    command = [sys.executable, "-m", "uvicorn", "api:create_app", "--factory", "--port", str(port)]
    proc = procs.start("api", command, env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _healthy(url) or proc.poll() is not None, 60, "the API to answer /healthz")
    assert proc.poll() is None, procs.logs()
    return url


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
