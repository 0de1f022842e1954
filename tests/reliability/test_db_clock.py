"""The worker protocol keeps time by the database's clock, not each process's: a process whose
clock runs 120 s fast (or slow) must neither re-queue a healthy worker's job nor leave a dead
worker's job waiting for a heartbeat stamped in the future. On both databases.

The skew is this process's: `jobs.models.utcnow`, the repository's and the reaper's `datetime` are
patched, which is every clock the code under test could read on its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from jobs import models, repository
from jobs.db import session_factory
from jobs.settings import Settings
from jobs.spec import validate_spec
from worker.reaper import reap

SPEC = {
    "name": "clocks",
    "dataset": {"name": "digits", "train": 100, "valid": 50},
    "model": {"kind": "logreg"},
    "training": {"steps": 5},
    "hyperparameters": {"learning_rate": {"init": 0.3, "granularity": "step", "learn": True}},
    "meta": {"iterations": 3},
}
SKEW = timedelta(seconds=120)
TIMEOUT_S = 10.0  # the heartbeat timeout: far under the skew, far over a stalled machine's pause


def skew_clock(monkeypatch, by: timedelta) -> None:
    """This process's clock runs ``by`` ahead from now on (behind if negative)."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + by

    def utcnow() -> datetime:
        return datetime.now(UTC) + by

    monkeypatch.setattr(models, "utcnow", utcnow)
    monkeypatch.setattr("jobs.repository.worker.utcnow", utcnow)
    monkeypatch.setattr("worker.reaper.datetime", Skewed)


def database_time(sessions) -> datetime:
    """The database server's clock, read with SQL of its own (not the code under test)."""
    with sessions() as session:
        if session.bind.dialect.name == "sqlite":
            text = session.scalar(select(func.strftime("%Y-%m-%d %H:%M:%f", "now")))
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        return session.scalar(select(func.now()))


def submit(sessions) -> str:
    with sessions() as session:
        tenant = repository.get_or_create_tenant(session, "clocks")
        job, _ = repository.create_job(session, tenant.id, validate_spec(SPEC))
        session.commit()
        return job.id


def claim(sessions, job_id: str, worker: str, timeout_s: float) -> repository.Claim:
    with sessions() as session:
        held = repository.claim_job(session, job_id, worker, heartbeat_timeout_s=timeout_s)
        session.commit()
    assert held is not None
    return held


def row(sessions, job_id) -> models.Job:
    with sessions() as session:
        return session.get(models.Job, job_id)


def test_a_reaper_whose_clock_runs_fast_leaves_healthy_jobs_alone(database_url, tmp_path, monkeypatch):
    settings = Settings(
        database_url=database_url,
        broker_url="memory://",
        data_dir=tmp_path,
        heartbeat_interval_s=10,
        heartbeat_timeout_s=60,
        queued_timeout_s=60,
    )
    sessions = session_factory(settings)
    waiting = submit(sessions)  # just submitted, unclaimed
    running = submit(sessions)
    held = claim(sessions, running, "healthy", 60)
    with sessions() as session:  # the healthy worker's heartbeat, fresh
        assert repository.heartbeat(session, running, held)
        session.commit()
    before = row(sessions, running)

    skew_clock(monkeypatch, SKEW)  # the reaper's process runs 120 s fast
    enqueued: list[str] = []
    assert reap(settings, enqueue=enqueued.append) == []
    assert enqueued == []
    job = row(sessions, running)
    assert (job.status, job.worker_id, job.attempts) == ("running", "healthy", 1)
    assert job.heartbeat_at == before.heartbeat_at
    assert row(sessions, waiting).status == "queued"
    assert job.deaths == 0
    with sessions() as session:  # the healthy worker still holds its claim
        assert repository.heartbeat(session, running, held)
        assert not repository.record_meta_iteration(
            session, running, held, step={"meta_iter": 0}, hyperparameters={}, checkpoint=b"c"
        )
        session.commit()
    # A worker whose clock runs fast does not take it over either.
    with sessions() as session:
        assert repository.claim_job(session, running, "fast", heartbeat_timeout_s=60) is None


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["fast", "slow"])
def test_a_skewed_workers_dead_job_is_requeued_after_the_timeout_by_the_database_clock(
    database_url, tmp_path, monkeypatch, skew
):
    """The worker's process is 120 s off while it claims, beats and records; then it dies. A reaper
    on a correct clock re-queues the job one timeout (by the database's clock) after the last beat:
    not 120 s later (fast worker), not at once (slow worker)."""
    settings = Settings(
        database_url=database_url,
        broker_url="memory://",
        data_dir=tmp_path,
        heartbeat_interval_s=0.5,
        heartbeat_timeout_s=TIMEOUT_S,
        queued_timeout_s=600,
    )
    sessions = session_factory(settings)
    job_id = submit(sessions)
    with monkeypatch.context() as patch:
        skew_clock(patch, skew)
        held = claim(sessions, job_id, "skewed", TIMEOUT_S)
        with sessions() as session:
            repository.record_meta_iteration(
                session, job_id, held, step={"meta_iter": 0}, hyperparameters={}, checkpoint=b"c"
            )
            assert repository.heartbeat(session, job_id, held)
            session.commit()
        stamped = row(sessions, job_id)
    # Stamped by the database: within a few seconds of its clock, not 120 s off.
    db_now = database_time(sessions)
    for when in (stamped.started_at, stamped.heartbeat_at):
        assert abs((when - db_now).total_seconds()) < 5, (when, db_now)

    # Still within the timeout by the database's clock (the reaper reads it): a slow worker's beat,
    # stamped 120 s in the past, would be stale already.
    assert reap(settings, enqueue=lambda job_id: None) == []
    assert row(sessions, job_id).status == "running"
    # Past the timeout by the database's clock the worker is dead: a reaper at the database's time
    # plus the timeout and a half (a fixed `now`, not a sleep) re-queues it; a fast worker's beat,
    # stamped 120 s ahead, would not be stale yet.
    later = database_time(sessions) + timedelta(seconds=TIMEOUT_S + 0.5)
    assert reap(settings, enqueue=lambda job_id: None, now=later) == [job_id]
    job = row(sessions, job_id)
    assert (job.status, job.worker_id, job.deaths) == ("queued", None, 1)
    assert job.enqueued_at == later


