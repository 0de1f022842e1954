"""A job's warnings (`worker.health`) as `worker.runner.run_job` records them, called directly in
this process on a real PostgreSQL database (as in test_worker_runner.py), with tiny jobs: logistic
regression or an 8-unit MLP on 100 digits, 5 to 10 steps, 2 to 4 meta-iterations.

- ``unscaled_inputs``: digits (pixels in [0, 1]) multiplied by 1000, uploaded;
- ``diverged`` and ``chaos_guard``: a learning rate of 4e5 on plain digits, at the edge of what the
  weights' fixed point holds, diverges in meta-iterations 1 and 2 of 4 (the guard backs off and the
  next draw trains); 1e8 diverges in every one, and the job fails.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
from direct_worker import direct_worker_fixtures
from sklearn.datasets import load_digits

from jobs import models, repository
from jobs.spec import validate_spec
from worker import runner

pytestmark = pytest.mark.integration

SPEC = {
    "name": "warnings",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "global", "learn": True}},
    "meta": {"iterations": 2},
    "seed": 0,
}


def spec(*, learning_rate: float | None = None, iterations: int | None = None, **sections) -> dict:
    out = copy.deepcopy(SPEC)
    out.update(copy.deepcopy(sections))
    if learning_rate is not None:
        out["hyperparameters"]["learning_rate"]["init"] = learning_rate
    if iterations is not None:
        out["meta"]["iterations"] = iterations
    return out


settings, sessions, tenant_id = direct_worker_fixtures(
    "warnings", heartbeat_interval_s=0.5, heartbeat_timeout_s=30
)


@pytest.fixture(scope="module")
def digits_x1000(settings) -> dict:
    """The dataset section of an upload of sklearn's digits as pixels in [0, 1], times 1000."""
    digits = load_digits()
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    X = (digits.data / 16.0 * 1000).astype(np.float32)
    np.savez(settings.dataset_path("digits-x1000"), X=X, y=digits.target)
    return {"id": "digits-x1000", "train": 100, "valid": 50, "batch_size": 50}


def run_to_the_end(settings, sessions, tenant_id, job_spec: dict):
    with sessions() as session:
        job, _ = repository.create_job(session, tenant_id, validate_spec(job_spec))
        session.commit()
    status = runner.run_job(job.id, settings=settings, sessions=sessions, enqueue=lambda _: None)
    with sessions() as session:
        row = session.get(models.Job, job.id)
        steps = repository.list_steps(session, tenant_id, job.id).items
        session.expunge_all()
    return status, row, steps


def by_code(job: models.Job) -> dict[str, dict]:
    codes = [w["code"] for w in job.warnings or []]
    assert len(codes) == len(set(codes)), f"one warning per code: {codes}"
    return {w["code"]: w for w in job.warnings or []}


def test_an_mlp_on_digits_times_1000_warns_of_unscaled_inputs(settings, sessions, tenant_id, digits_x1000):
    job_spec = spec(
        dataset=digits_x1000,
        model={"kind": "mlp", "hidden": [8], "activation": "tanh"},
        training={"steps": 10},
        hyperparameters={"learning_rate": {"init": 0.5, "granularity": "layer_step", "learn": True}},
    )
    status, job, steps = run_to_the_end(settings, sessions, tenant_id, job_spec)
    assert status == job.status == "succeeded", job.error
    warnings = by_code(job)
    assert list(warnings)[0] == "unscaled_inputs", "found when the job is built, before any meta-iteration"
    unscaled = warnings["unscaled_inputs"]
    assert unscaled["meta_iter"] is None
    found = re.search(r"feature \d+ of 64 has a standard deviation of (\d+), beyond 10 ", unscaled["message"])
    assert found and 300 < int(found[1]) < 500, unscaled["message"]  # 0.41 in digits' pixels, x1000
    assert "standardise X per feature" in unscaled["message"]
    assert len(steps) == 2


def test_a_job_that_diverges_in_some_meta_iterations_succeeds_with_the_count(settings, sessions, tenant_id):
    status, job, steps = run_to_the_end(settings, sessions, tenant_id, spec(learning_rate=4e5, iterations=4))
    assert status == job.status == "succeeded" and job.error is None
    assert [s.meta_iter for s in steps if s.objective is None] == [1, 2]
    warnings = by_code(job)
    assert list(warnings) == ["diverged", "chaos_guard"]
    diverged = warnings["diverged"]
    assert diverged["meta_iter"] == 1, "where it began"
    # updated after the last meta-iteration, which trained: the count of all four
    assert diverged["message"].startswith(
        "training diverged (the objective was not finite) in 2 of the 4 meta-iterations so far: "
        "lower hyperparameters.learning_rate.init"
    )
    guard = warnings["chaos_guard"]
    assert guard["meta_iter"] == 1
    assert guard["message"].startswith(
        "the chaos guard backed off 2 times so far, the latest at meta-iteration 2 (the objective or"
    )
    assert "meta step size is now 0.25 x meta.learning_rate" in guard["message"]


def test_a_job_that_diverges_in_every_meta_iteration_fails_saying_what_to_change(
    settings, sessions, tenant_id
):
    status, job, steps = run_to_the_end(settings, sessions, tenant_id, spec(learning_rate=1e8))
    assert status == job.status == "failed"
    assert job.error.startswith("training diverged in all 2 meta-iterations run")
    assert "lower hyperparameters.learning_rate.init" in job.error
    assert "standardise" not in job.error, "its inputs are pixels in [0, 1]"
    assert [s.objective for s in steps] == [None, None]
    warnings = by_code(job)
    assert list(warnings) == ["diverged", "chaos_guard"]
    assert "in 2 of the 2 meta-iterations so far" in warnings["diverged"]["message"]


def test_unscaled_inputs_that_diverge_everywhere_fail_naming_the_scale_first(
    settings, sessions, tenant_id, digits_x1000
):
    job_spec = spec(dataset=digits_x1000, learning_rate=1e3)
    status, job, _ = run_to_the_end(settings, sessions, tenant_id, job_spec)
    assert status == job.status == "failed"
    assert (
        "standardise X per feature first (see the job's unscaled_inputs warning), then lower "
        "hyperparameters.learning_rate.init" in job.error
    )
    assert list(by_code(job)) == ["unscaled_inputs", "diverged", "chaos_guard"]
