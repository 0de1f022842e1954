"""Exact arithmetic for reversible SGD: int64 fixed point and a vectorised information buffer.

Weights and velocities live as ``int64`` integers ``x * 2**FRAC_BITS`` (48 fractional bits, so
``|x| < RANGE = 2**14`` with headroom to 2**15). Adding a float step that was computed from exactly
restored state is exactly undoable. Multiplying the velocity by ``gamma`` is not: it discards
``log2(1/gamma)`` bits per parameter per step. Those bits go into an information buffer, one per
parameter, so that division by ``gamma`` in the reverse pass restores them (Maclaurin et al. 2015,
section 3; HIPS/hypergrad ``exact_rep.py``), without Python big integers:

* ``gamma`` is quantised to a rational ``n / D`` with ``D = 2**16`` (``n = round(gamma * D)``,
  clipped to ``[1, D]``, so the error is at most ``2**-17``). The hypergradient is taken at the
  quantised value and passed straight through to the raw ``gamma``.
* ``v * n / D`` exactly: ``r = v mod D`` (floor semantics, so ``0 <= r < D`` for negative ``v``)
  is pushed into the buffer ``B <- B * D + r``, ``v <- floor(v / D) * n``, then ``s = B mod n`` is
  popped out of the buffer into ``v <- v + s``, ``B <- floor(B / n)``. ``B`` grows by
  ``log2(D / n)`` bits per step; the division is the same dance backwards.
* ``B`` is a ``uint64`` *head* per parameter. Before a push, if any head reaches ``2**48`` (so that
  ``B * D + r`` could pass ``2**64``), every head spills its low 32 bits, in lock-step, into a
  *stack* of 32-bit slots packed two per ``uint64`` word, and the step's spill flag is recorded.
  The reverse pass un-spills exactly where the flags say, so no reverse decision depends on data
  that could differ.

The stack's capacity is a static shape, but the gammas that decide its growth are traced (they are
being learned), so the caller supplies the capacity; `capacity_for` derives it from a lower bound on
gamma. Overflowing the stack is detected and reported, never wrapped.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FRAC_BITS = 48
SCALE = float(2**FRAC_BITS)
RANGE = float(2**14)
GAMMA_BITS = 16
D = 2**GAMMA_BITS
SLOT_BITS = 32
HEAD_LIMIT = 2 ** (64 - GAMMA_BITS)

_U64 = jnp.uint64
_I64 = jnp.int64


def require_x64() -> None:
    """Fail loudly if x64 is off: int64 would silently become int32 and break exactness."""
    if jnp.zeros((), _I64).dtype != np.dtype("int64"):
        raise RuntimeError(
            "hypercore needs jax_enable_x64 (it is turned on by `import hypercore`; something turned it off)"
        )


def to_fixed(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float64 -> int64 fixed point (round to nearest). Returns ``(value, ok)``.

    ``ok`` is false where ``x`` is non-finite or ``|x| >= RANGE``; such entries become 0 and the
    caller records the step as diverged.
    """
    x = jnp.asarray(x, jnp.float64)
    ok = jnp.isfinite(x) & (jnp.abs(x) < RANGE)
    safe = jnp.where(ok, x, 0.0)
    return jnp.round(safe * SCALE).astype(_I64), ok


def from_fixed(i: jax.Array) -> jax.Array:
    """int64 fixed point -> float64 (exact scaling by a power of two, deterministic rounding)."""
    return i.astype(jnp.float64) * (1.0 / SCALE)


def in_range(i: jax.Array) -> jax.Array:
    """True where a fixed-point value is inside ``(-RANGE, RANGE)``."""
    limit = jnp.asarray(int(RANGE) << FRAC_BITS, _I64)
    return (i < limit) & (i > -limit)


def gamma_numerator(gamma: jax.Array) -> jax.Array:
    """``n = clip(round(gamma * D), 1, D)`` as int64: gamma is used as the rational ``n / D``."""
    g = jnp.asarray(gamma, jnp.float64)
    return jnp.clip(jnp.round(g * D), 1, D).astype(_I64)


def quantize_gamma(gamma: jax.Array) -> jax.Array:
    """The value of gamma the engine actually uses, ``n / 2**16``, with a straight-through gradient."""
    g = jnp.asarray(gamma)
    q = (gamma_numerator(g).astype(jnp.float64) / D).astype(g.dtype)
    return g + jax.lax.stop_gradient(q - g)


class Buffer(NamedTuple):
    """The information buffer of N parameters.

    ``head``: uint64 (N,). ``stack``: uint64 (W, N), slot ``k`` lives in word ``k // 2``, bits
    ``32 * (k % 2)`` and up. ``used``: int32, slots in use. ``overflow``: bool, a spill found the
    stack full (the state is then no longer invertible).
    """

    head: jax.Array
    stack: jax.Array
    used: jax.Array
    overflow: jax.Array

    @property
    def capacity(self) -> int:
        return 2 * self.stack.shape[0]


