"""A worker that is shutting down starts no job (`worker.runner.run_job`, on a real database).

Celery's consumer receives once more after a warm shutdown began, typically the very job the worker
has just handed back; a stopping worker that claimed it would compile and run a meta-iteration
before it could exit (Ctrl-C on ``revtune serve`` took 10-15 s). It must leave the job ``queued``
and send its message on, so that the job still reaches a worker.
"""

from __future__ import annotations

import pytest
from direct_worker import direct_worker_fixtures

from jobs import models, repository
from jobs.spec import validate_spec
from worker import runner

pytestmark = pytest.mark.integration

SPEC = {
    "name": "shutdown",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "batch_size": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "global", "learn": True}},
    "meta": {"iterations": 2},
    "seed": 0,
}

settings, sessions, tenant_id = direct_worker_fixtures("shutdown")


@pytest.fixture
def job_id(sessions, tenant_id) -> str:
    with sessions() as session:
        job, _ = repository.create_job(session, tenant_id, validate_spec(SPEC))
        session.commit()
        return job.id


@pytest.fixture
def shutting_down():
    runner.shutting_down.set()  # what SIGTERM (Ctrl-C on `revtune serve`) does to the worker process
    yield
    runner.shutting_down.clear()


def _never(*args, **kwargs):
    raise AssertionError("a worker that is shutting down started the job")


def job_row(sessions, job_id: str) -> models.Job:
    with sessions() as session:
        return session.get(models.Job, job_id)


def test_a_worker_shutting_down_claims_no_job_and_sends_it_on(
    settings, sessions, job_id, shutting_down, monkeypatch
):
    monkeypatch.setattr(runner, "build_problem", _never)
    monkeypatch.setattr(runner, "tune", _never)
    enqueued: list[str] = []
    assert runner.run_job(job_id, settings=settings, sessions=sessions, enqueue=enqueued.append) is None
    job = job_row(sessions, job_id)
    assert (job.status, job.attempts, job.worker_id, job.started_at) == ("queued", 0, None, None)
    assert enqueued == [job_id], "the job's message must go back to the broker for another worker"

    # Once the worker is gone, the message it sent on runs the job as usual.
    runner.shutting_down.clear()
    monkeypatch.undo()
    assert runner.run_job(job_id, settings=settings, sessions=sessions) == "succeeded"


def test_a_shutdown_that_begins_while_the_job_is_built_hands_it_back_before_tuning(
    settings, sessions, job_id, monkeypatch
):
    build = runner.build_problem

    def build_then_shut_down(spec, settings):
        problem = build(spec, settings)
        runner.shutting_down.set()
        return problem

    monkeypatch.setattr(runner, "build_problem", build_then_shut_down)
    monkeypatch.setattr(runner, "tune", _never)
    enqueued: list[str] = []
    try:
        result = runner.run_job(job_id, settings=settings, sessions=sessions, enqueue=enqueued.append)
    finally:
        runner.shutting_down.clear()
    assert result == "queued" and enqueued == [job_id]
    job = job_row(sessions, job_id)
    assert (job.status, job.meta_iter, job.worker_id, job.deaths) == ("queued", 0, None, 0)
