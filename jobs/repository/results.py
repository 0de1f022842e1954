"""A job's results as the worker recorded them: its steps and its hyperparameter snapshots.

What is stored (the worker, `worker.runner`, decides; docs/API.md, "Hyperparameters"): a fixed
hyperparameter once, at ``meta_iter`` 1 (its value never changes); the learned ones after every
meta-iteration while a job's snapshots fit ``REVTUNE_MAX_SNAPSHOT_BYTES_PER_JOB``, else after every
``k``-th (`snapshot_interval`) and the last. The reads answer every stored ``meta_iter`` as if
everything were stored there: a fixed hyperparameter's value at any ``meta_iter`` is its stored one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, defer

from jobs.errors import Conflict, InvalidInput, NotFound
from jobs.models import HyperSnapshot, Job, Step
from jobs.repository.jobs import get_job
from jobs.states import Origin


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


# ---- what is stored: the rule the worker follows ---------------------------------------------------

VALUE_BYTES = 8  # every value is stored as a float64


def snapshot_interval(
    *, learned_bytes: int, fixed_bytes: int, iterations: int, budget_bytes: int | None
) -> int:
    """``k``: store the learned hyperparameters after meta-iterations ``k, 2k, 3k, ...`` and after the
    last one (``iterations``), so that a job's snapshots stay within ``budget_bytes``
    (``REVTUNE_MAX_SNAPSHOT_BYTES_PER_JOB``).

    ``learned_bytes``: one snapshot of every learned hyperparameter; ``fixed_bytes``: the fixed ones,
    stored once. ``k`` is 1 (every meta-iteration) while ``fixed_bytes + iterations * learned_bytes``
    fits, else the smallest ``k`` whose ``ceil(iterations / k)`` snapshots fit. At least the last
    snapshot is always kept, even one that alone is larger than the budget (``k = iterations``).
    """
    if budget_bytes is None or learned_bytes <= 0 or iterations <= 1:
        return 1
    fits = (budget_bytes - fixed_bytes) // learned_bytes
    if fits >= iterations:
        return 1
    return -(-iterations // max(fits, 1))  # ceil(iterations / fits): ceil(iterations / k) <= fits


def stores_learned(meta_iter: int, interval: int, iterations: int) -> bool:
    """Whether the learned hyperparameters after ``meta_iter`` finished meta-iterations (1-based, the
    REST ``meta_iter``) are stored under `snapshot_interval`'s ``interval`` (the worker also stores
    them when the job is being cancelled, as its last)."""
    return interval <= 1 or meta_iter % interval == 0 or meta_iter >= iterations


def scored_rule(
    k: int,
    objective: float | None,
    best_objective: float | None,
    best_meta_iter: int | None,
    interval: int,
    iterations: int,
) -> tuple[str | None, int | None]:
    """Which of the values meta-iteration ``k`` trained with are stored at its own ``meta_iter``:
    ``"all"`` at 0 (the initial values, the fixed ones with them, stored once), ``"learned"`` for a
    new best objective the snapshot grid does not keep, else None; and the earlier best whose learned
    snapshots then go (kept off the grid only as a best), or None. The rule a worker's job and a
    recorded library run share, read before this meta-iteration moves the job's best."""
    best = (
        objective is not None
        and math.isfinite(objective)
        and (best_objective is None or objective < best_objective)
    )
    keep = "all" if k == 0 else "learned" if best and not stores_learned(k, interval, iterations) else None
    gone = best and best_meta_iter and not stores_learned(best_meta_iter, interval, iterations)
    return keep, best_meta_iter if gone else None


# ---- reading them back ---------------------------------------------------------------------------


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


def _stored_meta_iters(session: Session, job_id: str) -> list[int]:
    """The meta-iterations with a snapshot of the learned hyperparameters, ascending (every
    meta-iteration with snapshots, for a job that has no learned ones)."""
    learned = list(
        session.scalars(
            select(HyperSnapshot.meta_iter)
            .where(HyperSnapshot.job_id == job_id, HyperSnapshot.learned.is_(True))
            .distinct()
            .order_by(HyperSnapshot.meta_iter)
        )
    )
    if learned:
        return learned
    return list(
        session.scalars(
            select(HyperSnapshot.meta_iter)
            .where(HyperSnapshot.job_id == job_id)
            .distinct()
            .order_by(HyperSnapshot.meta_iter)
        )
    )


def _snapshot_meta_iter(session: Session, job_id: str, meta_iter: int | None) -> int | None:
    """``meta_iter`` if the learned hyperparameters are stored there (default: the latest stored);
    None if not. A job without learned hyperparameters: any meta-iteration with snapshots."""

    def latest(learned_only: bool) -> int | None:
        query = select(HyperSnapshot.meta_iter).where(HyperSnapshot.job_id == job_id)
        if learned_only:
            query = query.where(HyperSnapshot.learned.is_(True))
        if meta_iter is not None:
            query = query.where(HyperSnapshot.meta_iter == meta_iter)
        return session.scalar(query.order_by(HyperSnapshot.meta_iter.desc()).limit(1))

    found = latest(True)
    if found is not None:
        return found
    has_learned = session.scalar(
        select(HyperSnapshot.meta_iter)
        .where(HyperSnapshot.job_id == job_id, HyperSnapshot.learned.is_(True))
        .limit(1)
    )
    return latest(False) if has_learned is None else None


