"""hypercore: exact reversible SGD with momentum, and hypergradients through it.

Maclaurin, Duvenaud and Adams, "Gradient-based Hyperparameter Optimization through Reversible
Learning", ICML 2015. Importing this package turns on ``jax_enable_x64``: the engine keeps weights
and velocities in int64 fixed point. Model arithmetic stays in the dtype of the weights you pass.
"""

import jax

jax.config.update("jax_enable_x64", True)

from hypercore._fixed import quantize_gamma  # noqa: E402
from hypercore._reference import unrolled_sgd  # noqa: E402
from hypercore.reversible import (  # noqa: E402
    ReversalReport,
    buffer_capacity,
    check_reversal,
    empty_report,
    forward_state,
    reversible_sgd,
)

__all__ = [
    "ReversalReport",
    "buffer_capacity",
    "check_reversal",
    "empty_report",
    "forward_state",
    "quantize_gamma",
    "reversible_sgd",
    "unrolled_sgd",
]
