"""Library runs recorded by the service: a real `hypercore.tune` run fed through `Client.record` into a
live server (uvicorn, SQLite, API keys on, one real worker whose reaper runs every half second with a
10 s heartbeat timeout: a recorder's heartbeat thread, in this process beside the runs' JAX compiles,
may stall a few seconds on a loaded machine without its run being taken for dead)."""

from __future__ import annotations

import subprocess
import time
import uuid
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

import hypercore
from client.live import _CLI, Service, start_service
from hypercore.tune import hyperparameter_values
from revtune import Client
from revtune.client import Conflict, NotFound, ValidationError
from revtune.recorder import step_body

RUN = {
    "dataset": {"name": "digits", "train": 100, "valid": 50, "test": 50, "batch_size": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "global", "learn": False},
        "l2": {"init": 0.01, "granularity": "layer", "learn": True},
    },
    "meta": {"iterations": 3},
    "seed": 0,
}
OWN = {"model": {"kind": "my_resnet", "blocks": 2}, "meta": {"iterations": 3}}
HEARTBEAT_TIMEOUT_S = 10


def _key(service: Service, tenant: str) -> str:
    proc = subprocess.run(
        [*_CLI, "keys", "create", "--tenant", tenant],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    service = start_service(
        tmp_path_factory.mktemp("recording"),
        workers=1,
        auth="on",
        settings={
            "REVTUNE_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
            "REVTUNE_HEARTBEAT_INTERVAL_S": "1",
            "REVTUNE_REAPER_INTERVAL_S": "0.5",
        },
    )
    service.keys = {"alice": _key(service, "alice"), "bob": _key(service, "bob")}
    yield service
    service.stop()


@pytest.fixture
def alice(service):
    with Client(service.url, api_key=service.keys["alice"]) as c:
        yield c


@pytest.fixture(scope="module")
def problem():
    return hypercore.problem_from_spec(RUN)


def _feed(recorder, records):
    def callback(record):
        records.append(record)
        return recorder(record)

    return callback


def test_a_recorded_run_is_stored_bit_for_bit_and_shown_like_any_job(alice, problem):
    records = []
    recorder = alice.record("laptop-run", RUN)
    result = hypercore.tune(problem, callback=_feed(recorder, records))
    assert not result.stopped and len(records) == 3

    job = alice.get(recorder.job_id)
    assert (job["origin"], job["status"], job["meta_iter"], job["error"]) == (
        "external",
        "succeeded",
        3,
        None,
    )
    assert job["name"] == job["spec"]["name"] == "laptop-run" and job["spec"]["model"]["kind"] == "logreg"
    assert job["best"] == {
        "objective": min(r.objective for r in records),
        "meta_iter": int(np.argmin([r.objective for r in records])),
    }
    assert alice.steps(job) == [r.step() for r in records]
    for r in records:
        for name, value in r.hyperparameters.items():
            stored = alice.hyperparameters(job, name, meta_iter=r.meta_iter + 1)
            want = np.asarray(value.values, np.float64)
            assert stored.values.shape == want.shape and stored.values.tobytes() == want.tobytes(), name
            assert stored.axes == tuple(value.axes)
            assert stored.labels == {k: list(v) for k, v in value.labels.items()}
    listed = {j["id"]: j["origin"] for j in alice.iter_jobs()}
    assert listed[job["id"]] == "external"
    # the values each meta-iteration trained with: snapshot 0 (the initial ones, which a recording
    # kept no copy of before `Record.trained_with`) and the best's, which export which=best reads
    best = records[job["best"]["meta_iter"]]
    for k, r in ((0, records[0]), (best.meta_iter, best)):
        for name, value in r.trained_with.items():
            stored = alice.hyperparameters(job, name, meta_iter=k)
            assert stored.values.tobytes() == np.asarray(value.values, np.float64).tobytes(), (k, name)
    assert records[1].trained_with is records[0].hyperparameters  # the same arrays, not a copy
    initial = hyperparameter_values(problem)  # the worker's own source of snapshot 0
    assert {n: v.values.tolist() for n, v in records[0].trained_with.items()} == {
        n: v.values.tolist() for n, v in initial.items()
    }


def test_a_cancel_reaches_the_recorder_which_stops_tune(alice, problem):
    recorder = alice.record("cancelled-run", RUN)

    def callback(record):
        stop = recorder(record)
        if record.meta_iter == 0:
            alice.cancel(recorder.job_id)  # as the dashboard's button does
        return stop

    result = hypercore.tune(problem, callback=callback)
    assert result.stopped and [r.meta_iter for r in result.records] == [0, 1]
    assert recorder.cancel_requested and recorder.finished
    job = alice.get(recorder.job_id)
    assert (job["status"], job["meta_iter"]) == ("cancelled", 2)
    assert alice.hyperparameters(job, "learning_rate").meta_iter == 2


def _wait_status(client: Client, job_id: str, status: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        job = client.get(job_id)
        seen.append(job["status"])
        if job["status"] == status:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never became {status}: {seen[-5:]}")


def test_a_silent_recorder_fails_its_job_and_a_resumed_run_continues_it(alice, problem, service):
    records = []
    recorder = alice.record("resumed-run", RUN, heartbeat_s=0.5)
    hypercore.tune(problem, callback=_feed(recorder, records), iterations=2)
    time.sleep(HEARTBEAT_TIMEOUT_S + 1)
    assert alice.get(recorder.job_id)["status"] == "running"  # its heartbeats keep it alive
    recorder.close()  # heartbeats stop, as a killed process's do

    job = _wait_status(alice, recorder.job_id, "failed")
    assert job["error"].startswith(
        f"the recorder of this library run sent no heartbeat for {HEARTBEAT_TIMEOUT_S} s"
    )
    assert job["meta_iter"] == 2
    assert f"re-queued stranded job {job['id']}" not in service.logs()  # the worker's reaper failed it

    # Resumed from the checkpoint after meta-iteration 0: meta-iteration 1 is skipped (stored), 2 added.
    resumed = alice.record("resumed-run", RUN, job_id=job["id"])
    assert (resumed.job["status"], resumed.recorded) == ("running", 2)
    more = []
    hypercore.tune(problem, checkpoint=records[0].checkpoint, callback=_feed(resumed, more))
    assert [r.meta_iter for r in more] == [1, 2]
    job = alice.get(job["id"])
    assert (job["status"], job["meta_iter"], job["error"]) == ("succeeded", 3, None)
    assert alice.steps(job) == [r.step() for r in (*records, more[1])]
    # the resumed run retraced the first one bit for bit
    assert {k: v for k, v in more[0].step().items() if k != "elapsed_s"} == {
        k: v for k, v in records[1].step().items() if k != "elapsed_s"
    }
    with pytest.raises(Conflict, match="a succeeded job cannot become running"):
        alice.record("resumed-run", RUN, job_id=job["id"])


def _fake(meta_iter: int) -> SimpleNamespace:
    """A meta-iteration of a user's own loop: the `Record` attributes a recorder reads."""
    return SimpleNamespace(
        meta_iter=meta_iter,
        objective=0.5,
        train_loss=0.4,
        valid_loss=0.5,
        valid_error=0.1,
        test_loss=None,
        test_error=None,
        hypergrad_norm=float("inf"),
        elapsed_s=0.01,
        reversal_exact=True,
        hyperparameters={
            "learning_rate": {
                "values": np.array([0.1, np.nan]),
                "axes": ["step"],
                "labels": {},
                "learned": True,
            }
        },
    )


def test_only_its_tenant_writes_a_recording_and_bad_writes_name_the_field(alice, service):
    key = f"own-{uuid.uuid4()}"
    recorder = alice.record("own-model", OWN, idempotency_key=key, heartbeat_s=60)
    assert recorder(_fake(0)) is False
    again = alice.record("own-model", OWN, idempotency_key=key, heartbeat_s=60)
    assert (again.job_id, again.recorded) == (recorder.job_id, 1)
    again.close()
    lr = alice.hyperparameters(recorder.job_id, "learning_rate")
    assert lr.values[0] == 0.1 and np.isnan(lr.values[1])
    assert alice.steps(recorder.job_id)[0]["hypergrad_norm"] is None
    assert alice.hyperparameter_list(recorder.job_id)[0]["name"] == "learning_rate"

    bob = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.keys['bob']}"})
    with bob:
        for path, body in (
            ("steps", step_body(_fake(1), fixed=False)),
            ("heartbeat", None),
            ("finish", {"status": "succeeded"}),
            ("resume", None),
            ("cancel", None),
        ):
            answer = bob.post(f"/v1/jobs/{recorder.job_id}/{path}", json=body)
            assert answer.status_code == 404, (path, answer.text)

    with pytest.raises(Conflict, match=r"meta_iter 2: .* so the next one is meta_iter 1"):
        alice._request("POST", f"/v1/jobs/{recorder.job_id}/steps", json=step_body(_fake(2), fixed=False))
    with pytest.raises(ValidationError) as caught:
        alice._request(
            "POST",
            f"/v1/jobs/{recorder.job_id}/steps",
            json={**step_body(_fake(1), fixed=False), "meta_iter": 3},
        )
    assert caught.value.fields == ["meta_iter"]
    bad = step_body(_fake(1), fixed=False)
    bad["hyperparameters"]["learning_rate"]["axes"] = ["step", "layer"]
    with pytest.raises(ValidationError, match="axes names 2 axes but the values have 1") as caught:
        alice._request("POST", f"/v1/jobs/{recorder.job_id}/steps", json=bad)
    assert caught.value.fields == ["hyperparameters.learning_rate"]
    with pytest.raises(ValidationError) as caught:
        alice.record("too-long", {**OWN, "meta": {"iterations": 10**6}})
    assert caught.value.fields == ["meta.iterations"]

    with pytest.raises(RuntimeError, match="diverged"), recorder:
        raise RuntimeError("diverged")
    job = alice.get(recorder.job_id)
    assert (job["status"], job["error"]) == ("failed", "the library run raised RuntimeError: diverged")
    with Client(service.url, api_key=service.keys["bob"]) as other, pytest.raises(NotFound):
        other.record("x", job_id=recorder.job_id)
