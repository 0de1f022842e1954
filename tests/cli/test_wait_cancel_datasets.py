"""``revtune wait``, ``revtune cancel`` on a running job and ``revtune datasets delete``, against the
shared live server."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from client.live import WARNED_SPEC, Service, tiny_spec

from revtune import Client
from revtune.cli import main

LONG = tiny_spec(name="long", meta={"iterations": 300, "optimizer": "adam"})


def revtune(capsys, *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def client(service: Service):
    with Client(service.url) as c:
        yield c


def running(client: Client, spec: dict) -> str:
    """A job of ``spec`` once the worker runs it."""
    job_id = client.submit(spec)["id"]
    deadline = time.monotonic() + 120
    while client.get(job_id)["status"] == "queued":
        assert time.monotonic() < deadline, "the worker did not start the job"
        time.sleep(0.1)
    return job_id


def test_wait_shows_progress_and_warnings_and_exits_0_when_the_job_succeeds(
    service: Service, client: Client, capsys
):
    job_id = client.submit(WARNED_SPEC)["id"]
    rc, out, err = revtune(capsys, "wait", job_id, "--url", service.url)
    assert rc == 0, err
    # what `submit --wait` draws (`Client.wait`): the warnings as they appear, then the bar at the end
    noted = [line.split(":")[0] for line in err.splitlines() if line.startswith("warning")]
    assert noted == ["warning (diverged)", "warning (chaos_guard)"]
    assert "4/4 meta-iterations" in err.splitlines()[-1]
    assert f"id         {job_id}" in out and "status     succeeded" in out
    assert sum(line.startswith("warning") for line in out.splitlines()) == 2

    rc, out, _ = revtune(capsys, "wait", job_id, "--json", "--url", service.url)
    assert rc == 0 and json.loads(out)["status"] == "succeeded"


def test_wait_exits_1_for_a_failed_or_cancelled_job_and_2_for_no_such_job(
    service: Service, client: Client, tmp_path, capsys
):
    # Sorted by class and not shuffled: the validation rows hold a class the training rows lack,
    # which fails the job as soon as the worker builds it.
    path = tmp_path / "sorted.npz"
    np.savez(path, X=np.random.default_rng(0).normal(size=(40, 3)), y=np.repeat([0, 1], 20))
    dataset = client.upload_dataset(path)
    failing = client.submit(
        tiny_spec(name="fails", dataset={"id": dataset["id"], "train": 20, "valid": 20, "shuffle": False})
    )
    rc, out, err = revtune(capsys, "wait", failing["id"], "--url", service.url)
    assert rc == 1, err
    assert "status     failed" in out and "error      dataset" in out

    cancelled = client.submit(LONG)
    client.cancel(cancelled)
    rc, out, _ = revtune(capsys, "wait", cancelled["id"], "--url", service.url)
    assert rc == 1 and "status     cancelled" in out

    rc, _, err = revtune(capsys, "wait", "no-such-job", "--url", service.url)
    assert rc == 2 and err.startswith("revtune: error:") and "404" in err


def test_cancelling_a_running_job_says_the_cancel_is_pending(service: Service, client: Client, capsys):
    job_id = running(client, LONG)
    rc, out, _ = revtune(capsys, "cancel", job_id, "--url", service.url)
    assert rc == 0 and "status     running" in out
    assert "cancel     requested; the job stops after its current meta-iteration" in out
    rc, out, _ = revtune(capsys, "show", job_id, "--json", "--url", service.url)
    shown = json.loads(out)
    assert shown["cancel_requested"] is True

    assert client.wait(job_id, progress=False, poll=0.2, timeout=120)["status"] == "cancelled"
    rc, out, _ = revtune(capsys, "show", job_id, "--url", service.url)
    assert "status     cancelled" in out and "requested;" not in out


def test_datasets_delete_removes_an_upload_and_says_why_it_cannot(
    service: Service, client: Client, tmp_path, capsys
):
    path = tmp_path / "blobs.npz"
    rng = np.random.default_rng(1)
    np.savez(path, X=rng.normal(size=(300, 64)), y=np.arange(300) % 10)
    dataset = client.upload_dataset(path)
    url = ("--url", service.url)

    # queued or running (it cannot end in the meantime), the job holds the dataset
    uses_it = tiny_spec(
        name="uses-it", dataset={"id": dataset["id"], "train": 200, "valid": 100}, meta=LONG["meta"]
    )
    job_id = client.submit(uses_it)["id"]
    rc, _, err = revtune(capsys, "datasets", "delete", dataset["id"], *url)
    assert rc == 2 and err.startswith("revtune: error:") and "Traceback" not in err
    assert f"used by active job(s) {job_id}" in err and "revtune cancel" in err
    client.cancel(job_id)
    client.wait(job_id, progress=False, poll=0.2, timeout=120)

    # options before the action stand as well as after it
    rc, out, err = revtune(capsys, "datasets", *url, "delete", dataset["id"])
    assert rc == 0, err
    assert out.strip() == f"deleted dataset {dataset['id']}"
    assert dataset["id"] not in {d["id"] for d in client.datasets()}

    rc, _, err = revtune(capsys, "datasets", "delete", dataset["id"], *url)
    assert rc == 2 and f"no dataset {dataset['id']!r} on {service.url}" in err
    rc, out, _ = revtune(capsys, "datasets", *url)  # without an action: the listing, as before
    assert rc == 0 and dataset["id"] not in out
