"""What a job keeps for taking its values home, and continuing it, through `worker.runner.run_job`
on a real database.

- Snapshot 0 holds the initial values, and the values the best-scoring meta-iteration trained with
  are stored at its own meta_iter even where the snapshot rule would not keep them (an earlier best
  kept that way goes), so that ``which=best`` always has values to export.
- ``continue_job`` gives a finished job more meta-iterations; it resumes from its checkpoint and ends
  bit-identical to one job run for the sum from the start.
"""

from __future__ import annotations

import numpy as np
import pytest
from direct_worker import direct_worker_fixtures

from hypercore.spec import problem_from_spec
from hypercore.tune import hyperparameter_values, tune
from jobs import models, repository
from jobs.errors import Conflict
from jobs.repository.results import stores_learned
from jobs.spec import validate_spec
from worker import runner

pytestmark = pytest.mark.integration

# Logistic regression on digits, 5 steps: 7 learned values (56 bytes) and one fixed (the l2 off).
SPEC = {
    "name": "continue-best",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "test": 50, "batch_size": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "global", "learn": True},
        "init_scale": {"init": 0.1, "granularity": "global", "learn": True},
    },
    # Improves at meta-iterations 1 to 5: four new bests off the grid (3, 6), each replacing the last.
    "meta": {"iterations": 6, "learning_rate": 0.1},
    "seed": 2,
}
LEARNED = 7 * 8
# The fixed l2 (8 bytes), the initial and the best's snapshots (2 x 56), and two grid snapshots: the
# learned values are kept after meta-iterations 3 and 6 only (k = 3).
BUDGET = 8 + 2 * LEARNED + 2 * LEARNED

settings, sessions, tenant_id = direct_worker_fixtures("continue", max_snapshot_bytes_per_job=BUDGET)


def submit(spec: dict, sessions, tenant_id) -> str:
    with sessions() as session:
        job, _ = repository.create_job(session, tenant_id, validate_spec(spec))
        session.commit()
        return job.id


def values_at(sessions, tenant_id, job_id, meta_iter: int) -> dict[str, np.ndarray]:
    with sessions() as session:
        found, rows = repository.list_hyperparameters(session, tenant_id, job_id, meta_iter=meta_iter)
        assert found == meta_iter
        return {
            r.name: repository.get_hyperparameter(
                session, tenant_id, job_id, r.name, meta_iter=meta_iter
            ).values
            for r in rows
        }


def learned_meta_iters(sessions, job_id) -> list[int]:
    with sessions() as session:
        rows = session.query(models.HyperSnapshot.meta_iter).filter_by(job_id=job_id, learned=True).distinct()
        return sorted(r[0] for r in rows)


@pytest.fixture(scope="module")
def reference():
    """``scored[k]``: the natural values meta-iteration k of an uninterrupted in-process run trained
    with; ``objectives``: its objectives."""
    problem = problem_from_spec(SPEC)
    result = tune(problem)
    scored = [hyperparameter_values(problem)] + [r.hyperparameters for r in result.records]
    return {
        "scored": [{k: np.asarray(v.values, np.float64) for k, v in s.items()} for s in scored],
        "objectives": [r.objective for r in result.records],
    }


def test_the_initial_and_the_best_values_are_kept_beside_the_grid(settings, sessions, tenant_id, reference):
    job_id = submit(SPEC, sessions, tenant_id)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded"

    with sessions() as session:
        job = session.get(models.Job, job_id)
        best = job.best_meta_iter
    assert best == int(np.argmin(reference["objectives"]))
    # Meta-iteration 0 trained with the initial values, fixed ones included; they are snapshot 0.
    initial = values_at(sessions, tenant_id, job_id, 0)
    assert sorted(initial) == sorted(reference["scored"][0])
    for name, want in reference["scored"][0].items():
        np.testing.assert_array_equal(initial[name], want, err_msg=name)
    # The best step scored exactly the snapshot at its own meta_iter.
    for name, want in reference["scored"][best].items():
        np.testing.assert_array_equal(values_at(sessions, tenant_id, job_id, best)[name], want, err_msg=name)
    # The grid (3, 6), the initial values, and one best off the grid at most: earlier bests are gone.
    off_grid = [] if best == 0 or stores_learned(best, 3, 6) else [best]
    assert learned_meta_iters(sessions, job_id) == sorted({0, 3, 6, *off_grid})
    improved_off_grid = [
        k
        for k in range(1, 6)
        if reference["objectives"][k] < min(reference["objectives"][:k]) and not stores_learned(k, 3, 6)
    ]
    assert len(improved_off_grid) >= 2, "the run should improve off the grid more than once (a drop to test)"


def test_a_continued_job_ends_bit_identical_to_one_run_for_the_sum(settings, sessions, tenant_id, reference):
    job_id = submit({**SPEC, "meta": {**SPEC["meta"], "iterations": 2}}, sessions, tenant_id)
    with sessions() as session, pytest.raises(Conflict, match="queued: continue it once it has finished"):
        repository.continue_job(session, tenant_id, job_id, 4)
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded"

    with sessions() as session:
        job = repository.continue_job(session, tenant_id, job_id, 4)
        assert (job.status, job.meta_iterations, job.spec["meta"]["iterations"]) == ("queued", 6, 6)
        session.commit()
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded"

    with sessions() as session:
        job = session.get(models.Job, job_id)
        assert (job.status, job.meta_iter, job.finished_at is not None) == ("succeeded", 6, True)
        steps = repository.list_steps(session, tenant_id, job_id).items
    assert [s.meta_iter for s in steps] == list(range(6))
    assert [s.objective for s in steps] == reference["objectives"]
    for name, want in reference["scored"][6].items():
        np.testing.assert_array_equal(values_at(sessions, tenant_id, job_id, 6)[name], want, err_msg=name)


def test_a_failed_job_cannot_continue_but_says_how_to_start_from_it(sessions, tenant_id):
    job_id = submit(SPEC, sessions, tenant_id)
    with sessions() as session:
        job = session.get(models.Job, job_id)
        job.status, job.error = "failed", "training diverged"
        session.commit()
    with sessions() as session, pytest.raises(Conflict, match='"from_job": "' + job_id):
        repository.continue_job(session, tenant_id, job_id, 2)
