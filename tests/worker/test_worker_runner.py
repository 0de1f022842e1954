"""`worker.runner.run_job` called directly, in this process, on a real database.

The Celery task is a one-line shell around it; tests/e2e runs the same code in real worker
processes. Each meta-iteration must leave a step row, the hyperparameter snapshots and the
checkpoint; stops (cancel, shutdown) and failures must leave the job in a state a user can read.
"""

from __future__ import annotations

import copy
import importlib
import logging

import numpy as np
import pytest
from direct_worker import direct_worker_fixtures

from hypercore.spec import problem_from_spec
from hypercore.tune import Checkpoint, tune
from jobs import models, repository
from jobs.spec import validate_spec
from worker import runner

pytestmark = pytest.mark.integration

# Logistic regression on digits, 5 steps: the fastest job there is to compile and run.
SPEC = {
    "name": "worker-direct",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "test": 50, "batch_size": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    # The stored spec lists these in the schema's order, not alphabetically: a resumed run must
    # still accept the checkpoint (which hypercore writes in sorted order).
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "global", "learn": True},
        "init_scale": {"init": 0.1, "granularity": "global", "learn": True},
    },
    "meta": {"iterations": 4},
    "seed": 3,
}


settings, sessions, tenant_id = direct_worker_fixtures("worker")


def submit(sessions, tenant_id, spec: dict) -> str:
    with sessions() as session:
        job, _ = repository.create_job(session, tenant_id, validate_spec(spec))
        session.commit()
        return job.id


def job_row(sessions, job_id: str) -> models.Job:
    with sessions() as session:
        return session.get(models.Job, job_id)


def learned(sessions, tenant_id, job_id) -> tuple[int, dict[str, np.ndarray]]:
    with sessions() as session:
        meta_iter, rows = repository.list_hyperparameters(session, tenant_id, job_id)
        values = {
            row.name: repository.get_hyperparameter(session, tenant_id, job_id, row.name).values
            for row in rows
        }
    return meta_iter, values


@pytest.fixture(scope="module")
def reference():
    """The natural hyperparameters after every meta-iteration of an uninterrupted in-process run."""
    result = tune(problem_from_spec(SPEC))
    return [
        {k: np.asarray(v.values, np.float64) for k, v in r.hyperparameters.items()} for r in result.records
    ]


def test_run_job_records_every_meta_iteration_and_matches_hypercore(settings, sessions, tenant_id, reference):
    job_id = submit(sessions, tenant_id, SPEC)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded"

    job = job_row(sessions, job_id)
    assert (job.status, job.meta_iter, job.error, job.attempts) == ("succeeded", 4, None, 1)
    assert job.warnings is None, "digits' pixels in [0, 1], a learning rate that trains: nothing to tell"
    assert job.started_at <= job.heartbeat_at <= job.finished_at
    with sessions() as session:
        steps = repository.list_steps(session, tenant_id, job_id).items
        assert [s.meta_iter for s in steps] == [0, 1, 2, 3]
        assert all(s.reversal_exact and np.isfinite(s.objective) for s in steps)
        assert job.best_objective == min(s.objective for s in steps)
        checkpoint = session.get(models.Checkpoint, job_id)
        assert checkpoint.meta_iter == 4 and Checkpoint.from_bytes(checkpoint.data).meta_iter == 4
        for k in (1, 2, 3, 4):
            at_k, rows = repository.list_hyperparameters(session, tenant_id, job_id, meta_iter=k)
            assert at_k == k and sorted(r.name for r in rows) == [
                "init_scale",
                "l2",
                "learning_rate",
                "momentum",
            ]
    meta_iter, values = learned(sessions, tenant_id, job_id)
    assert meta_iter == 4
    for name, want in reference[3].items():
        np.testing.assert_array_equal(values[name], want, err_msg=name)

    # A redelivered message for a finished job changes nothing.
    assert runner.run_job(job_id, settings=settings, sessions=sessions) is None
    assert job_row(sessions, job_id).attempts == 1


