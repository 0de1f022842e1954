"""``/v1/jobs/{id}/hyperparameters``: learned and fixed hyperparameters, in natural units, at any
recorded meta-iteration, as JSON, ``.npy`` or CSV."""

from __future__ import annotations

import csv
import io
import itertools
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from api.deps import MAX_DB_INT, SessionDep, TenantDep
from api.schemas import HyperparameterInfo, HyperparameterListOut, HyperparameterOut
from hypercore import rules
from hypercore.families import FAMILIES, PLUGIN_KIND, DatasetShape
from jobs import repository
from jobs.repository import HyperparameterValue

router = APIRouter(prefix="/v1/jobs", tags=["hyperparameters"])

MetaIter = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_DB_INT,
        description="after this many finished meta-iterations (default: the latest recorded)",
    ),
]


@router.get("/{job_id}/hyperparameters", response_model=HyperparameterListOut)
def list_hyperparameters(
    job_id: str, session: SessionDep, tenant: TenantDep, meta_iter: MetaIter = None
) -> HyperparameterListOut:
    """Names, shapes, axes and labels; ``meta_iter`` 0 with no items before the first meta-iteration.
    ``example_shape``: one input example's shape, which a reader needs to tell an axis of pixels
    from one of hidden units."""
    found, rows = repository.list_hyperparameters(session, tenant, job_id, meta_iter=meta_iter)
    job = repository.get_job(session, tenant, job_id)
    kind = job.spec["model"]["kind"]
    # A plugin's arrays are known only to the workers that have it; a library run's own model (origin
    # external) names no dataset the service knows.
    family = FAMILIES.get(kind)
    shape = _dataset_shape(session, tenant, job.spec) if family is not None or kind == PLUGIN_KIND else None
    return HyperparameterListOut(
        meta_iter=found,
        example_shape=list(shape.example)
        if shape is not None and (family is None or family.needs_data)
        else None,
        parameter_shapes=None
        if shape is None or family is None
        else {name: list(s) for name, s in rules.model_shapes(job.spec, shape).items()},
        items=[HyperparameterInfo.of(r) for r in rows],
    )


def _dataset_shape(session: Session, tenant: str, spec: dict[str, Any]) -> DatasetShape | None:
    """The shape of the dataset ``spec`` trains on: a built-in's, the tenant's upload's, or the toy2d
    model's observation; None once the upload is deleted."""
    dataset = spec.get("dataset") or {}
    uploaded = None
    if dataset.get("name") is None and dataset.get("id") is not None:
        uploaded = repository.dataset_shape(session, tenant, dataset["id"])
    return rules.dataset_shape(spec, uploaded)


@router.get(
    "/{job_id}/hyperparameters/{name}",
    response_model=HyperparameterOut,
    responses={200: {"content": {"application/octet-stream": {}, "text/csv": {}}}},
)
def get_hyperparameter(
    job_id: str,
    name: str,
    session: SessionDep,
    tenant: TenantDep,
    meta_iter: MetaIter = None,
    format: Annotated[Literal["json", "npy", "csv"], Query()] = "json",
):
    """One hyperparameter. ``json``: values as nested lists; ``npy``: ``numpy.save`` bytes (float64);
    ``csv``: one row per value, a column per axis (its label where the axis has labels) and ``value``.
    A non-finite value is null in JSON, an empty cell in CSV and the IEEE NaN or infinity in ``.npy``."""
    hp = repository.get_hyperparameter(session, tenant, job_id, name, meta_iter=meta_iter)
    filename = f"{job_id}-{name}-{hp.meta_iter}"
    if format == "npy":
        buffer = io.BytesIO()
        np.save(buffer, hp.values, allow_pickle=False)
        return Response(
            buffer.getvalue(),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{filename}.npy"'},
        )
    if format == "csv":
        return Response(
            to_csv(hp),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
        )
    return HyperparameterOut(
        name=hp.name,
        meta_iter=hp.meta_iter,
        shape=hp.shape,
        axes=hp.axes,
        labels=hp.labels,
        learned=hp.learned,
        values=hp.values.tolist(),  # pydantic writes a non-finite float as null
    )


def to_csv(hp: HyperparameterValue) -> str:
    """Long format: a header of the axis names plus ``value``, then one row per element in C order.
    Values are written with ``repr`` precision, so parsing the CSV gives back the same float64s; a
    non-finite one is an empty cell (JSON's null; ``.npy`` keeps the IEEE value)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    axes = list(hp.axes) if len(hp.axes) == hp.values.ndim else [f"axis{i}" for i in range(hp.values.ndim)]
    writer.writerow([*axes, "value"])
    coordinates = []
    for axis, size in zip(axes, hp.values.shape, strict=True):
        labels = hp.labels.get(axis)
        coordinates.append(labels if isinstance(labels, list) and len(labels) == size else range(size))
    for index, value in zip(itertools.product(*coordinates), hp.values.ravel(), strict=True):
        writer.writerow([*index, repr(float(value)) if np.isfinite(value) else ""])
    return out.getvalue()
