"""The production shape end to end: uvicorn + real `revtune worker` processes on Redis and PostgreSQL.

Jobs are submitted over HTTP only; the results are compared with `hypercore.tune` run in this
process on the same spec. Every child process is SIGKILLed at teardown.
"""

from __future__ import annotations

import os
import subprocess

import httpx
import numpy as np
import pytest

from e2e._infra import fresh_redis
from e2e._procs import WORKER_COMMAND, Processes, free_port, start_api, wait_for

pytestmark = pytest.mark.integration

# digits, an MLP with one hidden layer of 16, a 10-step schedule per layer and step: seconds of CPU.
SPEC = {
    "name": "e2e-tiny",
    "dataset": {"name": "digits", "train": 200, "valid": 100, "test": 100, "batch_size": 50},
    "model": {"kind": "mlp", "hidden": [16], "activation": "tanh"},
    "training": {"steps": 10},
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
# Long enough that a kill or a cancel lands while the job runs.
LONG_ITERATIONS = 150


def spec_with(iterations: int, seed: int = 0) -> dict:
    return {**SPEC, "meta": {**SPEC["meta"], "iterations": iterations}, "seed": seed}


@pytest.fixture(scope="module")
def reference() -> list[dict[str, np.ndarray]]:
    """What hypercore produces in-process for seed 0: the natural hyperparameters after every
    meta-iteration of an uninterrupted run of LONG_ITERATIONS (a shorter run is a prefix of it)."""
    from hypercore.spec import problem_from_spec
    from hypercore.tune import tune

    result = tune(problem_from_spec(spec_with(LONG_ITERATIONS)))
    return [{name: np.asarray(v.values) for name, v in r.hyperparameters.items()} for r in result.records]


@pytest.fixture(scope="module")
def service(tmp_path_factory, make_postgres_database):
    folder = tmp_path_factory.mktemp("e2e")
    db_url = make_postgres_database("revtune_e2e")
    with fresh_redis() as broker_url:
        env = dict(os.environ)
        env.update(
            REVTUNE_DATABASE_URL=db_url,
            REVTUNE_BROKER_URL=broker_url,
            REVTUNE_DATA_DIR=str(folder),
            REVTUNE_AUTH="off",
            REVTUNE_HEARTBEAT_INTERVAL_S="0.5",
            REVTUNE_HEARTBEAT_TIMEOUT_S="4",
            REVTUNE_REAPER_INTERVAL_S="1",
            JAX_PLATFORMS="cpu",
        )
        upgrade = subprocess.run(
            [*WORKER_COMMAND[:-1], "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
        )
        assert upgrade.returncode == 0, upgrade.stderr
        procs = Processes(folder)
        try:
            service = Service(start_api(procs, env, free_port()), env, procs)
            with service.http:
                yield service
        finally:
            procs.close()


class Service:
    def __init__(self, url, env, procs: Processes):
        self.url, self.env, self.procs = url, env, procs
        self.http = httpx.Client(base_url=url, timeout=10)

    def start_worker(self) -> subprocess.Popen:
        return self.procs.start("worker", WORKER_COMMAND, self.env)

    def submit(self, spec: dict) -> str:
        reply = self.http.post("/v1/jobs", json=spec)
        assert reply.status_code == 201, reply.text
        job = reply.json()
        assert job["status"] == "queued"
        return job["id"]

    def job(self, job_id: str) -> dict:
        reply = self.http.get(f"/v1/jobs/{job_id}")
        assert reply.status_code == 200, reply.text
        return reply.json()

    def steps(self, job_id: str) -> list[dict]:
        """All steps, read through the ``after`` cursor the way a poller does."""
        items, after = [], None
        while True:
            params = {"limit": 50} if after is None else {"limit": 50, "after": after}
            page = self.http.get(f"/v1/jobs/{job_id}/steps", params=params).json()
            items += page["items"]
            if page["next_after"] is None:
                return items
            after = page["next_after"]

    def wait_status(self, job_id: str, statuses: set[str], timeout_s: float) -> dict:
        def done():
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_for(done, timeout_s, f"job {job_id} to reach {statuses}")
        except AssertionError as e:
            raise AssertionError(f"{e}; job: {self.job(job_id)}\n{self.procs.logs()}") from None

    def hyperparameters(self, job_id: str) -> tuple[int, dict[str, np.ndarray]]:
        listing = self.http.get(f"/v1/jobs/{job_id}/hyperparameters").json()
        out = {}
        for item in listing["items"]:
            reply = self.http.get(
                f"/v1/jobs/{job_id}/hyperparameters/{item['name']}", params={"format": "json"}
            )
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["meta_iter"] == listing["meta_iter"]
            values = np.asarray(body["values"], dtype=np.float64)
            assert list(values.shape) == list(body["shape"])
            out[item["name"]] = values
        return listing["meta_iter"], out


def assert_same_hyperparameters(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name].astype(np.float64), err_msg=name)


def assert_steps_complete(steps: list[dict], n: int) -> None:
    assert [s["meta_iter"] for s in steps] == list(range(n)), "duplicated or missing steps"
    for s in steps:
        assert np.isfinite(s["objective"]) and s["reversal_exact"] is True


@pytest.fixture(scope="module")
def worker(service):
    proc = service.start_worker()
    yield proc
    service.procs.kill(proc)


def test_submitted_job_runs_on_a_real_worker_and_matches_hypercore(service, worker, reference):
    job_id = service.submit(spec_with(4))
    seen = wait_for(lambda: service.steps(job_id), 120, "the first step to appear")
    assert seen[0]["meta_iter"] == 0
    job = service.wait_status(job_id, {"succeeded", "failed", "cancelled"}, 120)
    assert job["status"] == "succeeded", job
    assert job["meta_iter"] == 4 and job["error"] is None
    assert job["started_at"] is not None and job["finished_at"] is not None
    steps = service.steps(job_id)
    assert_steps_complete(steps, 4)
    meta_iter, learned = service.hyperparameters(job_id)
    assert meta_iter == 4
    assert_same_hyperparameters(learned, reference[3])


def test_a_resplit_job_draws_on_the_worker_the_splits_hypercore_draws(service, worker):
    """``dataset.resplit`` through the service: every meta-iteration's scores and the learned
    hyperparameters are those of `hypercore.tune` on the same spec in this process."""
    from hypercore.spec import problem_from_spec
    from hypercore.tune import tune

    spec = {**spec_with(3), "dataset": {**SPEC["dataset"], "resplit": True}}
    result = tune(problem_from_spec(spec))
    job = service.wait_status(service.submit(spec), {"succeeded", "failed", "cancelled"}, 120)
    assert job["status"] == "succeeded", job
    assert job["spec"]["dataset"]["resplit"] is True
    steps = service.steps(job["id"])
    assert_steps_complete(steps, 3)
    for metric in ("train_loss", "valid_loss", "test_loss"):
        assert [s[metric] for s in steps] == [getattr(r, metric) for r in result.records], metric
    _, learned = service.hyperparameters(job["id"])
    assert_same_hyperparameters(learned, {k: np.asarray(v.values) for k, v in result.hyperparameters.items()})


def test_cancel_stops_a_running_job_within_one_meta_iteration(service, worker):
    job_id = service.submit(spec_with(LONG_ITERATIONS, seed=2))
    wait_for(lambda: service.steps(job_id), 120, "the first step to appear")
    reply = service.http.post(f"/v1/jobs/{job_id}/cancel")
    assert reply.status_code == 202, reply.text
    n_at_cancel = len(service.steps(job_id))
    job = service.wait_status(job_id, {"succeeded", "failed", "cancelled"}, 60)
    assert job["status"] == "cancelled", job
    steps = service.steps(job_id)
    assert n_at_cancel <= len(steps) <= n_at_cancel + 1 < LONG_ITERATIONS
    assert_steps_complete(steps, len(steps))


def test_killed_worker_job_resumes_on_another_with_identical_result(service, worker, reference):
    service.procs.kill(worker)  # this test needs to know which worker holds the job
    first = service.start_worker()
    job_id = service.submit(spec_with(LONG_ITERATIONS))
    wait_for(lambda: len(service.steps(job_id)) >= 2, 120, "two steps to appear")
    service.procs.kill(first)  # SIGKILL, mid meta-iteration: no chance to clean up
    done_before_kill = len(service.steps(job_id))
    assert done_before_kill < LONG_ITERATIONS and service.job(job_id)["status"] == "running"

    service.start_worker()
    job = service.wait_status(job_id, {"succeeded", "failed", "cancelled"}, 180)
    assert job["status"] == "succeeded", job
    steps = service.steps(job_id)
    assert_steps_complete(steps, LONG_ITERATIONS)
    meta_iter, learned = service.hyperparameters(job_id)
    assert meta_iter == LONG_ITERATIONS
    assert_same_hyperparameters(learned, reference[-1])
