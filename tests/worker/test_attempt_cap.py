"""``REVTUNE_MAX_ATTEMPTS``: a job whose worker dies (heartbeat gone stale: OOM-killed, kill -9, a
lost machine) that many times ends ``failed``, saying so, instead of going back to the queue to kill
worker after worker. Only deaths count: a worker's graceful hand-back (shutdown) and a silence the
reaper saw a database outage cause do not. On both databases."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import OperationalError

from jobs import models, repository
from jobs.db import session_factory
from jobs.settings import Settings, get_settings
from jobs.spec import validate_spec
from worker.reaper import Reaper, reap

SPEC = {
    "name": "killer",
    "dataset": {"name": "digits", "train": 100, "valid": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "step", "learn": True}},
    "meta": {"iterations": 10},
}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DIED_3 = "the worker died 3 times running this job"


def settings_for(database_url, tmp_path, **changes) -> Settings:
    values = {
        "database_url": database_url,
        "broker_url": "memory://",
        "data_dir": tmp_path,
        "heartbeat_interval_s": 10,
        "heartbeat_timeout_s": 60,
        "queued_timeout_s": 120,
        "max_attempts": 3,
    }
    return Settings(**(values | changes))


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return settings_for(database_url, tmp_path)


def submit(sessions) -> str:
    with sessions() as session:
        tenant = repository.get_or_create_tenant(session, "attempts")
        job, _ = repository.create_job(session, tenant.id, validate_spec(SPEC))
        job.created_at = job.enqueued_at = T0
        session.commit()
        return job.id


def claim(sessions, job_id, worker, at, **kwargs) -> repository.Claim | None:
    with sessions() as session:
        held = repository.claim_job(session, job_id, worker, now=at, **kwargs)
        session.commit()
        return held


def record(sessions, job_id, held, k, at) -> None:
    with sessions() as session:
        repository.record_meta_iteration(
            session,
            job_id,
            held,
            step={"meta_iter": k, "objective": 1.0 / (k + 1)},
            hyperparameters={},
            checkpoint=f"after {k + 1}".encode(),
            now=at,
        )
        session.commit()


def row(sessions, job_id) -> models.Job:
    with sessions() as session:
        return session.get(models.Job, job_id)


def test_a_job_whose_worker_died_max_attempts_times_fails_and_is_not_requeued(settings):
    sessions = session_factory(settings)
    job_id = submit(sessions)
    enqueued: list[str] = []
    at, passes = T0, []
    for death in (1, 2, 3):
        # A worker claims it, records a meta-iteration, and is killed: its heartbeat goes stale.
        held = claim(sessions, job_id, f"w{death}", at)
        assert held is not None and held.attempt == death and held.meta_iter == death - 1
        record(sessions, job_id, held, death - 1, at + timedelta(seconds=5))
        at += timedelta(seconds=5 + 61)
        requeued = reap(settings, enqueue=enqueued.append, now=at)
        passes.append((requeued == [job_id], row(sessions, job_id).status))
    # the first two deaths re-queue it; the third fails it, and it is not enqueued again
    assert passes == [(True, "queued"), (True, "queued"), (False, "failed")]
    assert enqueued == [job_id, job_id]
    job = row(sessions, job_id)
    assert (job.status, job.attempts, job.meta_iter, job.deaths) == ("failed", 3, 3, 3)
    assert job.error.startswith(DIED_3), job.error
    assert "more memory" in job.error and "training.steps" in job.error
    assert "3 finished meta-iterations" in job.error and "checkpoint are kept" in job.error
    assert job.finished_at == at

    # Never again: later passes leave it alone, a redelivered message does not claim it, and its
    # checkpoint is still there.
    for later in (60, 600, 6000):
        assert reap(settings, enqueue=enqueued.append, now=at + timedelta(seconds=later)) == []
    assert claim(sessions, job_id, "w4", at + timedelta(seconds=7000), max_deaths=3) is None
    job = row(sessions, job_id)
    assert (job.status, job.attempts, job.deaths, job.error.startswith(DIED_3)) == ("failed", 3, 3, True)
    assert enqueued == [job_id, job_id]
    with sessions() as session:
        assert bytes(session.get(models.Checkpoint, job_id).data) == b"after 3"


def test_graceful_hand_backs_do_not_count(settings):
    """A worker shutting down (SIGTERM) hands its job back (`JobRun.hand_back`): however often,
    that is not a death; the job still gets its full ``max_attempts`` deaths afterwards."""
    from worker.runner import JobRun

    sessions = session_factory(settings)
    job_id = submit(sessions)
    enqueued: list[str] = []
    for attempt in range(1, 6):  # more hand-backs than max_attempts
        held = claim(sessions, job_id, f"w{attempt}", T0 + timedelta(seconds=attempt), max_deaths=3)
        assert held is not None and held.attempt == attempt
        assert JobRun(job_id, held, sessions).hand_back(enqueued.append) == "queued"
    job = row(sessions, job_id)
    assert (job.status, job.attempts, job.deaths) == ("queued", 5, 0)
    assert enqueued == [job_id] * 5

    # Now its workers die: the first two deaths re-queue it, the third fails it.
    at = T0 + timedelta(seconds=100)
    for death in (1, 2, 3):
        assert claim(sessions, job_id, f"d{death}", at, max_deaths=3) is not None
        at += timedelta(seconds=61)
        requeued = reap(settings, enqueue=enqueued.append, now=at)
        assert row(sessions, job_id).deaths == death
        assert requeued == ([job_id] if death < 3 else [])
    job = row(sessions, job_id)
    assert (job.status, job.attempts) == ("failed", 8)
    assert job.error.startswith(DIED_3)


def test_a_worker_taking_over_a_dead_workers_job_counts_the_death_and_stops_at_the_cap(settings):
    """A redelivered message reaches a worker before the reaper noticed the death: the take-over
    counts it too, so the message cannot start attempt ``max_attempts + 1``."""
    sessions = session_factory(settings)
    job_id = submit(sessions)
    at = T0
    for n in (1, 2, 3):
        held = claim(sessions, job_id, f"w{n}", at, max_deaths=3)
        assert held is not None and held.attempt == n
        assert row(sessions, job_id).deaths == n - 1
        at += timedelta(seconds=61)  # w{n} dies
    assert claim(sessions, job_id, "w4", at, max_deaths=3) is None
    job = row(sessions, job_id)
    assert (job.status, job.attempts, job.deaths) == ("failed", 3, 3)
    assert job.error.startswith(DIED_3) and "finished no meta-iteration" in job.error
    assert job.finished_at == at
    # A live worker's job is not taken over at all, and counts nothing.
    other = submit(sessions)
    assert claim(sessions, other, "a", T0, max_deaths=3) is not None
    assert claim(sessions, other, "b", T0 + timedelta(seconds=59), max_deaths=3) is None
    assert (row(sessions, other).deaths, row(sessions, other).worker_id) == (0, "a")


def test_claim_job_takes_the_cap_from_revtune_max_attempts(settings, monkeypatch):
    monkeypatch.setenv("REVTUNE_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    try:
        assert get_settings().max_attempts == 2
        sessions = session_factory(settings)
        job_id = submit(sessions)
        assert claim(sessions, job_id, "w1", T0) is not None
        assert claim(sessions, job_id, "w2", T0 + timedelta(seconds=61)) is not None  # death 1
        assert claim(sessions, job_id, "w3", T0 + timedelta(seconds=122)) is None  # death 2: the cap
        job = row(sessions, job_id)
        assert job.status == "failed" and job.error.startswith("the worker died 2 times running this job")
    finally:
        get_settings.cache_clear()
    assert Settings.model_fields["max_attempts"].default == 3
    assert Settings.model_fields["max_attempts"].description


def _database_down():
    raise OperationalError("SELECT 1", {}, ConnectionRefusedError("the database is down"))


def test_silences_the_database_caused_are_not_deaths(database_url, tmp_path):
    """A database outage stops every heartbeat. A reaper that saw it (a pass failed on the
    database) re-queues the jobs silent since before it came back without counting deaths; a
    worker that dies afterwards is counted again. Times by the database's clock."""
    settings = settings_for(
        database_url, tmp_path, heartbeat_interval_s=0.5, heartbeat_timeout_s=1.0, max_attempts=2
    )
    sessions = session_factory(settings)
    from worker.reaper import database_time

    silent, dead_before = submit(sessions), submit(sessions)
    long_ago = database_time(sessions) - timedelta(seconds=120)
    assert claim(sessions, silent, "w1", long_ago) is not None
    reaper = Reaper(settings, interval_s=1)

    assert reaper.reap_once(_database_down) is None  # the outage: the pass fails
    requeued = reaper.reap_once(sessions)  # the database is back
    assert silent in requeued
    job = row(sessions, silent)
    assert (job.status, job.deaths) == ("queued", 0)

    # Claimed again after the outage, and its worker dies: that one counts.
    assert claim(sessions, silent, "w2", None, heartbeat_timeout_s=1.0, max_deaths=2) is not None
    time.sleep(1.3)
    assert silent in reaper.reap_once(sessions)
    assert (row(sessions, silent).status, row(sessions, silent).deaths) == ("queued", 1)

    # And without an outage seen, the same silence as before the outage counts (a plain reaper).
    assert claim(sessions, dead_before, "w3", long_ago) is not None
    assert dead_before in reap(settings, enqueue=lambda job_id: None)
    assert row(sessions, dead_before).deaths == 1
