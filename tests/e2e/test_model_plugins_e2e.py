"""Model plugins end to end: the example package (examples/revtune-plugin-example, installed by the
``dev`` extra) offered by a real `revtune worker` with ``REVTUNE_MODEL_PLUGINS=resmlp``, beside a worker
that has no plugin enabled; specs submitted over HTTP only, results compared with the library on the
same problem (bit-identical), and a job whose plugin's only worker died failing with a clear error."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from e2e._infra import fresh_redis
from e2e._procs import WORKER_COMMAND, Processes, free_port, start_api, wait_for
from e2e.test_service_e2e import Service, assert_same_hyperparameters, assert_steps_complete

pytestmark = pytest.mark.integration

SPEC = {
    "name": "e2e-plugin",
    "dataset": {"name": "digits", "train": 200, "valid": 100, "test": 100, "batch_size": 50},
    "model": {"kind": "plugin", "name": "resmlp", "config": {"width": 16, "blocks": 2, "smoothing": 0.1}},
    "training": {"steps": 10},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "layer", "learn": True},
        "init_scale": {"init": 0.1, "granularity": "layer", "learn": True},
    },
    "meta": {"iterations": 3},
    "seed": 0,
}


@pytest.fixture(scope="module")
def service(tmp_path_factory, make_postgres_database):
    folder = tmp_path_factory.mktemp("e2e-plugins")
    db_url = make_postgres_database("revtune_e2e_plugins")
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
            REVTUNE_QUEUED_TIMEOUT_S="3",
            JAX_PLATFORMS="cpu",
        )
        env.pop("REVTUNE_MODEL_PLUGINS", None)
        upgrade = subprocess.run(
            [*WORKER_COMMAND[:-1], "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
        )
        assert upgrade.returncode == 0, upgrade.stderr
        procs = Processes(folder)
        try:
            service = Service(start_api(procs, env, free_port()), env, procs)
            service.procs.start("worker-without-plugins", WORKER_COMMAND, env)
            with service.http:
                yield service
        finally:
            procs.close()


def plugins_offered(service: Service) -> list[dict]:
    reply = service.http.get("/v1/models")
    assert reply.status_code == 200, reply.text
    return reply.json()["plugins"]


def start_plugin_worker(service: Service):
    proc = service.procs.start(
        "worker-resmlp", WORKER_COMMAND, {**service.env, "REVTUNE_MODEL_PLUGINS": "resmlp"}
    )
    wait_for(lambda: plugins_offered(service), 120, "the worker to advertise resmlp")
    return proc


def test_a_plugin_no_worker_offers_is_refused_on_model_name(service):
    body = service.http.get("/v1/models").json()
    assert [m["kind"] for m in body["builtin"]] == ["mlp", "logreg", "toy2d", "multitask_mlp", "cnn", "cnn1d"]
    assert body["plugins"] == []
    reply = service.http.post("/v1/jobs", json=SPEC)
    assert reply.status_code == 422, reply.text
    assert [e["loc"] for e in reply.json()["detail"]] == [["body", "model", "name"]]
    assert "no worker offers the model plugin 'resmlp'" in reply.json()["detail"][0]["msg"]


def test_a_plugin_job_runs_on_the_worker_that_has_it_and_matches_the_library(service):
    from hypercore import plugins
    from hypercore.spec import problem_from_spec
    from hypercore.tune import tune

    start_plugin_worker(service)
    (offered,) = plugins_offered(service)
    assert (offered["name"], offered["version"], offered["kind"]) == ("resmlp", "0.1.0", "plugin")
    assert offered["config_schema"]["required"] == ["width"] and len(offered["workers"]) == 1

    bad = {**SPEC, "model": {**SPEC["model"], "config": {"width": 16, "blocks": 99}}}
    reply = service.http.post("/v1/jobs", json=bad)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"] == ["body", "model", "config", "blocks"]

    # The worker without plugins consumes the common queue only: had it taken the job, it would fail.
    job_id = service.submit(SPEC)
    job = service.wait_status(job_id, {"succeeded", "failed", "cancelled"}, 180)
    assert job["status"] == "succeeded", job
    steps = service.steps(job_id)
    assert_steps_complete(steps, 3)

    library = tune(problem_from_spec(SPEC, plugins=plugins.load(["resmlp"])))
    for step, record in zip(steps, library.records, strict=True):
        assert (step["objective"], step["hypergrad_norm"]) == (record.objective, record.hypergrad_norm)
    meta_iter, learned = service.hyperparameters(job_id)
    assert meta_iter == 3
    # the dataset's example shape is the service's to give; the plugin's arrays are only the worker's
    listing = service.http.get(f"/v1/jobs/{job_id}/hyperparameters").json()
    assert (listing["example_shape"], listing["parameter_shapes"]) == ([8, 8, 1], None)
    want = {name: np.asarray(v.values) for name, v in library.records[-1].hyperparameters.items()}
    assert_same_hyperparameters(learned, want)


def test_a_job_whose_plugin_disappeared_fails_saying_so(service):
    plugin_worker = next((p for p in service.procs.children if "worker-resmlp" in p.log_path), None)
    if plugin_worker is None or plugin_worker.poll() is not None:
        plugin_worker = start_plugin_worker(service)
    job_id = service.submit({**SPEC, "meta": {"iterations": 400}})
    wait_for(lambda: service.steps(job_id), 120, "the plugin job's first step")
    service.procs.kill(plugin_worker)  # its only worker dies; the other one lacks the plugin

    job = service.wait_status(job_id, {"succeeded", "failed", "cancelled"}, 120)
    assert job["status"] == "failed", job
    assert job["error"].startswith("model.name: no worker offers the model plugin 'resmlp' any more"), job
    assert plugins_offered(service) == []
