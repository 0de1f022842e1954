"""The worker's side: claims, heartbeats, recording meta-iterations, finishing, the reaper's queries.

The worker's protocol (``worker.runner``):

1. `claim_job` atomically moves ``queued -> running`` (or takes over a ``running`` job whose
   heartbeat is stale: its worker died) and returns a `Claim`: the spec, the latest checkpoint and
   a claim token (``worker_id`` plus the ``attempts`` counter it set).
2. after meta-iteration ``k`` (0-based), `record_meta_iteration` writes, in the caller's single
   transaction, step ``k``, the hyperparameters after it (stored at ``meta_iter = k + 1``: the
   count of finished meta-iterations, which is what the REST ``meta_iter`` means), the checkpoint,
   the heartbeat and the job's progress and best objective. Recording ``k`` again is a no-op (a
   commit that succeeded but whose acknowledgement was lost is retried safely). It returns whether
   cancel was requested.
3. `add_warning` tells the job's user what the run found (``Job.warnings``: unscaled inputs, exploding
   hypergradients, diverged meta-iterations, the chaos guard's back-offs), in the caller's
   transaction; `tally_steps` counts the recorded steps those warnings report on.
4. `finish_job` ends the run. Every write under a claim checks the token first, so a worker whose
   job was re-queued and taken over cannot write into it (`ClaimLost`, or ``False``).

The reaper: `stale_jobs` finds ``running`` jobs whose heartbeat is older than the timeout and
``queued`` jobs nobody claimed in time; `requeue` hands each back (conditionally, so racing reapers
re-queue a job once). A library run the service records (origin ``external``) is never claimed nor
re-queued: its heartbeats are its recorder's, and a stale one ends it ``failed`` (`recorder_died`).

Time is the database's (`jobs.models.db_now`): heartbeats, claims, re-queues and finishes are
stamped by the server, and staleness is computed there (``heartbeat_at < db_now(-timeout)``), so a
worker whose clock runs fast neither re-queues healthy jobs nor leaves its own dead job waiting for
its future heartbeat. The ``now=`` parameters replace that clock with a fixed time (tests).

Deaths: a claim whose heartbeat went stale (the worker was killed: out of memory, kill -9, a lost
machine) adds one to ``Job.deaths`` when the reaper re-queues the job or a worker takes it over; a
graceful hand-back (`requeue` without timeouts: the worker shutting down) does not, nor does a
silence the reaper saw the database cause (``deaths_after``). At ``max_deaths``
(``REVTUNE_MAX_ATTEMPTS``) the job fails with `died_too_often`'s message instead of going back to
the queue, so a job that kills its workers stops after a few of them. (``attempts`` counts every
claim, hand-backs included: it is the claim token.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, and_, case, delete, func, literal, or_, select, update
from sqlalchemy.orm import Session

from hypercore.steps import STEP_FIELDS, STEP_TYPES
from jobs.errors import Conflict
from jobs.models import Checkpoint, HyperSnapshot, Job, Step, UTCDateTime, db_now, utcnow
from jobs.settings import get_settings
from jobs.states import ACTIVE, Origin, Status, check_transition

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


def _at(now: datetime | None, offset_s: float = 0.0) -> ColumnElement[datetime]:
    """``now + offset_s`` as SQL: the database's clock (`db_now`), or the caller's fixed ``now``."""
    if now is None:
        return db_now(offset_s)
    return literal(now + timedelta(seconds=offset_s), UTCDateTime())


def _silent(now: datetime | None, heartbeat_timeout_s: float):
    """A ``running`` job's worker is presumed dead: no heartbeat for ``heartbeat_timeout_s``."""
    stale = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < _at(now, -heartbeat_timeout_s))
    return and_(Job.status == Status.RUNNING.value, stale)


def died_too_often(deaths: int, meta_iter: int) -> str:
    """The error of a job whose worker died ``deaths`` times (``REVTUNE_MAX_ATTEMPTS``)."""
    times = "1 time" if deaths == 1 else f"{deaths} times"
    if meta_iter:
        kept = f"its {meta_iter} finished meta-iteration{'' if meta_iter == 1 else 's'} (steps, "
        kept += "hyperparameters) and its last checkpoint are kept"
    else:
        kept = "it finished no meta-iteration"
    return (
        f"the worker died {times} running this job (killed: most often by the out-of-memory killer, or "
        "its machine was lost), so it is not run again. It may need more memory than a worker has: lower "
        "the model's size (model.hidden), training.steps or dataset.batch_size, or give the workers more "
        f"memory, and resubmit; {kept}"
    )