def test_finishing_and_requeueing_are_stamped_by_the_database_clock(database_url, tmp_path, monkeypatch):
    settings = Settings(database_url=database_url, broker_url="memory://", data_dir=tmp_path)
    sessions = session_factory(settings)
    finished, handed_back = submit(sessions), submit(sessions)
    skew_clock(monkeypatch, SKEW)
    held = claim(sessions, finished, "fast", 60)
    with sessions() as session:
        assert repository.finish_job(session, finished, held, "succeeded")
        session.commit()
    claim(sessions, handed_back, "fast", 60)
    with sessions() as session:
        assert repository.requeue(session, handed_back)
        session.commit()
    db_now = database_time(sessions)
    job = row(sessions, finished)
    assert job.started_at <= job.heartbeat_at <= job.finished_at
    assert abs((job.finished_at - db_now).total_seconds()) < 5, (job.finished_at, db_now)
    assert abs((row(sessions, handed_back).enqueued_at - db_now).total_seconds()) < 5


def test_db_now_orders_with_stored_times_on_both_databases(database_url):
    """`jobs.models.db_now` is the server's UTC clock, comparable with the times the application
    stores: on SQLite a text compare, so its text has the stored form, fraction included (SQLite's
    own CURRENT_TIMESTAMP, ``YYYY-MM-DD HH:MM:SS``, sorts before every stored time of its second)."""
    from jobs.models import db_now

    sessions = session_factory(database_url)
    job_id = submit(sessions)
    with sessions() as session:
        # one statement: SQLite reads 'now' once per statement (PostgreSQL once per transaction)
        now, earlier = session.execute(select(db_now(), db_now(-90.25))).one()
        assert now.tzinfo is not None and abs((now - datetime.now(UTC)).total_seconds()) < 5
        assert abs((now - earlier).total_seconds() - 90.25) < 1
        # stored by Python a fifth of a second ago (the API's create_job does so): most often in
        # the same second as the server's clock
        session.get(models.Job, job_id).enqueued_at = now - timedelta(seconds=0.2)
        session.flush()

        def older_than(seconds: float) -> bool:
            job = models.Job
            query = select(job.id).where(job.id == job_id, job.enqueued_at < db_now(-seconds))
            return session.scalar(query) is not None

        assert older_than(0) and older_than(0.1) and not older_than(5)
        session.rollback()


@pytest.mark.parametrize("by", [SKEW, -SKEW])
def test_an_api_whose_clock_is_off_submits_a_job_stamped_by_the_database(database_url, monkeypatch, by):
    """`enqueued_at`, which the reaper compares with the database's clock (a queued job nobody claimed
    in time), is the database's time even when the submitting API's clock is 120 s off."""
    sessions = session_factory(Settings(database_url=database_url))
    monkeypatch.setattr("jobs.repository.jobs.utcnow", lambda: datetime.now(UTC) + by)
    before = database_time(sessions)
    job_id = submit(sessions)
    after = database_time(sessions)
    stamped = row(sessions, job_id).enqueued_at.replace(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= stamped <= after + timedelta(seconds=1), (before, stamped, after)
