"""A job's results as the worker recorded them: its steps and its hyperparameter snapshots."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from jobs.errors import NotFound
from jobs.models import HyperSnapshot, Step
from jobs.repository.jobs import get_job


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
