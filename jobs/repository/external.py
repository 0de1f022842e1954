"""Library runs the service records (origin ``external``): the recorder's side of a job.

A recorder (`revtune.Client.record`) creates the job ``running`` (`jobs.repository.jobs.create_job`
with ``origin=Origin.EXTERNAL``), then after each meta-iteration `record_step` writes its step and the
hyperparameter snapshots, by the rule the worker follows (`jobs.repository.results`: fixed
hyperparameters once, with meta-iteration 0; learned ones on `snapshot_interval`'s grid for
``REVTUNE_MAX_SNAPSHOT_BYTES_PER_JOB``, and the last one before a cancel). Between meta-iterations
it sends `recording_heartbeat`; `finish_recording` ends the run. No worker claims such a job and the
reaper never re-queues it: a heartbeat silent for ``REVTUNE_HEARTBEAT_TIMEOUT_S`` ends it ``failed``
(`jobs.repository.worker.recorder_died`), and a new recorder may `resume_recording` it from there.

Every call is tenant-scoped (another tenant's job is `NotFound`) and refuses a job a worker runs
(`NotRecorded`, 409). Recording step ``k`` again is a no-op (a retried POST), a gap is a `Conflict`.
The heartbeat is the database's clock (`jobs.models.db_now`), as for workers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobs.errors import Conflict, InvalidInput
from jobs.models import HyperSnapshot, Job, db_now, utcnow
from jobs.repository.jobs import get_job
from jobs.repository.results import VALUE_BYTES, scored_rule, snapshot_interval, stores_learned
from jobs.repository.worker import store_meta_iteration, store_scored
from jobs.states import TERMINAL, Origin, Status, check_transition


class NotRecorded(Conflict):
    """The job is not a library run (origin ``service``): only its worker writes into it."""


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What a step POST answers: the job's recorded meta-iterations, whether this one was new, and
    whether cancel was requested (the recorder then stops its loop)."""

    meta_iter: int
    recorded: bool
    cancel_requested: bool


def _recording(session: Session, tenant_id: str, job_id: str) -> Job:
    job = get_job(session, tenant_id, job_id)
    if job.origin != Origin.EXTERNAL:
        raise NotRecorded(
            f"job {job_id} is run by the service's workers (origin {job.origin}); only a library run "
            "(origin external, POST /v1/jobs/external) is written by its client"
        )
    return job


