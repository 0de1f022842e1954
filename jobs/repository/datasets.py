"""Datasets: register an upload (within the tenant's quota of bytes), list, read, describe for spec
validation, delete."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.errors import Conflict, NotFound
from jobs.models import Dataset, Job, utcnow
from jobs.repository.jobs import QuotaExceeded, lock_tenant
from jobs.spec import DatasetShape
from jobs.states import ACTIVE


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def dataset_bytes_used(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's uploads, as stored."""
    used = select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.tenant_id == tenant_id)
    return int(session.scalar(used) or 0)


def check_dataset_quota(session: Session, tenant_id: str, adding: int | None, max_bytes: int) -> None:
    """`QuotaExceeded` if the tenant's uploads and ``adding`` more bytes (None: any more at all, the
    check before an upload is read) would pass ``max_bytes`` (``REVTUNE_MAX_DATASET_BYTES_PER_TENANT``),
    naming the limit, the use and what to delete."""
    used = dataset_bytes_used(session, tenant_id)
    if (used < max_bytes) if adding is None else (used + adding <= max_bytes):
        return
    largest = list(
        session.scalars(
            select(Dataset)
            .where(Dataset.tenant_id == tenant_id)
            .order_by(Dataset.size_bytes.desc(), Dataset.id)
            .limit(3)
        )
    )
    upload = f"this upload of {adding} bytes ({_mib(adding)}) would pass it" if adding else "it is full"
    advice = (
        "delete datasets you no longer need (DELETE /v1/datasets/{id}; largest first: "
        + ", ".join(f"{d.id} ({d.name!r}, {_mib(d.size_bytes)})" for d in largest)
        + ")"
        if largest
        else "the upload alone is larger than the quota"
    )
    raise QuotaExceeded(
        f"dataset quota reached: this tenant's datasets take {used} bytes ({_mib(used)}) and "
        f"REVTUNE_MAX_DATASET_BYTES_PER_TENANT allows {max_bytes} ({_mib(max_bytes)}); {upload}: {advice}"
    )


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
    example_shape: tuple[int, ...] | list[int] | None = None,
    target: str = "class",
    n_outputs: int | None = None,
    max_bytes: int | None = None,
) -> Dataset:
    """Register an upload whose file is already in place (the caller writes it first, atomically,
    and removes it if this raises). ``target``: ``"class"`` (integer labels) or ``"real"`` (a
    regression, ``n_classes`` 0); ``n_outputs``: the model's output width (None: ``n_classes``).
    With ``max_bytes`` (``REVTUNE_MAX_DATASET_BYTES_PER_TENANT``), an upload that would take the
    tenant's datasets past it is `QuotaExceeded`; deleting frees it."""
    if max_bytes is not None:
        lock_tenant(session, tenant_id)
        check_dataset_quota(session, tenant_id, size_bytes, max_bytes)
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
        example_shape=None if example_shape is None else [int(n) for n in example_shape],
        target=target,
        n_outputs=n_outputs,
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
        example_shape=None if d.example_shape is None else tuple(d.example_shape),
        target=d.target,
        n_outputs=d.n_outputs or d.n_classes,
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
