"""Reversible Adam: exact hypergradients through Adam, in the training-optimizer slot of
`hypercore.reversible`.

The rule (optax's ``adamw``, per-step values, ``m_0 = v_0 = 0``; ``wd = 0`` is ``adam``)::

    g_t     = grad_w L(w_t, meta, t)
    m_{t+1} = b1_t m_t + (1 - b1_t) g_t
    v_{t+1} = b2_t v_t + (1 - b2_t) g_t^2
    mhat    = m_{t+1} / c1_t,   c1_t = 1 - prod_{s<=t} b1_s
    vhat    = v_{t+1} / c2_t,   c2_t = 1 - prod_{s<=t} b2_s
    w_{t+1} = f_t w_t - lr_t mhat / (sqrt(vhat) + eps),   f_t = 1 - lr_t wd_t

runs on int64 fixed point so that the backward pass runs it in reverse bit for bit:

    w_t = (w_{t+1} + fixed(lr_t u(m_{t+1}, v_{t+1}, c1_t, c2_t))) / f_t   (`Adam.undo_weights`;
        exactly, bits from the buffer; no division without weight decay)
    g_t recomputed at w_t by the engine
    m_t = (m_{t+1} - fixed((1 - b1_t) g_t)) / b1_t  exactly, bits from the buffer
    v_t = (v_{t+1} - fixedv((1 - b2_t) g_t^2)) / b2_t  exactly, bits from the buffer

Representation
--------------
* ``w`` and ``m``: `hypercore._fixed`'s fixed point (``x * 2**48`` in int64, ``|x| < 2**14``).
* ``v``: its own scale, ``v * 2**V_FRAC_BITS`` (52 fractional bits, ``0 <= v < 2**10``, i.e. a
  gradient RMS below 32). ``g^2`` spans many decades and, early on, ``v`` is ``(1 - b2) t g^2``, a
  thousand times smaller than ``g^2`` at ``b2 = 0.999``: 52 bits keep ``v`` to 2.2e-16 absolute
  (2e-9 relative at ``g = 1e-2`` on the first step). A larger gradient RMS leaves the range and is
  reported as divergence, never wrapped. Below ``eps**2`` the precision of ``v`` hardly matters.
* ``b1``, ``b2``: quantised to ``n / 2**24``, ``n = clip(round(b * 2**24), 2**23, 2**24 - 1)``, so
  ``b`` in ``[0.5, 1 - 2**-24]`` with an error of at most ``2**-25`` (0.999 becomes
  0.999000013, so ``1 - b2`` is off by 1.3e-5 relative; over 200 steps of a small net the weights
  stay within 1.3e-7 relative of optax's float64 adam with the raw values). `quantize_beta`
  returns the values actually used, with a straight-through gradient (the hypergradient is the
  derivative at the quantised value). ``2**-16`` (SGD's
  lattice) is too coarse for 0.999 (error 7e-6, i.e. 0.7% on ``1 - b2``).
* The bias corrections ``c1_t``, ``c2_t`` are computed by `reversible_adam` as float64
  ``1 - cumprod(quantize_beta(b))`` over the steps and handed to the engine as two more schedules
  (they depend on the schedules only, not on data): the forward and reverse passes read the same
  float64 value at step ``t``, and their hypergradients flow back to ``b1``, ``b2`` through the
  cumulative product by ordinary autodiff, outside the engine.
* The weight-decay factor ``f_t = 1 - lr_t wd_t`` (AdamW) is quantised as a whole, like the betas
  but with ``n = clip(round(f 2**24), 2**23, 2**24)``, i.e. ``f`` in ``[0.5, 1]`` (``f = 1``,
  ``n = 2**24``, is exact and pushes nothing). `weight_decay_factors` (`quantize_decay` of
  ``1 - lr wd`` in float64, the schedules broadcast together) returns the values used: ``lr wd``
  is off by at most ``2**-25 = 3.0e-8`` absolute, so 3e-5 relative at ``lr wd = 1e-3``, 3e-4 at
  ``1e-4``, 30% at ``1e-7``, and a product below ``2**-25`` rounds to no decay at all; use AdamW
  here with ``lr wd`` well above ``1e-6``. The factor is one more schedule computed by
  `reversible_adam` outside the engine, so its hypergradient (``sum dw_{t+1} w_t``) reaches ``lr``
  and ``wd`` by ordinary autodiff, straight through the rounding (the derivative of ``1 - lr wd``:
  ``-wd`` and ``-lr``), on top of ``lr``'s direct path through ``lr u``.

Exact multiplication by ``b = n / 2**24`` (``DB = 2**24``)
----------------------------------------------------------
`hypercore._fixed.mul_gamma` pushes first (``v <- floor(v / D) n + pop``): its rounding error is up
to ``n`` units, fine for ``n < 2**16`` but ``2**-24`` absolute at ``n ~ 2**24``. Here the buffer is
popped first, so the error is below one unit (2**-48 for ``m``, 2**-52 for ``v``):

    s = B mod n;  B <- B div n                  (pop)
    X = x n + s;  x <- X div DB                 (x n is up to 86 bits: done in 32-bit limbs)
    B <- B * DB + (X mod DB)                    (push 24 bits)

and the inverse runs the same three lines backwards (long division of ``x DB + r`` by ``n`` in two
limbs). ``B`` grows by ``log2(DB / n)`` bits a step. A head must stay below ``n 2**40`` for the push
to fit 64 bits, so heads spill their low 32 bits onto the stack when one reaches ``2**63``
(``n >= 2**23``); a spilled head keeps at least 31 bits, so the pop stays efficient. The spill is
this module's (`_maybe_spill` / `_unspill`) on `hypercore._fixed.Buffer`'s layout: all heads in
lock-step, the flag recorded per step, the reverse pass reading the forward stacks read-only.

The buffer has one head per parameter for ``m`` and one for ``v`` (``buffer_shapes``) and, with
weight decay, a third for ``w``: the forward step spills, pushes ``m``'s and ``v``'s bits, computes
the update from ``m_{t+1}, v_{t+1}``, then pushes ``w``'s (``w <- mul_beta(w, n_f)`` before
``- fixed(lr u)``); `Adam.undo_weights` pops ``w``'s and `Adam.undo_state` ``m``'s, ``v``'s and the
spill, in that reverse order. The heads of all three spill in lock-step, so the stack is sized by
the smallest of ``b1``, ``b2`` and ``f`` (``decay_schedule`` is those three schedules) and costs
1.5 times plain Adam's memory; a concrete ``weight_decay=0`` runs plain Adam, with two heads.

Because an empty head cannot be popped, the first pushes cost up to 24 bits more than `_fixed`'s
scheme, and a head restarting from 31 bits after a spill a little more per cycle: `adam_capacity` is
this scheme's bound (at ``b = 0.5`` over 100 steps, 3 slots where SGD's unbucketed bound says 2; at
0.9 over 1000 steps both say 4 and 4 are used), so size the stack with
``capacity=adam_capacity(T, min_beta)`` (the same as ``buffer_capacity(T, min_beta,
optimizer="adam")``), not with SGD's ``buffer_capacity(T, min_gamma)``.

Determinism: ``u = mhat / (sqrt(vhat) + eps)`` is computed by one function (`_direction`) from the
restored integers and the same float64 hyperparameters in both passes, with no multiply feeding an
add (so nothing an FMA could contract differently); IEEE division and square root are correctly
rounded, so the reverse pass gets the forward's bits.

The adjoint of the weight decay: ``dw_t = f_t dw_{t+1} - H_t ct`` (`Adam.adjoint_step` returns
``f_t dw_{t+1}``, the engine subtracts ``H_t ct``) and ``df_t = dw_{t+1} . w_t``, with ``w_t`` the
restored weights; ``lr``'s direct cotangent ``-dw_{t+1} . u`` is unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import (
    _fixed,
    _schedule,
    _x64,  # noqa: F401  (configures JAX for the engine before any array exists)
    reversible,
)
from hypercore._fixed import Buffer

PyTree = Any

BETA_BITS = 24
DB = 2**BETA_BITS
N_MIN = DB // 2  # b >= 0.5: a head below 2**63 times DB fits 64 bits after the pop
N_MAX = DB - 1
V_FRAC_BITS = 52
V_SCALE = float(2**V_FRAC_BITS)
V_RANGE = float(2 ** (62 - V_FRAC_BITS))
SPILL_BITS = 63
SLOT_BITS = 32

_U64 = jnp.uint64
_I64 = jnp.int64


# --- quantisation -----------------------------------------------------------------------------


def beta_numerator(beta: jax.Array) -> jax.Array:
    """``n = clip(round(beta * 2**24), 2**23, 2**24 - 1)`` as int64: beta is used as ``n / 2**24``."""
    b = jnp.asarray(beta, jnp.float64)
    return jnp.clip(jnp.round(b * DB), N_MIN, N_MAX).astype(_I64)


def quantize_beta(beta: PyTree) -> PyTree:
    """The values of ``b1``/``b2`` the engine actually uses, ``n / 2**24`` in ``[0.5, 1 - 2**-24]``,
    with a straight-through gradient. Works on any pytree of arrays or on a float."""

    def one(b):
        b = jnp.asarray(b)
        dtype = b.dtype if jnp.issubdtype(b.dtype, jnp.floating) else jnp.float64
        b = b.astype(dtype)
        q = (beta_numerator(b).astype(jnp.float64) / DB).astype(dtype)
        return b + jax.lax.stop_gradient(q - b)

    return jax.tree.map(one, beta)


def decay_numerator(factor: jax.Array) -> jax.Array:
    """``n = clip(round(f * 2**24), 2**23, 2**24)`` as int64: the weight-decay factor ``f = 1 - lr wd``
    is used as ``n / 2**24`` in ``[0.5, 1]`` (``n = 2**24`` is exactly no decay)."""
    f = jnp.asarray(factor, jnp.float64)
    return jnp.clip(jnp.round(f * DB), N_MIN, DB).astype(_I64)


def quantize_decay(factor: PyTree) -> PyTree:
    """The weight-decay factors the engine actually uses, ``n / 2**24`` in ``[0.5, 1]`` (float64),
    with a straight-through gradient. Works on any pytree of arrays or on a float."""

    def one(f):
        f = jnp.asarray(f, jnp.float64)
        return f + jax.lax.stop_gradient(decay_numerator(f).astype(jnp.float64) / DB - f)

    return jax.tree.map(one, factor)


def _pair(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two schedule leaves, ``(T,)`` or ``(T, *shape)``, as float64 arrays that broadcast together."""
    a, b = jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64)
    if a.ndim < b.ndim:
        a = a.reshape(a.shape + (1,) * (b.ndim - a.ndim))
    elif b.ndim < a.ndim:
        b = b.reshape(b.shape + (1,) * (a.ndim - b.ndim))
    return a, b