def _died(heartbeat_at: datetime | None, deaths_after: datetime | None) -> bool:
    """Whether a silence that began at ``heartbeat_at`` is a worker's death: not when it began before
    ``deaths_after`` (the end of a database outage the reaper saw, which silenced every worker)."""
    return deaths_after is None or heartbeat_at is None or heartbeat_at >= deaths_after


def _fail_dead(session: Session, job_id: str, dead, *, deaths: int, meta_iter: int, now) -> bool:
    """End the job ``failed`` with `died_too_often`'s error, if it still matches ``dead`` (running,
    silent) and its death count is still ``deaths - 1`` (no racing reaper or worker counted it)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, dead, Job.status == Status.RUNNING.value, Job.deaths == deaths - 1)
        .values(
            status=Status.FAILED.value,
            deaths=deaths,
            error=died_too_often(deaths, meta_iter),
            finished_at=_at(now),
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _run_by_workers():
    return Job.origin == Origin.SERVICE.value


def recorder_died(timeout_s: float, meta_iter: int) -> str:
    """The error of a library run whose recorder stopped sending heartbeats."""
    kept = f"its {meta_iter} recorded meta-iterations are kept" if meta_iter else "it recorded nothing"
    return (
        f"the recorder of this library run sent no heartbeat for {timeout_s:g} s "
        f"(REVTUNE_HEARTBEAT_TIMEOUT_S): its process died or lost the server; {kept}. Resume the run from "
        "its checkpoint with client.record(..., job_id=...) to continue this job"
    )


def _fail_silent_recording(session: Session, condition, *, timeout_s: float, now) -> bool:
    """A stale ``running`` library run (origin external, `condition`) ends ``failed`` with
    `recorder_died`'s error (``cancelled`` if cancel was requested): no worker can resume it, its
    recorder can (`jobs.repository.external.resume_recording`).."""
    row = session.execute(
        select(Job.meta_iter, Job.cancel_requested).where(
            condition, Job.origin == Origin.EXTERNAL.value, Job.status == Status.RUNNING.value
        )
    ).one_or_none()
    if row is None:
        return False
    values: dict[str, Any] = {"status": Status.FAILED.value, "error": recorder_died(timeout_s, row.meta_iter)}
    if row.cancel_requested:
        values = {"status": Status.CANCELLED.value}
    result = session.execute(
        update(Job)
        .where(condition, Job.origin == Origin.EXTERNAL.value, Job.status == Status.RUNNING.value)
        .values(**values, finished_at=_at(now))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


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
    max_deaths: int | None = None,
    now: datetime | None = None,
) -> Claim | None:
    """Take the job if it is queued, or running with a heartbeat older than ``heartbeat_timeout_s``
    (its worker died); None otherwise (finished, cancelled, or alive elsewhere). One conditional
    UPDATE: of two workers racing for a job, exactly one gets it.

    Taking over a dead worker's job counts that death; the job whose workers died ``max_deaths``
    times (default ``REVTUNE_MAX_ATTEMPTS``) fails instead (None), so a redelivered message cannot
    start one attempt more than the reaper would have allowed."""
    if max_deaths is None:
        max_deaths = get_settings().max_attempts
    # A library run (origin external) is its recorder's: no worker claims it, whatever it finds.
    dead = and_(_silent(now, heartbeat_timeout_s), Job.cancel_requested.is_(False), _run_by_workers())
    taken_over = session.execute(
        select(Job.deaths, Job.meta_iter).where(Job.id == job_id, dead)
    ).one_or_none()
    if taken_over is not None and taken_over.deaths + 1 >= max_deaths:
        _fail_dead(
            session, job_id, dead, deaths=taken_over.deaths + 1, meta_iter=taken_over.meta_iter, now=now
        )
        return None
    claimable = or_(Job.status == Status.QUEUED.value, _silent(now, heartbeat_timeout_s))
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False), _run_by_workers())
        .values(
            status=Status.RUNNING.value,
            worker_id=worker_id,
            attempts=Job.attempts + 1,
            # (SET expressions read the row as it was: still running means a dead worker's job)
            deaths=Job.deaths + case((Job.status == Status.RUNNING.value, 1), else_=0),
            heartbeat_at=_at(now),
            started_at=func.coalesce(Job.started_at, _at(now)),
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    checkpoint = session.get(Checkpoint, job_id)
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
        .values(heartbeat_at=_at(now))
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
    scored: Mapping[str, Mapping[str, Any]] | None = None,
    drop: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Record meta-iteration ``step["meta_iter"]``; return whether cancel was requested.

    ``step``: the REST step fields (non-finite numbers are stored as null). ``hyperparameters``:
    ``{name: {"values": array-like, "axes": [...], "labels": {...}, "learned": bool}}`` after this
    meta-iteration's update, in natural units. ``checkpoint``: what to resume from at the next
    meta-iteration. ``scored``: the same for the values this meta-iteration trained with, stored
    at its own ``meta_iter`` ``k`` (the initial values, at ``k = 0``; the best-scoring values, where the
    snapshot rule would not keep them). ``drop``: a meta-iteration whose learned snapshots go (an
    earlier best's that no longer is). Raises `ClaimLost` if the job is no longer this claim's.
    """
    k = int(step["meta_iter"])
    # Taking the row (the conditional UPDATE locks it on PostgreSQL; SQLite locks the database)
    # before reading: a reaper cannot re-queue the job between this check and the inserts.
    result = session.execute(
        update(Job)
        .where(_held(job_id, claim))
        .values(heartbeat_at=_at(now))
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
    store_scored(session, job_id, k, scored, drop)
    store_meta_iteration(session, job, step=step, hyperparameters=hyperparameters, now=now)
    stored = session.get(Checkpoint, job_id)
    if stored is None:
        session.add(Checkpoint(job_id=job_id, meta_iter=k + 1, data=checkpoint, created_at=now or utcnow()))
    else:
        stored.meta_iter, stored.data, stored.created_at = k + 1, checkpoint, now or utcnow()
    session.flush()
    return job.cancel_requested


def store_scored(
    session: Session,
    job_id: str,
    k: int,
    scored: Mapping[str, Mapping[str, Any]] | None,
    drop: int | None,
) -> None:
    """Store ``scored``, the values meta-iteration ``k`` trained with, at ``meta_iter`` ``k`` (those
    not there yet), and remove the learned snapshots of meta-iteration ``drop``: what
    `record_meta_iteration` and a recorded library run (`jobs.repository.external`) share."""
    if scored:
        # Already there when a continued job's earlier run ended at k (its last snapshot).
        there = set(
            session.scalars(
                select(HyperSnapshot.name).where(HyperSnapshot.job_id == job_id, HyperSnapshot.meta_iter == k)
            )
        )
        _add_snapshots(session, job_id, k, {n: v for n, v in scored.items() if n not in there})
    if drop is not None and drop != k:
        session.execute(
            delete(HyperSnapshot).where(
                HyperSnapshot.job_id == job_id,
                HyperSnapshot.meta_iter == drop,
                HyperSnapshot.learned.is_(True),
            )
        )


def store_meta_iteration(
    session: Session,
    job: Job,
    *,
    step: Mapping[str, Any],
    hyperparameters: Mapping[str, Mapping[str, Any]],
    now: datetime | None = None,
) -> None:
    """Add step ``job.meta_iter`` (``step["meta_iter"]``, checked by the caller) and the
    hyperparameter snapshots after it, and move the job's progress and best objective on: the rows
    `record_meta_iteration` and a recorded library run (`jobs.repository.external`) share."""
    k = int(step["meta_iter"])
    job_id = job.id
    now = now or utcnow()  # the rows' creation times, shown to users: not compared with anything
    unknown = sorted(set(step) - set(STEP_FIELDS))
    if unknown:
        raise ValueError(f"unknown step fields {unknown}; known: {', '.join(STEP_FIELDS)}")
    row = Step(job_id=job_id, meta_iter=k, created_at=now)
    for field, kind in STEP_TYPES.items():
        if field != "meta_iter":
            value = step.get(field)
            setattr(row, field, _finite(value) if kind is float else None if value is None else kind(value))
    session.add(row)
    _add_snapshots(session, job_id, k + 1, hyperparameters)
    job.meta_iter = k + 1
    objective = row.objective
    if objective is not None and (job.best_objective is None or objective < job.best_objective):
        job.best_objective, job.best_meta_iter = objective, k
    session.flush()


def _add_snapshots(
    session: Session, job_id: str, meta_iter: int, hyperparameters: Mapping[str, Mapping[str, Any]]
) -> None:
    """Add the snapshots ``{name: {"values", "axes", "labels", "learned"}}`` at ``meta_iter``."""
    for name, hv in hyperparameters.items():
        values = np.array(hv["values"], dtype="<f8", order="C")
        session.add(
            HyperSnapshot(
                job_id=job_id,
                meta_iter=meta_iter,
                name=name,
                shape=list(values.shape),
                axes=list(hv.get("axes") or []),
                labels=_jsonable(dict(hv.get("labels") or {})),
                learned=bool(hv.get("learned", False)),
                data=values.tobytes(),
            )
        )


def add_warning(
    session: Session,
    job_id: str,
    claim: Claim,
    *,
    code: str,
    message: str,
    meta_iter: int | None = None,
) -> bool:
    """Add ``{"code", "message", "meta_iter"}`` to the job's warnings; False (nothing written) if the
    claim was lost.

    Once per ``code``: a later call with the same code keeps the first one's place and ``meta_iter``
    (where it began; None: not tied to a meta-iteration, e.g. found when the job was built) and
    replaces its message (a running count), so a retried or resumed run adds no duplicate. Adds and
    flushes in the caller's transaction, holding the job's row (PostgreSQL) until its commit.
    """
    job = session.scalar(
        select(Job).where(_held(job_id, claim)).with_for_update().execution_options(populate_existing=True)
    )
    if job is None:
        return False
    warnings = [dict(w) for w in job.warnings or []]
    same = next((w for w in warnings if w["code"] == code), None)
    if same is None:
        warnings.append({"code": code, "message": message, "meta_iter": meta_iter})
    elif same["message"] != message:
        same["message"] = message
    else:
        return True
    job.warnings = warnings  # a new list: the JSON column does not see changes made in place
    session.flush()
    return True


@dataclasses.dataclass(frozen=True)
class StepTally:
    """What a job's recorded steps say about its health (`tally_steps`)."""

    recorded: int  # steps recorded
    diverged: int  # steps whose objective was not finite (stored as null)
    # steps with a finite objective whose hypergradient norm was not finite or beyond the bound
    hypergrad_beyond: int


def tally_steps(session: Session, job_id: str, *, hypergrad_bound: float) -> StepTally:
    """Count the job's recorded steps: all of them, those that diverged, and those (finite) whose
    hypergradient norm was non-finite (null) or above ``hypergrad_bound``."""
    beyond = and_(
        Step.objective.is_not(None), or_(Step.hypergrad_norm.is_(None), Step.hypergrad_norm > hypergrad_bound)
    )
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((Step.objective.is_(None), 1), else_=0)), 0),
            func.coalesce(func.sum(case((beyond, 1), else_=0)), 0),
        ).where(Step.job_id == job_id)
    ).one()
    return StepTally(recorded=int(row[0]), diverged=int(row[1]), hypergrad_beyond=int(row[2]))


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
        .values(status=new.value, error=error, finished_at=_at(now))
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
    re-published it, past its ``requeue_after``); oldest first. Ages by the database's clock unless
    ``now`` is given."""
    query = select(Job.id).where(_stale(now, heartbeat_timeout_s, queued_timeout_s)).order_by(Job.created_at)
    return list(session.scalars(query))


def _stale(now: datetime | None, heartbeat_timeout_s: float | None, queued_timeout_s: float | None):
    """Running jobs silent for ``heartbeat_timeout_s`` or queued ones waiting ``queued_timeout_s``;
    a status whose timeout is None is not included."""
    clauses = []
    if heartbeat_timeout_s is not None:
        clauses.append(_silent(now, heartbeat_timeout_s))
    if queued_timeout_s is not None:
        waiting = or_(
            and_(Job.requeue_after.is_(None), Job.enqueued_at < _at(now, -queued_timeout_s)),
            Job.requeue_after < _at(now),
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
    max_deaths: int | None = None,
    deaths_after: datetime | None = None,
) -> bool:
    """Hand the job back to the queue; True if the caller should enqueue it (after the commit).

    A ``running`` job becomes ``queued`` (its next worker resumes from the checkpoint), unless
    cancel was requested: then it becomes ``cancelled`` and False is returned. A ``queued`` job's
    ``enqueued_at`` is refreshed. With timeouts (the reaper passes those of `stale_jobs`) only a job
    still stale by them changes, so of several reapers racing, one re-queues it; a status whose
    timeout is None is then left alone. Finished jobs are left alone (False).

    Without timeouts (a worker handing its job back as it shuts down) nothing counts as a death.
    With ``heartbeat_timeout_s``, a running job is stale because its worker died: ``Job.deaths``
    goes up by one, and at ``max_deaths`` (the reaper passes ``REVTUNE_MAX_ATTEMPTS``; None: no
    cap) the job ends ``failed`` (`died_too_often`) and False is returned. A silence that began
    before ``deaths_after`` (the end of a database outage the reaper saw) is re-queued uncounted.

    A queued job re-published by the reaper waits twice as long as last time before the next
    re-publication (``queued_timeout_s``, then 2x, 4x, ... up to ``max_backoff_s``): a job that waits
    behind a long queue is not published again every ``queued_timeout_s``, which would grow the
    broker's queue by a duplicate per waiting job each time.
    """
    if heartbeat_timeout_s is None and queued_timeout_s is None:
        eligible = Job.status.in_([s.value for s in ACTIVE])
    else:
        eligible = _stale(now, heartbeat_timeout_s, queued_timeout_s)
    condition = and_(Job.id == job_id, eligible)
    if heartbeat_timeout_s is not None and _fail_silent_recording(
        session, condition, timeout_s=heartbeat_timeout_s, now=now
    ):
        return False
    condition = and_(condition, _run_by_workers())
    cancelled = session.execute(
        update(Job)
        .where(condition, Job.status == Status.RUNNING.value, Job.cancel_requested.is_(True))
        .values(status=Status.CANCELLED.value, finished_at=_at(now), worker_id=None)
        .execution_options(synchronize_session=False)
    )
    if cancelled.rowcount:
        return False
    row = session.execute(
        select(
            Job.status, Job.enqueued_at, Job.requeue_after, Job.heartbeat_at, Job.deaths, Job.meta_iter
        ).where(condition)
    ).one_or_none()
    if row is None:
        return False
    deaths = row.deaths
    if row.status == Status.RUNNING.value and heartbeat_timeout_s is not None:
        deaths += _died(row.heartbeat_at, deaths_after)  # stale: its worker died (or the database was down)
        if deaths > row.deaths and max_deaths is not None and deaths >= max_deaths:
            _fail_dead(session, job_id, condition, deaths=deaths, meta_iter=row.meta_iter, now=now)
            return False
    requeue_after = None  # a job that enters the queue waits the plain timeout
    if row.status == Status.QUEUED.value and queued_timeout_s is not None:
        waited = queued_timeout_s
        if row.requeue_after is not None:
            waited = (row.requeue_after - row.enqueued_at).total_seconds()
        wait = max(queued_timeout_s, min(2 * waited, max_backoff_s or math.inf))
        requeue_after = _at(now, wait)
    result = session.execute(
        update(Job)
        # the row as read: a racing reaper that re-queued it first leaves nothing to do here
        .where(
            condition,
            Job.status == row.status,
            Job.enqueued_at == row.enqueued_at,
            Job.deaths == row.deaths,
        )
        .values(
            status=Status.QUEUED.value,
            worker_id=None,
            enqueued_at=_at(now),
            requeue_after=requeue_after,
            deaths=deaths,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
