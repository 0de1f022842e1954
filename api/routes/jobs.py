"""``/v1/jobs``: submit, list, get, cancel, continue, delete."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import RateLimited, SessionDep, SettingsDep, TenantDep
from api.schemas import JobOut, JobPageOut
from jobs import repository, templates, warmstart
from jobs.errors import Conflict, InvalidInput
from jobs.settings import Settings
from jobs.spec import DatasetShape, JobSpec, SpecError, validate_spec
from worker.enqueue import EnqueueError

log = logging.getLogger("revtune.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# The body's schema is `JobSpec`, put in place by `api.app._openapi`.
_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": templates.get("lr-schedule-digits"),
            }
        },
    }
}


# An Idempotency-Key is echoed into messages and stored: printable ASCII only (no NUL, no newline).
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]+$"


_UTF8_CHARSETS = {"utf-8", "utf8"}
_UTF8_REQUIRED = "send the job spec as JSON in UTF-8 (application/json, no charset or charset=utf-8)"


def _charset(content_type: str) -> str | None:
    """The ``charset`` parameter of a Content-Type, lower-case and unquoted (None without one)."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').strip().lower()
    return None


async def spec_body(request: Request) -> Any:
    """The request body as JSON. Read here rather than by FastAPI so that every way a body can be
    wrong is a clear 4xx: not JSON at all (415: a browser's cross-site "simple" POST is text/plain
    or a form, so this also keeps them out), not UTF-8 JSON (415: a ``charset`` other than UTF-8,
    or UTF-16/UTF-32, which ``json.loads`` would otherwise detect and accept; RFC 8259 8.1),
    malformed, invalid UTF-8, nested too deeply or holding an integer too long to convert (422 on
    ``body``). The size is capped before this (`api.limits`)."""
    content_type = request.headers.get("content-type", "application/json")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise HTTPException(
            status_code=415, detail=f"send the job spec as application/json (got Content-Type {media_type!r})"
        )
    charset = _charset(content_type)
    if charset is not None and charset not in _UTF8_CHARSETS:
        raise HTTPException(status_code=415, detail=f"{_UTF8_REQUIRED}; got charset {charset!r}")
    raw = await request.body()
    # json.detect_encoding reads a BOM or the NUL bytes ASCII leaves in UTF-16/32 (what json.loads
    # would decode with); a UTF-8 BOM is tolerated as before.
    encoding = json.detect_encoding(raw)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise HTTPException(
            status_code=415, detail=f"{_UTF8_REQUIRED}; the body looks like {encoding.upper()}"
        )
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidInput(
            ["body"], "the JSON is nested too deeply; a job spec is a few levels deep"
        ) from None
    except UnicodeDecodeError as e:
        raise InvalidInput(["body"], f"the body is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except ValueError as e:  # json.JSONDecodeError, or an integer beyond Python's digit limit
        raise InvalidInput(["body"], f"not valid JSON: {e}") from None


def _validate(spec: Any, session: Session, tenant: str, settings: Settings) -> JobSpec:
    """`validate_spec` with the server's limits, the tenant's uploads and the plugins on offer."""

    def resolve_dataset(dataset_id: str) -> DatasetShape | None:
        return repository.dataset_shape(session, tenant, dataset_id) if _storable(dataset_id) else None

    def resolve_plugin(name: str) -> dict[str, Any] | None:
        offered = repository.offered_plugin(session, name, live_within_s=settings.plugin_live_s)
        return None if offered is None else offered.config_schema

    return validate_spec(
        spec, settings.limits, resolve_dataset=resolve_dataset, resolve_plugin=resolve_plugin
    )


def _storable(text: str) -> bool:
    """Whether ``text`` can be looked up in the database at all: PostgreSQL refuses NUL characters
    and no driver encodes a lone surrogate (neither is printable, nor in any id we generate)."""
    return text.isprintable()


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    openapi_extra=_SPEC_BODY,
    responses={
        200: {"model": JobOut, "description": "a repeat with the same Idempotency-Key: the first job"}
    },
)
def create_job(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tenant: RateLimited,
    spec: Annotated[Any, Depends(spec_body)],
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN)
    ] = None,
) -> JobOut:
    """Submit a job spec (201). With ``Idempotency-Key``, a repeat returns the first job (200).

    The job is committed ``queued`` before it is sent to the workers, and only its id is sent. If
    the broker is down, or does not take the message within ``REVTUNE_PUBLISH_TIMEOUT_S`` (a hung
    broker), the answer is still 201: the job stays queued (nothing is lost) and the reaper
    enqueues it later.
    """

    valid = _validate(warmstart.resolve_references(session, tenant, spec), session, tenant, settings)
    try:
        job, created = repository.create_job(
            session, tenant, valid, idempotency_key=idempotency_key, max_jobs=settings.max_jobs_per_tenant
        )
        session.commit()
    except IntegrityError:
        # Another request with the same Idempotency-Key won the race: answer with its job.
        session.rollback()
        job, created = repository.create_job(
            session, tenant, valid, idempotency_key=idempotency_key, max_jobs=settings.max_jobs_per_tenant
        )
    if created:
        try:
            request.app.state.enqueue(job.id)
        except EnqueueError as e:  # broker down or not answering in time (bounded by the enqueue)
            log.warning("job %s is queued but was not sent to the broker (%s); the reaper will", job.id, e)
        except Exception:
            log.warning(
                "job %s is queued but could not be sent to the broker; the reaper will", job.id, exc_info=True
            )
    else:
        response.status_code = 200
    return JobOut.of(job)