def weight_decay_factors(learning_rates: PyTree, weight_decay: PyTree) -> PyTree:
    """The factors ``quantize_decay(1 - lr_t wd_t)`` that multiply ``w`` at every step, a schedule:
    shared if both are shared, else shaped like the weights (a leaf per weight where either is).
    These are the values the engine uses (the reference `unrolled_adam` with ``quantize=True``
    too); the hypergradients to ``lr`` and ``wd`` pass straight through the rounding."""
    shared_lr, shared_wd = _schedule.is_shared(learning_rates), _schedule.is_shared(weight_decay)
    if shared_lr and shared_wd:
        a, b = _pair(learning_rates, weight_decay)
        return quantize_decay(1.0 - a * b)
    tree = weight_decay if shared_lr else learning_rates
    n = len(jax.tree.leaves(tree))
    lrs = [learning_rates] * n if shared_lr else jax.tree.leaves(learning_rates)
    wds = [weight_decay] * n if shared_wd else jax.tree.leaves(weight_decay)
    out = []
    for a, b in zip(lrs, wds, strict=True):
        a, b = _pair(a, b)
        out.append(quantize_decay(1.0 - a * b))
    return jax.tree.unflatten(jax.tree.structure(tree), out)


def bias_corrections(betas: PyTree) -> PyTree:
    """``1 - prod_{s<=t} b_s`` per step (float64), for quantised ``betas`` shaped as a schedule."""
    return jax.tree.map(lambda b: 1.0 - jnp.cumprod(jnp.asarray(b, jnp.float64), axis=0), betas)