def _describe(stored: list[int]) -> str:
    """The stored meta-iterations, short: ``5, 10, 15`` or ``every 5th (5, 10, ..., 495) and 497``."""
    if len(stored) <= 12:
        return ", ".join(map(str, stored))
    step = stored[0]
    grid = stored if stored[-1] == step * len(stored) else stored[:-1]
    if all(m == step * (i + 1) for i, m in enumerate(grid)):
        text = (
            f"1..{grid[-1]}" if step == 1 else f"every {_ordinal(step)} ({step}, {2 * step}, ..., {grid[-1]})"
        )
        return text if grid is stored else f"{text} and {stored[-1]}"
    return f"{', '.join(map(str, stored[:6]))}, ..., {', '.join(map(str, stored[-6:]))}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _not_stored(job: Job, meta_iter: int, stored: list[int]) -> NotFound:
    if not 1 <= meta_iter <= job.meta_iter or not stored:
        recorded = f"1..{job.meta_iter}" if job.meta_iter else "none yet"
        return NotFound(
            f"job {job.id} has no hyperparameters recorded at meta_iter {meta_iter} "
            f"(finished meta-iterations: {recorded})"
        )
    earlier = [m for m in stored if m < meta_iter]
    later = [m for m in stored if m > meta_iter]
    nearest = "; nearest stored: " + " and ".join(
        [*([f"{earlier[-1]} (earlier)"] if earlier else []), *([f"{later[0]} (later)"] if later else [])]
    )
    return NotFound(
        f"job {job.id} has no hyperparameters recorded at meta_iter {meta_iter}: its learned "
        f"hyperparameters are too large to keep after every meta-iteration "
        f"(REVTUNE_MAX_SNAPSHOT_BYTES_PER_JOB), so they are stored at meta_iter {_describe(stored)}"
        f"{nearest}"
    )


def _rows_at(session: Session, job_id: str, meta_iter: int) -> list[HyperSnapshot]:
    """The snapshots that hold the values at ``meta_iter`` (without ``data``): the learned ones
    stored there and, for each fixed one, its latest row at or before it (fixed hyperparameters are
    stored once, at the first meta-iteration; a job recorded before that rule has them everywhere)."""
    no_data = defer(HyperSnapshot.data, raiseload=True)
    learned = session.scalars(
        select(HyperSnapshot)
        .options(no_data)
        .where(
            HyperSnapshot.job_id == job_id,
            HyperSnapshot.meta_iter == meta_iter,
            HyperSnapshot.learned.is_(True),
        )
    )
    latest_fixed = (
        select(HyperSnapshot.name, func.max(HyperSnapshot.meta_iter).label("meta_iter"))
        .where(
            HyperSnapshot.job_id == job_id,
            HyperSnapshot.meta_iter <= meta_iter,
            HyperSnapshot.learned.is_(False),
        )
        .group_by(HyperSnapshot.name)
        .subquery()
    )
    fixed = session.scalars(
        select(HyperSnapshot)
        .options(no_data)
        .join(
            latest_fixed,
            and_(
                HyperSnapshot.name == latest_fixed.c.name, HyperSnapshot.meta_iter == latest_fixed.c.meta_iter
            ),
        )
        .where(HyperSnapshot.job_id == job_id)
    )
    return sorted([*learned, *fixed], key=lambda r: r.name)


def list_hyperparameters(
    session: Session, tenant_id: str, job_id: str, *, meta_iter: int | None = None
) -> tuple[int, list[HyperSnapshot]]:
    """``(meta_iter, snapshots)`` at ``meta_iter`` (default: the latest stored), without their
    values (``data`` is not loaded; a snapshot's own ``meta_iter`` is where it is stored, which for a
    fixed hyperparameter is earlier). A job with no finished meta-iteration yet gives ``(0, [])``; a
    ``meta_iter`` whose learned hyperparameters are not stored is `NotFound`, naming those stored."""
    job = get_job(session, tenant_id, job_id)
    found = _snapshot_meta_iter(session, job_id, meta_iter)
    if found is None:
        if meta_iter is None:
            return 0, []
        raise _not_stored(job, meta_iter, _stored_meta_iters(session, job_id))
    return found, _rows_at(session, job_id, found)


def get_hyperparameter(
    session: Session, tenant_id: str, job_id: str, name: str, *, meta_iter: int | None = None
) -> HyperparameterValue:
    """The hyperparameter ``name`` at ``meta_iter`` (default: the latest stored). A fixed one answers
    at every finished meta-iteration (its value never changes), even where the learned ones are not
    stored."""
    try:
        found, rows = list_hyperparameters(session, tenant_id, job_id, meta_iter=meta_iter)
    except NotFound:
        job = get_job(session, tenant_id, job_id)
        fixed = _fixed_row(session, job, name, meta_iter) if meta_iter is not None else None
        if fixed is None:
            raise
        found, rows = meta_iter, [fixed]
    row = next((r for r in rows if r.name == name), None)
    if row is None:
        known = ", ".join(r.name for r in rows) or "none recorded yet"
        raise NotFound(f"job {job_id} has no hyperparameter {name!r} (known: {known})")
    row = session.get(HyperSnapshot, (job_id, row.meta_iter, name), populate_existing=True)
    assert row is not None
    values = np.frombuffer(row.data, dtype="<f8").reshape(row.shape)
    return HyperparameterValue(
        row.name, found, list(row.shape), list(row.axes), dict(row.labels), row.learned, values
    )