def test_a_job_that_differs_only_in_seed_and_values_compiles_nothing_on_a_warm_worker(
    settings, sessions, tenant_id
):
    """The compiled programs take the seed, the data and the values as arguments (issue 21): after
    one job, another with a new seed and learning rate runs on the same executable, to the bits the
    library gives it."""
    tune_module = importlib.import_module("hypercore.tune")
    assert (
        runner.run_job(submit(sessions, tenant_id, SPEC), settings=settings, sessions=sessions) == "succeeded"
    )
    other = copy.deepcopy(SPEC)
    other["seed"] = 11
    other["hyperparameters"]["learning_rate"]["init"] = 0.2
    program = tune_module._program(problem_from_spec(other), "reversible")
    held = program._cache_size()
    assert held >= 1, "the first job's executable is the one the second finds"
    job_id = submit(sessions, tenant_id, other)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded"
    assert program._cache_size() == held, "the second job compiled its hypergradient again"
    final = tune(problem_from_spec(other)).records[-1].hyperparameters
    meta_iter, values = learned(sessions, tenant_id, job_id)
    assert meta_iter == 4
    for name, want in final.items():
        np.testing.assert_array_equal(values[name], np.asarray(want.values, np.float64), err_msg=name)


def test_shutdown_hands_the_job_back_and_the_next_run_resumes_to_the_same_result(
    settings, sessions, tenant_id, reference, monkeypatch
):
    job_id = submit(sessions, tenant_id, SPEC)
    record = repository.record_meta_iteration

    def record_then_shut_down(session, job_id, claim, **kwargs):
        if kwargs["step"]["meta_iter"] == 1:
            runner.shutting_down.set()  # what SIGTERM does to the worker process
        return record(session, job_id, claim, **kwargs)

    monkeypatch.setattr(repository, "record_meta_iteration", record_then_shut_down)
    enqueued: list[str] = []
    try:
        assert (
            runner.run_job(job_id, settings=settings, sessions=sessions, enqueue=enqueued.append) == "queued"
        )
    finally:
        runner.shutting_down.clear()
    monkeypatch.undo()
    assert enqueued == [job_id]
    job = job_row(sessions, job_id)
    assert (job.status, job.meta_iter, job.worker_id) == ("queued", 2, None)

    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded"
    with sessions() as session:
        assert [s.meta_iter for s in repository.list_steps(session, tenant_id, job_id).items] == [0, 1, 2, 3]
    meta_iter, values = learned(sessions, tenant_id, job_id)
    assert meta_iter == 4
    for name, want in reference[3].items():
        np.testing.assert_array_equal(values[name], want, err_msg=name)


def test_cancel_requested_while_running_ends_the_job_cancelled(settings, sessions, tenant_id, monkeypatch):
    job_id = submit(sessions, tenant_id, SPEC)
    record = repository.record_meta_iteration

    def cancel_during_first(session, job_id, claim, **kwargs):
        if kwargs["step"]["meta_iter"] == 0:
            with sessions() as other:
                repository.request_cancel(other, tenant_id, job_id)
                other.commit()
        return record(session, job_id, claim, **kwargs)

    monkeypatch.setattr(repository, "record_meta_iteration", cancel_during_first)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "cancelled"
    job = job_row(sessions, job_id)
    assert (job.status, job.meta_iter) == ("cancelled", 1)
    assert job.finished_at is not None


def test_a_job_cancelled_while_queued_is_never_run(settings, sessions, tenant_id):
    job_id = submit(sessions, tenant_id, SPEC)
    with sessions() as session:
        repository.request_cancel(session, tenant_id, job_id)
        session.commit()
    assert runner.run_job(job_id, settings=settings, sessions=sessions) is None
    job = job_row(sessions, job_id)
    assert (job.status, job.attempts, job.started_at) == ("cancelled", 0, None)


