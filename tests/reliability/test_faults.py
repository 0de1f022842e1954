"""Faults injected into the running service: workers SIGKILLed, the broker restarted empty, the
database stopped, the API killed mid-upload. Nothing may be lost, duplicated or half-visible.

Each test runs real processes (uvicorn, `revtune worker`, redis-server, PostgreSQL) on private
servers from ``conftest.py``; results are compared bit for bit with uninterrupted in-process runs.
With ``REVTUNE_RELIABILITY_REPORT=FILE`` each test appends what it injected and saw to FILE
(``benchmarks/reliability.py`` turns that into docs/RELIABILITY.md).
"""

from __future__ import annotations

import io
import random
import threading
import time

import httpx
import numpy as np
import pytest
from e2e._procs import wait_for

from reliability._service import Service, record, reference, tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], job: str) -> None:
    assert sorted(got) == sorted(want), job
    for name in want:
        np.testing.assert_array_equal(got[name], want[name].astype(np.float64), err_msg=f"{job} {name}")


@pytest.fixture
def service(tmp_path, private_postgres, private_redis, request):
    database = private_postgres.create_database(f"faults_{request.node.name[:40].lower()}")
    private_redis.flush()  # a fresh broker per test: earlier tests' re-enqueued duplicates stay behind
    # Kills are the faults under test here, not the cap on them (tests/reliability/test_worker_deaths.py):
    # one job could be hit by 3 of the 10 random kills and be failed by REVTUNE_MAX_ATTEMPTS.
    svc = Service(tmp_path, database, private_redis.url, REVTUNE_MAX_ATTEMPTS="100")
    try:
        yield svc
    finally:
        svc.close()


def test_workers_killed_at_random_points_lose_and_duplicate_nothing(service):
    """20 jobs, two workers; one of them is SIGKILLed a moment after each sign of progress and
    replaced, until every job is done. Each job must end exactly as its uninterrupted run.

    The jobs do about half a second of work per meta-iteration: a replacement worker loads the
    compiled programs from the workers' cache instead of compiling for seconds, so without real work
    every job would be over before the next kill."""
    seeds, iterations = (0, 1), 6
    size = {"steps": 300, "hidden": 256, "train": 1000, "batch_size": 200}
    specs = [
        tiny_spec(f"kill-{i}", seed=seeds[i % len(seeds)], iterations=iterations, **size) for i in range(20)
    ]
    expected = {seed: reference(tiny_spec("ref", seed=seed, iterations=iterations, **size)) for seed in seeds}
    service.start_api()
    job_ids = [service.submit(spec) for spec in specs]
    for _ in range(2):
        service.start_worker()

    rng = random.Random(20261128)
    kills, kills_mid_job, progress_seen = 0, 0, -1
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        statuses = service.statuses()
        if all(statuses[j] in ("succeeded", "failed", "cancelled") for j in job_ids):
            break
        done_steps = sum(service.job(j)["meta_iter"] for j in job_ids if statuses[j] == "running")
        done_steps += sum(iterations for j in job_ids if statuses[j] == "succeeded")
        if kills < 10 and done_steps > progress_seen:
            # Progress since the last kill: let it run a random moment more, then kill one worker.
            progress_seen = done_steps
            time.sleep(rng.uniform(0.0, 2.0))
            victim = rng.choice(service.live_workers())
            running_before = sum(1 for s in service.statuses().values() if s == "running")
            service.procs.kill(victim)
            kills += 1
            kills_mid_job += running_before > 0
            service.start_worker()
        time.sleep(0.3)
    jobs = service.wait_all(job_ids, 60)

    duplicates = 0
    for spec, job_id in zip(specs, job_ids, strict=True):
        job = jobs[job_id]
        assert job["status"] == "succeeded", job
        steps = service.steps(job_id)
        metas = [s["meta_iter"] for s in steps]
        duplicates += len(metas) - len(set(metas))
        assert metas == list(range(iterations)), f"{job_id}: duplicated or missing steps {metas}"
        objectives, final = expected[spec["seed"]]
        assert [s["objective"] for s in steps] == objectives, job_id
        _assert_same(service.final_hyperparameters(job_id), final, job_id)
    assert kills >= 5 and kills_mid_job >= 3, (kills, kills_mid_job)
    record(
        "worker SIGKILL",
        f"{kills} kills of one of 2 workers at random moments ({kills_mid_job} while a job ran), 20 jobs",
        "every job succeeded; steps and final hyperparameters bit-identical to uninterrupted runs",
        jobs=len(job_ids),
        kills=kills,
        duplicate_steps=duplicates,
    )


def test_broker_restarted_empty_with_50_jobs_queued_runs_them_all(service, private_redis):
    """The broker keeps nothing on disk: a restart loses every queued message. The workers' reaper
    re-enqueues jobs left queued past ``REVTUNE_QUEUED_TIMEOUT_S``, so all 50 still run."""
    service.start_api()
    job_ids = [service.submit(tiny_spec(f"queued-{i}", iterations=1, steps=4)) for i in range(50)]
    assert private_redis.queued_messages("revtune") == 50
    private_redis.restart()
    assert private_redis.queued_messages("revtune") == 0  # every message is gone
    job_ids.append(service.submit(tiny_spec("after-restart", iterations=1, steps=4)))  # API reconnects
    service.start_worker()
    jobs = service.wait_all(job_ids, 420)
    assert all(job["status"] == "succeeded" for job in jobs.values()), [
        (j["id"], j["status"], j["error"]) for j in jobs.values() if j["status"] != "succeeded"
    ]
    for job_id in job_ids:
        assert [s["meta_iter"] for s in service.steps(job_id)] == [0], job_id
    record(
        "broker restart",
        "redis-server (no persistence) killed and restarted with 50 jobs queued and no worker",
        "all 50 (and one submitted after the restart) ran once each after the reaper re-enqueued them",
        jobs=len(job_ids),
        messages_lost=50,
    )


