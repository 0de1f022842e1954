"""``/v1/jobs/{id}/steps``: each finished meta-iteration's metrics, polled with the ``after`` cursor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import MAX_DB_INT, SessionDep, TenantDep
from api.schemas import StepOut, StepPageOut
from jobs import repository

router = APIRouter(prefix="/v1/jobs", tags=["steps"])


@router.get("/{job_id}/steps", response_model=StepPageOut)
def list_steps(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    after: Annotated[
        int | None, Query(ge=-1, le=MAX_DB_INT, description="only steps with meta_iter > after")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> StepPageOut:
    """Steps oldest first. ``next_after`` is set when the page is full (ask again at once with
    ``after=next_after``); null means "that is all for now": poll later with the last meta_iter seen."""
    page = repository.list_steps(session, tenant, job_id, after=after, limit=limit)
    return StepPageOut(items=[StepOut.of(s) for s in page.items], next_after=page.next_after)