def test_a_missing_upload_fails_with_a_message_naming_the_field(settings, sessions, tenant_id):
    spec = {**SPEC, "dataset": {"id": "0123456789abcdef", "train": 10, "valid": 5}}
    job_id = submit(sessions, tenant_id, spec)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "failed"
    job = job_row(sessions, job_id)
    assert job.error.startswith("dataset.id: ") and "0123456789abcdef" in job.error


def test_an_upload_with_too_few_rows_fails_naming_the_split(settings, sessions, tenant_id):
    rng = np.random.default_rng(0)
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        settings.dataset_path("fewrows"), X=rng.normal(size=(20, 4)).astype(np.float32), y=np.arange(20) % 3
    )
    spec = {**SPEC, "dataset": {"id": "fewrows", "train": 15, "valid": 10}}
    job_id = submit(sessions, tenant_id, spec)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "failed"
    error = job_row(sessions, job_id).error
    assert error.startswith("dataset: ") and "exceeds the 20" in error


def test_a_multitask_upload_runs_learned_sharing_as_hypercore_does(settings, sessions, tenant_id):
    """An X/y/task upload, split task by task, trains a multitask_mlp whose sharing matrices the
    worker learns exactly as `hypercore.tune` does on `hypercore.data.from_arrays` of the arrays."""
    from hypercore.data import from_arrays

    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 3
    task = np.repeat([0, 1, 2], 20)[rng.permutation(60)]
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    np.savez(settings.dataset_path("threetasks"), X=X, y=y, task=task)
    spec = {
        **SPEC,
        "dataset": {"id": "threetasks", "train": 30, "valid": 15, "test": 15, "resplit": True},
        "model": {"kind": "multitask_mlp", "hidden": [4]},
        "hyperparameters": {"sharing": {"init": 0.5, "granularity": "layer", "learn": True}},
        "meta": {"iterations": 2},
    }
    job_id = submit(sessions, tenant_id, spec)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded", job_row(
        sessions, job_id
    ).error
    ds = from_arrays(X, y, 30, 15, 15, task=task, shuffle_seed=spec.get("seed", 0))  # stored shuffled
    assert ds.n_tasks == 3
    expected = tune(problem_from_spec(spec, dataset=ds)).hyperparameters
    meta_iter, got = learned(sessions, tenant_id, job_id)
    assert meta_iter == 2 and sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], np.asarray(value.values, np.float64), err_msg=name)
    assert expected["sharing.layer0"].labels["task"] == ["task0", "task1", "task2"]
    assert not np.allclose(got["sharing.layer0"], 0.5 * np.eye(3) + 0.5 / 3)  # it learned


def test_an_image_shaped_upload_trains_a_cnn_as_hypercore_does(settings, sessions, tenant_id):
    """An (n, H, W) upload keeps its example shape through the stored file: a ``cnn`` job on it
    learns what `hypercore.tune` learns on the same arrays, and a per-weight penalty on a kernel is
    stored with the kernel's own axes."""
    from hypercore.data import from_arrays

    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(60, 6, 6)).astype(np.float32), np.arange(60) % 3
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    np.savez(settings.dataset_path("images"), X=X, y=y)
    spec = {
        **SPEC,
        "dataset": {"id": "images", "train": 30, "valid": 15, "test": 15, "batch_size": 10},
        "model": {"kind": "cnn", "channels": [2], "kernel": 3, "pool": 2},
        "hyperparameters": {
            "learning_rate": {"init": 0.3, "granularity": "layer", "learn": True},
            "l2": {"init": 1e-3, "granularity": "weight", "learn": True},
        },
        "meta": {"iterations": 2},
    }
    job_id = submit(sessions, tenant_id, spec)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded", job_row(
        sessions, job_id
    ).error
    ds = from_arrays(X, y, 30, 15, 15, shuffle_seed=spec["seed"])
    assert ds.example_shape == (6, 6) and ds.n_features == 36
    expected = tune(problem_from_spec(spec, dataset=ds)).hyperparameters
    meta_iter, got = learned(sessions, tenant_id, job_id)
    assert meta_iter == 2 and sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], np.asarray(value.values, np.float64), err_msg=name)
    assert got["l2.conv0.W"].shape == (3, 3, 1, 2) and got["l2.layer0.W"].shape == (18, 3)
    assert expected["l2.conv0.W"].axes == ["row", "col", "in", "out"]


