"""Run one job: claim it, build its hypercore problem, tune, persist every meta-iteration.

This is the only worker module that imports hypercore (and so JAX). The contract with the database:

- `run_job` claims the job (``queued -> running``); a job that is not claimable (finished,
  cancelled, or running with a live heartbeat elsewhere) is left alone, so a redelivered or
  duplicated message is harmless.
- after meta-iteration ``k`` the step row ``k``, the hyperparameter snapshots after it, the
  checkpoint to resume at ``k + 1`` and the heartbeat are committed in ONE transaction
  (`jobs.repository.record_meta_iteration`); a worker that dies loses at most the meta-iteration in
  flight, and its successor resumes from the last checkpoint with the same result
  (`hypercore.tune` is deterministic given the checkpoint).
- a heartbeat thread also beats between meta-iterations, so a long one is not mistaken for a dead
  worker; the reaper (`worker.reaper`) re-queues jobs whose heartbeat went stale.
- the callback returns ``True`` (stop) when cancel was requested (the job ends ``cancelled``) or
  when the worker is shutting down (the job goes back to ``queued`` and is enqueued again).
- a failure becomes ``failed`` with a message a user can act on; the traceback of an unexpected
  error goes to the log only. Database outages (``OperationalError``) are retried with backoff
  instead of failing the job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from hypercore.arrays import DataError, dataset_from_npz, read_npz
from hypercore.hyper import ConfigError
from hypercore.meta import MetaDivergedError
from hypercore.spec import problem_from_spec
from hypercore.tune import (
    Checkpoint,
    CheckpointError,
    Problem,
    Record,
    ReversalError,
    initial_hyperparameters,
    tune,
)
from jobs import repository
from jobs.db import session_factory
from jobs.models import Job
from jobs.settings import Settings, get_settings
from worker.enqueue import EnqueueError, enqueue_job

log = logging.getLogger(__name__)


def configure_compilation_cache(settings: Settings) -> Path | None:
    """Point JAX's persistent compilation cache at ``settings.compilation_cache_dir`` (before the
    first job compiles): a job whose programs this host compiled before, in this worker or another
    one, a restart ago or not, loads them from disk instead of compiling again. A cached executable
    is the one that would be compiled, so results stay bit-identical. Returns the directory, or None
    when the cache is off."""
    import jax

    folder = settings.compilation_cache_dir
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_compilation_cache_max_size", settings.compilation_cache_max_bytes)
    # Every job's programs, however quick to compile: a worker compiles per job shape, and the
    # small ones add up on a busy queue.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    log.info("compiled programs are cached in %s", folder)
    return folder


T = TypeVar("T")

# Set when the worker process starts a warm shutdown (SIGTERM, Ctrl-C): the running job stops after
# its current meta-iteration and is handed back instead of holding up the shutdown until it ends.
shutting_down = threading.Event()

_RETRY_DELAYS_S = (0.5, 1, 2, 4, 8, 15, 30, 30, 30, 30)


class JobInputError(Exception):
    """The job cannot run as specified; the message (leading with the spec field) is shown to the user."""


def with_db_retry(unit_of_work: Callable[[], T], what: str, delays_s=_RETRY_DELAYS_S) -> T:
    """Run ``unit_of_work`` (one transaction), retrying with backoff while the database is unreachable.

    Only connection-level failures (``OperationalError``, or any DBAPI error whose connection was
    invalidated) are retried; anything else is a bug or a conflict and propagates at once. After the
    last delay the error propagates: the job stays ``running`` without heartbeat, and the reaper
    hands it to another worker once the database is back.
    """
    for delay in (*delays_s, None):
        try:
            return unit_of_work()
        except DBAPIError as e:
            if not (isinstance(e, OperationalError) or e.connection_invalidated) or delay is None:
                raise
            log.warning("database unavailable while %s (%s); retrying in %s s", what, e.orig, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def load_dataset(spec_dataset: dict, settings: Settings):
    """The hypercore `Dataset` of an uploaded ``.npz`` (DESIGN.md: ``X``/``y`` split by the spec's
    counts, or ``X_train``/``y_train``/``X_valid``/``y_valid`` and optional ``X_test``/``y_test``;
    with task ids, ``task`` or ``task_<split>``, a multi-task one)."""
    dataset_id = spec_dataset["id"]
    path = settings.dataset_path(dataset_id)
    if not path.is_file():
        raise JobInputError(f"dataset.id: dataset {dataset_id!r} is no longer on the server (deleted?)")
    try:
        return dataset_from_npz(read_npz(path), spec_dataset)
    except DataError as e:
        if e.field.startswith("dataset"):  # the spec's counts
            raise JobInputError(str(e)) from e
        # The arrays come from the upload, not the spec: say which upload.
        raise JobInputError(f"dataset.id: the uploaded dataset {dataset_id!r} is unusable: {e}") from e


# The last few problems built, by spec: a resumed or resubmitted job reuses the compiled functions
# (`hypercore.tune` keeps them per problem object) instead of compiling again.
_PROBLEMS: OrderedDict[str, Problem] = OrderedDict()
_PROBLEM_CACHE_SIZE = 2


def build_problem(spec: dict, settings: Settings) -> Problem:
    """The job's `Problem`; a spec hypercore refuses raises `JobInputError` naming the field."""
    ds_spec = spec.get("dataset") or {}
    uploaded = ds_spec.get("id") is not None
    key = json.dumps({k: v for k, v in spec.items() if k != "name"}, sort_keys=True)
    if key in _PROBLEMS and not (uploaded and not settings.dataset_path(ds_spec["id"]).is_file()):
        _PROBLEMS.move_to_end(key)
        return _PROBLEMS[key]
    try:
        dataset = load_dataset(ds_spec, settings) if uploaded else None
        problem = problem_from_spec(spec, dataset=dataset)
    except ConfigError as e:
        raise JobInputError(str(e)) from e
    _PROBLEMS[key] = problem
    while len(_PROBLEMS) > _PROBLEM_CACHE_SIZE:
        _PROBLEMS.popitem(last=False)
    return problem


