"""``/v1/models``: the model kinds a spec may name: the built-in families, and the plugins the workers offer.

The API cannot import a plugin (it has no JAX); the workers advertise theirs in the database
(`jobs.repository.plugins`), and a plugin is listed while a live worker has it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.deps import SessionDep, SettingsDep, get_tenant
from hypercore.families import FAMILIES, PLUGIN_KIND
from jobs import repository

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(get_tenant)])


class BuiltinModelOut(BaseModel):
    kind: str = Field(description="the spec's model.kind")
    description: str


class PluginWorkerOut(BaseModel):
    worker: str = Field(description="host:pid of a worker process that has the plugin")
    version: str = Field(description="the plugin package's version on that worker")


class PluginModelOut(BaseModel):
    kind: str = Field(PLUGIN_KIND, description="the spec's model.kind: always plugin")
    name: str = Field(description="the spec's model.name")
    version: str = Field(description="the package's version on the most recently seen worker")
    description: str
    config_schema: dict[str, Any] = Field(description="the JSON Schema model.config must follow")
    workers: list[PluginWorkerOut]


class ModelListOut(BaseModel):
    builtin: list[BuiltinModelOut]
    plugins: list[PluginModelOut] = Field(
        description="the model plugins live workers offer (their REVTUNE_MODEL_PLUGINS), by name"
    )


@router.get("", response_model=ModelListOut)
def list_models(session: SessionDep, settings: SettingsDep) -> ModelListOut:
    """The built-in model kinds, and the model plugins the workers offer now."""
    offered = repository.offered_plugins(session, live_within_s=settings.plugin_live_s)
    return ModelListOut(
        builtin=[BuiltinModelOut(kind=kind, description=family.doc) for kind, family in FAMILIES.items()],
        plugins=[
            PluginModelOut(
                name=p.name,
                version=p.version,
                description=p.description,
                config_schema=p.config_schema,
                workers=[PluginWorkerOut(**w) for w in p.workers],
            )
            for p in offered
        ],
    )