def test_runaway_training_fails_with_the_guards_diagnosis(settings, sessions, tenant_id):
    hypers = {
        **SPEC["hyperparameters"],
        "learning_rate": {"init": 1e6, "granularity": "global", "learn": True},
    }
    job_id = submit(sessions, tenant_id, {**SPEC, "hyperparameters": hypers, "meta": {"iterations": 20}})
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "failed"
    error = job_row(sessions, job_id).error
    assert error.startswith("the meta-optimisation diverged") and "learning rate" in error


def test_a_regression_upload_trains_on_the_squared_error_as_hypercore_does(settings, sessions, tenant_id):
    """A float ``y`` is a real target: the job learns what `hypercore.tune` learns on the same arrays
    (shuffled by the spec's seed), bit for bit, and its steps have no error rates."""
    from hypercore.data import from_arrays

    rng = np.random.default_rng(11)
    X = rng.normal(size=(80, 5))
    y = X @ rng.normal(size=(5, 2)) + 0.1 * rng.normal(size=(80, 2))
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    np.savez(settings.dataset_path("regression"), X=X, y=y)
    spec = {
        **SPEC,
        "dataset": {"id": "regression", "train": 40, "valid": 20, "test": 20, "batch_size": 10},
        "model": {"kind": "mlp", "hidden": [4]},
        "hyperparameters": {
            "learning_rate": {"init": 0.05, "granularity": "layer", "learn": True},
            "l2": {"init": 1e-3, "granularity": "layer", "learn": True},
        },
        "meta": {"iterations": 3},
    }
    job_id = submit(sessions, tenant_id, spec)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded", job_row(
        sessions, job_id
    ).error
    ds = from_arrays(X, y, 40, 20, 20, shuffle_seed=spec["seed"])
    assert (ds.target, ds.n_outputs) == ("real", 2)
    result = tune(problem_from_spec(spec, dataset=ds))
    meta_iter, got = learned(sessions, tenant_id, job_id)
    assert meta_iter == 3 and sorted(got) == sorted(result.hyperparameters)
    for name, value in result.hyperparameters.items():
        np.testing.assert_array_equal(got[name], np.asarray(value.values, np.float64), err_msg=name)
    with sessions() as session:
        steps = repository.list_steps(session, tenant_id, job_id).items
    assert [(s.valid_error, s.test_error) for s in steps] == [(None, None)] * 3
    assert [s.valid_loss for s in steps] == [r.valid_loss for r in result.records]
    assert [s.reversal_exact for s in steps] == [True] * 3


def test_the_worker_prepares_the_engine_before_its_first_job(caplog, monkeypatch):
    """`revtune worker` loads the fused CPU kernels and runs their check at its start
    (`runner.prepare_engine`), so a fresh worker's first job does not wait for them; with the
    kernels turned off it says so, and loads nothing."""
    from hypercore import _fused

    with caplog.at_level(logging.INFO, logger="worker.runner"):
        runner.prepare_engine()
    assert "fused CPU kernels: on" in caplog.text
    assert _fused._state["checked"] is True  # loaded and checked: the engine's first step does neither

    monkeypatch.setenv("REVTUNE_FUSED_KERNELS", "0")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.runner"):
        runner.prepare_engine()
    assert "fused CPU kernels: off" in caplog.text
