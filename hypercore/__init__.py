"""hypercore: exact reversible SGD with momentum, and hypergradients through it.

Maclaurin, Duvenaud and Adams, "Gradient-based Hyperparameter Optimization through Reversible
Learning", ICML 2015.

The package has two halves (docs/ARCHITECTURE.md):

- the **description** half, importable without JAX: `hypercore.vocab` (hyperparameter kinds,
  granularities, domains), `hypercore.families` (model families' parameter names and shapes),
  `hypercore.rules` (the semantic rules of a job spec, counting hyperparameters), `hypercore.arrays`
  (the numpy half of dataset building and the one reader of the ``.npz`` layout), `hypercore.budget`
  (a job's peak memory, estimated from its spec, and the information buffer's capacity);
- the **engine** half (`reversible`, `tune`, `models`, ...), which needs JAX.

Importing ``hypercore`` itself imports no JAX: the engine's names below load on first use (PEP 562),
and loading them turns on ``jax_enable_x64`` (`hypercore._x64`), since the engine keeps weights and
velocities in int64 fixed point. Model arithmetic stays in the dtype of the weights you pass.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# Where each engine name lives; `from hypercore import tune` loads that module (and JAX) then.
_ENGINE = {
    "data": ("hypercore.data", None),
    "models": ("hypercore.models", None),
    "quantize_gamma": ("hypercore._fixed", "quantize_gamma"),
    "unrolled_sgd": ("hypercore._reference", "unrolled_sgd"),
    "ConfigError": ("hypercore.vocab", "ConfigError"),
    "Hyper": ("hypercore.hyper", "Hyper"),
    "HyperValue": ("hypercore.hyper", "HyperValue"),
    "GuardConfig": ("hypercore.meta", "GuardConfig"),
    "MetaConfig": ("hypercore.meta", "MetaConfig"),
    "MetaDivergedError": ("hypercore.meta", "MetaDivergedError"),
    "ReversalReport": ("hypercore.reversible", "ReversalReport"),
    "buffer_capacity": ("hypercore.reversible", "buffer_capacity"),
    "check_reversal": ("hypercore.reversible", "check_reversal"),
    "empty_report": ("hypercore.reversible", "empty_report"),
    "prepare_kernels": ("hypercore._fused", "prepare"),
    "forward_state": ("hypercore.reversible", "forward_state"),
    "reversible_sgd": ("hypercore.reversible", "reversible_sgd"),
    "adam_capacity": ("hypercore.adam", "adam_capacity"),
    "check_reversal_adam": ("hypercore.adam", "check_reversal_adam"),
    "forward_state_adam": ("hypercore.adam", "forward_state_adam"),
    "quantize_beta": ("hypercore.adam", "quantize_beta"),
    "quantize_decay": ("hypercore.adam", "quantize_decay"),
    "weight_decay_factors": ("hypercore.adam", "weight_decay_factors"),
    "reversible_adam": ("hypercore.adam", "reversible_adam"),
    "unrolled_adam": ("hypercore.adam", "unrolled_adam"),
    "SpecError": ("hypercore.spec", "SpecError"),
    "problem_from_spec": ("hypercore.spec", "problem_from_spec"),
    "Checkpoint": ("hypercore.tune", "Checkpoint"),
    "CheckpointError": ("hypercore.tune", "CheckpointError"),
    "Problem": ("hypercore.tune", "Problem"),
    "Record": ("hypercore.tune", "Record"),
    "ReversalError": ("hypercore.tune", "ReversalError"),
    "TuneResult": ("hypercore.tune", "TuneResult"),
    "buffer_slots": ("hypercore.tune", "buffer_slots"),
    "evaluate": ("hypercore.tune", "evaluate"),
    "hypergradient": ("hypercore.tune", "hypergradient"),
    "hyperparameter_values": ("hypercore.tune", "hyperparameter_values"),
    "initial_hyperparameters": ("hypercore.tune", "initial_hyperparameters"),
    "tune": ("hypercore.tune", "tune"),
}

# The JAX-free description half: what `jobs`, `api` and the CLI's light commands may import.
DESCRIPTION_MODULES = frozenset(
    {
        "hypercore",
        "hypercore.arrays",
        "hypercore.budget",
        "hypercore.families",
        "hypercore.plugins",
        "hypercore.rules",
        "hypercore.steps",
        "hypercore.vocab",
    }
)

__all__ = sorted(_ENGINE)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _ENGINE[name]
    except KeyError:
        raise AttributeError(f"module 'hypercore' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENGINE))


class _Package(types.ModuleType):
    """``hypercore.tune`` is the function, as it was when this package imported the engine eagerly,
    although a submodule of that name exists: importing the submodule sets the package's attribute
    to the module, and this property, a data descriptor, outranks that."""

    @property
    def tune(self):
        from hypercore.tune import tune

        return tune

    @tune.setter
    def tune(self, value: Any) -> None:
        pass  # the import system recording the submodule `hypercore.tune`


sys.modules[__name__].__class__ = _Package
