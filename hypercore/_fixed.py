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
  ``log2(D / n)`` bits per step; the division is the same dance backwards. (`hypercore.reversible.SGDM`
  stores the velocity scaled by gamma's running product and multiplies it here only by the powers
  of two ``2**-k`` that keep the scale in ``(1/2, 1]``: ``n = 2**(16 - k)``, and ``n = D``, the
  identity, at most steps.)
* ``B`` is a ``uint64`` *head* per parameter. Before a push, if any head reaches ``2**48`` (so that
  ``B * D + r`` could pass ``2**64``), every head spills its low 32 bits, in lock-step, into a
  *stack* of 32-bit slots packed two per ``uint64`` word, and the step's spill flag is recorded.
  The reverse pass un-spills exactly where the flags say, so no reverse decision depends on data
  that could differ. When every weight array has one gamma per step (shared or per-array
  schedules), the test reads a scalar upper bound on the heads that the numerators alone decide,
  not the heads, so the spills depend on the gammas only.

The stack's capacity is a static shape, but the gammas that decide its growth are traced (they are
being learned), so the caller supplies the capacity; `capacity_for` derives it from a lower bound on
gamma. Overflowing the stack is detected and reported, never wrapped. `capacity_for` and the
buffer's constants live in the JAX-free `hypercore.budget`, which the server uses to size a job's
memory at submit with the engine's own arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import _x64  # noqa: F401  (configures JAX for the engine before any array exists)
from hypercore.budget import (  # noqa: F401  (one definition, shared with the server's estimate)
    GAMMA_BITS,
    HEAD_BITS,
    SLOT_BITS,
    D,
    capacity_for,
)

FRAC_BITS = 48
SCALE = float(2**FRAC_BITS)
RANGE = float(2**14)
HEAD_LIMIT = 2**HEAD_BITS

# The gradient fingerprint's multipliers (`hypercore.reversible._fingerprint`): ``M``, even, so that
# every element's ``e M + 2 leaf + 1`` is odd, and ``L``, odd. Here, one definition for the engine's
# `jax.numpy` formulation and the CPU kernels, whose on-disk cache this file is part of the key of.
FINGERPRINT_ELEM_MUL = (0x9E3779B97F4A7C15 * 2) % 2**64
FINGERPRINT_LEAF_MUL = 0xBF58476D1CE4E5B9

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
    ok = jnp.abs(x) < RANGE  # false for NaN and the infinities too: one comparison, not two tests
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
    """The information buffer of every parameter, kept as one array per weight leaf.

    ``heads``: uint64 arrays shaped like the leaves. ``stacks``: uint64 ``(W, *leaf.shape)``; slot
    ``k`` lives in word ``k // 2``, bits ``32 * (k % 2)`` and up. ``used``: int32, slots in use (the
    same for every parameter: spills are in lock-step). ``overflow``: bool, a spill found the stack
    full (the state is then no longer invertible). ``bound``: float64, an upper bound on every head,
    which `mul_gamma` keeps when each leaf's numerator is one number (a shared or per-array gamma),
    so that the spill test reads no head (see `maybe_spill`).
    """

    heads: list[jax.Array]
    stacks: list[jax.Array]
    used: jax.Array
    overflow: jax.Array
    bound: jax.Array | None = None

    @property
    def capacity(self) -> int:
        return 2 * self.stacks[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes for h in self.heads) + sum(s.nbytes for s in self.stacks)