@router.get("", response_model=JobPageOut)
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status: Annotated[
        str | None, Query(description="queued, running, succeeded, failed or cancelled")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> JobPageOut:
    """The caller's jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    page = repository.list_jobs(session, tenant, status=status, limit=limit, cursor=cursor)
    return JobPageOut(items=[JobOut.of(j) for j in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    return JobOut.of(repository.get_job(session, tenant, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep, tenant: RateLimited) -> JobOut:
    """Cancel: a queued job at once; a running one stops after its current meta-iteration."""
    job = repository.request_cancel(session, tenant, job_id)
    session.commit()
    return JobOut.of(job)


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Delete a finished job and everything recorded for it; 409 while it is queued or running."""
    repository.delete_job(session, tenant, job_id)
    session.commit()
    return Response(status_code=204)


class ContinueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(ge=1, description="how many more meta-iterations to run")


@router.post("/{job_id}/continue", status_code=202, response_model=JobOut)
def continue_job(
    job_id: str,
    body: ContinueIn,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: RateLimited,
) -> JobOut:
    """Run a succeeded or cancelled job for ``iterations`` more meta-iterations (202, queued): it
    resumes from its checkpoint, meta-optimiser state included, and ends bit-identical to one job
    run for the sum from the start. 409 while it is queued or running, for a failed job, and for a
    recorded library run; 422 on ``iterations`` past ``REVTUNE_MAX_META_ITERATIONS`` in all."""

    def check(spec: dict[str, Any]) -> None:
        try:
            _validate(spec, session, tenant, settings)
        except SpecError as e:
            first = e.errors[0]
            if list(first["loc"])[-2:] == ["meta", "iterations"]:
                limit = settings.limits.max_meta_iterations
                done = spec["meta"]["iterations"] - body.iterations
                raise InvalidInput(
                    ["body", "iterations"],
                    f"{first['msg']} in all: the job has run {done}, so at most {max(limit - done, 0)} "
                    "more (REVTUNE_MAX_META_ITERATIONS)",
                ) from None
            field = ".".join(str(p) for p in first["loc"])
            raise Conflict(
                f"job {job_id}'s spec no longer passes the server's checks ({field}: {first['msg']}); "
                "submit a corrected spec as a new job"
            ) from None

    job = repository.continue_job(session, tenant, job_id, body.iterations, check=check)
    session.commit()
    try:
        request.app.state.enqueue(job.id)
    except Exception as e:  # the broker: the job stays queued and the reaper sends it
        log.warning("job %s is queued again but was not sent to the broker (%s); the reaper will", job.id, e)
    return JobOut.of(job)
