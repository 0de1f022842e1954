"""Jobs: create (idempotently, within the tenant's quota), read, list a page at a time by cursor,
cancel and delete."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from jobs.errors import Conflict, InvalidInput, NotFound
from jobs.models import Checkpoint, HyperSnapshot, Job, Step, Tenant, db_now, new_id, utcnow
from jobs.spec import JobSpec
from jobs.states import ACTIVE, Origin, Status, check_transition


class QuotaExceeded(Conflict):
    """The tenant keeps as many jobs (or dataset bytes) as its quota allows: delete some first. 409,
    like every conflict with the state of what the tenant has: waiting does not cure it."""


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Take the tenant's row until the commit, so that two requests checking one of its quotas at
    once are counted one after the other (PostgreSQL ``FOR NO KEY UPDATE``, which the foreign-key
    checks of inserts do not wait for; SQLite has a single writer anyway)."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))


def _check_job_quota(session: Session, tenant_id: str, max_jobs: int) -> None:
    lock_tenant(session, tenant_id)
    kept = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)) or 0
    if kept < max_jobs:
        return
    finished = select(Job).where(Job.tenant_id == tenant_id, Job.status.not_in([s.value for s in ACTIVE]))
    oldest = list(session.scalars(finished.order_by(Job.created_at, Job.id).limit(3)))
    n_finished = session.scalar(select(func.count()).select_from(finished.subquery())) or 0
    if oldest:
        advice = (
            f"{n_finished} of them finished: delete those you no longer need (DELETE /v1/jobs/{{id}}; "
            f"oldest first: {', '.join(j.id for j in oldest)}), then submit again"
        )
    else:
        advice = "all are queued or running: cancel some, then delete them once they stop"
    raise QuotaExceeded(
        f"job quota reached: this tenant keeps {kept} jobs and REVTUNE_MAX_JOBS_PER_TENANT allows "
        f"{max_jobs}; {advice}"
    )


@dataclasses.dataclass(frozen=True)
class JobPage:
    items: list[Job]
    next_cursor: str | None


def create_job(
    session: Session,
    tenant_id: str,
    spec: JobSpec,
    *,
    idempotency_key: str | None = None,
    max_jobs: int | None = None,
    origin: Origin = Origin.SERVICE,
) -> tuple[Job, bool]:
    """Create a queued job; return ``(job, created)``. A library run (``origin`` external,
    `jobs.repository.external`) is created ``running`` instead, with its recorder's first heartbeat.

    With ``max_jobs`` (``REVTUNE_MAX_JOBS_PER_TENANT``), a tenant that already keeps that many jobs,
    whatever their status, gets `QuotaExceeded` (naming the limit, the count and what to delete);
    deleting a job frees its place. A repeat with an ``idempotency_key`` is not a new job.

    With ``idempotency_key``, a second call by the same tenant returns the first job and
    ``created=False``; reusing the key for a different spec is a `Conflict`. Two concurrent first
    calls race on the unique ``(tenant_id, idempotency_key)``: the loser's flush raises
    ``IntegrityError``; roll back and call again to get the winner's job.
    """
    spec_dict = spec.to_dict()
    if idempotency_key is not None:
        existing = session.scalar(
            select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key)
        )
        if existing is not None:
            if existing.spec != spec_dict or existing.origin != origin:
                raise Conflict(
                    f"Idempotency-Key {idempotency_key!r} was already used for job {existing.id} "
                    "with a different spec; use a new key for a new job"
                )
            return existing, False
    if max_jobs is not None:
        _check_job_quota(session, tenant_id, max_jobs)
    now = utcnow()
    external = origin == Origin.EXTERNAL
    job = Job(
        id=new_id(),
        tenant_id=tenant_id,
        name=spec.name,
        status=(Status.RUNNING if external else Status.QUEUED).value,
        origin=origin.value,
        spec=spec_dict,
        meta_iter=0,
        meta_iterations=spec.meta.iterations,
        idempotency_key=idempotency_key,
        created_at=now,
        # The reaper compares it with the database's clock (a queued job nobody claimed in time),
        # so the database stamps it too: an API host whose clock is off cannot make it look stale.
        enqueued_at=db_now(),
        started_at=db_now() if external else None,
        heartbeat_at=db_now() if external else None,
    )
    session.add(job)
    session.flush()
    return job, True


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    return job


_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+={0,2}")  # base64url, padded or not
_JOB_ID = re.compile(r"[0-9a-f]{32}")  # `jobs.models.new_id`: uuid4().hex


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(created_at, id)`` of a cursor `_encode_cursor` could have issued; `InvalidInput` otherwise.

    Strict, because the parts go into a query: base64url of a UTF-8 JSON pair ``[time, id]``, the
    time an ISO datetime with a zone that stays in range once converted to UTC (the form the query
    binds), the id a job id as `jobs.models.new_id` makes it (32 lowercase hex digits: no NUL or
    lone surrogate reaches the database).
    """
    try:
        if not _CURSOR_TEXT.fullmatch(cursor):
            raise ValueError("not base64url")
        digits = cursor.rstrip("=")
        raw = base64.urlsafe_b64decode(digits + "=" * (-len(digits) % 4))
        pair = json.loads(raw.decode("utf-8"))
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError("not a pair")
        created_at, job_id = pair
        if not isinstance(created_at, str) or not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise ValueError("malformed")
        when = datetime.fromisoformat(created_at)
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("no time zone")
        return when.astimezone(UTC), job_id
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise InvalidInput(
            ["query", "cursor"], "not a cursor this server issued (pass next_cursor back as is)"
        ) from None