def _beat(session: Session, tenant_id: str, job_id: str) -> Job:
    """Refresh the heartbeat of the running library run ``job_id`` and return it, its row taken until
    the commit (the conditional UPDATE locks it on PostgreSQL): a reaper cannot fail it meanwhile.
    `Conflict` naming its status if it is not running."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.tenant_id == tenant_id,
            Job.origin == Origin.EXTERNAL.value,
            Job.status == Status.RUNNING.value,
        )
        .values(heartbeat_at=db_now())
        .execution_options(synchronize_session=False)
    )
    job = _recording(session, tenant_id, job_id)
    session.refresh(job)
    if result.rowcount != 1:
        advice = (
            f"; resume it (POST /v1/jobs/{job_id}/resume, or client.record(..., job_id=...)) to record more"
            if job.status == Status.FAILED
            else ""
        )
        raise Conflict(f"job {job_id} is {job.status}, not running: nothing more is recorded{advice}")
    return job


def recording_heartbeat(session: Session, tenant_id: str, job_id: str) -> Job:
    """The recorder is alive: refresh the heartbeat. The job says whether cancel was requested."""
    job = _beat(session, tenant_id, job_id)
    session.flush()
    return job


def resume_recording(session: Session, tenant_id: str, job_id: str) -> Job:
    """A new recorder takes the run over: a ``running`` job gets a fresh heartbeat, a ``failed`` one
    (its recorder died, or its run raised) runs again, its error cleared and its records kept.
    `Conflict` for a succeeded or cancelled job."""
    job = _recording(session, tenant_id, job_id)
    if job.status == Status.RUNNING:
        return recording_heartbeat(session, tenant_id, job_id)
    check_transition(job.status, Status.RUNNING, Origin.EXTERNAL)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == job.status)
        .values(status=Status.RUNNING.value, error=None, finished_at=None, heartbeat_at=db_now())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise Conflict(f"job {job_id} changed while resuming it; try again")
    session.refresh(job)
    return job


def _fixed_bytes(session: Session, job_id: str) -> int:
    stored = session.scalar(
        select(func.sum(func.length(HyperSnapshot.data))).where(
            HyperSnapshot.job_id == job_id, HyperSnapshot.learned.is_(False)
        )
    )
    return int(stored or 0)


def record_step(
    session: Session,
    tenant_id: str,
    job_id: str,
    *,
    step: dict,
    hyperparameters: dict[str, dict],
    snapshot_budget_bytes: int | None,
    scored: dict[str, dict] | None = None,
) -> Recorded:
    """Record meta-iteration ``step["meta_iter"]`` (0-based) of a running library run.

    ``hyperparameters``: ``{name: {"values": float64 array, "axes", "labels", "learned"}}`` after it.
    ``scored``: the same for the values it trained with (`hypercore.tune.Record.trained_with`), kept
    where the worker keeps them: at ``meta_iter`` 0 (the initial values, the fixed ones with them),
    and for a new best objective where the snapshot grid does not keep its values; the earlier best's
    kept that way then goes. Which are stored follows the worker's rule (module docstring). A
    ``meta_iter`` already recorded is not written again (``recorded`` False); one past the next is a
    `Conflict` (a gap); one at or past ``meta.iterations`` is `InvalidInput` on ``meta_iter``."""
    job = _beat(session, tenant_id, job_id)
    k = int(step["meta_iter"])
    if k < job.meta_iter:
        return Recorded(job.meta_iter, False, job.cancel_requested)
    if k >= job.meta_iterations:
        raise InvalidInput(
            ["body", "meta_iter"],
            f"the run's description says meta.iterations {job.meta_iterations}, so meta_iter is at most "
            f"{job.meta_iterations - 1}; got {k}",
        )
    if k > job.meta_iter:
        raise Conflict(
            f"meta_iter {k}: job {job_id} has {job.meta_iter} recorded meta-iterations, so the next one "
            f"is meta_iter {job.meta_iter} (a gap is refused: resume the run from the checkpoint after "
            f"meta-iteration {job.meta_iter - 1})"
            if job.meta_iter
            else f"meta_iter {k}: job {job_id} has no recorded meta-iteration, so the next one is meta_iter 0"
        )
    _check_scored(scored or {}, hyperparameters)
    sizes = {True: 0, False: 0}
    for hv in hyperparameters.values():
        sizes[bool(hv["learned"])] += int(hv["values"].size) * VALUE_BYTES
    interval = snapshot_interval(
        learned_bytes=sizes[True],
        fixed_bytes=sizes[False] if k == 0 else _fixed_bytes(session, job_id),
        iterations=job.meta_iterations,
        budget_bytes=snapshot_budget_bytes,
    )
    # Fixed ones never change: stored once, with snapshot 0 (the values meta-iteration 0 trained
    # with) when the recorder sends it, else with the values after meta-iteration 0. The learned ones
    # on the grid, and as the last before a cancel (the recorder stops after this one), as the
    # worker does; the values a new best trained with where the grid does not keep them.
    learned = stores_learned(k + 1, interval, job.meta_iterations) or job.cancel_requested
    fixed_after = k == 0 and not scored
    kept = {name: hv for name, hv in hyperparameters.items() if (learned if hv["learned"] else fixed_after)}
    which, drop = scored_rule(
        k, step.get("objective"), job.best_objective, job.best_meta_iter, interval, job.meta_iterations
    )
    keep = {name: hv for name, hv in (scored or {}).items() if which == "all" or (which and hv["learned"])}
    store_scored(session, job_id, k, keep, drop)
    store_meta_iteration(session, job, step=step, hyperparameters=kept, now=utcnow())
    return Recorded(job.meta_iter, True, job.cancel_requested)


def _check_scored(scored: dict[str, dict], hyperparameters: dict[str, dict]) -> None:
    """`InvalidInput` on ``scored.<name>`` for a value that is not the same hyperparameter as the
    step's own before its update: a name the step lacks, another shape, other axes or ``learned``."""
    for name, hv in scored.items():
        other = hyperparameters.get(name)
        if other is None:
            known = ", ".join(sorted(hyperparameters)) or "none"
            raise InvalidInput(
                ["body", "scored", name],
                f"not one of this step's hyperparameters ({known}): scored holds the values the step's "
                "own hyperparameters had before its update",
            )
        mine, theirs = _layout(hv), _layout(other)
        if mine != theirs:
            raise InvalidInput(
                ["body", "scored", name], f"{mine} differ from hyperparameters.{name}'s: {theirs}"
            )


def _layout(hv: dict) -> str:
    shape, learned = list(np.shape(hv["values"])), str(bool(hv["learned"])).lower()
    return f"shape {shape}, axes {list(hv['axes'])}, learned {learned}"


def finish_recording(
    session: Session, tenant_id: str, job_id: str, status: str, *, error: str | None = None
) -> Job:
    """End the run ``succeeded``, ``failed`` (with ``error``) or ``cancelled``. Finishing again with
    the status it already has is a no-op (a retried POST)."""
    job = _recording(session, tenant_id, job_id)
    new = Status(status)
    if new not in TERMINAL:
        raise InvalidInput(["body", "status"], f"succeeded, failed or cancelled; got {status!r}")
    if job.status == new:
        return job
    check_transition(job.status, new, Origin.EXTERNAL)
    job.status = new.value
    job.error = error if new == Status.FAILED else None
    job.finished_at = db_now()
    session.flush()
    session.refresh(job)
    return job
