"""Library runs the service records (origin ``external``): create, resume, record a step, beat, finish.

The writes of a recorder (`revtune.Client.record`) that runs `hypercore.tune` on its own machine
(docs/API.md, "Recording a library run"). The job they make is read like any other (``GET
/v1/jobs/{id}``, its steps, its hyperparameters) and cancelled like any other (``POST
/v1/jobs/{id}/cancel``: the next step POST or heartbeat tells the recorder). No worker runs it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from api.deps import RateLimited, SessionDep, SettingsDep
from api.routes.jobs import IDEMPOTENCY_KEY_PATTERN, _storable, spec_body
from api.schemas import HeartbeatOut, JobOut, RecordedOut
from jobs import repository
from jobs.external import RecordedStep, validate_description
from jobs.spec import DatasetShape
from jobs.states import Origin

router = APIRouter(prefix="/v1/jobs", tags=["library runs"])

# How often the recorder should send a heartbeat (REVTUNE_HEARTBEAT_INTERVAL_S, as workers do), in
# seconds: the answer to a create or a resume carries it.
HEARTBEAT_HEADER = "Revtune-Heartbeat-Interval"


def own_job(job_id: str, session: SessionDep, tenant: RateLimited) -> str:
    """``job_id``, if the caller's tenant has that job; 404 otherwise, before the body is read (a
    dependency runs before FastAPI validates the body), so another tenant's id answers exactly as a
    nonexistent one does, whatever the body."""
    repository.get_job(session, tenant, job_id)
    return job_id


OwnJob = Annotated[str, Depends(own_job)]


@router.post(
    "/external",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "a repeat with the same Idempotency-Key: the first job"}
    },
)
def create_recording(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tenant: RateLimited,
    description: Annotated[Any, Depends(spec_body)],
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN)
    ] = None,
) -> JobOut:
    """Start recording a library run: a job of origin ``external``, ``running`` at once, never sent
    to a worker. The body describes the run like a job spec (``name``, ``model.kind``, ``meta.iterations``,
    ...; `jobs.external.validate_description`) and is stored as the job's ``spec``. With
    ``Idempotency-Key``, a repeat returns the first job (200), whatever its status."""

    def resolve_dataset(dataset_id: str) -> DatasetShape | None:
        return repository.dataset_shape(session, tenant, dataset_id) if _storable(dataset_id) else None

    valid = validate_description(description, settings.limits, resolve_dataset=resolve_dataset)

    def create() -> tuple[Any, bool]:
        return repository.create_job(
            session,
            tenant,
            valid,
            idempotency_key=idempotency_key,
            max_jobs=settings.max_jobs_per_tenant,
            origin=Origin.EXTERNAL,
        )

    try:
        job, created = create()
        session.commit()
    except IntegrityError:  # another request with the same Idempotency-Key won the race
        session.rollback()
        job, created = create()
    if not created:
        response.status_code = 200
    response.headers[HEARTBEAT_HEADER] = f"{settings.heartbeat_interval_s:g}"
    return JobOut.of(job)


@router.post("/{job_id}/resume", response_model=JobOut)
def resume_recording(
    job_id: str, response: Response, session: SessionDep, settings: SettingsDep, tenant: RateLimited
) -> JobOut:
    """A new recorder continues the run (from the user's checkpoint): a ``failed`` job (its recorder
    died, or the run raised) is ``running`` again with its records kept; a running one gets a fresh
    heartbeat. 409 for a succeeded or cancelled job, or one a worker runs."""
    job = repository.resume_recording(session, tenant, job_id)
    session.commit()
    response.headers[HEARTBEAT_HEADER] = f"{settings.heartbeat_interval_s:g}"
    return JobOut.of(job)


@router.post("/{job_id}/steps", response_model=RecordedOut)
def record_step(
    job_id: OwnJob, body: RecordedStep, session: SessionDep, settings: SettingsDep, tenant: RateLimited
) -> RecordedOut:
    """Record one meta-iteration (``meta_iter`` from 0, in order): the step fields and the
    hyperparameters after it, in natural units; optionally ``scored``, the values it trained with (at
    ``meta_iter`` 0 the initial values, and for a new best objective), which the job keeps as
    snapshot ``meta_iter`` where a worker would. A ``meta_iter`` already recorded is answered without
    writing (``recorded: false``: a retried POST); skipping one is 409. ``cancel_requested: true``:
    stop the loop and finish the job ``cancelled``."""
    step = body.model_dump(exclude={"hyperparameters", "scored"})

    def stored(given: dict) -> dict:
        return {
            name: {"values": hv.array(), "axes": hv.axes, "labels": hv.labels, "learned": hv.learned}
            for name, hv in given.items()
        }

    done = repository.record_step(
        session,
        tenant,
        job_id,
        step=step,
        hyperparameters=stored(body.hyperparameters),
        snapshot_budget_bytes=settings.max_snapshot_bytes_per_job,
        scored=stored(body.scored) if body.scored else None,
    )
    session.commit()
    return RecordedOut(
        meta_iter=done.meta_iter, recorded=done.recorded, cancel_requested=done.cancel_requested
    )


@router.post("/{job_id}/heartbeat", response_model=HeartbeatOut)
def heartbeat(job_id: str, session: SessionDep, tenant: RateLimited) -> HeartbeatOut:
    """The recorder is alive (send one well within ``REVTUNE_HEARTBEAT_TIMEOUT_S``, 60 s by default;
    a step POST counts as one). 409 once the job is no longer running."""
    job = repository.recording_heartbeat(session, tenant, job_id)
    session.commit()
    return HeartbeatOut(status=job.status, cancel_requested=job.cancel_requested)


class FinishIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    status: Literal["succeeded", "failed", "cancelled"]
    error: str | None = Field(None, max_length=10_000, description="failed: what went wrong, shown to users")


@router.post("/{job_id}/finish", response_model=JobOut)
def finish_recording(job_id: OwnJob, body: FinishIn, session: SessionDep, tenant: RateLimited) -> JobOut:
    """End the run. Finishing again with the same status is a no-op."""
    job = repository.finish_recording(session, tenant, job_id, body.status, error=body.error)
    session.commit()
    return JobOut.of(job)
