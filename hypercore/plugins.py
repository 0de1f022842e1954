"""Model plugins: users' own models, installed as packages, found through entry points. JAX-free.

A package offers a model by naming a *factory* in the entry-point group ``revtune.models``::

    [project.entry-points."revtune.models"]
    resmlp = "revtune_plugin_example:resmlp"

The factory takes the spec's ``model.config`` (a JSON object) and the dataset's description (a
`hypercore.families.DatasetShape`: ``n_features``, ``n_outputs``, ``example``, ``target``, ...) and
returns a model that follows `hypercore.models.TrainableModel` (``shapes``, ``init``, ``apply``, and
optionally its own ``training_loss``). It declares the JSON Schema of its config and a one-line
description, most simply with `model_plugin`::

    @hypercore.plugins.model_plugin(
        description="a residual MLP with a label-smoothed loss",
        config_schema={"type": "object", "properties": {"width": {"type": "integer", "minimum": 1}},
                       "required": ["width"], "additionalProperties": False},
    )
    def resmlp(config, dataset):
        return ResMLP(dataset.n_features, config["width"], dataset.n_outputs)

A spec names it ``model: {kind: plugin, name: resmlp, config: {width: 32}}``. In a library run pass
the loaded plugins to `hypercore.spec.problem_from_spec` (``plugins=load(["resmlp"])``), or call the
factory and hand its model to `hypercore.Problem.build` yourself.

Installing a package enables nothing in the service: a worker loads only the plugins its
``REVTUNE_MODEL_PLUGINS`` allow-list names (`enabled_names`), and advertises them in the database
for the API, which cannot import them. This module imports the plugins' packages (and so, most
likely, JAX) only in `load`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jsonschema

from hypercore.families import DatasetShape
from hypercore.vocab import ConfigError

ENTRY_POINT_GROUP = "revtune.models"
ALLOW_LIST_VARIABLE = "REVTUNE_MODEL_PLUGINS"
# An entry point's name as a spec, a queue name and a URL may carry it.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"

Factory = Callable[[Mapping[str, Any], DatasetShape], Any]
ConfigProblem = tuple[tuple[str | int, ...], str]


class PluginError(ConfigError):
    """A plugin is missing, malformed, or refuses a config; ``field`` leads the message."""


def model_plugin(*, config_schema: Mapping[str, Any], description: str) -> Callable[[Factory], Factory]:
    """Mark ``factory`` as a model plugin: its config's JSON Schema and its one-line description."""

    def mark(factory: Factory) -> Factory:
        factory.config_schema = dict(config_schema)  # type: ignore[attr-defined]
        factory.description = description  # type: ignore[attr-defined]
        return factory

    return mark


@dataclasses.dataclass(frozen=True)
class ModelPlugin:
    """One loaded plugin: its entry point's ``name``, its package's ``version``, its ``factory``, the
    JSON Schema of its config and its one-line ``description``."""

    name: str
    version: str
    factory: Factory
    config_schema: dict[str, Any]
    description: str

    def build(self, config: Mapping[str, Any] | None, dataset: DatasetShape) -> Any:
        """The plugin's model for ``config`` on a dataset of ``dataset``'s shape; `PluginError` on
        ``model.config...`` for a config its schema refuses."""
        config = dict(config or {})
        found = config_problems(self.config_schema, config)
        if found:
            loc, message = found[0]
            raise PluginError(_field(loc), message)
        return self.factory(config, dataset)

    def advertisement(self) -> dict[str, Any]:
        """What a worker tells the database (and so the API) of it."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "config_schema": self.config_schema,
        }


def config_problems(schema: Mapping[str, Any], config: Any) -> list[ConfigProblem]:
    """Every way ``config`` breaks the JSON Schema ``schema``, each as ``(loc, msg)`` with ``loc``
    the path from ``model.config`` (``("model", "config", "width")``); the shallowest first."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.path)))
    )
    return [(("model", "config", *e.absolute_path), e.message) for e in errors]


def check_schema(schema: Any, name: str) -> dict[str, Any]:
    """``schema`` if it is a valid JSON Schema for an object config; `PluginError` otherwise."""
    if not isinstance(schema, Mapping):
        raise PluginError(name, f"the plugin's config_schema must be a JSON Schema object, got {schema!r}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise PluginError(name, f"the plugin's config_schema is not a valid JSON Schema: {e.message}") from e
    return dict(schema)


def enabled_names(allow_list: str | None) -> list[str]:
    """The plugin names of a ``REVTUNE_MODEL_PLUGINS`` value (comma-separated; empty: none)."""
    names = [n.strip() for n in (allow_list or "").split(",") if n.strip()]
    for name in names:
        if not re.match(NAME_PATTERN, name):
            raise PluginError(ALLOW_LIST_VARIABLE, f"{name!r} is not a plugin name (letters, digits, _ . -)")
    return list(dict.fromkeys(names))


def installed() -> dict[str, importlib.metadata.EntryPoint]:
    """The model plugins installed in this environment, by entry-point name (none loaded)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load(names: Iterable[str]) -> dict[str, ModelPlugin]:
    """Import the plugins ``names`` (the allow-list); `PluginError` naming the first that is not
    installed, or whose entry point is not a factory with a config schema and a description."""
    available = installed()
    out = {}
    for name in names:
        entry = available.get(name)
        if entry is None:
            known = ", ".join(sorted(available)) or "none"
            raise PluginError(
                ALLOW_LIST_VARIABLE,
                f"names the model plugin {name!r}, which is not installed here (installed: {known})",
            )
        out[name] = _plugin(name, entry)
    return out


def _plugin(name: str, entry: importlib.metadata.EntryPoint) -> ModelPlugin:
    factory = entry.load()
    description = getattr(factory, "description", None)
    if not callable(factory) or not isinstance(description, str) or not description.strip():
        raise PluginError(
            name,
            f"the entry point {entry.value!r} must name a factory(config, dataset) with a `description` "
            "and a `config_schema` (hypercore.plugins.model_plugin)",
        )
    schema = check_schema(getattr(factory, "config_schema", None), name)
    version = entry.dist.version if entry.dist is not None else "unknown"
    return ModelPlugin(name, version, factory, schema, description.strip().splitlines()[0])


def _field(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out
