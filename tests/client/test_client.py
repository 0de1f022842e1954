"""`revtune.Client` against a live server: uvicorn, SQLite, a real Celery worker running the engine."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest

from client.live import _CLI, TINY_LAYERS, TINY_SPEC, Service, free_port, start_service, tiny_spec
from revtune import Client
from revtune.client import (
    Conflict,
    NotFound,
    ProgressBar,
    RevtuneError,
    Unauthorized,
    Unavailable,
    ValidationError,
    load_spec,
)


def test_importing_the_client_imports_no_engine():
    code = "import sys, revtune; print([m for m in ('jax', 'hypercore', 'fastapi') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_job_runs_to_the_end_and_its_results_read_back(client: Client):
    key = f"test-{uuid.uuid4()}"
    job = client.submit(TINY_SPEC, idempotency_key=key)
    assert job["status"] in ("queued", "running")
    assert job["meta_iterations"] == TINY_SPEC["meta"]["iterations"]
    assert client.submit(TINY_SPEC, idempotency_key=key)["id"] == job["id"]

    progress = io.StringIO()
    done = client.wait(job, progress=True, poll=0.2, timeout=240, stream=progress)
    assert done["status"] == "succeeded", done["error"]
    n = TINY_SPEC["meta"]["iterations"]
    assert done["meta_iter"] == n
    lines = progress.getvalue().splitlines()
    assert lines[-1].startswith("[" + "#" * 30 + "]") and f"{n}/{n} meta-iterations" in lines[-1]
    assert "succeeded" in lines[-1]

    steps = client.steps(job)
    assert [s["meta_iter"] for s in steps] == list(range(n))
    assert all(np.isfinite(s["objective"]) and s["hypergrad_norm"] > 0 for s in steps)
    assert all(s["reversal_exact"] for s in steps)
    assert done["best"]["objective"] == min(s["objective"] for s in steps)
    assert client.steps(job, after=n - 2) == steps[-1:]
    assert client.steps(job, after=n - 1) == []

    lr = client.hyperparameters(job, "learning_rate")
    T = TINY_SPEC["training"]["steps"]
    assert lr.meta_iter == n and lr.values.shape == (T, TINY_LAYERS) and lr.axes == ("step", "layer")
    assert len(lr.labels["layer"]) == TINY_LAYERS
    assert np.all(lr.values > 0)
    assert not np.allclose(lr.values, TINY_SPEC["hyperparameters"]["learning_rate"]["init"]), "not learned"
    first = client.hyperparameters(job, "learning_rate", meta_iter=1)
    assert first.meta_iter == 1 and first.values.shape == lr.values.shape
    assert not np.array_equal(first.values, lr.values)

    npy = np.load(io.BytesIO(client.download_hyperparameter(job, "learning_rate", format="npy")))
    np.testing.assert_array_equal(npy, lr.values)
    rows = list(
        csv.reader(io.StringIO(client.download_hyperparameter(job, "learning_rate", format="csv").decode()))
    )
    # long format: a header, then one row per (step, layer) value in C order
    assert rows[0] == ["step", "layer", "value"] and len(rows) == 1 + T * TINY_LAYERS
    np.testing.assert_array_equal([float(r[-1]) for r in rows[1:]], lr.values.ravel())

    names = {h["name"]: h for h in client.hyperparameter_list(job)}
    assert {"learning_rate", "momentum", "init_scale"} <= set(names)
    assert names["learning_rate"]["learned"] is True
    assert client.hyperparameters(job, "init_scale").values.shape == (TINY_LAYERS,)

    with pytest.raises(NotFound):
        client.hyperparameters(job, "no_such_hyperparameter")
    client.delete(job)
    with pytest.raises(NotFound):
        client.get(job["id"])


def test_a_spec_beyond_its_limits_is_refused_naming_the_field(client: Client):
    spec = tiny_spec(training={"steps": 10**9})
    with pytest.raises(ValidationError) as caught:
        client.submit(spec)
    assert "training.steps" in caught.value.fields
    assert "training.steps" in str(caught.value)
    assert caught.value.status_code == 422


def test_cancel_and_delete_follow_the_job_states(client: Client):
    job = client.submit(tiny_spec(meta={"iterations": 500, "optimizer": "adam", "learning_rate": 0.04}))
    with pytest.raises(Conflict):
        client.delete(job)
    client.cancel(job)
    done = client.wait(job, progress=False, poll=0.2, timeout=120)
    assert done["status"] == "cancelled"
    assert done["meta_iter"] < 500
    client.delete(job)
    with pytest.raises(NotFound):
        client.cancel(job)


def test_listing_pages_through_every_job_and_filters_by_status(client: Client, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(tiny_spec(name="listed")))  # JSON is YAML
    ids = [client.submit(spec_file)["id"] for _ in range(3)]
    for job_id in ids:
        client.cancel(job_id)
    first = client.list(limit=2)
    assert len(first.items) == 2 and first.next_cursor
    every = [j["id"] for j in client.iter_jobs(page_size=2)]
    assert len(every) == len(set(every)) and set(ids) <= set(every)
    for job_id in ids:
        client.wait(job_id, progress=False, poll=0.2, timeout=120)
    cancelled = {j["id"] for j in client.iter_jobs(status="cancelled")}
    assert set(ids) <= cancelled
    assert all(j["status"] == "cancelled" for j in client.list(status="cancelled").items)


def test_templates_are_ready_specs(client: Client):
    names = client.templates()
    assert names
    spec = client.template(names[0])
    assert {"dataset", "model", "training", "hyperparameters"} <= set(spec)
    with pytest.raises(NotFound):
        client.template("no-such-template")
    with pytest.raises(ValueError, match="exactly one"):
        client.submit(TINY_SPEC, template=names[0])


def test_datasets_upload_and_list(client: Client, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "blobs.npz"
    np.savez(path, X=rng.normal(size=(60, 5)).astype(np.float32), y=rng.integers(0, 3, size=60))
    ds = client.upload_dataset(path, name="blobs")
    assert ds["name"] == "blobs" and ds["n_features"] == 5 and ds["n_classes"] == 3
    assert ds["example_shape"] == [5] and ds["target"] == "class" and ds["n_outputs"] == 3
    assert ds["id"] in {d["id"] for d in client.datasets()}
    assert client.dataset(ds["id"])["sha256"] == ds["sha256"]
    client.delete_dataset(ds["id"])
    with pytest.raises(NotFound):
        client.dataset(ds["id"])


def test_an_unreachable_server_is_unavailable():
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as c, pytest.raises(Unavailable) as caught:
        c.templates()
    assert caught.value.status_code is None and "cannot reach" in str(caught.value)
    assert isinstance(caught.value, RevtuneError)


def test_progress_bar_draws_done_of_total_and_objective():
    out = io.StringIO()
    bar = ProgressBar(8, stream=out, width=8)
    bar.update(0, None, "queued")
    bar.update(2, 0.51234567, "running")
    bar.update(2, 0.51234567, "running")
    bar.update(8, 0.25, "succeeded")
    bar.close()
    assert out.getvalue().splitlines() == [
        "[--------] 0/8 meta-iterations  objective     -      queued",
        "[##------] 2/8 meta-iterations  objective 0.512346  running",
        "[########] 8/8 meta-iterations  objective 0.25  succeeded",
    ]


def test_progress_bar_writes_a_note_above_the_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    bar = ProgressBar(4, stream=out, width=4)
    bar.update(1, 0.5, "running")
    bar.note("warning (diverged): 1 of 2")
    bar.close()
    drawn = "[#---] 1/4 meta-iterations  objective 0.5  running"
    assert out.getvalue() == f"\r{drawn}\x1b[K\rwarning (diverged): 1 of 2\x1b[K\n{drawn}\n"


def test_load_spec_reads_yaml_and_json_and_names_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ntraining: {steps: 3}\n")
    (tmp_path / "b.json").write_text('{"name": "b"}')
    (tmp_path / "c.yaml").write_text("- not a mapping\n")
    assert load_spec(tmp_path / "a.yaml") == {"name": "a", "training": {"steps": 3}}
    assert load_spec(tmp_path / "b.json") == {"name": "b"}
    with pytest.raises(ValueError, match="c.yaml must be a mapping"):
        load_spec(tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_spec(tmp_path / "missing.yaml")


def _create_key(service: Service, tenant: str) -> str:
    proc = subprocess.run(
        [*_CLI, "keys", "create", "--tenant", tenant],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_with_auth_on_a_key_is_needed_and_tenants_see_only_their_jobs(tmp_path_factory, monkeypatch):
    monkeypatch.delenv("REVTUNE_API_KEY", raising=False)
    service = start_service(tmp_path_factory.mktemp("auth-on"), workers=0, auth="on")
    try:
        alice, bob = _create_key(service, "alice"), _create_key(service, "bob")
        with Client(service.url) as anonymous, pytest.raises(Unauthorized) as caught:
            anonymous.list()
        assert caught.value.status_code == 401
        with Client(service.url, api_key="rt_not_a_key") as wrong, pytest.raises(Unauthorized):
            wrong.list()
        with Client(service.url, api_key=alice) as a, Client(service.url, api_key=bob) as b:
            job = a.submit(TINY_SPEC)
            assert a.get(job)["id"] == job["id"]
            assert job["id"] in {j["id"] for j in a.iter_jobs()}
            assert job["id"] not in {j["id"] for j in b.iter_jobs()}
            with pytest.raises(NotFound):
                b.get(job)
            with pytest.raises(NotFound):
                b.cancel(job)
    finally:
        service.stop()