def empty_buffer(n_params: int, capacity: int) -> Buffer:
    words = max(1, (capacity + 1) // 2)
    return Buffer(
        head=jnp.zeros((n_params,), _U64),
        stack=jnp.zeros((words, n_params), _U64),
        used=jnp.zeros((), jnp.int32),
        overflow=jnp.zeros((), jnp.bool_),
    )


def _slot_position(k: jax.Array) -> tuple[jax.Array, jax.Array]:
    return k // 2, (k % 2).astype(_U64) * jnp.asarray(SLOT_BITS, _U64)


def maybe_spill(buf: Buffer) -> tuple[Buffer, jax.Array]:
    """Spill every head's low 32 bits onto the stack if any head has reached ``HEAD_LIMIT``."""
    spill = jnp.any(buf.head >= jnp.asarray(HEAD_LIMIT, _U64))
    full = buf.used >= buf.capacity
    do = spill & ~full
    k = jnp.minimum(buf.used, buf.capacity - 1)
    word, shift = _slot_position(k)
    row = jax.lax.dynamic_index_in_dim(buf.stack, word, keepdims=False)
    low = buf.head & jnp.asarray(0xFFFFFFFF, _U64)
    row = jnp.where(do, row | (low << shift), row)
    stack = jax.lax.dynamic_update_index_in_dim(buf.stack, row, word, 0)
    head = jnp.where(do, buf.head >> jnp.asarray(SLOT_BITS, _U64), buf.head)
    return (
        Buffer(head, stack, buf.used + do.astype(jnp.int32), buf.overflow | (spill & full)),
        spill,
    )


def unspill(buf: Buffer, spilled: jax.Array) -> Buffer:
    """Undo `maybe_spill` for a step whose recorded flag is ``spilled``."""
    do = spilled & (buf.used > 0)
    k = jnp.maximum(buf.used - 1, 0)
    word, shift = _slot_position(k)
    row = jax.lax.dynamic_index_in_dim(buf.stack, word, keepdims=False)
    mask = jnp.asarray(0xFFFFFFFF, _U64) << shift
    low = (row & mask) >> shift
    stack = jax.lax.dynamic_update_index_in_dim(buf.stack, jnp.where(do, row & ~mask, row), word, 0)
    head = jnp.where(do, (buf.head << jnp.asarray(SLOT_BITS, _U64)) | low, buf.head)
    return Buffer(head, stack, buf.used - do.astype(jnp.int32), buf.overflow | (spilled & ~do))


def mul_gamma(v: jax.Array, n: jax.Array, buf: Buffer) -> tuple[jax.Array, Buffer, jax.Array]:
    """Exactly ``v <- v * n / D``, the lost bits going into the buffer. Returns ``(v, buf, spilled)``."""
    buf, spilled = maybe_spill(buf)
    r = (v & jnp.asarray(D - 1, _I64)).astype(_U64)
    q = v >> jnp.asarray(GAMMA_BITS, _I64)
    head = (buf.head << jnp.asarray(GAMMA_BITS, _U64)) | r
    n_u = n.astype(_U64)
    s = head % n_u
    head = head // n_u
    v = q * n + s.astype(_I64)
    return v, buf._replace(head=head), spilled


def div_gamma(v: jax.Array, n: jax.Array, buf: Buffer, spilled: jax.Array) -> tuple[jax.Array, Buffer]:
    """Exactly undo `mul_gamma` for the same ``n`` and the step's recorded spill flag."""
    s = jnp.remainder(v, n)
    q = jnp.floor_divide(v, n)
    head = buf.head * n.astype(_U64) + s.astype(_U64)
    r = (head & jnp.asarray(D - 1, _U64)).astype(_I64)
    head = head >> jnp.asarray(GAMMA_BITS, _U64)
    v = (q << jnp.asarray(GAMMA_BITS, _I64)) + r
    return v, unspill(buf._replace(head=head), spilled)


def capacity_for(steps: int, min_gamma: float, *, bucket: bool = True) -> int:
    """Stack slots (32 bits each) enough for ``steps`` steps with every gamma >= ``min_gamma``.

    Each step adds at most ``log2(D / n) + 2**-15`` bits to a head once it holds more than 16 bits,
    and at most ``log2(D / n) + 1`` bits while it is smaller; each spill removes 32 bits and leaves
    at least 16. Hence ``ceil((steps * (log2(D / n_min) + 2**-15) - 16) / 32) + 2`` slots suffice.
    With ``bucket`` the count is rounded up to the next of 2, 3, 4, 6, 8, 12, 16, ..., so that a
    tuning loop whose gammas drift a little does not recompile.

    Memory: the buffer holds ``8 * N`` bytes of heads and ``4 * N * capacity`` bytes of stack.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0.0 < min_gamma <= 1.0 or not math.isfinite(min_gamma):
        raise ValueError(f"min_gamma must be in (0, 1], got {min_gamma}")
    n_min = min(max(round(min_gamma * D), 1), D)
    bits = steps * (math.log2(D / n_min) + 2.0**-15)
    slots = max(0, math.ceil((bits - 16) / SLOT_BITS)) + 2
    if not bucket:
        return slots
    size = 2
    while size < slots:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def information_bits(gammas_numerators: np.ndarray) -> float:
    """The information-theoretic buffer size in bits: ``sum log2(D / n)`` over parameters and steps."""
    n = np.asarray(gammas_numerators, dtype=np.float64)
    return float(np.sum(np.log2(D / n)))
