"""Learning-rate and momentum schedules: the three shapes `reversible_sgd` accepts.

A schedule is either one array of shape ``(T,)`` shared by every parameter, or a pytree shaped
like the weights whose leaves are ``(T,)`` (one value per array and step) or ``(T, *leaf.shape)``
(one value per weight and step). Leaves of a pytree schedule may mix the two shapes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from hypercore import _x64  # noqa: F401  (configures JAX for the engine before any array exists)

PyTree = Any


def num_steps(schedule: PyTree) -> int:
    """T, read off the leading axis of every leaf (they must agree)."""
    lengths = {int(jnp.shape(leaf)[0]) if jnp.ndim(leaf) else -1 for leaf in jax.tree.leaves(schedule)}
    if len(lengths) != 1 or -1 in lengths:
        raise ValueError(f"schedule leaves must all have the same leading step axis, got lengths {lengths}")
    return lengths.pop()


def is_shared(schedule: PyTree) -> bool:
    return not isinstance(schedule, (dict, list, tuple)) and jnp.ndim(schedule) == 1


def check(schedule: PyTree, w0: PyTree, name: str) -> int:
    """Validate a schedule against the weights; return T."""
    if is_shared(schedule):
        return num_steps(schedule)
    w_def = jax.tree.structure(w0)
    s_def = jax.tree.structure(schedule)
    if w_def != s_def:
        raise ValueError(
            f"{name}: a per-array or per-weight schedule must have the weights' structure {w_def}, "
            f"got {s_def}"
        )
    T = num_steps(schedule)
    for path_leaf, s_leaf in zip(jax.tree.leaves_with_path(w0), jax.tree.leaves(schedule), strict=True):
        path, w_leaf = path_leaf
        shape = tuple(jnp.shape(s_leaf))
        if shape != (T,) and shape != (T, *jnp.shape(w_leaf)):
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)}: shape {shape} is neither (T,) = {(T,)} nor "
                f"(T, *weight.shape) = {(T, *jnp.shape(w_leaf))}"
            )
    return T


def at_step(schedule: PyTree, w0: PyTree, t) -> list[jax.Array]:
    """The schedule's values at step ``t``, one array per weight leaf, broadcast to the leaf's shape."""
    leaves = jax.tree.leaves(w0)
    if is_shared(schedule):
        value = schedule[t]
        return [jnp.broadcast_to(value, jnp.shape(w)) for w in leaves]
    return [
        jnp.broadcast_to(s[t], jnp.shape(w)) for s, w in zip(jax.tree.leaves(schedule), leaves, strict=True)
    ]
