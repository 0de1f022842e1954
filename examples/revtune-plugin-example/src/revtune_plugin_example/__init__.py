"""An example revtune model plugin: a residual MLP trained on a label-smoothed cross-entropy.

The network (``width`` units, ``blocks`` residual blocks, ``act`` tanh or relu)::

    h_0     = act(X W_in + b_in)
    h_{i+1} = h_i + act(h_i W_i + b_i)          i = 0 .. blocks - 1
    logits  = h_blocks W_out + b_out

and its training loss, cross-entropy against labels smoothed by ``smoothing`` = s over K classes
(Szegedy et al. 2016):  ``-(1/n) sum_j sum_k q_jk log softmax(logits_j)_k`` with
``q_jk = (1 - s) [k = y_j] + s / K``. The engine adds the ``l2`` penalty itself.

The entry point ``resmlp`` (pyproject.toml) names `resmlp`, the factory: it takes the spec's
``model.config`` and the dataset's description and returns the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from hypercore.models import normal_init
from hypercore.plugins import PluginError, model_plugin

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}

CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "width": {"type": "integer", "minimum": 1, "maximum": 1024, "description": "units of every layer"},
        "blocks": {"type": "integer", "minimum": 0, "maximum": 8, "default": 1},
        "activation": {"enum": ["tanh", "relu"], "default": "tanh"},
        "smoothing": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.1},
    },
    "required": ["width"],
    "additionalProperties": False,
}


@dataclasses.dataclass(frozen=True)
class ResidualMLP:
    """A `hypercore.models.TrainableModel`: ``shapes``, ``init``, ``apply`` and its own ``training_loss``.
    Frozen, so equal configs hash equal (the engine caches compiled functions per model)."""

    n_features: int
    width: int
    n_classes: int
    blocks: int = 1
    activation: str = "tanh"
    smoothing: float = 0.1

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"in.W": (self.n_features, self.width), "in.b": (self.width,)}
        for i in range(self.blocks):
            shapes |= {f"block{i}.W": (self.width, self.width), f"block{i}.b": (self.width,)}
        return shapes | {"out.W": (self.width, self.n_classes), "out.b": (self.n_classes,)}

    def init(self, key: jax.Array, scales) -> dict[str, jax.Array]:
        """``scales[name] * N(0, 1)`` per array, as the built-ins draw them (the init_scale kind)."""
        return normal_init(self.shapes, jnp.float32, key, scales)

    def apply(self, params, X: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        h = act(X.astype(params["in.W"].dtype) @ params["in.W"] + params["in.b"])
        for i in range(self.blocks):
            h = h + act(h @ params[f"block{i}.W"] + params[f"block{i}.b"])
        return h @ params["out.W"] + params["out.b"]

    def training_loss(self, logits: jax.Array, y: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(logits, axis=-1)
        smooth = jnp.asarray(self.smoothing, logp.dtype)
        target = (1 - smooth) * jax.nn.one_hot(y, self.n_classes, dtype=logp.dtype) + smooth / self.n_classes
        return -jnp.mean(jnp.sum(target * logp, axis=-1))


@model_plugin(
    config_schema=CONFIG_SCHEMA,
    description="a residual MLP (width, blocks, activation) trained on a label-smoothed cross-entropy",
)
def resmlp(config: dict[str, Any], dataset) -> ResidualMLP:
    """The model for ``config`` (already checked against `CONFIG_SCHEMA`) on ``dataset``, a
    `hypercore.families.DatasetShape`."""
    if dataset.target != "class":
        raise PluginError("model.name", "resmlp classifies; this dataset's target is real (a regression)")
    return ResidualMLP(
        n_features=dataset.n_features,
        width=config["width"],
        n_classes=dataset.n_outputs,
        blocks=config.get("blocks", 1),
        activation=config.get("activation", "tanh"),
        smoothing=float(config.get("smoothing", 0.1)),
    )