# --- v's fixed point --------------------------------------------------------------------------


def to_fixed_v(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float64 ``>= 0`` -> int64 ``x * 2**52`` (round to nearest); ``ok`` false outside ``[0, 2**10)``."""
    x = jnp.asarray(x, jnp.float64)
    ok = jnp.isfinite(x) & (x >= 0.0) & (x < V_RANGE)
    return jnp.round(jnp.where(ok, x, 0.0) * V_SCALE).astype(_I64), ok


def from_fixed_v(i: jax.Array) -> jax.Array:
    return i.astype(jnp.float64) * (1.0 / V_SCALE)


def in_range_v(i: jax.Array) -> jax.Array:
    return (i >= 0) & (i < jnp.asarray(1 << 62, _I64))


# --- exact multiplication by n / 2**24 through the buffer -------------------------------------


def mul_beta(x: jax.Array, n: jax.Array, head: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exactly ``x <- x * n / 2**24`` (error below one unit) with the head ``B``: pop ``s = B mod n``,
    ``X = x n + s``, ``x <- X div 2**24``, push ``X mod 2**24``. Needs ``|x| < 2**62``,
    ``2**23 <= n <= 2**24`` (``n = 2**24``, the weight-decay factor 1, is the identity) and
    ``B < 2**63``."""
    nu = n.astype(_U64)
    h1 = head // nu
    s = head - h1 * nu
    hi = x >> jnp.asarray(32, _I64)  # floor(x / 2**32), |hi| < 2**30
    lo = (x & jnp.asarray(0xFFFFFFFF, _I64)).astype(_U64)
    low = lo * nu + s  # < 2**57: the low limb of x n + s
    r = low & jnp.asarray(DB - 1, _U64)
    x = hi * n * jnp.asarray(2 ** (32 - BETA_BITS), _I64) + (low >> jnp.asarray(BETA_BITS, _U64)).astype(_I64)
    return x, (h1 << jnp.asarray(BETA_BITS, _U64)) | r


def div_beta(x: jax.Array, n: jax.Array, head: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exactly undo `mul_beta` for the same ``n``."""
    nu = n.astype(_U64)
    r = head & jnp.asarray(DB - 1, _U64)
    h1 = head >> jnp.asarray(BETA_BITS, _U64)
    a = jnp.floor_divide(x, n)
    b = x - a * n  # 0 <= b < n
    y = (b.astype(_U64) << jnp.asarray(BETA_BITS, _U64)) | r  # < n 2**24 <= 2**48
    q = y // nu
    s = y - q * nu
    return a * jnp.asarray(DB, _I64) + q.astype(_I64), h1 * nu + s


def _maybe_spill(buf: Buffer) -> tuple[Buffer, jax.Array]:
    """Spill every head's low 32 bits onto its stack (slot ``used``) if any head has reached 2**63."""
    limit = jnp.asarray(1 << SPILL_BITS, _U64)
    spill = jnp.any(jnp.stack([jnp.any(h >= limit) for h in buf.heads]))
    full = buf.used >= buf.capacity
    do = spill & ~full
    k = jnp.minimum(buf.used, buf.capacity - 1)
    word, shift = k // 2, (k % 2).astype(_U64) * jnp.asarray(SLOT_BITS, _U64)
    heads, stacks = [], []
    for h, st in zip(buf.heads, buf.stacks, strict=True):
        row = jax.lax.dynamic_index_in_dim(st, word, keepdims=False)
        new_row = row | ((h & jnp.asarray(0xFFFFFFFF, _U64)) << shift)
        heads.append(jnp.where(do, h >> jnp.asarray(SLOT_BITS, _U64), h))
        stacks.append(jax.lax.dynamic_update_index_in_dim(st, jnp.where(do, new_row, row), word, 0))
    used = buf.used + do.astype(jnp.int32)
    return Buffer(heads, stacks, used, buf.overflow | (spill & full)), spill


def _unspill(buf: Buffer, spilled: jax.Array, stacks: list[jax.Array]) -> Buffer:
    """Undo `_maybe_spill` for a step whose recorded flag is ``spilled``, reading the forward
    pass's final ``stacks`` (read-only; ``buf.stacks`` is left alone)."""
    do = spilled & (buf.used > 0)
    k = jnp.maximum(buf.used - 1, 0)
    word, shift = k // 2, (k % 2).astype(_U64) * jnp.asarray(SLOT_BITS, _U64)
    heads = []
    for h, st in zip(buf.heads, stacks, strict=True):
        row = jax.lax.dynamic_index_in_dim(st, word, keepdims=False)
        bits = (row >> shift) & jnp.asarray(0xFFFFFFFF, _U64)
        heads.append(jnp.where(do, (h << jnp.asarray(SLOT_BITS, _U64)) | bits, h))
    return Buffer(heads, buf.stacks, buf.used - do.astype(jnp.int32), buf.overflow | (spilled & ~do))


def _first_cycle(step_bits: float, start_bits: float, per_step_bits: float) -> int:
    """The fewest steps ``i >= 1`` with ``i step_bits + log2(2**start_bits + i 2**per_step_bits)``
    reaching 63 bits (a worst-case head from ``2**start_bits``, or from 0 with ``start_bits=None``)."""

    def bits(i: int) -> float:
        base = 0.0 if start_bits is None else 2.0**start_bits
        return i * step_bits + math.log2(base + i * 2.0**per_step_bits)

    lo, hi = 1, 1
    while bits(hi) < SPILL_BITS:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if bits(mid) >= SPILL_BITS:
            hi = mid
        else:
            lo = mid + 1
    return lo


def adam_capacity(steps: int, min_beta: float, *, bucket: bool = True) -> int:
    """Stack slots (32 bits each) enough for ``steps`` Adam steps with every ``b1``, ``b2`` at least
    ``min_beta`` (clipped to ``[0.5, 1)``).

    A head obeys ``B' < rho (B + 2**24)`` with ``rho = 2**24 / n_min`` (the push adds up to 24 bits
    that a small head cannot pay for by popping), so from 0 it holds at most ``i log2 rho +
    log2(i 2**24)`` bits after ``i`` steps, and from a spill (at most 32 bits left) at most
    ``i log2 rho + log2(2**32 + i 2**24)``. Heads spill in lock-step when one reaches 63 bits, so
    with ``F`` and ``C`` the fewest steps to the first spill and between spills, at most
    ``1 + (steps - 1 - F) // C`` spills happen. ``bucket`` rounds up as `buffer_capacity` does.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0.0 < min_beta <= 1.0 or not math.isfinite(min_beta):
        raise ValueError(f"min_beta must be in (0, 1], got {min_beta}")
    n_min = min(max(round(min_beta * DB), N_MIN), N_MAX)
    step_bits = math.log2(DB / n_min) + 2.0**-40  # margin for float rounding
    first = _first_cycle(step_bits, None, BETA_BITS)
    cycle = _first_cycle(step_bits, SLOT_BITS, BETA_BITS)
    slots = 0 if steps - 1 < first else 1 + (steps - 1 - first) // cycle
    slots = max(slots, 1)
    if not bucket:
        return slots
    size = 2
    while size < slots:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


# --- the optimizer ----------------------------------------------------------------------------


def _direction(m_f, v_f, c1, c2, eps):
    """``(mhat, vhat, den, u)`` with ``u = mhat / (sqrt(vhat) + eps)``: the one computation of the
    update from the state, shared by the forward and the reverse pass (bit-identical)."""
    mhat = m_f / c1
    vhat = v_f / c2
    den = jnp.sqrt(vhat) + eps
    return mhat, vhat, den, mhat / den


@dataclasses.dataclass(frozen=True)
class Adam:
    """Adam in the training-optimizer slot (see the module docstring); AdamW with
    ``weight_decay=True``.

    State ``(m, v)``: two lists of int64 arrays, one per weight leaf, ``m`` at ``2**48`` and ``v``
    at ``2**52``. Schedules: ``learning_rates, b1, b2`` (quantised), the bias corrections
    ``c1, c2`` and, for AdamW, the quantised factors ``1 - lr wd`` (`weight_decay_factors`).
    Buffer heads: ``m``'s, ``v``'s and, for AdamW, ``w``'s. ``record``: the step's spill flag.
    ``eps`` and ``weight_decay`` are static.
    """

    eps: float = 1e-8
    weight_decay: bool = False

    @property
    def name(self):
        return "adamw" if self.weight_decay else "adam"

    @property
    def schedule_names(self):
        names = ("learning_rates", "b1", "b2", "bias1", "bias2")
        return (*names, "decay_factors") if self.weight_decay else names

    @property
    def decay_schedule(self):
        return (1, 2, 5) if self.weight_decay else (1, 2)

    def buffer_shapes(self, shapes):
        return [*shapes, *shapes, *shapes] if self.weight_decay else [*shapes, *shapes]

    def buffer_slots(self, steps, min_decay):
        return adam_capacity(steps, min_decay, bucket=False)

    def init_state(self, shapes):
        return ([jnp.zeros(s, _I64) for s in shapes], [jnp.zeros(s, _I64) for s in shapes])

    def init_adjoint(self, dw_T):
        return ([jnp.zeros_like(x) for x in dw_T], [jnp.zeros_like(x) for x in dw_T])

    @staticmethod
    def _terms(hyper):
        _, b1, b2 = hyper[:3]
        n1 = b1.per_leaf(beta_numerator)
        n2 = b2.per_leaf(beta_numerator)
        om1 = [(jnp.int64(DB) - n).astype(jnp.float64) / DB for n in n1]
        om2 = [(jnp.int64(DB) - n).astype(jnp.float64) / DB for n in n2]
        return n1, n2, om1, om2

    @staticmethod
    def _increments(g, om1, om2):
        g64 = [x.astype(jnp.float64) for x in g]
        dm = [_fixed.to_fixed(o * x) for o, x in zip(om1, g64, strict=True)]
        dv = [to_fixed_v(o * (x * x)) for o, x in zip(om2, g64, strict=True)]
        return g64, dm, dv

    def _steps(self, m, v, hyper):
        lr, _, _, c1, c2 = hyper[:5]
        m_f = [_fixed.from_fixed(x) for x in m]
        v_f = [from_fixed_v(x) for x in v]
        parts = [
            _direction(a, b, x, y, self.eps)
            for a, b, x, y in zip(m_f, v_f, c1.per_leaf(), c2.per_leaf(), strict=True)
        ]
        dws = [_fixed.to_fixed(a * p[3]) for a, p in zip(lr.per_leaf(), parts, strict=True)]
        return dws, parts

    def forward_step(self, w, state, buf, g, hyper):
        m, v = state
        n1, n2, om1, om2 = self._terms(hyper)
        buf, spilled = _maybe_spill(buf)
        k = len(m)
        heads = list(buf.heads)
        _, dm, dv = self._increments(g, om1, om2)
        m_new, v_new = [], []
        for i in range(k):
            x, heads[i] = mul_beta(m[i], n1[i], heads[i])
            m_new.append(x + dm[i][0])
            x, heads[k + i] = mul_beta(v[i], n2[i], heads[k + i])
            v_new.append(x + dv[i][0])
        dws, _ = self._steps(m_new, v_new, hyper)
        if self.weight_decay:  # w <- (n / 2**24) w exactly, the lost bits in w's heads
            w = list(w)
            for i, nf in enumerate(hyper[5].per_leaf(decay_numerator)):
                w[i], heads[2 * k + i] = mul_beta(w[i], nf, heads[2 * k + i])
        buf = buf._replace(heads=heads)
        w = [wi - d for wi, (d, _) in zip(w, dws, strict=True)]
        checks = [
            *(ok for _, ok in dm),
            *(ok for _, ok in dv),
            *(ok for _, ok in dws),
            *map(_fixed.in_range, m_new),
            *map(in_range_v, v_new),
        ]
        return w, (m_new, v_new), buf, spilled, checks

    def undo_weights(self, w, state, buf, hyper, spilled, stacks):
        """``w_t = w_{t+1} + fixed(lr u)`` (AdamW: then divided by the factor, popping w's heads);
        ``w_aux`` is ``(parts, w_t, f)``: ``(mhat, vhat, den, u)`` per leaf and, for AdamW, ``w_t``
        as floats and the factors used (else ``None``)."""
        m, v = state
        dws, parts = self._steps(m, v, hyper)
        w = [wi + d for wi, (d, _) in zip(w, dws, strict=True)]
        if not self.weight_decay:
            return w, state, buf, (parts, None, None)
        k = len(w)
        heads = list(buf.heads)
        nfs = hyper[5].per_leaf(decay_numerator)
        for i, nf in enumerate(nfs):
            w[i], heads[2 * k + i] = div_beta(w[i], nf, heads[2 * k + i])
        factors = [nf.astype(jnp.float64) / DB for nf in nfs]
        return w, state, buf._replace(heads=heads), (parts, [_fixed.from_fixed(x) for x in w], factors)

    def undo_state(self, state, buf, g, hyper, spilled, stacks):
        m, v = state
        n1, n2, om1, om2 = self._terms(hyper)
        k = len(m)
        heads = list(buf.heads)
        g64, dm, dv = self._increments(g, om1, om2)
        m_old, v_old = [], []
        for i in range(k):
            x, heads[i] = div_beta(m[i] - dm[i][0], n1[i], heads[i])
            m_old.append(x)
            x, heads[k + i] = div_beta(v[i] - dv[i][0], n2[i], heads[k + i])
            v_old.append(x)
        buf = _unspill(buf._replace(heads=heads), spilled, stacks)
        return (m_old, v_old), buf, (n1, n2, om1, om2, g64)

    def adjoint_step(self, dw, dstate, g, state, hyper, w_aux, terms):
        lr, _, _, c1, c2 = hyper[:5]
        parts, w_t, factors = w_aux
        dm, dv = dstate
        m, v = state
        n1, n2, om1, om2, g64 = terms
        out_m, out_v, cts, dlr, db1, db2, dc1, dc2 = [], [], [], [], [], [], [], []
        lrs, c1s, c2s = lr.per_leaf(), c1.per_leaf(), c2.per_leaf()
        for i, (mhat, vhat, den, u) in enumerate(parts):
            a, c1i, c2i = lrs[i], c1s[i], c2s[i]
            dlr.append(-dw[i] * u)
            du = -a * dw[i]
            dmhat = du / den
            dden = -du * u / den
            pos = vhat > 0
            dvhat = jnp.where(pos, dden * 0.5 / jnp.sqrt(jnp.where(pos, vhat, 1.0)), 0.0)
            dm_next = dm[i] + dmhat / c1i
            dv_next = dv[i] + dvhat / c2i
            dc1.append(-dmhat * mhat / c1i)
            dc2.append(-dvhat * vhat / c2i)
            gi = g64[i]
            db1.append(dm_next * (_fixed.from_fixed(m[i]) - gi))
            db2.append(dv_next * (from_fixed_v(v[i]) - gi * gi))
            dg = om1[i] * dm_next + om2[i] * 2.0 * gi * dv_next
            cts.append(-dg)
            out_m.append(dm_next * (n1[i].astype(jnp.float64) / DB))
            out_v.append(dv_next * (n2[i].astype(jnp.float64) / DB))
        if not self.weight_decay:
            return dw, (out_m, out_v), cts, (dlr, db1, db2, dc1, dc2)
        dfactor = [d * x for d, x in zip(dw, w_t, strict=True)]
        dw = [f * d for f, d in zip(factors, dw, strict=True)]
        return dw, (out_m, out_v), cts, (dlr, db1, db2, dc1, dc2, dfactor)


ADAM = Adam()
ADAMW = Adam(weight_decay=True)
reversible.OPTIMIZERS["adam"] = ADAM
reversible.OPTIMIZERS["adamw"] = ADAMW


# --- entry points -----------------------------------------------------------------------------


def _as_schedule(x: PyTree, T: int) -> PyTree:
    """A scalar becomes a shared ``(T,)`` schedule (differentiably); anything else is kept."""
    if not isinstance(x, (dict, list, tuple)) and jnp.ndim(x) == 0:
        return jnp.broadcast_to(jnp.asarray(x, jnp.float64), (T,))
    return x


def _concrete_min(*trees: PyTree) -> float | None:
    try:
        return float(min(np.min(np.asarray(leaf)) for t in trees for leaf in jax.tree.leaves(t)))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _is_zero(weight_decay: PyTree) -> bool:
    """True iff ``weight_decay`` is concrete and zero everywhere (then plain Adam runs: no w heads)."""
    try:
        return all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(weight_decay))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return False


def _setup(loss, w0, meta, learning_rates, b1, b2, weight_decay, eps, capacity, min_beta):
    T = _schedule.num_steps(learning_rates)
    b1 = quantize_beta(_as_schedule(b1, T))
    b2 = quantize_beta(_as_schedule(b2, T))
    schedules = (learning_rates, b1, b2, bias_corrections(b1), bias_corrections(b2))
    decoupled = not _is_zero(weight_decay)
    if decoupled:
        weight_decay = _as_schedule(weight_decay, T)
        _schedule.check(weight_decay, w0, "weight_decay")
        schedules = (*schedules, weight_decay_factors(learning_rates, weight_decay))
    if capacity is None:
        if min_beta is None:
            min_beta = _concrete_min(*(schedules[i] for i in (1, 2, 5)[: 3 if decoupled else 2]))
        if min_beta is None:
            what = "b1/b2/the decay factors 1 - lr wd" if decoupled else "b1/b2"
            raise ValueError(
                f"{what} are traced, so the information buffer cannot be sized from them: pass "
                "capacity=hypercore.adam_capacity(T, min_beta) or min_beta="
            )
        capacity = adam_capacity(T, float(min_beta), bucket=False)
    opt = Adam(eps=float(eps), weight_decay=decoupled)
    opt = {ADAM: ADAM, ADAMW: ADAMW}.get(opt, opt)
    engine, meta_all = reversible._prepare(
        loss, w0, meta, schedules, capacity=capacity, min_gamma=None, optimizer=opt
    )
    return engine, meta_all, schedules


def reversible_adam(
    loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
    w0: PyTree,
    meta: PyTree,
    learning_rates: PyTree,
    b1: PyTree,
    b2: PyTree,
    weight_decay: PyTree = 0.0,
    *,
    eps: float = 1e-8,
    capacity: int | None = None,
    min_beta: float | None = None,
    report: jax.Array | None = None,
) -> PyTree:
    """Train by Adam for T steps and return ``w_T``; differentiable, exactly, by reversal.

    Args:
      loss, w0, meta, report: as `hypercore.reversible_sgd`.
      learning_rates, b1, b2: schedules shaped ``(T,)`` (shared), or pytrees shaped like ``w0`` with
        leaves ``(T,)`` (per array) or ``(T, *leaf.shape)`` (per weight); ``b1``/``b2`` may also be
        scalars (constant). ``b1``/``b2`` are quantised by `quantize_beta` (``n / 2**24`` in
        ``[0.5, 1 - 2**-24]``), the bias corrections computed from the quantised values; the
        hypergradient is the derivative at the quantised values, passed straight through.
      weight_decay: decoupled weight decay (AdamW, optax's ``adamw``): a scalar or a schedule in
        any of the three shapes. ``w`` is multiplied at each step by the factor
        ``weight_decay_factors(learning_rates, weight_decay)``, i.e. ``1 - lr_t wd_t`` rounded to
        ``n / 2**24`` in ``[0.5, 1]`` (so ``lr wd`` is off by at most ``2**-25 = 3e-8``: 3e-4
        relative at ``lr wd = 1e-4``, and below ``2**-25`` no decay at all); the hypergradients
        to ``lr`` and ``wd`` pass straight through that rounding. A concrete 0 runs plain Adam.
      eps: static.
      capacity: the stack, in 32-bit slots (static): ``adam_capacity(T, min_beta)`` with the
        smallest ``b1``/``b2`` (and, with weight decay, decay factor) used. With concrete values
        it may be omitted; or pass ``min_beta``, a lower bound on all of them.

    Returns:
      ``w_T`` shaped like ``w0``; NaN if training left the fixed-point range (``|w|, |m| < 2**14``,
      ``v < 2**10``) or produced a non-finite value (reported as ``overflow``).
    """
    engine, meta_all, schedules = _setup(
        loss, w0, meta, learning_rates, b1, b2, weight_decay, eps, capacity, min_beta
    )
    return reversible._train(engine, w0, meta_all, schedules, report)


def check_reversal_adam(
    loss, w0, meta, learning_rates, b1, b2, weight_decay=0.0, *, eps=1e-8, capacity=None, min_beta=None
) -> bool:
    """True iff Adam forward then backward restores ``w_0``, ``m_0 = v_0 = 0`` and an empty buffer
    bit for bit, with every recomputed gradient identical to the forward one."""
    engine, meta_all, schedules = _setup(
        loss, w0, meta, learning_rates, b1, b2, weight_decay, eps, capacity, min_beta
    )
    return reversible._roundtrip(engine, w0, meta_all, schedules)


def forward_state_adam(
    loss, w0, meta, learning_rates, b1, b2, weight_decay=0.0, *, eps=1e-8, capacity=None, min_beta=None
):
    """The forward pass's final fixed-point state (``w``, ``state = (m, v)``, buffer, flags)."""
    engine, meta_all, schedules = _setup(
        loss, w0, meta, learning_rates, b1, b2, weight_decay, eps, capacity, min_beta
    )
    return jax.jit(engine.forward)(w0, meta_all, schedules)


# --- the reference ----------------------------------------------------------------------------


def unrolled_adam(
    loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
    w0: PyTree,
    meta: PyTree,
    learning_rates: PyTree,
    b1: PyTree,
    b2: PyTree,
    weight_decay: PyTree = 0.0,
    *,
    eps: float = 1e-8,
    quantize: bool = True,
) -> PyTree:
    """The same rule in a plain ``lax.scan`` (reverse mode stores every step), for tests.

    ``quantize=True`` uses the engine's values (`quantize_beta`, bias corrections from the quantised
    betas, the decay factor ``f = quantize_decay(1 - lr wd)``); ``quantize=False`` is optax's
    ``adamw`` with per-step values (``f w - lr u`` becomes ``w - lr (u + wd w)``)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        w = f w - lr m / c1 / (sqrt(v / c2) + eps)
    """
    T = _schedule.check(learning_rates, w0, "learning_rates")
    b1, b2, wd = (_as_schedule(x, T) for x in (b1, b2, weight_decay))
    if quantize:
        b1, b2 = quantize_beta(b1), quantize_beta(b2)
    c1, c2 = bias_corrections(b1), bias_corrections(b2)
    treedef = jax.tree.structure(w0)
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(w0)]
    grad_fn = jax.grad(loss)

    def at(s, t):
        return _schedule.at_step(s, w0, t)

    def step(carry, t):
        w, m, v = carry
        model = jax.tree.unflatten(treedef, [x.astype(ref.dtype) for x, ref in zip(w, leaves, strict=True)])
        g = [x.astype(jnp.float64) for x in jax.tree.leaves(grad_fn(model, meta, t))]
        w_new, m_new, v_new = [], [], []
        for wi, mi, vi, gi, a, x1, x2, k1, k2, d in zip(
            w,
            m,
            v,
            g,
            at(learning_rates, t),
            at(b1, t),
            at(b2, t),
            at(c1, t),
            at(c2, t),
            at(wd, t),
            strict=True,
        ):
            mi = x1 * mi + (1 - x1) * gi
            vi = x2 * vi + (1 - x2) * gi * gi
            u = _direction(mi, vi, k1, k2, eps)[3]
            if quantize:
                f = quantize_decay(1.0 - jnp.asarray(a, jnp.float64) * jnp.asarray(d, jnp.float64))
                w_new.append(f * wi - a * u)
            else:
                w_new.append(wi - a * (u + d * wi))
            m_new.append(mi)
            v_new.append(vi)
        return (w_new, m_new, v_new), None

    w64 = [x.astype(jnp.float64) for x in leaves]
    zeros = [jnp.zeros(x.shape, jnp.float64) for x in leaves]
    (w, _, _), _ = jax.lax.scan(step, (w64, zeros, zeros), jnp.arange(T, dtype=jnp.int32))
    return jax.tree.unflatten(treedef, [x.astype(ref.dtype) for x, ref in zip(w, leaves, strict=True)])
