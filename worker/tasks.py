"""The Celery task: a thin shell around `worker.runner.run_job`.

The message carries only the job id; the database is the source of truth. Importing this module
imports hypercore (JAX), so the worker process does it once before it starts consuming, and the
solo pool never forks after JAX is initialised.
"""

from __future__ import annotations

from celery.signals import worker_shutting_down

from worker import runner
from worker.app import RUN_JOB_TASK, app


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> str | None:
    """Run job ``job_id`` (see `worker.runner.run_job`); returns the status it was left in."""
    return runner.run_job(job_id)


@worker_shutting_down.connect
def _hand_back_on_shutdown(**kwargs) -> None:
    runner.shutting_down.set()
