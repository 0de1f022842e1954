"""The reaper re-queues stranded jobs, on both databases, and leaves live and finished ones alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobs import models, repository
from jobs.db import session_factory
from jobs.settings import Settings
from jobs.spec import validate_spec
from worker.reaper import reap

SPEC = {
    "name": "reaper",
    "dataset": {"name": "digits", "train": 100, "valid": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "step", "learn": True}},
    "meta": {"iterations": 3},
}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url="memory://",
        data_dir=tmp_path,
        heartbeat_interval_s=10,
        heartbeat_timeout_s=60,
        queued_timeout_s=120,
    )


def make_jobs(settings) -> dict[str, str]:
    """One job in each situation the reaper must tell apart; all created at T0."""
    sessions = session_factory(settings)
    ids = {}
    with sessions() as session:
        tenant = repository.get_or_create_tenant(session, "reaper")
        for label in ("queued_fresh", "queued_stale", "running_live", "running_dead", "cancel_dead", "done"):
            job, _ = repository.create_job(session, tenant.id, validate_spec(SPEC))
            job.created_at = job.enqueued_at = T0
            ids[label] = job.id
        session.flush()
        for label, beat in (
            ("running_live", 250),
            ("running_dead", 100),
            ("cancel_dead", 100),
            ("done", 250),
        ):
            claim = repository.claim_job(session, ids[label], f"w-{label}", now=T0 + timedelta(seconds=beat))
            assert claim is not None
            if label == "done":
                repository.finish_job(
                    session, ids[label], claim, "succeeded", now=T0 + timedelta(seconds=260)
                )
        session.get(models.Job, ids["cancel_dead"]).cancel_requested = True
        session.get(models.Job, ids["queued_fresh"]).enqueued_at = T0 + timedelta(seconds=200)
        session.commit()
    return ids


def status(settings, job_id):
    with session_factory(settings)() as session:
        return session.get(models.Job, job_id).status


def test_reap_requeues_dead_running_and_lost_queued_jobs_only(settings):
    ids = make_jobs(settings)
    enqueued: list[str] = []
    now = T0 + timedelta(seconds=270)  # heartbeats at 100 s are stale, at 250 s live; enqueued at 0 s lost
    requeued = reap(settings, enqueue=enqueued.append, now=now)

    assert sorted(requeued) == sorted([ids["queued_stale"], ids["running_dead"]])
    assert enqueued == requeued
    assert status(settings, ids["running_dead"]) == "queued"
    assert status(settings, ids["cancel_dead"]) == "cancelled"  # its worker died after cancel was asked
    for label in ("queued_fresh", "queued_stale"):
        assert status(settings, ids[label]) == "queued"
    assert status(settings, ids["running_live"]) == "running"
    assert status(settings, ids["done"]) == "succeeded"

    # A second pass at the same moment finds nothing: the re-queue refreshed enqueued_at.
    assert reap(settings, enqueue=enqueued.append, now=now) == []


def test_the_dead_workers_claim_is_void_after_a_requeue(settings):
    ids = make_jobs(settings)
    sessions = session_factory(settings)
    with sessions() as session:
        job = session.get(models.Job, ids["running_dead"])
        zombie = repository.Claim(job.id, job.worker_id, job.attempts, dict(job.spec), 0, None)
    reap(settings, enqueue=lambda job_id: None, now=T0 + timedelta(seconds=270))
    with sessions() as session:
        claim = repository.claim_job(session, ids["running_dead"], "w-new", now=T0 + timedelta(seconds=280))
        session.commit()
    assert claim is not None and claim.attempt == zombie.attempt + 1
    with sessions() as session, pytest.raises(repository.ClaimLost):
        repository.record_meta_iteration(
            session, zombie.job_id, zombie, step={"meta_iter": 0}, hyperparameters={}, checkpoint=b""
        )


def test_a_job_left_waiting_is_republished_after_doubling_waits_up_to_the_cap(
    settings, database_url, tmp_path
):
    """A job that waits behind a long queue keeps its message; each re-publication is a duplicate
    in the broker. So the waits between them double (120 s, 240, 480, ...) up to the cap, instead of
    one duplicate per waiting job every queued_timeout_s."""
    capped = Settings(**{**settings.model_dump(), "queued_max_backoff_s": 600})
    ids = make_jobs(capped)
    job = ids["queued_stale"]  # enqueued at T0, never claimed
    published: list[str] = []
    when = [
        s
        for s in range(0, 3600, 15)
        if job in reap(capped, enqueue=published.append, now=T0 + timedelta(seconds=s))
    ]
    assert published.count(job) == len(when) and when[0] == 135  # the first pass after 120 s
    waits = [b - a for a, b in zip(when, when[1:], strict=False)]
    expected = [240, 480, 600, 600, 600, 600]  # doubling, capped at 600
    assert len(waits) == len(expected), when
    assert all(0 < w - e <= 15 for w, e in zip(waits, expected, strict=True)), (
        waits,
        expected,
    )  # passes every 15 s

    # Claimed at last, its worker dies: the dead job is re-queued at once and, should that message be
    # lost too, waits the plain timeout again, not the backed-off one.
    with session_factory(capped)() as session:
        claim = repository.claim_job(session, job, "w-late", now=T0 + timedelta(seconds=3600))
        session.commit()
    assert claim is not None
    dead = T0 + timedelta(seconds=3600 + 61)
    assert job in reap(capped, enqueue=published.append, now=dead)
    assert job not in reap(capped, enqueue=published.append, now=dead + timedelta(seconds=119))
    assert job in reap(capped, enqueue=published.append, now=dead + timedelta(seconds=121))


def test_the_backoff_cap_cannot_be_below_the_queued_timeout(tmp_path):
    with pytest.raises(
        ValueError, match="REVTUNE_QUEUED_MAX_BACKOFF_S .* must be at least REVTUNE_QUEUED_TIMEOUT_S"
    ):
        Settings(data_dir=tmp_path, queued_timeout_s=120, queued_max_backoff_s=60)
