"""Every read and write of the job domain, as functions taking a `Session`.

They add and flush, never commit: the caller owns the transaction (an API route, one worker
callback), so one call of the public API is one unit of work and enqueueing happens after the
commit. Reads a tenant makes are tenant-scoped: another tenant's job or dataset raises `NotFound`,
exactly like one that does not exist.

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

import base64
import binascii
import dataclasses
import json
import math
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session, defer

from hypercore.steps import STEP_FIELDS, STEP_TYPES
from jobs.errors import Conflict, InvalidInput, NotFound
from jobs.models import ApiKey, Checkpoint, Dataset, HyperSnapshot, Job, Step, Tenant, new_id, utcnow
from jobs.spec import DatasetShape, JobSpec
from jobs.states import ACTIVE, Status, check_transition

DEFAULT_HEARTBEAT_TIMEOUT_S = 60.0
LOCAL_TENANT = "local"
KEY_PREFIX = "rt"

_hasher = PasswordHasher()


# ---- tenants and API keys ---------------------------------------------------------------------


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id(), name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


@dataclasses.dataclass(frozen=True)
class ApiKeyInfo:
    """A key as `list_api_keys` shows it: never the secret."""

    id: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None


def create_api_key(session: Session, tenant_name: str) -> tuple[str, str]:
    """Create a key for ``tenant_name`` (the tenant too, if new); return ``(key_id, key)``.

    The key is ``rt_<key_id>_<secret>``; only an argon2 hash of the secret is stored, so the key can
    be shown once and never again.
    """
    tenant = get_or_create_tenant(session, tenant_name)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    session.add(ApiKey(id=key_id, tenant_id=tenant.id, secret_hash=_hasher.hash(secret), created_at=utcnow()))
    session.flush()
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"


def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    rows = session.execute(
        select(ApiKey, Tenant.name).join(Tenant, ApiKey.tenant_id == Tenant.id).order_by(ApiKey.created_at)
    )
    return [ApiKeyInfo(k.id, name, k.created_at, k.revoked_at) for k, name in rows]


def revoke_api_key(session: Session, key_id: str) -> bool:
    """Revoke the key; False if there is no such key. Revoking twice keeps the first time."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return True