def _fixed_row(session: Session, job: Job, name: str, meta_iter: int) -> HyperSnapshot | None:
    """The fixed hyperparameter ``name``'s row that holds its value at ``meta_iter`` (a finished
    meta-iteration), or None."""
    if not 1 <= meta_iter <= job.meta_iter:
        return None
    return session.scalar(
        select(HyperSnapshot)
        .options(defer(HyperSnapshot.data, raiseload=True))
        .where(
            HyperSnapshot.job_id == job.id,
            HyperSnapshot.name == name,
            HyperSnapshot.learned.is_(False),
            HyperSnapshot.meta_iter <= meta_iter,
        )
        .order_by(HyperSnapshot.meta_iter.desc())
        .limit(1)
    )


# ---- export: which snapshot ----------------------------------------------------------------------


def resolve_which(session: Session, tenant_id: str, job_id: str, which: str) -> int:
    """The hyperparameter snapshot (its REST ``meta_iter``) that ``which`` names, for an export:

    - ``"best"``: snapshot ``job.best_meta_iter``, the values the meta-iteration with the lowest
      objective trained and scored (meta-iteration ``k`` draws its weights and minibatches from
      ``(seed, k)`` and trains with snapshot ``k``, the values after ``k`` finished meta-iterations);
    - ``"last"``: the latest stored snapshot, the values after the final update (which no
      meta-iteration has trained with yet);
    - a non-negative integer ``k``: snapshot ``k`` (0: the initial values).

    `InvalidInput` on ``which`` for anything else; `Conflict` for a job with no finished
    meta-iteration, or a ``best`` when every objective was non-finite; `NotFound`, naming what is
    stored, for a snapshot the job does not have (a job recorded before snapshot 0 and the best's
    were always kept may lack them)."""
    text = which.strip() if isinstance(which, str) else ""
    number = text.isascii() and text.isdigit() and len(text.lstrip("0")) <= 18  # no meta_iter is larger
    if text not in ("best", "last") and not number:
        raise InvalidInput(
            ["query", "which"],
            f"must be 'best', 'last' or a non-negative integer (a meta-iteration), got {which!r}",
        )
    job = get_job(session, tenant_id, job_id)
    if job.meta_iter == 0:
        raise Conflict(
            f"job {job.id} ({job.status}) has no finished meta-iteration yet: there are no learned values to "
            "export; try again once its first meta-iteration is recorded"
        )
    stored = _stored_meta_iters(session, job.id)
    if not stored:
        raise NotFound(f"job {job.id} has no hyperparameters stored")
    if text == "last":
        return stored[-1]
    if text == "best":
        if job.best_meta_iter is None:
            raise Conflict(
                f"job {job.id} has no best meta-iteration: none of its {job.meta_iter} recorded objectives "
                "was finite (every training run diverged); export which=last or a meta-iteration instead"
            )
        k, what = job.best_meta_iter, f"its best meta-iteration, {job.best_meta_iter},"
    else:
        k, what = int(text), None
    if k in stored:
        return k
    # _describe reads a grid from 1; snapshot 0 (the initial values) goes in front of it
    listed = f"0, {_describe(stored[1:])}" if stored[0] == 0 and len(stored) > 1 else _describe(stored)
    if what is None and k > job.meta_iter:
        raise NotFound(
            f"job {job.id} has no hyperparameter snapshot meta_iter {k}: it has finished {job.meta_iter} "
            f"meta-iterations (snapshots 0..{job.meta_iter}); stored: {listed}"
        )
    earlier = [m for m in stored if m < k]
    later = [m for m in stored if m > k]
    nearest = " and ".join(
        [*([f"{earlier[-1]} (earlier)"] if earlier else []), *([f"{later[0]} (later)"] if later else [])]
    )
    reason = (
        "its recorder sent no values that meta-iteration trained with (a step's scored, which "
        "revtune's recorder takes from hypercore's Record.trained_with)"
        if job.origin == Origin.EXTERNAL.value and (k == 0 or what is not None)
        else "this job was recorded before snapshot 0 (the initial values) and the best's were always kept"
        if k == 0 or what is not None
        else "its learned hyperparameters are too large to keep after every meta-iteration "
        "(REVTUNE_MAX_SNAPSHOT_BYTES_PER_JOB)"
    )
    subject = f"{what} trained with snapshot meta_iter {k}, which" if what else f"snapshot meta_iter {k}"
    raise NotFound(
        f"job {job.id}: {subject} is not stored ({reason}); its hyperparameters are stored at meta_iter "
        f"{listed}; nearest stored: {nearest}"
    )
