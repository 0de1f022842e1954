"""A job that kills its workers (as one needing more memory than a worker has does, through the
kernel's out-of-memory killer): after ``REVTUNE_MAX_ATTEMPTS`` dead workers it fails with the
reason, instead of being handed to one worker after another. Real `revtune worker` processes,
SIGKILLed, on the private PostgreSQL and Redis of ``conftest.py``."""

from __future__ import annotations

import time

import pytest
from e2e._procs import wait_for
from sqlalchemy import text

from jobs import db, models
from reliability._service import Service, record, tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_ATTEMPTS = 2
# Far over the pauses of a live worker's heartbeat thread (beside its JAX compiles, on a loaded
# machine), which would otherwise get the job taken from a worker that is alive.
HEARTBEAT_TIMEOUT_S = 10


@pytest.fixture
def service(tmp_path, private_postgres, private_redis):
    database = private_postgres.create_database("worker_deaths")
    private_redis.flush()
    svc = Service(
        tmp_path,
        database,
        private_redis.url,
        REVTUNE_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        REVTUNE_HEARTBEAT_INTERVAL_S="0.5",
        REVTUNE_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S),
        REVTUNE_REAPER_INTERVAL_S="1",
    )
    try:
        yield svc
    finally:
        svc.close()
        db.dispose(database)


def _row(service: Service, job_id: str) -> models.Job:
    """The job's row, read from the database (the claims: ``attempts``, ``deaths``)."""
    with db.session_factory(service.env["REVTUNE_DATABASE_URL"])() as session:
        return session.get(models.Job, job_id)


def _start_worker(service: Service, name: str):
    """A worker whose PostgreSQL connections are named ``name`` (libpq's ``PGAPPNAME``)."""
    service.env["PGAPPNAME"] = name
    try:
        return service.start_worker()
    finally:
        del service.env["PGAPPNAME"]


def _backends(service: Service, name: str) -> int:
    """How many PostgreSQL server processes serve the connections named ``name``."""
    with db.session_factory(service.env["REVTUNE_DATABASE_URL"])() as session:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
        return session.scalar(query, {"name": name})


def test_a_job_whose_worker_is_killed_max_attempts_times_fails_and_stays_failed(service):
    started = time.monotonic()
    # About half a second per meta-iteration, 200 of them: it is still running at every kill.
    spec = tiny_spec("kills-its-workers", iterations=200, steps=300, hidden=256, train=1000, batch_size=200)
    service.start_api()
    job_id = service.submit(spec)
    name = "worker-1"
    worker = _start_worker(service, name)

    progress = 0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # This worker (the first, or the one whose reaper re-queued the dead one's job) runs it.
        def running_here(attempt=attempt, progress=progress):
            job = service.job(job_id)
            claims = _row(service, job_id)
            return claims.status == "running" and claims.attempts == attempt and job["meta_iter"] > progress

        wait_for(running_here, 120, f"attempt {attempt} to record a meta-iteration")
        assert _backends(service, name) > 0, "the worker's connections are not named: PGAPPNAME unused?"
        service.procs.kill(worker)  # SIGKILL, as the out-of-memory killer sends
        # A COMMIT the worker sent just before it died may still be landing: its server processes
        # end after the last statement it sent, so once they are gone its last commit is in.
        wait_for(lambda name=name: _backends(service, name) == 0, 60, f"{name}'s connections to close")
        progress = service.job(job_id)["meta_iter"]  # what the dead worker committed, and kept
        name = f"worker-{attempt + 1}"
        worker = _start_worker(service, name)  # its reaper finds the dead worker's job

    def failed():
        job = service.job(job_id)
        return job if job["status"] != "running" and job["status"] != "queued" else None

    job = wait_for(failed, 60, "the job to end")
    assert job["status"] == "failed", job
    assert job["error"].startswith(f"the worker died {MAX_ATTEMPTS} times running this job"), job["error"]
    assert "more memory" in job["error"] and f"its {progress} finished meta-iterations" in job["error"]
    claims = _row(service, job_id)
    assert (claims.status, claims.attempts, claims.deaths) == ("failed", MAX_ATTEMPTS, MAX_ATTEMPTS)
    took = time.monotonic() - started

    # Not re-queued: a live worker and its reaper leave it be, for a heartbeat timeout and more after
    # it failed (when the dead worker's last heartbeat was already a timeout old): a dozen passes.
    time.sleep(HEARTBEAT_TIMEOUT_S + 2)
    assert worker.poll() is None, service.procs.logs()
    claims = _row(service, job_id)
    assert (claims.status, claims.attempts, claims.deaths) == ("failed", MAX_ATTEMPTS, MAX_ATTEMPTS)
    steps = service.steps(job_id)
    assert [s["meta_iter"] for s in steps] == list(range(progress)), "the steps recorded are kept"
    assert service.job(job_id)["error"] == job["error"]
    record(
        "worker killed repeatedly",
        f"the worker running one job SIGKILLed {MAX_ATTEMPTS} times in a row, as an out-of-memory killer "
        f"would (REVTUNE_MAX_ATTEMPTS={MAX_ATTEMPTS})",
        f'the job failed with "the worker died {MAX_ATTEMPTS} times running this job ..." and was not '
        "re-queued; its steps and checkpoint were kept",
        kills=MAX_ATTEMPTS,
        steps_kept=len(steps),
        seconds_to_failed=round(took, 1),
    )
