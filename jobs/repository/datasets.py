"""Datasets: register an upload, list, read, describe for spec validation, delete."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import Conflict, NotFound
from jobs.models import Dataset, Job, utcnow
from jobs.spec import DatasetShape
from jobs.states import ACTIVE


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
