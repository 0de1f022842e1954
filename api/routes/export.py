"""``/v1/jobs/{id}/export``: one hyperparameter snapshot as a file to take home, in natural units
(``npz``) or converted to optax's or PyTorch's conventions with a runnable snippet (``optax``,
``pytorch``); `jobs.export` builds it, docs/API.md ("Export") describes it."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from api.deps import SessionDep, TenantDep
from hypercore import rules
from hypercore.families import FAMILIES
from jobs import export as exporting
from jobs import repository

router = APIRouter(prefix="/v1/jobs", tags=["hyperparameters"])

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/{job_id}/export",
    response_class=Response,
    responses={
        200: {
            "description": "the snapshot as a file (Content-Disposition names it; X-Revtune-Meta-Iter "
            "gives the snapshot `which` resolved to)",
            "content": {"application/octet-stream": _BINARY, "application/zip": _BINARY},
        },
        409: {
            "description": "the job has no finished meta-iteration (or no best: every objective diverged), "
            "or its values cannot be written in the target's convention",
            "content": _ERROR,
        },
    },
)
def export(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    which: Annotated[
        str,
        Query(
            max_length=40,
            description="'best' (the values the lowest-objective meta-iteration trained with), 'last' "
            "(the latest stored, after the final update) or a snapshot meta_iter (0: the initial values)",
        ),
    ],
    to: Annotated[
        Literal["npz", "optax", "pytorch"],
        Query(description="npz: natural units as stored; optax, pytorch: a .zip with converted schedules"),
    ],
) -> Response:
    """The job's hyperparameters at snapshot ``which``: ``npz`` every value under its name (with
    ``__spec__`` and ``__export__``); ``optax``/``pytorch`` a zip with them, the per-array, per-step
    schedules in the target's convention, the spec, a runnable snippet and a README."""
    snapshot = exporting.load(session, tenant, job_id, which)
    job = repository.get_job(session, tenant, job_id)
    shapes, target = None, None
    if FAMILIES.get((job.spec.get("model") or {}).get("kind")) is not None:
        dataset = job.spec.get("dataset") or {}
        uploaded = None
        if dataset.get("name") is None and dataset.get("id") is not None:
            uploaded = repository.dataset_shape(session, tenant, dataset["id"])
        shape = rules.dataset_shape(job.spec, uploaded)
        if shape is not None:
            shapes, target = rules.model_shapes(job.spec, shape), shape.target
    bundle = exporting.export(snapshot, to, parameter_shapes=shapes, target=target)
    return Response(
        bundle.content,
        media_type=bundle.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{bundle.filename}"',
            "X-Revtune-Meta-Iter": str(bundle.meta_iter),
        },
    )
