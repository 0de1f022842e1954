"""``/v1/datasets``: upload (``.npz``), list, get, delete."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile

from api.deps import RateLimited, SessionDep, SettingsDep, TenantDep
from api.schemas import DatasetListOut, DatasetOut
from api.uploads import TooLarge, store_upload
from jobs import repository
from jobs.errors import InvalidInput
from jobs.repository.datasets import check_dataset_quota

log = logging.getLogger("revtune.api")
router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

# A display name only (files are stored by generated id), but kept to a safe alphabet anyway: no
# path separators, no leading dot, nothing a shell or a browser would interpret.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,99}$"


@router.post("", status_code=201, response_model=DatasetOut)
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    tenant: RateLimited,
    file: Annotated[
        UploadFile,
        File(
            description="an .npz: X, y or X_train, y_train, X_valid, y_valid[, X_test, y_test]; "
            "a multi-task one adds task ids: task, or task_train, task_valid[, task_test]"
        ),
    ],
    name: Annotated[str, Form(pattern=NAME_PATTERN)],
) -> DatasetOut:
    """Upload a dataset (201); refer to it in a spec as ``dataset: {id: <id>, ...}``."""
    if ".." in name:
        raise InvalidInput(["body", "name"], "a dataset name may not contain '..'")
    # A tenant whose datasets already fill its quota is told before the upload is read (409); the
    # exact check, with the upload's size, is create_dataset's.
    check_dataset_quota(session, tenant, None, settings.max_dataset_bytes_per_tenant)
    session.rollback()  # no connection held while the upload is validated
    try:
        stored = store_upload(
            file.file,
            settings.datasets_dir,
            settings.limits,
            settings.max_upload_bytes,
            max_array_bytes=settings.max_upload_array_bytes,
            validations=settings.upload_validations,
            wait_s=settings.upload_validation_wait_s,
        )
    except TooLarge as e:
        raise HTTPException(status_code=413, detail=str(e)) from None
    try:
        dataset = repository.create_dataset(
            session,
            tenant,
            dataset_id=stored.id,
            name=name,
            **dataclasses.asdict(stored.shape),
            sha256=stored.sha256,
            path=str(stored.path.relative_to(settings.data_dir)),
            size_bytes=stored.size_bytes,
            max_bytes=settings.max_dataset_bytes_per_tenant,
        )
        session.commit()
    except BaseException:
        stored.path.unlink(missing_ok=True)
        raise
    return DatasetOut.of(dataset)


@router.get("", response_model=DatasetListOut)
def list_datasets(session: SessionDep, tenant: TenantDep) -> DatasetListOut:
    return DatasetListOut(items=[DatasetOut.of(d) for d in repository.list_datasets(session, tenant)])


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetOut:
    return DatasetOut.of(repository.get_dataset(session, tenant, dataset_id))


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(
    dataset_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> Response:
    """Delete the dataset and its file; 409 while a queued or running job uses it."""
    dataset = repository.delete_dataset(session, tenant, dataset_id)
    session.commit()
    # The row is gone, so the file is invisible; removing it after the commit never strands a row.
    settings.dataset_path(dataset.id).unlink(missing_ok=True)
    return Response(status_code=204)
