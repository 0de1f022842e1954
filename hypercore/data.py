"""Datasets (train / valid / test splits) and deterministic minibatches.

The numpy half (built-ins, users' arrays, splitting, centring, the upload layout) lives in the
JAX-free `hypercore.arrays` and is re-exported here; this module adds what runs inside the jitted
loss: minibatches and re-splits.

The built-ins, the preprocessing (the paper's: pixels scaled to [0, 1], centred on the training
mean), users' arrays and every refusal (a `DataError` naming its field) are described in
`hypercore.arrays`.

Minibatches (`batch_indices`) are a pure function of ``(seed, meta_iter, t)``, as the reversible
backward pass requires: it recomputes each step's gradient on the same batch. A re-split
(`resplit_indices`, a job's ``dataset.resplit``) is a pure function of ``(seed, meta_iter)`` for the
same reason, and so that a resumed job re-draws the splits it would have drawn.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import _x64  # noqa: F401  (configures JAX for the engine before any array exists)
from hypercore.arrays import (  # noqa: F401  (the numpy half, re-exported: hypercore.data.load, ...)
    _BUILTINS,
    _SPLITS,
    DataError,
    Dataset,
    _count,
    _describe,
    _raw,
    builtin_info,
    builtin_names,
    from_arrays,
    from_splits,
    load,
    split_strata,
)


def batch_indices(key_or_seed: Any, meta_iter: Any, t: Any, n: int, batch_size: int) -> jax.Array:
    """``batch_size`` example indices drawn uniformly with replacement from ``[0, n)``, int32.

    A pure function of ``(key_or_seed, meta_iter, t)``: the key is ``fold_in(fold_in(key, meta_iter),
    t)``, with ``key = jax.random.key(seed)`` for an integer seed. ``meta_iter`` and ``t`` may be
    traced integer scalars (it runs inside the jitted training loss, forward and backward); ``n``
    and ``batch_size`` fix the shape and must be concrete.
    """
    n = _count(n, "n", 1)
    batch_size = _count(batch_size, "batch_size", 1)
    key = key_or_seed
    if not _is_key(key):
        key = jax.random.key(key)
    key = jax.random.fold_in(jax.random.fold_in(key, meta_iter), t)
    return jax.random.randint(key, (batch_size,), 0, n, dtype=jnp.int32)


# Folded into the seed's key before ``meta_iter``, so a re-split never reuses a minibatch's draws.
_RESPLIT_STREAM = 0x5E5B1


def resplit_indices(
    key_or_seed: Any, meta_iter: Any, strata: np.ndarray, n_train: int
) -> tuple[jax.Array, jax.Array]:
    """A fresh train/valid split of a pool of ``len(strata)`` examples (the training rows, then the
    validation rows): ``(train_rows, valid_rows)``, int32 indices into the pool, together a
    permutation of it.

    Row ``i`` of a split is drawn from the examples of row ``i``'s own stratum (`split_strata`),
    uniformly without replacement, so each split keeps its size and its per-stratum counts; only
    which examples fill them changes. A pure function of ``(key_or_seed, meta_iter)``, seeded
    apart from `batch_indices`; ``key_or_seed``, ``meta_iter`` and ``strata`` may be traced (a job's
    compiled program takes them as arguments), ``n_train`` is concrete.
    """
    strata = strata if isinstance(strata, jax.Array) else np.asarray(strata)
    if strata.ndim != 1 or not jnp.issubdtype(strata.dtype, jnp.integer):
        raise DataError("strata", f"must be a 1-D integer array, got {_describe(strata)}")
    n_train = _count(n_train, "n_train", 1)
    if n_train >= len(strata):
        raise DataError("n_train", f"must leave validation rows in the pool of {len(strata)}, got {n_train}")
    key = key_or_seed
    if not _is_key(key):
        key = jax.random.key(key)
    key = jax.random.fold_in(jax.random.fold_in(key, _RESPLIT_STREAM), meta_iter)
    # The rows of each stratum, in pool order; sorting by (stratum, random bits) lists the same
    # examples per stratum in a random order, and the pair of orders maps rows to examples.
    strata = jnp.asarray(strata, jnp.int32)
    slots = jnp.argsort(strata, stable=True).astype(jnp.int32)
    draws = jax.random.bits(key, strata.shape, jnp.uint32)
    examples = jnp.lexsort((draws, strata)).astype(jnp.int32)
    rows = jnp.zeros(len(strata), jnp.int32).at[slots].set(examples)
    return rows[:n_train], rows[n_train:]


def _is_key(x: Any) -> bool:
    """A typed key (`jax.random.key`) or a raw uint32 ``(2,)`` one (`jax.random.PRNGKey`)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return dtype == jnp.uint32 and getattr(x, "shape", None) == (2,)
