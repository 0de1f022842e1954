"""The production shape for fault injection: uvicorn and `revtune worker` processes on a database
and a broker the test controls; plus the record each fault test leaves for docs/RELIABILITY.md."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
from e2e._procs import WORKER_COMMAND, Processes, free_port, start_api, wait_for

TERMINAL = {"succeeded", "failed", "cancelled"}


def tiny_spec(
    name: str,
    *,
    seed: int = 0,
    iterations: int = 4,
    steps: int = 8,
    hidden: int = 16,
    train: int = 200,
    batch_size: int = 50,
) -> dict:
    """digits, a one-hidden-layer MLP (16 units), learning rate and momentum per layer and step: ms a
    meta-iteration once compiled (a few seconds the first time a worker meets the job's shape, unless
    its compilation cache holds it)."""
    return {
        "name": name,
        "dataset": {"name": "digits", "train": train, "valid": 100, "test": 100, "batch_size": batch_size},
        "model": {"kind": "mlp", "hidden": [hidden], "activation": "tanh"},
        "training": {"steps": steps},
        "hyperparameters": {
            "learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True},
            "momentum": {"init": 0.9, "granularity": "layer_step", "learn": True},
            "init_scale": {"init": 0.1, "granularity": "layer", "learn": True},
            "l2": {"init": 0.0, "granularity": "layer", "learn": False},
        },
        "objective": "valid_loss",
        "meta": {"iterations": iterations, "optimizer": "adam", "learning_rate": 0.04},
        "seed": seed,
    }


def reference(spec: dict) -> tuple[list[float], dict[str, np.ndarray]]:
    """The objectives and the final natural hyperparameters of an uninterrupted in-process run."""
    import hypercore

    result = hypercore.tune(hypercore.problem_from_spec(spec))
    final = {name: np.asarray(v.values) for name, v in result.hyperparameters.items()}
    return [r.objective for r in result.records], final


class Service:
    """An API (started on demand) and workers on ``database_url`` and ``broker_url``."""

    def __init__(self, folder: Path, database_url: str, broker_url: str, **settings: str):
        self.folder = folder
        self.env = dict(os.environ)
        self.env.update(
            REVTUNE_DATABASE_URL=database_url,
            REVTUNE_BROKER_URL=broker_url,
            REVTUNE_DATA_DIR=str(folder / "data"),
            REVTUNE_AUTH="off",
            REVTUNE_HEARTBEAT_INTERVAL_S="0.5",
            REVTUNE_HEARTBEAT_TIMEOUT_S="4",
            REVTUNE_QUEUED_TIMEOUT_S="5",
            REVTUNE_REAPER_INTERVAL_S="1",
            REVTUNE_POST_RATE_LIMIT="100000",
            JAX_PLATFORMS="cpu",
        )
        self.env.update(settings)
        upgrade = subprocess.run(
            [*WORKER_COMMAND[:-1], "db", "upgrade"], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert upgrade.returncode == 0, upgrade.stderr
        self.procs = Processes(folder)
        self.api: subprocess.Popen | None = None
        self.url = ""
        self.http: httpx.Client | None = None
        self.workers: list[subprocess.Popen] = []

    def start_api(self, port: int | None = None) -> None:
        self.url = start_api(self.procs, self.env, port or free_port())
        self.api = self.procs.children[-1]
        if self.http is None:
            self.http = httpx.Client(base_url=self.url, timeout=15)

    def kill_api(self) -> None:
        assert self.api is not None
        self.procs.kill(self.api)

    def start_worker(self) -> subprocess.Popen:
        worker = self.procs.start("worker", WORKER_COMMAND, self.env)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        self.procs.close()

    # --- REST ------------------------------------------------------------------------------------

    def submit(self, spec: dict) -> str:
        reply = self.http.post("/v1/jobs", json=spec)
        assert reply.status_code == 201, reply.text
        return reply.json()["id"]

    def job(self, job_id: str) -> dict:
        reply = self.http.get(f"/v1/jobs/{job_id}")
        assert reply.status_code == 200, reply.text
        return reply.json()

    def statuses(self) -> dict[str, str]:
        """id -> status of every job, through the cursor."""
        out, cursor = {}, None
        while True:
            params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
            page = self.http.get("/v1/jobs", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            out.update({j["id"]: j["status"] for j in body["items"]})
            cursor = body.get("next_cursor")
            if not cursor:
                return out

    def steps(self, job_id: str) -> list[dict]:
        items, after = [], None
        while True:
            params = {"limit": 100} | ({"after": after} if after is not None else {})
            page = self.http.get(f"/v1/jobs/{job_id}/steps", params=params).json()
            items += page["items"]
            if page["next_after"] is None:
                return items
            after = page["next_after"]

    def final_hyperparameters(self, job_id: str) -> dict[str, np.ndarray]:
        out = {}
        for entry in self.http.get(f"/v1/jobs/{job_id}/hyperparameters").json()["items"]:
            name = entry["name"]
            reply = self.http.get(f"/v1/jobs/{job_id}/hyperparameters/{name}", params={"format": "json"})
            body = reply.json()
            out[name] = np.asarray(body["values"], dtype=np.float64).reshape(body["shape"])
        return out

    def wait_all(self, job_ids: list[str], timeout_s: float) -> dict[str, dict]:
        def all_done():
            jobs = {j: self.job(j) for j in job_ids}
            return jobs if all(job["status"] in TERMINAL for job in jobs.values()) else None

        try:
            return wait_for(all_done, timeout_s, f"{len(job_ids)} jobs to finish", interval_s=0.5)
        except AssertionError:
            left = {j: self.job(j)["status"] for j in job_ids}
            raise AssertionError(f"jobs left unfinished: {left}\n{self.procs.logs()}") from None


def record(fault: str, injected: str, outcome: str, **numbers) -> None:
    """Append one row for docs/RELIABILITY.md when ``REVTUNE_RELIABILITY_REPORT`` names a file
    (``benchmarks/reliability.py`` sets it); a no-op otherwise."""
    path = os.environ.get("REVTUNE_RELIABILITY_REPORT")
    if path:
        row = {"fault": fault, "injected": injected, "outcome": outcome, "numbers": numbers}
        with open(path, "a") as out:
            out.write(json.dumps(row) + "\n")