def parse_api_key(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


_dummy_hash: str | None = None


def authenticate(session: Session, key: str) -> str | None:
    """The tenant id of a valid, unrevoked key; None otherwise.

    argon2's verification compares in constant time; an unknown key id still pays one verification
    (against a dummy hash) so response times do not reveal which key ids exist.
    """
    global _dummy_hash
    parsed = parse_api_key(key)
    row = session.get(ApiKey, parsed[0]) if parsed else None
    if row is None or row.revoked_at is not None:
        if _dummy_hash is None:
            _dummy_hash = _hasher.hash(secrets.token_urlsafe(32))
        _verify(_dummy_hash, parsed[1] if parsed else key)
        return None
    return row.tenant_id if _verify(row.secret_hash, parsed[1]) else None


def _verify(hash_: str, secret: str) -> bool:
    try:
        return _hasher.verify(hash_, secret)
    except (VerificationError, InvalidHashError):
        return False


# ---- jobs -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobPage:
    items: list[Job]
    next_cursor: str | None


def create_job(
    session: Session, tenant_id: str, spec: JobSpec, *, idempotency_key: str | None = None
) -> tuple[Job, bool]:
    """Create a queued job; return ``(job, created)``.

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
            if existing.spec != spec_dict:
                raise Conflict(
                    f"Idempotency-Key {idempotency_key!r} was already used for job {existing.id} "
                    "with a different spec; use a new key for a new job"
                )
            return existing, False
    now = utcnow()
    job = Job(
        id=new_id(),
        tenant_id=tenant_id,
        name=spec.name,
        status=Status.QUEUED.value,
        spec=spec_dict,
        meta_iter=0,
        meta_iterations=spec.meta.iterations,
        idempotency_key=idempotency_key,
        created_at=now,
        enqueued_at=now,
    )
    session.add(job)
    session.flush()
    return job, True


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    return job


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        when = datetime.fromisoformat(created_at)
        if when.tzinfo is None or not isinstance(job_id, str):
            raise ValueError("malformed")
        return when, job_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
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


# ---- steps and hyperparameters ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepPage:
    items: list[Step]
    next_after: int | None


def list_steps(
    session: Session, tenant_id: str, job_id: str, *, after: int | None = None, limit: int = 100
) -> StepPage:
    """Steps with ``meta_iter > after``, oldest first. ``next_after`` is the last ``meta_iter``
    returned when the page is full (more may follow at once), else None (poll again later with
    ``after`` = the last ``meta_iter`` seen)."""
    get_job(session, tenant_id, job_id)
    query = select(Step).where(Step.job_id == job_id)
    if after is not None:
        query = query.where(Step.meta_iter > after)
    items = list(session.scalars(query.order_by(Step.meta_iter).limit(limit)))
    return StepPage(items, items[-1].meta_iter if len(items) == limit else None)


@dataclasses.dataclass(frozen=True)
class HyperparameterValue:
    """One hyperparameter after ``meta_iter`` finished meta-iterations, in natural units."""

    name: str
    meta_iter: int
    shape: list[int]
    axes: list[str]
    labels: dict[str, Any]
    learned: bool
    values: np.ndarray


def _snapshot_meta_iter(session: Session, job_id: str, meta_iter: int | None) -> int | None:
    if meta_iter is not None:
        found = session.scalar(
            select(HyperSnapshot.meta_iter)
            .where(HyperSnapshot.job_id == job_id, HyperSnapshot.meta_iter == meta_iter)
            .limit(1)
        )
        return found
    return session.scalar(
        select(HyperSnapshot.meta_iter)
        .where(HyperSnapshot.job_id == job_id)
        .order_by(HyperSnapshot.meta_iter.desc())
        .limit(1)
    )


def list_hyperparameters(
    session: Session, tenant_id: str, job_id: str, *, meta_iter: int | None = None
) -> tuple[int, list[HyperSnapshot]]:
    """``(meta_iter, snapshots)`` at ``meta_iter`` (default: the latest recorded), without their
    values (``data`` is not loaded). A job with no finished meta-iteration yet gives ``(0, [])``; an
    unrecorded ``meta_iter`` is `NotFound`."""
    get_job(session, tenant_id, job_id)
    found = _snapshot_meta_iter(session, job_id, meta_iter)
    if found is None:
        if meta_iter is None:
            return 0, []
        raise NotFound(f"job {job_id} has no hyperparameters recorded at meta_iter {meta_iter}")
    rows = session.scalars(
        select(HyperSnapshot)
        .options(defer(HyperSnapshot.data, raiseload=True))
        .where(HyperSnapshot.job_id == job_id, HyperSnapshot.meta_iter == found)
        .order_by(HyperSnapshot.name)
    )
    return found, list(rows)


def get_hyperparameter(
    session: Session, tenant_id: str, job_id: str, name: str, *, meta_iter: int | None = None
) -> HyperparameterValue:
    """The hyperparameter ``name`` at ``meta_iter`` (default: the latest recorded)."""
    found, rows = list_hyperparameters(session, tenant_id, job_id, meta_iter=meta_iter)
    if name not in {r.name for r in rows}:
        known = ", ".join(r.name for r in rows) or "none recorded yet"
        raise NotFound(f"job {job_id} has no hyperparameter {name!r} (known: {known})")
    row = session.get(HyperSnapshot, (job_id, found, name), populate_existing=True)
    assert row is not None
    values = np.frombuffer(row.data, dtype="<f8").reshape(row.shape)
    return HyperparameterValue(
        row.name, found, list(row.shape), list(row.axes), dict(row.labels), row.learned, values
    )


# ---- datasets ---------------------------------------------------------------------------------


def create_dataset(
    session: Session,
    tenant_id: str,
    *,
    dataset_id: str,
    name: str,
    layout: str,
    n_rows: int,
    n_train: int,
    n_valid: int,
    n_test: int,
    n_features: int,
    n_classes: int,
    sha256: str,
    path: str,
    size_bytes: int,
    n_tasks: int = 1,
    task_rows: int | None = None,
) -> Dataset:
    """Register an upload whose file is already in place (the caller writes it first, atomically)."""
    dataset = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name=name,
        layout=layout,
        n_rows=n_rows,
        n_train=n_train,
        n_valid=n_valid,
        n_test=n_test,
        n_features=n_features,
        n_classes=n_classes,
        n_tasks=n_tasks,
        task_rows=task_rows,
        sha256=sha256,
        path=path,
        size_bytes=size_bytes,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.flush()
    return dataset


def list_datasets(session: Session, tenant_id: str) -> list[Dataset]:
    query = select(Dataset).where(Dataset.tenant_id == tenant_id)
    return list(session.scalars(query.order_by(Dataset.created_at.desc(), Dataset.id.desc())))


def get_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))
    if dataset is None:
        raise NotFound(f"no dataset with id {dataset_id!r}")
    return dataset


def dataset_shape(session: Session, tenant_id: str, dataset_id: str) -> DatasetShape | None:
    """What `jobs.spec.validate_spec` needs of the tenant's upload; None if the tenant has none such."""
    try:
        d = get_dataset(session, tenant_id, dataset_id)
    except NotFound:
        return None
    return DatasetShape(
        n_features=d.n_features,
        n_classes=d.n_classes,
        n_rows=d.n_rows,
        layout="splits" if d.layout == "splits" else "xy",
        n_train=d.n_train,
        n_valid=d.n_valid,
        n_test=d.n_test,
        n_tasks=d.n_tasks,
        # an X/y upload splits every task alike, so each count must divide by the number of tasks
        split_unit=d.n_tasks if d.layout != "splits" else 1,
        task_rows=d.task_rows or 0,
    )


def delete_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    """Delete the row and return it (the caller removes the file after the commit). A dataset an
    active job of the tenant uses is a `Conflict`."""
    dataset = get_dataset(session, tenant_id, dataset_id)
    active = session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.status.in_([s.value for s in ACTIVE]))
    )
    users = [j.id for j in active if (j.spec.get("dataset") or {}).get("id") == dataset_id]
    if users:
        raise Conflict(f"dataset {dataset_id} is used by active job(s) {', '.join(users)}; cancel them first")
    session.delete(dataset)
    session.flush()
    return dataset


# ---- the worker's side ------------------------------------------------------------------------


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