def list_jobs(
    session: Session, tenant_id: str, *, status: str | None = None, limit: int = 50, cursor: str | None = None
) -> JobPage:
    """The tenant's jobs, newest first, ``limit`` at a time. The cursor is the position after the
    last job returned, as ``(created_at, id)``: jobs created meanwhile never shift the pages."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        if status not in Status.__members__.values():
            raise InvalidInput(["query", "status"], f"unknown status {status!r}; known: {', '.join(Status)}")
        query = query.where(Job.status == status)
    if cursor is not None:
        created_at, job_id = _decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    items = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    more = len(items) > limit
    items = items[:limit]
    return JobPage(items, _encode_cursor(items[-1]) if more else None)


def request_cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    """Cancel: a queued job is cancelled at once; a running one is flagged, and its worker stops
    after the meta-iteration in flight. Cancelling a cancelled job is a no-op; a job that already
    succeeded or failed is a `Conflict`."""
    job = get_job(session, tenant_id, job_id)
    if job.status == Status.QUEUED:
        _set_status(job, Status.CANCELLED)
        job.cancel_requested = True
        job.finished_at = utcnow()
    elif job.status == Status.RUNNING:
        job.cancel_requested = True
    elif job.status != Status.CANCELLED:
        raise Conflict(f"job {job_id} already {job.status}; there is nothing to cancel")
    session.flush()
    return job


def continue_job(
    session: Session,
    tenant_id: str,
    job_id: str,
    iterations: int,
    *,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> Job:
    """Give a succeeded or cancelled job ``iterations`` more meta-iterations: its spec's
    ``meta.iterations`` becomes the meta-iterations it finished plus ``iterations`` and it goes back
    to the queue, to resume from its checkpoint (the meta-optimiser's state, the chaos guard's and
    the hyperparameters), so that it ends where one job run for the sum from the start ends, bit for
    bit. Its steps, snapshots, best and warnings are kept. ``check(spec)`` validates the new spec
    (the server's limits; raise to refuse). The caller enqueues it after the commit.

    `Conflict` for a job still queued or running, a failed one (its run cannot go on as it was: start
    a new job from its values instead, ``init: {"from_job": ..., "which": "last"}``), and a library
    run the service only records.
    """
    job = get_job(session, tenant_id, job_id)
    if job.origin == Origin.EXTERNAL:
        raise Conflict(
            f"job {job_id} is a library run the service records: continue it from your own process "
            "(Client.record with resume=True), not on the service's workers"
        )
    if job.status in ACTIVE:
        raise Conflict(f"job {job_id} is {job.status}: continue it once it has finished")
    if job.status == Status.FAILED:
        raise Conflict(
            f"job {job_id} failed ({job.error}); a failed run cannot go on as it was: submit a new job "
            f'that starts from its values (hyperparameters.<kind>.init: {{"from_job": "{job_id}", '
            '"which": "last"})'
        )
    spec = json.loads(json.dumps(job.spec))  # a new object: the JSON column sees only assignments
    spec.setdefault("meta", {})["iterations"] = job.meta_iter + iterations
    if check is not None:
        check(spec)
    _set_status(job, Status.QUEUED)
    job.spec, job.meta_iterations = spec, job.meta_iter + iterations
    job.cancel_requested, job.finished_at, job.error, job.worker_id = False, None, None, None
    job.enqueued_at, job.requeue_after = utcnow(), None
    session.flush()
    return job


def delete_job(session: Session, tenant_id: str, job_id: str) -> None:
    """Delete a finished job with its steps, snapshots and checkpoint; `Conflict` while it is active."""
    job = get_job(session, tenant_id, job_id)
    if job.status in ACTIVE:
        raise Conflict(f"job {job_id} is {job.status}: cancel it first, then delete it once it stops")
    # Explicit deletes: the ON DELETE CASCADE needs SQLite's foreign_keys pragma, which not every
    # connection (a user's sqlite3 shell) sets.
    for table in (Step, HyperSnapshot, Checkpoint):
        session.execute(delete(table).where(table.job_id == job_id))
    session.delete(job)
    session.flush()


def _set_status(job: Job, new: Status) -> None:
    job.status = check_transition(job.status, new).value
