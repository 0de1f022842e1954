"""hypercore: exact reversible SGD with momentum, and hypergradients through it.

Maclaurin, Duvenaud and Adams, "Gradient-based Hyperparameter Optimization through Reversible
Learning", ICML 2015. Importing this package turns on ``jax_enable_x64``: the engine keeps weights
and velocities in int64 fixed point. Model arithmetic stays in the dtype of the weights you pass.
"""

import os

# The backward pass recomputes every gradient and must get the same bits as the forward pass.
# Deterministic GPU reductions are needed for that; the flag is read when the backend starts.
if "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from hypercore import data, models  # noqa: E402
from hypercore._fixed import quantize_gamma  # noqa: E402
from hypercore._reference import unrolled_sgd  # noqa: E402
from hypercore.hyper import ConfigError, Hyper, HyperValue  # noqa: E402
from hypercore.meta import GuardConfig, MetaConfig, MetaDivergedError  # noqa: E402
from hypercore.reversible import (  # noqa: E402
    ReversalReport,
    buffer_capacity,
    check_reversal,
    empty_report,
    forward_state,
    reversible_sgd,
)
from hypercore.spec import SpecError, problem_from_spec  # noqa: E402
from hypercore.tune import (  # noqa: E402
    Checkpoint,
    CheckpointError,
    Problem,
    Record,
    ReversalError,
    TuneResult,
    evaluate,
    hypergradient,
    initial_hyperparameters,
    tune,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "GuardConfig",
    "Hyper",
    "HyperValue",
    "MetaConfig",
    "MetaDivergedError",
    "Problem",
    "Record",
    "ReversalError",
    "ReversalReport",
    "SpecError",
    "TuneResult",
    "data",
    "evaluate",
    "hypergradient",
    "initial_hyperparameters",
    "models",
    "problem_from_spec",
    "tune",
    "buffer_capacity",
    "check_reversal",
    "empty_report",
    "forward_state",
    "quantize_gamma",
    "reversible_sgd",
    "unrolled_sgd",
]
