"""The same training rule, differentiated the ordinary way: a plain ``lax.scan`` that stores its trajectory.

This is the yardstick for `reversible_sgd`: tests compare hypergradients against it, and the engine
benchmark compares memory and time against it (optionally with ``jax.checkpoint`` on each step).
It does no fixed-point arithmetic and keeps no information buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hypercore import (
    _schedule,
    _x64,  # noqa: F401  (configures JAX for the engine before any array exists)
)

PyTree = Any


def unrolled_sgd(
    loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
    w0: PyTree,
    meta: PyTree,
    alphas: PyTree,
    gammas: PyTree,
    *,
    checkpoint: bool = False,
) -> PyTree:
    """Run T steps of SGD with momentum and return ``w_T``; reverse mode stores every step.

    Same rule as `hypercore.reversible_sgd` (v0 = 0)::

        g = grad_w loss(w_t, meta, t)
        v_{t+1} = gamma_t v_t - (1 - gamma_t) g
        w_{t+1} = w_t + alpha_t v_{t+1}

    ``checkpoint=True`` wraps each step in ``jax.checkpoint``: only the carry is stored per step
    and the step's internals are recomputed in the backward pass.
    """
    T = _schedule.check(alphas, w0, "alphas")
    if _schedule.check(gammas, w0, "gammas") != T:
        raise ValueError("alphas and gammas must have the same number of steps")
    treedef = jax.tree.structure(w0)
    grad_fn = jax.grad(loss)

    def step(carry, t):
        w, v = carry
        g = jax.tree.leaves(grad_fn(w, meta, t))
        a = _schedule.at_step(alphas, w0, t)
        c = _schedule.at_step(gammas, w0, t)
        w_l = jax.tree.leaves(w)
        v_new = [ci * vi - (1 - ci) * gi for ci, vi, gi in zip(c, jax.tree.leaves(v), g, strict=True)]
        w_new = [wi + ai * vi for wi, ai, vi in zip(w_l, a, v_new, strict=True)]
        return (jax.tree.unflatten(treedef, w_new), jax.tree.unflatten(treedef, v_new)), None

    if checkpoint:
        step = jax.checkpoint(step)
    v0 = jax.tree.map(jnp.zeros_like, w0)
    (w_T, _), _ = jax.lax.scan(step, (w0, v0), jnp.arange(T, dtype=jnp.int32))
    return w_T
