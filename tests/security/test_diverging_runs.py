"""Chaotic runs: a learning rate that blows training up must give a job that says so, never a
crashed worker. `worker.runner.run_job` runs in this process on a real PostgreSQL database (as in
tests/worker/test_worker_runner.py), with the tiniest spec there is (logistic regression on 100
digits, 5 steps) and a learning rate of 1e8, where every training run ends in NaN::

    nice -n 19 .venv/bin/python -m pytest tests/security/test_diverging_runs.py -q
"""

from __future__ import annotations

import copy

import pytest
from direct_worker import direct_worker_fixtures

from jobs import models, repository
from jobs.spec import validate_spec
from worker import runner

pytestmark = pytest.mark.integration

HUGE_LEARNING_RATE = 1e8
SPEC = {
    "name": "diverging",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {
        "learning_rate": {"init": HUGE_LEARNING_RATE, "granularity": "global", "learn": True}
    },
    "meta": {"iterations": 3},
    "seed": 0,
}
# hypercore.meta.GuardConfig.max_backoffs: the guard gives up after this many back-offs in a row.
MAX_BACKOFFS = 10


def spec(iterations: int, guard: bool | None = None) -> dict:
    out = copy.deepcopy(SPEC)
    out["meta"]["iterations"] = iterations
    if guard is not None:
        out["meta"]["guard"] = guard
    return out


settings, sessions, tenant_id = direct_worker_fixtures(
    "chaos", heartbeat_interval_s=0.5, heartbeat_timeout_s=30
)


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


def test_a_run_that_diverges_at_every_try_fails_with_a_reason_naming_the_fields(
    settings, sessions, tenant_id
):
    status, job, steps = run_to_the_end(settings, sessions, tenant_id, spec(MAX_BACKOFFS + 1))
    assert status == job.status == "failed"
    assert job.finished_at is not None and job.best_objective is None
    assert "diverged" in job.error and "chaos guard backed off 10 times" in job.error
    assert "smaller learning rate" in job.error and "hyperparameters.learning_rate.init" in job.error
    assert "Traceback" not in job.error
    # Every meta-iteration the guard refused is still on record, its NaN objective stored as null.
    assert [s.meta_iter for s in steps] == list(range(MAX_BACKOFFS))
    assert all(s.objective is None and s.hypergrad_norm is None for s in steps)


def test_without_the_guard_a_nan_run_ends_without_crashing_the_worker(settings, sessions, tenant_id):
    status, job, steps = run_to_the_end(settings, sessions, tenant_id, spec(2, guard=False))
    assert status == job.status == "failed"
    assert "diverged in all 2 meta-iterations" in job.error and "learning_rate.init" in job.error
    assert job.finished_at is not None and [s.meta_iter for s in steps] == [0, 1]
    assert job.best_objective is None and all(s.objective is None for s in steps)


def test_a_short_run_that_diverged_throughout_says_so(settings, sessions, tenant_id):
    status, job, steps = run_to_the_end(settings, sessions, tenant_id, spec(3))
    assert status == job.status
    assert all(s.objective is None for s in steps), "every meta-iteration diverged"
    assert job.status == "failed"
    assert "diverged in all 3 meta-iterations" in job.error and "chaos guard backed off 3 times" in job.error
