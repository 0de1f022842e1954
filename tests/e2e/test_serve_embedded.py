"""``revtune serve``: the embedded default (SQLite + SQLAlchemy broker) runs a job and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from e2e._procs import free_port, wait_for
from revtune.cli import main
from revtune.serve import embedded_environment

TINY = {
    "name": "serve-smoke",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "global", "learn": False},
        "init_scale": {"init": 0.1, "granularity": "global", "learn": False},
    },
    "meta": {"iterations": 2},
    "seed": 0,
}


def _pids_with_data_dir(data_dir: Path) -> list[int]:
    """Processes whose environment names this test's data folder: the supervisor's children."""
    marker = f"REVTUNE_DATA_DIR={data_dir.resolve()}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.integration
def test_serve_runs_a_job_and_ctrl_c_stops_every_child(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVTUNE_")}
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-c", "import sys; from revtune.cli import main; sys.exit(main())"]
    command += ["serve", "--port", str(port), "--data-dir", str(data_dir), "--workers", "1"]
    serve = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(serve.stdout), daemon=True)
    reader.start()
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_for(
            lambda: any("dashboard at" in line for line in lines) or serve.poll() is not None, 90, "the URL"
        )
        assert serve.poll() is None, "".join(lines)
        assert f"http://127.0.0.1:{port}/" in "".join(lines)
        assert (data_dir / "revtune.db").is_file()

        reply = http.post("/v1/jobs", json=TINY)
        assert reply.status_code == 201, reply.text
        job_id = reply.json()["id"]

        def finished():
            try:
                job = http.get(f"/v1/jobs/{job_id}").json()
            except httpx.ConnectError:
                raise AssertionError(f"the API went away:\n{''.join(lines)}") from None
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, 120, "the job to finish")
        assert job["status"] == "succeeded", (job, "".join(lines))
        assert [s["meta_iter"] for s in http.get(f"/v1/jobs/{job_id}/steps").json()["items"]] == [0, 1]
        # the worker keeps the job's compiled programs for the next worker (or itself, restarted)
        assert any((data_dir / "jax-cache").iterdir()), "the worker wrote no compiled program to its cache"
        assert len(_pids_with_data_dir(data_dir)) == 2  # the API and one worker

        started = time.monotonic()
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=45) == 0, "".join(lines)
        assert time.monotonic() - started < 45
        assert _pids_with_data_dir(data_dir) == [], "a child outlived `revtune serve`"
        with pytest.raises(httpx.ConnectError):
            http.get("/healthz")
    finally:
        http.close()
        if serve.poll() is None:
            serve.kill()
        serve.wait(timeout=30)
        reader.join(timeout=10)
        serve.stdout.close()
        for pid in _pids_with_data_dir(data_dir):
            os.kill(pid, signal.SIGKILL)


def test_serve_refuses_auth_off_on_a_public_address(capsys):
    assert main(["serve", "--host", "0.0.0.0", "--auth", "off", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve with auth off on 0.0.0.0" in err


def test_embedded_defaults_and_environment_overrides(tmp_path):
    env = embedded_environment("127.0.0.1", tmp_path, None, environ={})
    assert env["REVTUNE_DATABASE_URL"] == f"sqlite:///{tmp_path.resolve() / 'revtune.db'}"
    assert env["REVTUNE_BROKER_URL"] == f"sqla+sqlite:///{tmp_path.resolve() / 'broker.db'}"
    assert env["REVTUNE_AUTH"] == "off" and env["REVTUNE_DATA_DIR"] == str(tmp_path.resolve())

    public = embedded_environment(
        "0.0.0.0", tmp_path, None, environ={"REVTUNE_BROKER_URL": "redis://r:6379/0"}
    )
    assert public["REVTUNE_AUTH"] == "on"
    assert public["REVTUNE_BROKER_URL"] == "redis://r:6379/0"