def test_database_down_for_10_seconds_gives_503_and_loses_nothing(service, private_postgres):
    """PostgreSQL stops while jobs run and the API is polled: the API answers 503 (never 500),
    workers retry, and every job finishes exactly as an uninterrupted run."""
    iterations = 25
    specs = [tiny_spec(f"pg-{i}", seed=i, iterations=iterations) for i in range(2)]
    expected = [reference(spec) for spec in specs]
    service.start_api()
    job_ids = [service.submit(spec) for spec in specs]
    service.start_worker()
    wait_for(lambda: service.job(job_ids[0])["meta_iter"] >= 2, 180, "the first job to make progress")

    answers: dict[int, int] = {}
    private_postgres.stop()
    down_at = time.monotonic()
    while time.monotonic() - down_at < 10:
        for method, path, body in (
            ("GET", f"/v1/jobs/{job_ids[0]}", None),
            ("GET", "/v1/jobs", None),
            ("GET", f"/v1/jobs/{job_ids[0]}/steps", None),
            ("POST", "/v1/jobs", tiny_spec("during-outage")),
            ("GET", "/readyz", None),
        ):
            reply = service.http.request(method, path, json=body)
            answers[reply.status_code] = answers.get(reply.status_code, 0) + 1
            if reply.status_code == 503:
                assert "database" in reply.text.lower(), reply.text
        time.sleep(0.2)
    private_postgres.start()
    assert set(answers) == {503}, answers
    assert service.http.get("/healthz").status_code == 200

    jobs = service.wait_all(job_ids, 420)
    for job_id, (objectives, final) in zip(job_ids, expected, strict=True):
        assert jobs[job_id]["status"] == "succeeded", jobs[job_id]
        steps = service.steps(job_id)
        assert [s["meta_iter"] for s in steps] == list(range(iterations)), job_id
        assert [s["objective"] for s in steps] == objectives, job_id
        _assert_same(service.final_hyperparameters(job_id), final, job_id)
    # Nothing was accepted while the database was down, so nothing can have been half-created.
    assert len(service.statuses()) == len(job_ids)
    record(
        "database outage",
        "PostgreSQL stopped (fast shutdown) for 10 s while 2 jobs ran and the API was polled",
        "every API answer during the outage was 503; both jobs finished bit-identical to uninterrupted runs",
        requests=sum(answers.values()),
        status_codes={str(k): v for k, v in answers.items()},
    )


def _npz(n_rows: int, n_features: int) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    X = rng.normal(size=(n_rows, n_features))
    np.savez(buffer, X=X, y=rng.integers(0, 10, n_rows))
    return buffer.getvalue()


def test_api_killed_mid_upload_leaves_no_visible_dataset(service):
    """The API process is SIGKILLed while a large upload streams in. After a restart no dataset is
    listed and no dataset file is in place; the next complete upload works."""
    payload = _npz(20_000, 64)  # about 10 MiB
    service.start_api()
    port = int(service.url.rsplit(":", 1)[1])
    boundary = "revtune-fault-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sent = {"bytes": 0}
    killed = threading.Event()

    def body():
        yield head
        for start in range(0, len(payload), 256 * 1024):
            if start >= len(payload) // 2 and not killed.is_set():
                service.kill_api()
                killed.set()
            sent["bytes"] += min(256 * 1024, len(payload) - start)
            yield payload[start : start + 256 * 1024]
            time.sleep(0.01)
        yield f"\r\n--{boundary}--\r\n".encode()

    with pytest.raises(httpx.HTTPError):
        httpx.post(
            f"{service.url}/v1/datasets",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=30,
        )
    assert killed.is_set()

    service.start_api(port)
    assert service.http.get("/v1/datasets").json()["items"] == []
    datasets_dir = service.folder / "data" / "datasets"
    in_place = sorted(p.name for p in datasets_dir.glob("*.npz")) if datasets_dir.exists() else []
    assert in_place == [], in_place

    reply = service.http.post("/v1/datasets", files={"file": ("big.npz", payload)}, data={"name": "big"})
    assert reply.status_code == 201, reply.text
    assert [d["id"] for d in service.http.get("/v1/datasets").json()["items"]] == [reply.json()["id"]]
    leftovers = sorted(p.name for p in datasets_dir.iterdir() if not p.name.endswith(".npz"))
    record(
        "API killed mid-upload",
        f"uvicorn SIGKILLed after {len(payload) // 2 // 1024} KiB of a {len(payload) // 1024} KiB upload",
        "no dataset listed or in place after restart; the next upload succeeded",
        visible_after_restart=0,
        leftover_files=len(leftovers),
    )