def empty_buffer(shapes: list[tuple[int, ...]], capacity: int) -> Buffer:
    words = max(1, (capacity + 1) // 2)
    return Buffer(
        heads=[jnp.zeros(s, _U64) for s in shapes],
        stacks=[jnp.zeros((words, *s), _U64) for s in shapes],
        used=jnp.zeros((), jnp.int32),
        overflow=jnp.zeros((), jnp.bool_),
        bound=jnp.zeros((), jnp.float64),
    )


def slot_position(k: jax.Array) -> tuple[jax.Array, jax.Array]:
    return k // 2, (k % 2).astype(_U64) * jnp.asarray(SLOT_BITS, _U64)


def _spill_one(head, row, shift):
    """Push each head's low 32 bits into its stack word ``row`` at ``shift``."""
    row = row | ((head & jnp.asarray(0xFFFFFFFF, _U64)) << shift)
    return head >> jnp.asarray(SLOT_BITS, _U64), row


def _unspill_one(head, row, shift):
    """Pop the 32 bits at ``shift`` of ``row`` back under each head."""
    mask = jnp.asarray(0xFFFFFFFF, _U64) << shift
    return (head << jnp.asarray(SLOT_BITS, _U64)) | ((row & mask) >> shift), row & ~mask


def _move_slot(buf: Buffer, do: jax.Array, k: jax.Array, one) -> tuple[list, list]:
    """Apply ``one`` (spill or unspill) to every leaf at slot ``k`` if ``do``.

    Branch-free: one row of each stack is read, selected and written back in place every step, O(N).
    (`maybe_spill` puts it behind a branch on a CPU; a reverse scan reads the stacks instead, see
    `unspill`.)
    """
    word, shift = slot_position(k)
    moved = [_move_leaf(h, s, word, shift, do, one) for h, s in zip(buf.heads, buf.stacks, strict=True)]
    return [h for h, _ in moved], [s for _, s in moved]


def _move_leaf(head, stack, word, shift, do, one):
    row = jax.lax.dynamic_index_in_dim(stack, word, keepdims=False)
    moved_h, moved_row = one(head, row, shift)
    return jnp.where(do, moved_h, head), jax.lax.dynamic_update_index_in_dim(
        stack, jnp.where(do, moved_row, row), word, 0
    )


# Multiplies a newly computed head bound, so that float64's rounding (a few 2**-53, relative) can only
# raise it: `mul_gamma`'s and `hypercore.adam._head_bound`'s.
BOUND_MARGIN = 1.0 + 2.0**-50


def spill_by_bound(buf: Buffer, numerators: list[jax.Array]) -> bool:
    """Whether a step's spill test may read ``buf.bound``: the buffer keeps one and every numerator the
    step multiplies by is one number per leaf (a shared or per-array schedule), so that a scalar
    recursion bounds every head. Static: decided while tracing."""
    return buf.bound is not None and all(jnp.ndim(n) == 0 for n in numerators)


def maybe_spill(buf: Buffer, limit: int = HEAD_LIMIT, *, by_bound: bool = False) -> tuple[Buffer, jax.Array]:
    """Spill every head's low 32 bits onto the stack if any head has reached ``limit`` (SGD's
    ``HEAD_LIMIT``, below which a 16-bit push fits; `hypercore.adam` passes its own).

    ``by_bound``: test ``buf.bound``, an upper bound on every head, instead of every head: no pass
    over the heads, and never a later spill than the heads would give. `capacity_for` sizes the
    stack for this very bound, so the spills still fit; the reverse pass follows the recorded flags
    either way.
    """
    counted, spill, do, k = plan_spill(buf, limit, by_bound=by_bound)
    heads, stacks = _spill_if(buf, do, k)
    return counted._replace(heads=heads, stacks=stacks), spill


def plan_spill(
    buf: Buffer, limit: int = HEAD_LIMIT, *, by_bound: bool = False
) -> tuple[Buffer, jax.Array, jax.Array, jax.Array]:
    """`maybe_spill`'s decision without the move: ``(buf, spill, do, k)``, with ``buf``'s counters and
    bound as after the spill and its heads and stacks untouched. ``spill``: the step's flag (a head
    reached ``limit``); ``do``: the move happens (the stack has room); ``k``: the slot it fills."""
    if by_bound:
        spill = buf.bound >= float(limit)
    else:
        limit_u = jnp.asarray(limit, _U64)
        spill = jnp.any(jnp.stack([jnp.any(h >= limit_u) for h in buf.heads]))
    full = buf.used >= buf.capacity
    do = spill & ~full
    bound = jnp.where(do, jnp.floor(buf.bound * 2.0**-SLOT_BITS), buf.bound) if by_bound else buf.bound
    counted = buf._replace(
        used=buf.used + do.astype(jnp.int32), overflow=buf.overflow | (spill & full), bound=bound
    )
    return counted, spill, do, jnp.minimum(buf.used, buf.capacity - 1)


def _spill_if(buf: Buffer, do: jax.Array, k: jax.Array) -> tuple[list, list]:
    """`_move_slot` with `_spill_one` at slot ``k`` if ``do``. On a CPU behind a ``lax.cond``: a spill
    comes every ``32 / log2(1 / gamma)`` steps or so, and the branch skips reading, selecting and
    writing back a stack row per weight on the steps between (the forward scan updates the stacks in
    place either way, whatever the capacity). Elsewhere branch-free: a GPU's conditional reads its
    predicate on the host, a wait in every step."""

    def select(heads, stacks):
        return _move_slot(buf._replace(heads=heads, stacks=stacks), do, k, _spill_one)

    def branch(heads, stacks):
        def spill(hs):
            return _move_slot(buf._replace(heads=hs[0], stacks=hs[1]), jnp.bool_(True), k, _spill_one)

        return jax.lax.cond(do, spill, lambda hs: hs, (heads, stacks))

    return jax.lax.platform_dependent(list(buf.heads), list(buf.stacks), cpu=branch, default=select)


def spill_leaf(head: jax.Array, stack: jax.Array, k: jax.Array, do: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One leaf's spill into slot ``k`` if ``do`` (`maybe_spill`'s move, branch-free): ``(head, stack)``."""
    word, shift = slot_position(k)
    return _move_leaf(head, stack, word, shift, do, _spill_one)


def unspill_slot(buf: Buffer, spilled: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(do, k)``: whether a step whose recorded flag is ``spilled`` pops slot ``k`` back."""
    return spilled & (buf.used > 0), jnp.maximum(buf.used - 1, 0)


def unspill_counters(buf: Buffer, spilled: jax.Array, do: jax.Array) -> Buffer:
    """The buffer's counters after `unspill_slot`'s pop (``overflow`` if a recorded spill finds none)."""
    return buf._replace(used=buf.used - do.astype(jnp.int32), overflow=buf.overflow | (spilled & ~do))


def unspill_from(head: jax.Array, stack: jax.Array, k: jax.Array, do: jax.Array) -> jax.Array:
    """One leaf's head after popping slot ``k`` of its read-only ``stack`` if ``do``."""
    word, shift = slot_position(k)
    return jnp.where(
        do, _unspill_one(head, jax.lax.dynamic_index_in_dim(stack, word, keepdims=False), shift)[0], head
    )


def unspill(buf: Buffer, spilled: jax.Array, stacks: list[jax.Array] | None = None) -> Buffer:
    """Undo `maybe_spill` for a step whose recorded flag is ``spilled``.

    With ``stacks`` (the forward pass's final stacks, read-only) the slot is read from them and
    ``buf.stacks`` is left alone: nothing is written, so a reverse scan can close over the stacks
    instead of carrying them. Carried through a transposed scan, XLA copies the whole stack every
    step (O(N * capacity) per step); read-only, a step costs O(N) whatever the capacity.
    """
    do, k = unspill_slot(buf, spilled)
    if stacks is None:
        heads, stacks = _move_slot(buf, do, k, _unspill_one)
    else:
        heads = [unspill_from(h, s, k, do) for h, s in zip(buf.heads, stacks, strict=True)]
        stacks = buf.stacks
    return unspill_counters(buf._replace(heads=heads, stacks=stacks), spilled, do)


def divmod_unsigned(x: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x // n, x % n)`` for uint64 ``x`` and ``1 <= n <= 2**16``, with a single division."""
    n_u = n.astype(_U64)
    q = x // n_u
    return q, x - q * n_u


def divmod_signed(x: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Floor ``(x // n, x mod n)`` for int64 ``|x| < 2**62`` and ``1 <= n <= 2**16``.

    Shifting ``x`` by ``k n > 2**62`` makes it non-negative, so one unsigned division (about half
    the cost of XLA's signed floor division and remainder) gives the floor quotient. ``k`` comes
    from a float estimate (``floor(2**62 / n) + 1``, with ``k n < 2**63``), not a second division.
    """
    k = (jnp.floor(2.0**62 / n.astype(jnp.float64)) + 1.0).astype(_I64)
    shifted = jax.lax.bitcast_convert_type(x + k * n, _U64)
    q = jax.lax.bitcast_convert_type(shifted // n.astype(_U64), _I64) - k
    return q, x - q * n


def mul_gamma(vs: list[jax.Array], ns: list[jax.Array], buf: Buffer) -> tuple[list, Buffer, jax.Array]:
    """Exactly ``v <- v * n / D`` for every leaf, the lost bits going into the buffer.

    Returns ``(vs, buf, spilled)``. ``ns`` are int64 numerators broadcastable to the leaves. Where
    each is one number, ``buf.bound`` follows the heads (``h' = floor((h D + r) / n) < (h + 1) D / n``)
    and decides the spill.
    """
    buf, spilled = mul_gamma_spill(buf, ns)
    out_v, out_h = zip(
        *[mul_gamma_leaf(v, n, h) for v, n, h in zip(vs, ns, buf.heads, strict=True)], strict=True
    )
    return list(out_v), buf._replace(heads=list(out_h)), spilled


def mul_gamma_spill(buf: Buffer, ns: list[jax.Array]) -> tuple[Buffer, jax.Array]:
    """`mul_gamma`'s first half, for every leaf at once: the spill, and the heads' bound after the step."""
    by_bound = spill_by_bound(buf, ns)
    buf, spilled = maybe_spill(buf, by_bound=by_bound)
    return _bound_after_mul(buf, ns, by_bound), spilled


def _bound_after_mul(buf: Buffer, ns: list[jax.Array], by_bound: bool) -> Buffer:
    if not by_bound:
        return buf
    rho = D / jnp.min(jnp.stack(ns)).astype(jnp.float64)
    return buf._replace(bound=(buf.bound + 1.0) * rho * BOUND_MARGIN)


def plan_mul_gamma(buf: Buffer, ns: list[jax.Array]) -> tuple[Buffer, jax.Array, jax.Array, jax.Array]:
    """`mul_gamma`'s scalar part, for a caller that moves the data itself (`hypercore._fused`): the
    spill decision by the bound and the bound after the step. Returns `plan_spill`'s
    ``(buf, spill, do, k)``; every numerator must be one number (`spill_by_bound`)."""
    if not spill_by_bound(buf, ns):
        raise ValueError("plan_mul_gamma needs a head bound and one numerator per leaf")
    buf, spill, do, k = plan_spill(buf, by_bound=True)
    return _bound_after_mul(buf, ns, True), spill, do, k


def mul_gamma_leaf(v: jax.Array, n: jax.Array, head: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`mul_gamma`'s second half on one leaf: ``(v n / D, head)`` once the spill is done."""
    r = (v & jnp.asarray(D - 1, _I64)).astype(_U64)
    q = v >> jnp.asarray(GAMMA_BITS, _I64)
    head = (head << jnp.asarray(GAMMA_BITS, _U64)) | r
    quotient, s = divmod_unsigned(head, n)
    return q * n + s.astype(_I64), quotient


def div_gamma(
    vs: list[jax.Array],
    ns: list[jax.Array],
    buf: Buffer,
    spilled: jax.Array,
    stacks: list[jax.Array] | None = None,
) -> tuple[list, Buffer]:
    """Exactly undo `mul_gamma` for the same numerators and the step's recorded spill flag.

    ``stacks``: read the spilled words from these instead of popping them off ``buf`` (see `unspill`).
    """
    out_v, out_h = zip(
        *[div_gamma_leaf(v, n, h) for v, n, h in zip(vs, ns, buf.heads, strict=True)], strict=True
    )
    return list(out_v), unspill(buf._replace(heads=list(out_h)), spilled, stacks)


def div_gamma_leaf(v: jax.Array, n: jax.Array, head: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`div_gamma` on one leaf before the un-spill: ``(v D / n, head)``."""
    q, s = divmod_signed(v, n)
    head = head * n.astype(_U64) + s.astype(_U64)
    r = (head & jnp.asarray(D - 1, _U64)).astype(_I64)
    return (q << jnp.asarray(GAMMA_BITS, _I64)) + r, head >> jnp.asarray(GAMMA_BITS, _U64)
