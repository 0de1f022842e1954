"""The worker's side: claims, heartbeats, recording meta-iterations, finishing, the reaper's queries.

The worker's protocol (``worker.runner``):

1. `claim_job` atomically moves ``queued -> running`` (or takes over a ``running`` job whose
   heartbeat is stale) and returns a `Claim`: the spec, the latest checkpoint and a claim token
   (``worker_id`` plus the ``attempts`` counter it set).
2. after meta-iteration ``k`` (0-based), `record_meta_iteration` writes, in the caller's single
   transaction, step ``k``, the hyperparameters after it (stored at ``meta_iter = k + 1``: the
   count of finished meta-iterations, which is what the REST ``meta_iter`` means), the checkpoint,
   the heartbeat and the job's progress and best objective. Recording ``k`` again is a no-op (a
   commit that succeeded but whose acknowledgement was lost is retried safely). It returns whether
   cancel was requested.
3. `finish_job` ends the run. Every write under a claim checks the token first, so a worker whose
   job was re-queued and taken over cannot write into it (`ClaimLost`, or ``False``).

The reaper: `stale_jobs` finds ``running`` jobs whose heartbeat is older than the timeout and
``queued`` jobs nobody claimed in time; `requeue` hands each back (conditionally, so racing reapers
re-queue a job once).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from hypercore.steps import STEP_FIELDS, STEP_TYPES
from jobs.errors import Conflict
from jobs.models import Checkpoint, HyperSnapshot, Job, Step, utcnow
from jobs.states import ACTIVE, Status, check_transition

DEFAULT_HEARTBEAT_TIMEOUT_S = 60.0


class ClaimLost(Conflict):
    """The job was re-queued (or finished) and is no longer this worker's: stop working on it."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: pass it back to every write. ``checkpoint``: the latest checkpoint's
    bytes (resume from it) or None (start fresh); ``meta_iter``: meta-iterations already recorded."""

    job_id: str
    worker_id: str
    attempt: int
    spec: dict[str, Any]
    meta_iter: int
    checkpoint: bytes | None


def _held(job_id: str, claim: Claim):
    return and_(
        Job.id == job_id,
        Job.status == Status.RUNNING.value,
        Job.worker_id == claim.worker_id,
        Job.attempts == claim.attempt,
    )


def claim_job(
    session: Session,
    job_id: str,
    worker_id: str,
    *,
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    now: datetime | None = None,
) -> Claim | None:
    """Take the job if it is queued, or running with a heartbeat older than ``heartbeat_timeout_s``
    (its worker died); None otherwise (finished, cancelled, or alive elsewhere). One conditional
    UPDATE: of two workers racing for a job, exactly one gets it."""
    now = now or utcnow()
    stale = now - timedelta(seconds=heartbeat_timeout_s)
    claimable = or_(
        Job.status == Status.QUEUED.value,
        and_(Job.status == Status.RUNNING.value, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)),
    )
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False))
        .values(
            status=Status.RUNNING.value,
            worker_id=worker_id,
            attempts=Job.attempts + 1,
            heartbeat_at=now,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    if job.started_at is None:
        job.started_at = now
    checkpoint = session.get(Checkpoint, job_id)
    session.flush()
    return Claim(
        job_id=job_id,
        worker_id=worker_id,
        attempt=job.attempts,
        spec=dict(job.spec),
        meta_iter=job.meta_iter,
        checkpoint=None if checkpoint is None else bytes(checkpoint.data),
    )


def heartbeat(session: Session, job_id: str, claim: Claim, *, now: datetime | None = None) -> bool:
    """Refresh the job's heartbeat; False if the claim was lost (the caller should stop)."""
    result = session.execute(
        update(Job)
        .where(_held(job_id, claim))
        .values(heartbeat_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """Labels as JSON: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def record_meta_iteration(
    session: Session,
    job_id: str,
    claim: Claim,
    *,
    step: Mapping[str, Any],
    hyperparameters: Mapping[str, Mapping[str, Any]],
    checkpoint: bytes,
    now: datetime | None = None,
) -> bool:
    """Record meta-iteration ``step["meta_iter"]``; return whether cancel was requested.

    ``step``: the REST step fields (non-finite numbers are stored as null). ``hyperparameters``:
    ``{name: {"values": array-like, "axes": [...], "labels": {...}, "learned": bool}}`` after this
    meta-iteration's update, in natural units. ``checkpoint``: what to resume from at the next
    meta-iteration. Raises `ClaimLost` if the job is no longer this claim's.
    """
    now = now or utcnow()
    k = int(step["meta_iter"])
    # Taking the row (the conditional UPDATE locks it on PostgreSQL; SQLite locks the database)
    # before reading: a reaper cannot re-queue the job between this check and the inserts.
    result = session.execute(
        update(Job)
        .where(_held(job_id, claim))
        .values(heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise ClaimLost(f"job {job_id} is no longer held by {claim.worker_id} (attempt {claim.attempt})")
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    if k < job.meta_iter:
        return job.cancel_requested  # already recorded: a retried commit
    if k > job.meta_iter:
        raise Conflict(f"job {job_id}: meta-iteration {k} recorded before meta-iteration {job.meta_iter}")
    unknown = sorted(set(step) - set(STEP_FIELDS))
    if unknown:
        raise ValueError(f"unknown step fields {unknown}; known: {', '.join(STEP_FIELDS)}")
    row = Step(job_id=job_id, meta_iter=k, created_at=now)
    for field, kind in STEP_TYPES.items():
        if field != "meta_iter":
            value = step.get(field)
            setattr(row, field, _finite(value) if kind is float else None if value is None else kind(value))
    session.add(row)
    for name, hv in hyperparameters.items():
        values = np.array(hv["values"], dtype="<f8", order="C")
        session.add(
            HyperSnapshot(
                job_id=job_id,
                meta_iter=k + 1,
                name=name,
                shape=list(values.shape),
                axes=list(hv.get("axes") or []),
                labels=_jsonable(dict(hv.get("labels") or {})),
                learned=bool(hv.get("learned", False)),
                data=values.tobytes(),
            )
        )
    stored = session.get(Checkpoint, job_id)
    if stored is None:
        session.add(Checkpoint(job_id=job_id, meta_iter=k + 1, data=checkpoint, created_at=now))
    else:
        stored.meta_iter, stored.data, stored.created_at = k + 1, checkpoint, now
    job.meta_iter = k + 1
    objective = row.objective
    if objective is not None and (job.best_objective is None or objective < job.best_objective):
        job.best_objective, job.best_meta_iter = objective, k
    session.flush()
    return job.cancel_requested


def finish_job(
    session: Session,
    job_id: str,
    claim: Claim,
    status: str,
    *,
    error: str | None = None,
    now: datetime | None = None,
) -> bool:
    """End the run as ``succeeded``, ``failed`` (with ``error``, shown to the user) or ``cancelled``.
    False (and nothing written) if the claim was lost."""
    new = check_transition(Status.RUNNING.value, status)
    if new == Status.QUEUED:
        raise ValueError("use requeue() to hand a job back to the queue")
    result = session.execute(
        update(Job)
        .where(_held(job_id, claim))
        .values(status=new.value, error=error, finished_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def stale_jobs(
    session: Session,
    *,
    now: datetime | None = None,
    heartbeat_timeout_s: float,
    queued_timeout_s: float,
) -> list[str]:
    """Ids of jobs nobody is running: ``running`` with a heartbeat older than ``heartbeat_timeout_s``,
    ``queued`` and not claimed ``queued_timeout_s`` after it was last enqueued (or, once the reaper has
    re-published it, past its ``requeue_after``); oldest first."""
    now = now or utcnow()
    query = select(Job.id).where(_stale(now, heartbeat_timeout_s, queued_timeout_s)).order_by(Job.created_at)
    return list(session.scalars(query))


def _stale(now: datetime, heartbeat_timeout_s: float | None, queued_timeout_s: float | None):
    """Running jobs silent for ``heartbeat_timeout_s`` or queued ones waiting ``queued_timeout_s``;
    a status whose timeout is None is not included."""
    clauses = []
    if heartbeat_timeout_s is not None:
        cutoff = now - timedelta(seconds=heartbeat_timeout_s)
        silent = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
        clauses.append(and_(Job.status == Status.RUNNING.value, silent))
    if queued_timeout_s is not None:
        waiting = or_(
            and_(Job.requeue_after.is_(None), Job.enqueued_at < now - timedelta(seconds=queued_timeout_s)),
            Job.requeue_after < now,
        )
        clauses.append(and_(Job.status == Status.QUEUED.value, waiting))
    return or_(*clauses)


def requeue(
    session: Session,
    job_id: str,
    *,
    now: datetime | None = None,
    heartbeat_timeout_s: float | None = None,
    queued_timeout_s: float | None = None,
    max_backoff_s: float | None = None,
) -> bool:
    """Hand the job back to the queue; True if the caller should enqueue it (after the commit).

    A ``running`` job becomes ``queued`` (its next worker resumes from the checkpoint), unless
    cancel was requested: then it becomes ``cancelled`` and False is returned. A ``queued`` job's
    ``enqueued_at`` is refreshed. With timeouts (the reaper passes those of `stale_jobs`) only a job
    still stale by them changes, so of several reapers racing, one re-queues it; a status whose
    timeout is None is then left alone. Finished jobs are left alone (False).

    A queued job re-published by the reaper waits twice as long as last time before the next
    re-publication (``queued_timeout_s``, then 2x, 4x, ... up to ``max_backoff_s``): a job that waits
    behind a long queue is not published again every ``queued_timeout_s``, which would grow the
    broker's queue by a duplicate per waiting job each time.
    """
    now = now or utcnow()
    if heartbeat_timeout_s is None and queued_timeout_s is None:
        eligible = Job.status.in_([s.value for s in ACTIVE])
    else:
        eligible = _stale(now, heartbeat_timeout_s, queued_timeout_s)
    condition = and_(Job.id == job_id, eligible)
    cancelled = session.execute(
        update(Job)
        .where(condition, Job.status == Status.RUNNING.value, Job.cancel_requested.is_(True))
        .values(status=Status.CANCELLED.value, finished_at=now, worker_id=None)
        .execution_options(synchronize_session=False)
    )
    if cancelled.rowcount:
        return False
    row = session.execute(
        select(Job.status, Job.enqueued_at, Job.requeue_after).where(condition)
    ).one_or_none()
    if row is None:
        return False
    requeue_after = None  # a job that enters the queue waits the plain timeout
    if row.status == Status.QUEUED.value and queued_timeout_s is not None:
        waited = queued_timeout_s
        if row.requeue_after is not None:
            waited = (row.requeue_after - row.enqueued_at).total_seconds()
        wait = max(queued_timeout_s, min(2 * waited, max_backoff_s or math.inf))
        requeue_after = now + timedelta(seconds=wait)
    result = session.execute(
        update(Job)
        # the row as read: a racing reaper that re-queued it first leaves nothing to do here
        .where(condition, Job.status == row.status, Job.enqueued_at == row.enqueued_at)
        .values(status=Status.QUEUED.value, worker_id=None, enqueued_at=now, requeue_after=requeue_after)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
