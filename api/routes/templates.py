"""``/v1/templates``: the paper's experiments as ready job specs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.deps import get_tenant
from api.schemas import TemplateInfo, TemplateListOut
from jobs import templates
from jobs.errors import NotFound

# Behind the same key as the rest of /v1: one rule for every call is easier to reason about.
router = APIRouter(prefix="/v1/templates", tags=["templates"], dependencies=[Depends(get_tenant)])


@router.get("", response_model=TemplateListOut)
def list_templates() -> TemplateListOut:
    return TemplateListOut(
        items=[TemplateInfo(name=n, description=templates.DESCRIPTIONS[n]) for n in templates.names()]
    )


@router.get("/{name}")
def get_template(name: str) -> dict[str, Any]:
    """A job spec, ready to submit as is or edit first."""
    spec = templates.get(name)
    if spec is None:
        raise NotFound(f"no template {name!r}; known: {', '.join(templates.names())}")
    return spec
