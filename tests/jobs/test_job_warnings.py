"""A job's warnings on both databases: `repository.add_warning` (once per code, under the claim, in
the caller's transaction) and `repository.tally_steps`, the counts the worker's warnings report."""

from __future__ import annotations

import pytest

from jobs import repository as repo
from jobs.db import session_factory
from jobs.spec import validate_spec

SPEC = {
    "name": "tiny",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 25},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "global", "learn": True}},
    "meta": {"iterations": 5},
}


@pytest.fixture
def sessions(database_url):
    return session_factory(database_url)


@pytest.fixture
def claimed(sessions) -> tuple[str, str, repo.Claim]:
    """(tenant id, job id, claim) of a job a worker is running."""
    with sessions() as s:
        tenant = repo.get_or_create_tenant(s, "alice").id
        job, _ = repo.create_job(s, tenant, validate_spec(SPEC))
        claim = repo.claim_job(s, job.id, "w1")
        s.commit()
    return tenant, job.id, claim


def warn(sessions, job_id, claim, code, message, meta_iter=None) -> bool:
    with sessions() as s:
        held = repo.add_warning(s, job_id, claim, code=code, message=message, meta_iter=meta_iter)
        s.commit()
        return held


def warnings_of(sessions, tenant, job_id):
    with sessions() as s:
        return repo.get_job(s, tenant, job_id).warnings


def test_a_job_has_no_warnings_until_one_is_added(sessions, claimed):
    tenant, job_id, claim = claimed
    assert warnings_of(sessions, tenant, job_id) is None
    assert warn(sessions, job_id, claim, "unscaled_inputs", "standardise X")
    assert warnings_of(sessions, tenant, job_id) == [
        {"code": "unscaled_inputs", "message": "standardise X", "meta_iter": None}
    ]


def test_one_warning_per_code_keeps_its_place_and_start_and_takes_the_new_message(sessions, claimed):
    tenant, job_id, claim = claimed
    warn(sessions, job_id, claim, "diverged", "1 of 2", meta_iter=1)
    warn(sessions, job_id, claim, "chaos_guard", "backed off once", meta_iter=1)
    warn(sessions, job_id, claim, "diverged", "2 of 4", meta_iter=3)
    warn(sessions, job_id, claim, "diverged", "2 of 4", meta_iter=3)  # a retried commit
    assert warnings_of(sessions, tenant, job_id) == [
        {"code": "diverged", "message": "2 of 4", "meta_iter": 1},
        {"code": "chaos_guard", "message": "backed off once", "meta_iter": 1},
    ]


def test_a_warning_rolls_back_with_its_transaction(sessions, claimed):
    tenant, job_id, claim = claimed
    with sessions() as s:
        assert repo.add_warning(s, job_id, claim, code="diverged", message="1 of 1", meta_iter=0)
        s.rollback()
    assert warnings_of(sessions, tenant, job_id) is None


def test_a_lost_claim_writes_no_warning(sessions, claimed):
    tenant, job_id, claim = claimed
    with sessions() as s:
        assert repo.finish_job(s, job_id, claim, "succeeded")
        s.commit()
    assert warn(sessions, job_id, claim, "diverged", "1 of 1") is False
    assert warnings_of(sessions, tenant, job_id) is None


def test_tally_counts_diverged_steps_and_hypergradients_beyond_the_bound(sessions, claimed):
    _, job_id, claim = claimed
    nan = float("nan")
    # (objective, hypergrad_norm): fine, diverged, beyond, not finite, diverged; stored with nulls
    for k, (objective, norm) in enumerate([(1.0, 2.0), (nan, nan), (0.9, 5e6), (0.8, nan), (nan, 3.0)]):
        step = dict.fromkeys(repo.STEP_FIELDS)
        step.update(meta_iter=k, objective=objective, hypergrad_norm=norm, elapsed_s=0.1)
        with sessions() as s:
            repo.record_meta_iteration(s, job_id, claim, step=step, hyperparameters={}, checkpoint=b"c")
            s.commit()
    with sessions() as s:
        assert repo.tally_steps(s, job_id, hypergrad_bound=1e6) == repo.StepTally(
            recorded=5, diverged=2, hypergrad_beyond=2
        )
        assert repo.tally_steps(s, job_id, hypergrad_bound=1.0) == repo.StepTally(5, 2, 3)
        assert repo.tally_steps(s, "0" * 32, hypergrad_bound=1e6) == repo.StepTally(0, 0, 0)