def resumable(checkpoint: Checkpoint, problem: Problem) -> Checkpoint:
    """The checkpoint with its learned hyperparameters in the problem's order.

    `hypercore.tune` writes them in JAX's pytree order (sorted keys) once the meta-optimiser has
    updated them, but checks a resumed checkpoint against the problem's own order; the values are
    keyed by name, so putting them in that order changes nothing else. Key sets that differ are
    left for `tune` to refuse.
    """
    order = list(initial_hyperparameters(problem))
    if sorted(order) != sorted(checkpoint.learned) or order == list(checkpoint.learned):
        return checkpoint
    return dataclasses.replace(
        checkpoint,
        learned={k: checkpoint.learned[k] for k in order},
        prev_learned={k: checkpoint.prev_learned[k] for k in order},
    )


class _Heartbeat(threading.Thread):
    """Beats every ``interval_s`` while the job runs; stops at `stop`. A failed beat is only logged:
    the next one, or the next meta-iteration's commit, tries again."""

    def __init__(self, sessions, job_id: str, claim, interval_s: float):
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.sessions, self.job_id, self.claim, self.interval_s = sessions, job_id, claim, interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                with self.sessions() as session:
                    held = repository.heartbeat(session, self.job_id, self.claim)
                    session.commit()
                if not held:
                    return  # the next record_meta_iteration raises ClaimLost and ends the run
            except DBAPIError as e:
                log.warning("heartbeat of job %s failed: %s", self.job_id, e.orig)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_job(
    job_id: str,
    *,
    settings: Settings | None = None,
    sessions=None,
    enqueue: Callable[[str], None] | None = None,
) -> str | None:
    """Run the job to its end (or until cancel or shutdown); returns the status it was left in, or
    ``None`` when this worker did not (or no longer) hold the job. ``enqueue`` sends a handed-back
    job to the broker (default `worker.enqueue.enqueue_job`)."""
    settings = settings or get_settings()
    sessions = sessions or session_factory(settings)
    enqueue = enqueue or (lambda job_id: enqueue_job(job_id, settings))
    worker_name = f"{socket.gethostname()}:{threading.get_native_id()}"

    def claim_uow():
        with sessions() as session:
            claim = repository.claim_job(
                session, job_id, worker_name, heartbeat_timeout_s=settings.heartbeat_timeout_s
            )
            session.commit()
            return claim

    claim = with_db_retry(claim_uow, f"claiming job {job_id}")
    if claim is None:
        log.info("job %s is not claimable (finished, cancelled or running elsewhere); skipping", job_id)
        return None

    def finish(status: str, error: str | None = None) -> str:
        def uow():
            with sessions() as session:
                held = repository.finish_job(session, job_id, claim, status, error=error)
                session.commit()
                return held

        if not with_db_retry(uow, f"finishing job {job_id}"):
            log.warning("job %s was re-queued while this worker ran it; its result is not recorded", job_id)
            return None
        return status

    try:
        problem = build_problem(claim.spec, settings)
        checkpoint = (
            None if claim.checkpoint is None else resumable(Checkpoint.from_bytes(claim.checkpoint), problem)
        )
    except JobInputError as e:
        return finish("failed", str(e))
    except CheckpointError as e:
        log.exception("job %s: unreadable checkpoint", job_id)
        return finish("failed", f"the job's checkpoint cannot be resumed ({e}); resubmit the spec")

    stop_reason: list[str] = []
    diverged = {"steps": 0, "backoffs": 0, "finite": False}

    def on_meta_iteration(record: Record) -> bool:
        diverged["backoffs"] += len(record.events)
        if math.isfinite(record.objective):
            diverged["finite"] = True
        else:
            diverged["steps"] += 1

        def uow():
            with sessions() as session:
                cancel_requested = repository.record_meta_iteration(
                    session,
                    job_id,
                    claim,
                    step=record.step(),
                    hyperparameters={
                        name: {
                            "values": value.values,
                            "axes": value.axes,
                            "labels": value.labels,
                            "learned": value.learned,
                        }
                        for name, value in record.hyperparameters.items()
                    },
                    checkpoint=record.checkpoint.to_bytes(),
                )
                session.commit()
                return cancel_requested

        if with_db_retry(uow, f"recording meta-iteration {record.meta_iter} of job {job_id}"):
            stop_reason.append("cancelled")
        elif shutting_down.is_set():
            stop_reason.append("shutdown")
        return bool(stop_reason)

    beat = _Heartbeat(sessions, job_id, claim, settings.heartbeat_interval_s)
    beat.start()
    try:
        tune(problem, callback=on_meta_iteration, checkpoint=checkpoint)
    except MetaDivergedError as e:
        return finish(
            "failed",
            f"the meta-optimisation diverged: {e} (hyperparameters.learning_rate.init, meta.learning_rate)",
        )
    except ReversalError as e:
        return finish("failed", f"exact reversal failed: {e}")
    except CheckpointError as e:
        log.exception("job %s: checkpoint does not fit its problem", job_id)
        return finish("failed", f"the job's checkpoint cannot be resumed ({e}); resubmit the spec")
    except (ConfigError, JobInputError) as e:
        return finish("failed", str(e))
    except repository.ClaimLost:
        log.warning("job %s was re-queued and claimed by another worker; abandoning this run", job_id)
        return None
    except DBAPIError:
        # Retries exhausted: leave the job `running`; its heartbeat goes stale and the reaper
        # re-queues it, to resume from the last committed checkpoint.
        raise
    except Exception as e:
        log.exception("job %s failed unexpectedly", job_id)
        return finish("failed", f"internal error ({type(e).__name__}: {e}); the worker log has the details")
    finally:
        beat.stop()

    if stop_reason == ["shutdown"]:

        def release_uow():
            with sessions() as session:
                to_enqueue = repository.requeue(session, job_id)
                session.commit()
                return to_enqueue

        if with_db_retry(release_uow, f"handing back job {job_id}"):
            try:
                enqueue(job_id)
            except EnqueueError as e:
                log.warning("%s; the reaper will enqueue it", e)
            log.info("worker shutting down: job %s handed back to the queue", job_id)
            return "queued"
        return None
    if not stop_reason and not diverged["finite"] and not _had_finite_objective(sessions, job_id):
        # Every meta-iteration's training blew up (and the guard, if on, could not bring it back
        # before the run ended): a result with nothing in it is a failure the user must hear about.
        return finish(
            "failed",
            f"training diverged in all {diverged['steps']} meta-iterations run (the objective was never "
            f"finite; the chaos guard backed off {diverged['backoffs']} times): lower "
            "hyperparameters.learning_rate.init, or raise meta.iterations to let the guard recover",
        )
    return finish(stop_reason[0] if stop_reason else "succeeded")


def _had_finite_objective(sessions, job_id: str) -> bool:
    """Whether an earlier run of this job (before a resume) recorded a finite objective."""

    def uow():
        with sessions() as session:
            job = session.get(Job, job_id)
            return job is not None and job.best_objective is not None

    return with_db_retry(uow, f"reading job {job_id}")
