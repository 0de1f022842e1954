"""Reversible Adam: exact hypergradients through Adam, in the training-optimizer slot of
`hypercore.reversible`.

The rule (optax's ``adamw``, per-step values, ``m_0 = v_0 = 0``; ``wd = 0`` is ``adam``)::

    g_t     = grad_w L(w_t, meta, t)
    m_{t+1} = b1_t m_t + (1 - b1_t) g_t
    v_{t+1} = b2_t v_t + (1 - b2_t) g_t^2
    mhat    = m_{t+1} / c1_t,   c1_t = 1 - prod_{s<=t} b1_s
    vhat    = v_{t+1} / c2_t,   c2_t = 1 - prod_{s<=t} b2_s
    w_{t+1} = f_t w_t - lr_t mhat / (sqrt(vhat) + eps),   f_t = 1 - lr_t wd_t

runs on int64 fixed point so that the backward pass runs it in reverse bit for bit. The state is
stored scaled (see "Scaled state"), so most steps are additions and their undo subtractions:

    w'_t = w'_{t+1} + fixed((lr_t / F_{t+1}) u(m_{t+1}, v_{t+1}, c1_t, c2_t))   (`Adam.undo_weights`)
    g_t recomputed at w_t = F_t w'_t by the engine
    m'_t = m'_{t+1} - fixed(((1 - b1_t) / S1_{t+1}) g_t)
    v'_t = v'_{t+1} - fixedv(((1 - b2_t) / S2_{t+1}) g_t^2)

each then, at a step that halved it, doubled exactly with the bit from the buffer.

Scaled state
------------
The moments are stored scaled, ``m = S1 m'`` and ``v = S2 v'``, and AdamW's weights too,
``w = F w'``, with float64 scales that follow the factors: ``S_{t+1} = S_t b_t`` and
``F_{t+1} = F_t f_t``. A step's update is then an addition, ``m'_{t+1} = m'_t + fixed((1 - b1_t)
g_t / S1_{t+1})`` (``w'_{t+1} = w'_t - fixed(lr_t u / F_{t+1})``), and its undo a subtraction of
the same integers: no multiplication by a factor through the buffer at most steps. The scale is the
factors' running product brought into ``(1/2, 1]`` by a power of two: where the product crosses a
power of two, the stored value is halved exactly (`mul_beta` by ``2**23 / 2**24``, one bit into the
buffer) and the scale doubled, both exact, so the true state follows the rule as closely as before:
the increments' rounding and float64's in each step's product, never a drift. At ``b1 = 0.9`` that
is one step in 6.6, at ``b2 = 0.999`` one in 690, at ``lr wd = 1e-4`` one in 6,900.

`renormalisations` computes the halvings (``R = 2**23``; ``2**24``, the identity, where none is
due) and ``S_{t+1}`` per step from the quantised factors: schedules with no data in them
(``renorm1, scale1, renorm2, scale2`` and AdamW's ``renorm_w, scale_w, scale_w_before``), read by
both passes and without a
derivative (the hypergradients reach the betas and the decay through the rule's own terms, as
before). The engine's gradient reads ``F_t w'_t``, a copy the optimizer makes (the forward step's
with ``F_{t+1}``, the undo's with ``F_t``, ``scale_w_before``: the same float64 value), and returns
``F_T w'_T`` (`Adam.final_weights`); ``F_0 = S_0 = 1``, so the reverse pass still ends at ``w_0``,
``m_0 = v_0 = 0`` exactly. The scales stay in ``(1/2, 1]``, so the stored values need one bit of the
ranges below; the true values' resolution is at least as fine as stated there. The buffer takes the
same information (``log2(1 / b)`` bits a step, in renormalisations' batches) in fewer pushes. The
kernels' loops (`hypercore._fused_kernels_adam`) then run no division at most steps: AdamW's ran
eleven per weight and step before, and took twice the time (docs/BENCHMARKS.md, "Scaled state").

Representation
--------------
* ``w`` and ``m`` (stored: ``w'``, ``m'``): `hypercore._fixed`'s fixed point (``x * 2**48`` in
  int64, ``|x| < 2**14``, so ``|w|, |m| < 2**13`` at least, just before a renormalisation). ``m``'s
  resolution is absolute, 3.6e-15: with gradients of 1e-6 its increments ``(1 - b1) g`` are known to
  4e-8 relative and the weights follow the quantised rule to 2e-7 of how far they move
  (``test_any_loss_scale_follows_the_rule``), 1e-12 at gradients near 1.
* ``v``: a 124-bit integer ``H 2**62 + L`` in two int64 limbs (`to_fixed_v`), at ``2**-94``
  (5e-29) absolute, ``0 <= v < 2**30`` (a gradient RMS below 32768; above, the run is reported as
  diverged, never wrapped). ``g**2`` spans many decades and early on ``v`` is ``(1 - b2) t g**2``,
  a thousand times smaller than ``g**2`` at ``b2 = 0.999``: a single 64-bit limb cannot hold both a
  useful range and the resolution (at ``2**-52`` a loss scaled by 1e-5 lost ``(1 - b2) g**2``
  entirely and Adam's steps were 12 times too long). With ``eps = 1e-8``, an element whose RMS
  gradient is ``eps`` has its first increment to 2e-10 relative; below ``eps`` the precision of
  ``v`` matters less and less (``sqrt(v) << eps`` in the denominator). The scale is fixed, not
  chosen from the data, so nothing about it must be carried or recomputed in reverse.
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
popped first, so the error is below one unit:

    s = B mod n;  B <- B div n                  (pop)
    X = x n + s;  x <- X div DB                 (x n is up to 86 bits, v n 148: done in 32- and 31-bit limbs)
    B <- B * DB + (X mod DB)                    (push 24 bits)

and the inverse (`div_beta`, `div_beta_v`) runs the same three lines backwards, a long division of
``x DB + r`` by ``n`` in 24- and 37-bit chunks. No integer division is used: XLA's 64-bit one is
a scalar loop on CPU, so `_divmod` takes the quotient from ``float(x) * (1 / n)`` (off by at most
one) and corrects it exactly. ``B`` grows by ``log2(DB / n)`` bits.

One head per weight
-------------------
The buffer has one uint64 head per parameter, shared by the step's two (Adam) or three (AdamW)
renormalisations (where due): ``m``'s, then ``v``'s, then ``w``'s, each before its update.
`Adam.undo_weights` pops ``w``'s bits and `Adam.undo_state` ``v``'s, then ``m``'s, then the spill:
the reverse order on the same head.
A pop-then-push at most doubles a head and adds ``2**24``, so a head below ``2**(63 - k)``
(`hypercore.budget.adam_spill_bits`) at the start of a step with ``k`` multiplications stays below
``2**63`` before each of them and below ``2**64`` after the last; all heads spill their low 32 bits
in lock-step (`hypercore._fixed.maybe_spill` with that limit) when one reaches it, the flag is
recorded per step, and the reverse pass reads the forward stacks read-only
(`hypercore._fixed.unspill`). With one value per array and step for every factor (shared or
per-array schedules) the test reads a scalar bound on the heads instead of the heads (`_head_bound`;
`adam_capacity` sizes the stack for every factor at its smallest at every step, a bound on it), so
no pass over the heads is needed.

Sharing the head is what brings the buffer near the information bound: separate heads for ``v``
and ``w`` would each hold 64 bits whatever they store (at ``b2 = 0.999`` about 1.4 bits per 1000
steps), and the first push into an empty head costs up to 24 bits once per head, not once per
factor. `hypercore.budget.adam_capacity` (``adam_capacity`` here) is this scheme's bound from the
smallest value of each factor: on the paper's net at ``(0.9, 0.999)`` and ``lr wd = 1e-4`` over 1000
steps it allows 5 slots, 4 were used, and the buffer was 1.25 times the information bound
(`benchmarks/engine_adam.py`, measured before the spill test read the bound and the state was scaled;
docs/BENCHMARKS.md, "Scaled state", has the figures since).

Determinism: ``u = mhat / (sqrt(vhat) + eps)`` is computed by one function (`_direction`) from the
restored integers and the same float64 hyperparameters in both passes, with no multiply feeding an
add (so nothing an FMA could contract differently) and no division by a broadcast scalar (which
XLA may turn into a multiplication by its reciprocal in one pass and not the other); IEEE division
and square root are correctly rounded, so the reverse pass gets the forward's bits.

Not here: Nesterov momentum (optax ``sgd(nesterov=True)``: ``w_{t+1} = w_t - lr (g_t + b m_{t+1})``).
Its weight update uses ``g_t`` itself, the gradient at the very ``w_t`` being restored, so undoing
it is the implicit equation ``w_t = w_{t+1} + lr (grad L(w_t) + b m_{t+1})``, not a subtraction of
a value computed from restored state. Sutskever's form (the gradient at ``w_t + b v_t``) restores
``w_t = w_{t+1} - v_{t+1}`` exactly but then needs ``v_t = (v_{t+1} + lr grad L(w_t + b v_t)) / b``,
the same circularity. The slot does not make it cheap, so it is not offered.

The adjoint of the weight decay: ``dw_t = f_t dw_{t+1} - H_t ct`` (`Adam.adjoint_step` returns
``f_t dw_{t+1}``, the engine subtracts ``H_t ct``) and ``df_t = dw_{t+1} . w_t``, with ``w_t =
F_t w'_t`` the restored weights; ``lr``'s direct cotangent ``-dw_{t+1} . u`` is unchanged. The
adjoint is of the rule in true values throughout: the scales are representation, not rule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import (
    _fixed,
    _fused,
    _schedule,
    _x64,  # noqa: F401  (configures JAX for the engine before any array exists)
    reversible,
)
from hypercore.budget import ADAM_BETA_BITS, ADAM_N_MAX, ADAM_N_MIN, adam_capacity, adam_spill_bits
from hypercore.reversible import Hyper

__all__ = [
    "adam_capacity",
    "check_reversal_adam",
    "forward_state_adam",
    "quantize_beta",
    "quantize_decay",
    "reversible_adam",
    "unrolled_adam",
    "weight_decay_factors",
]

PyTree = Any

BETA_BITS = ADAM_BETA_BITS  # b = n / 2**24
DB = 2**BETA_BITS
N_MIN = ADAM_N_MIN  # b >= 0.5: a head below 2**63 stays below 2**64 through a pop and a push
N_MAX = ADAM_N_MAX
LIMB_BITS = 62  # v = (H 2**62 + L) / 2**94
V_FRAC_BITS = 94
V_SCALE = float(2**V_FRAC_BITS)
V_RANGE = float(2 ** (2 * LIMB_BITS - V_FRAC_BITS))  # 2**30

_U64 = jnp.uint64
_I64 = jnp.int64
_LIMB_MASK = jnp.asarray((1 << LIMB_BITS) - 1, _I64)
_M13, _M24, _M25, _M31, _M32, _M37 = (jnp.asarray((1 << k) - 1, _I64) for k in (13, 24, 25, 31, 32, 37))


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


# A renormalisation halves the stored value exactly: ``R = 2**23``.
HALF = 2**23


def renormalisations(factors: PyTree) -> tuple[PyTree, PyTree]:
    """The scaled state's two schedules for one multiplied quantity (``m``, ``v`` or AdamW's ``w``;
    see "Scaled state"), from its quantised factors (``b1``, ``b2`` or the decay factors) shaped as a
    schedule: ``(renorms, scales)``, float64 like ``factors``.

    The scale is the factors' running product ``P_{t+1} = prod_{s<=t} b_s`` times the power of two
    that brings it into ``(1/2, 1]`` (kept so as it runs: ``P`` itself would underflow float64 after
    1,074 halvings, 7,000 steps at ``b = 0.9``). ``scales[t] = S_{t+1}``, the scale after
    step ``t``. ``renorms[t]``: the numerator ``R`` of the exact multiplication by ``R / 2**24`` that
    step ``t`` applies to the stored value before its update: ``2**23`` (a halving, one bit into the
    buffer) at a step where ``P`` crosses a power of two (``S_t b_t <= 1/2``: the scale doubles),
    else ``2**24`` (none). So ``S_{t+1} prod_{s<=t} (R_s / 2**24) = P_{t+1}``, exactly but for
    float64's rounding of each step's product: no drift. Factors are at least one half, so ``P``
    crosses at most one power of two a step. Functions of the schedule only (no data, no derivative:
    `jax.lax.stop_gradient`), so both passes read the same values."""

    def step(scale, factor):
        scale = scale * factor
        halve = scale <= 0.5
        scale = jnp.where(halve, 2.0 * scale, scale)  # exact
        return scale, (jnp.where(halve, float(HALF), float(DB)), scale)

    def one(b):
        b = jax.lax.stop_gradient(jnp.asarray(b, jnp.float64))
        return jax.lax.scan(step, jnp.ones(b.shape[1:], jnp.float64), b)[1]

    leaves, treedef = jax.tree.flatten(factors)
    pairs = [one(b) for b in leaves]
    return tuple(jax.tree.unflatten(treedef, [p[i] for p in pairs]) for i in (0, 1))


# --- v's fixed point: two 62-bit limbs ----------------------------------------------------------


def to_fixed_v(x: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """float64 ``>= 0`` -> ``(H, L)``, the integer ``round(x * 2**94) = H * 2**62 + L`` with
    ``0 <= L < 2**62``; ``ok`` is false outside ``[0, 2**30)`` (the value is then 0).

    Exact but for the one rounding: ``y = x * 2**94`` is a power-of-two scaling, ``H = floor(y / 2**62)``
    and ``y - H 2**62`` are exact in float64 (below ``2**62`` the latter is rounded to an integer)."""
    x = jnp.asarray(x, jnp.float64)
    ok = jnp.isfinite(x) & (x >= 0.0) & (x < V_RANGE)
    y = jnp.where(ok, x, 0.0) * V_SCALE
    hi = jnp.floor(y * 2.0**-LIMB_BITS)
    lo = jnp.round(y - hi * 2.0**LIMB_BITS)
    return (hi.astype(_I64), lo.astype(_I64)), ok


def from_fixed_v(v: tuple[jax.Array, jax.Array]) -> jax.Array:
    """``(H, L)`` -> float64 ``(H 2**62 + L) / 2**94``: two exact scalings and one rounded sum."""
    hi, lo = v
    return hi.astype(jnp.float64) * 2.0 ** (LIMB_BITS - V_FRAC_BITS) + lo.astype(jnp.float64) * (
        1.0 / V_SCALE
    )


def add_v(a, b):
    """``a + b``, low limbs in ``[0, 2**62)`` (the high limb may leave the range: `in_range_v`)."""
    lo = a[1] + b[1]  # < 2**63
    return a[0] + b[0] + (lo >> LIMB_BITS), lo & _LIMB_MASK


def sub_v(a, b):
    """``a - b`` (``a >= b``), limbs as in `add_v`."""
    lo = a[1] - b[1]  # > -2**62: an arithmetic shift borrows one
    return a[0] - b[0] + (lo >> LIMB_BITS), lo & _LIMB_MASK


def in_range_v(v) -> jax.Array:
    """True where ``(H, L)`` is a value in ``[0, 2**30)``."""
    return (v[0] >= 0) & (v[0] < jnp.asarray(1 << LIMB_BITS, _I64))


# --- exact multiplication by n / 2**24 through the buffer -------------------------------------


def _divmod(x: jax.Array, n: jax.Array, inv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Floor ``(x div n, x mod n)`` for int64 ``|x| < 2**63`` and ``2**23 <= n <= 2**24``, with
    ``inv = 1 / n`` in float64: no integer division (XLA's 64-bit one is a scalar loop on CPU).

    ``float(x) * inv`` is within ``3 * 2**-53`` relative of ``x / n < 2**40``, i.e. off by less than
    ``2**-11``, so its floor is the quotient or one off either way; one correction of each sign
    makes it exact (the remainder then lies in ``[0, n)``)."""
    q = jnp.floor(x.astype(jnp.float64) * inv).astype(_I64)
    r = x - q * n
    low = r < 0
    q, r = jnp.where(low, q - 1, q), jnp.where(low, r + n, r)
    high = r >= n
    return jnp.where(high, q + 1, q), jnp.where(high, r - n, r)


def _pop(head: jax.Array, n: jax.Array, inv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(head div n, head mod n)`` as int64, for a head below ``2**63``."""
    return _divmod(jax.lax.bitcast_convert_type(head, _I64), n, inv)


def _push(h1: jax.Array, r: jax.Array) -> jax.Array:
    """``h1 2**24 + r`` as a uint64 head (``h1 < 2**40``, ``0 <= r < 2**24``)."""
    return (h1.astype(_U64) << jnp.asarray(BETA_BITS, _U64)) | r.astype(_U64)


def _unpush(head: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Undo `_push`: ``(head >> 24, head mod 2**24)`` as int64."""
    return (head >> jnp.asarray(BETA_BITS, _U64)).astype(_I64), (head & jnp.asarray(DB - 1, _U64)).astype(
        _I64
    )


def _head_bound(bound: jax.Array, factors: list[list[tuple[jax.Array, jax.Array]]]) -> jax.Array:
    """An upper bound on every head after a step's pop-then-push multiplications, from one on every
    head before them (`hypercore._fixed.Buffer.bound`). `mul_beta` by ``n < 2**24`` leaves a head
    below ``B 2**24 / n + 2**24``, and by ``n = 2**24`` (a moment's step without renormalisation)
    unchanged; each factor is bounded at its smallest numerator over the leaves, and the result
    rounded up (`hypercore._fixed.BOUND_MARGIN`). `hypercore.budget.adam_capacity` sizes the stack for
    the recursion with every factor at its smallest value at every step, which bounds this one."""
    for numerators in factors:
        n = jnp.min(jnp.stack([n for n, _ in numerators]))
        bound = jnp.where(n < DB, bound * (DB / n.astype(jnp.float64)) + float(DB), bound)
    return bound * _fixed.BOUND_MARGIN


def mul_beta(x: jax.Array, n: jax.Array, inv: jax.Array, head: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exactly ``x <- x * n / 2**24`` (error below one unit) with the head ``B``: pop ``s = B mod n``,
    ``X = x n + s``, ``x <- X div 2**24``, push ``X mod 2**24``. Needs int64 ``|x| < 2**62``,
    ``2**23 <= n <= 2**24`` (``n = 2**24``, the weight-decay factor 1, is the identity), ``inv = 1/n``
    and ``B < 2**63``; the new head is below ``2 B + 2**24``."""
    h1, s = _pop(head, n, inv)
    hi = x >> jnp.asarray(32, _I64)  # floor(x / 2**32), |hi| < 2**30
    low = (x & _M32) * n + s  # the low limb of x n + s, < 2**57
    x = hi * n * jnp.asarray(2 ** (32 - BETA_BITS), _I64) + (low >> jnp.asarray(BETA_BITS, _I64))
    return x, _push(h1, low & _M24)


def div_beta(x: jax.Array, n: jax.Array, inv: jax.Array, head: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exactly undo `mul_beta` for the same ``n``: ``Y = x 2**24 + (B mod 2**24)``, ``x <- Y div n``,
    ``B <- (B >> 24) n + Y mod n``, the division in two limbs."""
    h1, r = _unpush(head)
    a, b = _divmod(x, n, inv)  # 0 <= b < n
    q, s = _divmod((b << jnp.asarray(BETA_BITS, _I64)) | r, n, inv)  # < n 2**24 <= 2**48
    return a * jnp.asarray(DB, _I64) + q, (h1 * n + s).astype(_U64)


def mul_beta_v(v, n, inv, head):
    """`mul_beta` for ``v = (H, L)`` (124 bits): ``X = v n + s`` in four 31-bit limbs."""
    h1, s = _pop(head, n, inv)
    hi, lo = v
    c = (lo & _M31) * n + s
    d0 = c & _M31
    c = (lo >> 31) * n + (c >> 31)
    d1 = c & _M31
    c = (hi & _M31) * n + (c >> 31)
    d2 = c & _M31
    c3 = (hi >> 31) * n + (c >> 31)  # X = c3 2**93 + d2 2**62 + d1 2**31 + d0, c3 < 2**55
    lo = ((d2 & _M24) << 38) | (d1 << 7) | (d0 >> 24)  # bits 24 .. 85 of X
    hi = (c3 << 7) | (d2 >> 24)  # bits 86 .. of X
    return (hi, lo), _push(h1, d0 & _M24)


def div_beta_v(v, n, inv, head):
    """Undo `mul_beta_v`: long division of the 148-bit ``Y = v 2**24 + (B mod 2**24)`` by ``n``,
    in four 37-bit chunks from the top (each remainder times ``2**37`` plus a chunk is below
    ``2**61``)."""
    h1, r = _unpush(head)
    hi, lo = v
    chunks = (
        hi >> 25,
        ((hi & _M25) << 12) | (lo >> 50),
        (lo >> 13) & _M37,
        ((lo & _M13) << 24) | r,
    )
    rem = jnp.zeros_like(lo)
    qs = []
    for chunk in chunks:
        q, rem = _divmod((rem << 37) | chunk, n, inv)
        qs.append(q)
    q3, q2, q1, q0 = qs  # the quotient, 37 bits a chunk
    lo = q0 | ((q1 & _M25) << 37)
    hi = (q1 >> 25) | (q2 << 12) | (q3 << 49)
    return (hi, lo), (h1 * n + rem).astype(_U64)


# --- the optimizer ----------------------------------------------------------------------------


def _direction(m_f, v_f, c1, c2, eps, v_scale=1.0):
    """``(mhat, vhat, den, u)`` with ``u = mhat / (sqrt(vhat) + eps)``: the one computation of the
    update from the state, shared by the forward and the reverse pass, which must agree to the bit.

    No division by a scalar: XLA's simplifier turns ``a / b``, ``b`` a broadcast scalar (a shared
    or per-array bias correction), into ``a * (1 / b)`` where the surrounding fusion allows it (its
    optimised HLO for ``(a / b) / c`` is ``(a * (1 / b)) / c``), so a quotient written that way could
    round one way in the forward pass and another in the reverse one, where the adjoint also needs
    ``mhat``: the weights then came back a unit off. Here the reciprocals are explicit (``vhat``)
    and ``u = m / (c1 den)`` divides by an array, the same operations in both passes.

    ``v_scale``: ``v_f`` is the stored ``v'`` and ``vhat = v' (S2 / c2)`` ("Scaled state"), one
    product of scalars first: XLA folds a product of two constant factors into one wherever it can,
    so ``(v' S2) / c2`` could round one way in a program where the schedules are constants and
    another where they are not."""
    mhat = m_f / c1  # for the adjoint only
    vhat = v_f * (v_scale * (1.0 / c2))
    den = jnp.sqrt(vhat) + eps
    return mhat, vhat, den, m_f / (c1 * den)


@dataclasses.dataclass(frozen=True)
class Adam:
    """Adam in the training-optimizer slot (see the module docstring); AdamW with
    ``weight_decay=True``.

    State ``(m, vh, vl)``: lists of int64 arrays, one per weight leaf, ``m`` at ``2**48`` and ``v``
    in two limbs (`to_fixed_v`). Schedules: ``learning_rates, b1, b2`` (quantised), the bias
    corrections ``c1, c2`` and, for AdamW, the quantised factors ``1 - lr wd``
    (`weight_decay_factors`). One buffer head per weight, shared by ``m``'s, ``v``'s and, for
    AdamW, ``w``'s multiplications; ``record``: the step's spill flag. ``eps`` and
    ``weight_decay`` are static.
    """

    eps: float = 1e-8
    weight_decay: bool = False
    checks_weights = True  # the step's checks hold the new weights' range, in the pass that makes them
    subtracts_hvp = True  # the reverse member takes the engine's last vector-Jacobian product, ``hw``

    @property
    def name(self):
        return "adamw" if self.weight_decay else "adam"

    @property
    def schedule_names(self):
        names = ("learning_rates", "b1", "b2", "bias1", "bias2")
        names = (*names, "decay_factors") if self.weight_decay else names
        names = (*names, "renorm1", "scale1", "renorm2", "scale2")
        return (*names, "renorm_w", "scale_w", "scale_w_before") if self.weight_decay else names

    @property
    def decay_schedule(self):
        return (1, 2, 5) if self.weight_decay else (1, 2)

    @property
    def factors(self) -> int:
        """Multiplications through the buffer per weight and step: ``m``'s, ``v``'s (, ``w``'s)."""
        return 3 if self.weight_decay else 2

    def buffer_shapes(self, shapes):
        return list(shapes)

    def buffer_slots(self, steps, min_decay):
        return adam_capacity(
            steps, min_decay, min_decay, min_decay if self.weight_decay else None, bucket=False
        )

    def init_state(self, shapes):
        return tuple([jnp.zeros(s, _I64) for s in shapes] for _ in range(3))

    def init_adjoint(self, dw_T):
        return ([jnp.zeros_like(x) for x in dw_T], [jnp.zeros_like(x) for x in dw_T])

    @staticmethod
    def _numerators(h: Hyper, numerator=beta_numerator):
        """Per leaf: ``(n, 1 / n)`` of a quantised factor."""
        return [(n, 1.0 / n.astype(jnp.float64)) for n in h.per_leaf(numerator)]

    @classmethod
    def _terms(cls, hyper):
        _, b1, b2 = hyper[:3]
        n1, n2 = cls._numerators(b1), cls._numerators(b2)
        om1 = [(jnp.int64(DB) - n).astype(jnp.float64) / DB for n, _ in n1]
        om2 = [(jnp.int64(DB) - n).astype(jnp.float64) / DB for n, _ in n2]
        return n1, n2, om1, om2

    @property
    def _scaled(self) -> int:
        """The index of the first of the scaled moments' schedules ``renorm1, scale1, renorm2,
        scale2`` (`renormalisations`)."""
        return 6 if self.weight_decay else 5

    def _renorms(self, hyper):
        """Per leaf, ``(R, 1 / R)`` of ``m``'s and of ``v``'s renormalisation at this step."""
        i = self._scaled
        numerator = lambda x: jnp.asarray(x).astype(_I64)  # noqa: E731  (exact: R <= 2**24)
        return self._numerators(hyper[i], numerator), self._numerators(hyper[i + 2], numerator)

    def _scales(self, hyper):
        """Per leaf, the scales of ``m`` and ``v`` after this step (float64)."""
        i = self._scaled
        return hyper[i + 1].per_leaf(), hyper[i + 3].per_leaf()

    def _weight_scales(self, hyper, leaves: int):
        """Per leaf, ``((R, 1 / R), S, S_before)`` of AdamW's stored weights at this step: the
        renormalisation and the scale after and before the step; the identities for Adam."""
        if not self.weight_decay:
            one = (jnp.int64(DB), jnp.float64(1.0 / DB))
            return [one] * leaves, [jnp.float64(1.0)] * leaves, [jnp.float64(1.0)] * leaves
        i = self._scaled + 4
        numerator = lambda x: jnp.asarray(x).astype(_I64)  # noqa: E731
        return self._numerators(hyper[i], numerator), hyper[i + 1].per_leaf(), hyper[i + 2].per_leaf()

    def _copy(self, w, scales, dtypes):
        """AdamW's weights in the model's dtypes, ``F w'``; ``None`` (the engine converts) for Adam."""
        if not self.weight_decay:
            return None
        return [(_fixed.from_fixed(x) * s).astype(dt) for x, s, dt in zip(w, scales, dtypes, strict=True)]

    def final_weights(self, w, hyper):
        """The weights after the last step, float64: the stored ones times their scale."""
        _, after, _ = self._weight_scales(hyper, len(w))
        return [_fixed.from_fixed(x) * s for x, s in zip(w, after, strict=True)]

    @staticmethod
    def _increments(g, om1, om2, s1, s2):
        """The stored moments' increments ``fixed(((1 - b) / S) g)``, ``S`` the scale after the step
        (the factor one scalar: see `_direction`'s ``v_scale``)."""
        g64 = [x.astype(jnp.float64) for x in g]
        dm = [_fixed.to_fixed((o * (1.0 / s)) * x) for o, x, s in zip(om1, g64, s1, strict=True)]
        dv = [to_fixed_v((o * (1.0 / s)) * (x * x)) for o, x, s in zip(om2, g64, s2, strict=True)]
        return g64, dm, dv

    def _steps(self, m, v, hyper):
        """The weights' updates ``fixed((lr / F) u)`` (``F`` AdamW's weight scale after the step, one
        scalar factor as in `_increments`) and `_parts` per leaf."""
        lr, _, _, c1, c2 = hyper[:5]
        s1, s2 = self._scales(hyper)
        _, sw, _ = self._weight_scales(hyper, len(m))
        parts = [
            _parts(_fixed.from_fixed(a), from_fixed_v(b), x, y, p, q, self.eps)
            for a, b, x, y, p, q in zip(m, v, s1, s2, c1.per_leaf(), c2.per_leaf(), strict=True)
        ]
        dws = [
            _fixed.to_fixed((a * (1.0 / f)) * p[5]) for a, f, p in zip(lr.per_leaf(), sw, parts, strict=True)
        ]
        return dws, parts

    def _fused(self, hyper, g=None) -> bool:
        """Whether this step may go through `hypercore._fused`'s kernels on a CPU: one value of every
        schedule per weight array and step (not per weight) and, where given, gradients of a compiled
        dtype. Static."""
        return (
            all(jnp.ndim(x) == 0 for h in hyper for x in h.per_leaf())
            and (g is None or all(gi.dtype.name in _fused.FUSED_DTYPES for gi in g))
            and _fused.available()
        )

    def _kernel(self, fused, xla):
        """``(fused, xla)`` with this optimizer's static ``eps`` (and, for XLA's, the weight decay)
        bound: the kernels skip a renormalisation by ``2**24`` themselves."""
        return functools.partial(fused, eps=self.eps), functools.partial(
            xla, eps=self.eps, decay=self.weight_decay
        )

    def _decay_numerators(self, hyper, leaves: int) -> list[jax.Array]:
        """The weight-decay factors' numerators per leaf; ``2**24`` (no decay) for Adam."""
        if not self.weight_decay:
            return [jnp.int64(DB)] * leaves
        return [n for n, _ in self._numerators(hyper[5], decay_numerator)]

    def _moment_args(self, hyper):
        """Per leaf, the kernels' ``(r1, s1, r2, s2)``."""
        (r1, r2), (s1, s2) = self._renorms(hyper), self._scales(hyper)
        return list(zip([r for r, _ in r1], s1, [r for r, _ in r2], s2, strict=True))

    def forward_step(self, w, state, buf, g, hyper):
        return self.forward_step_fused(w, state, buf, g, hyper)[:5]

    def forward_step_fused(self, w, state, buf, g, hyper):
        """`forward_step`, then ``(copy, fp)``: the new weights in the model's dtypes (AdamW's scaled,
        ``F w'``), made in the step's pass where the kernels take it (with XLA's list of leaves, by
        XLA for AdamW, ``None`` for Adam, which the engine converts), and ``g``'s fingerprint where
        the kernels took it in the step's pass (else ``None``)."""
        m, vh, vl = state
        n1, n2, om1, om2 = self._terms(hyper)
        r1, r2 = self._renorms(hyper)
        rw, sw, _ = self._weight_scales(hyper, len(w))
        factors = [r1, r2, rw] if self.weight_decay else [r1, r2]
        dtypes = [x.dtype for x in g]
        by_bound = _fixed.spill_by_bound(buf, [n for f in factors for n, _ in f])
        limit = 1 << adam_spill_bits(self.factors)
        if by_bound and self._fused(hyper, g):
            buf, spilled, do, k = _fixed.plan_spill(buf, limit, by_bound=True)
            lr, _, _, c1, c2 = hyper[:5]
            leaves = zip(
                w,
                m,
                vh,
                vl,
                buf.heads,
                buf.stacks,
                g,
                [n for n, _ in n1],
                [n for n, _ in n2],
                [n for n, _ in rw],
                lr.per_leaf(),
                c1.per_leaf(),
                c2.per_leaf(),
                self._moment_args(hyper),
                strict=True,
            )
            fused, xla = self._kernel(_fused.adam_forward, _adam_forward_leaf)
            out = [
                _fused.on_cpu(
                    (*args, *moments, sw[leaf], k, do),
                    functools.partial(fused, leaf=leaf),
                    functools.partial(xla, leaf=leaf),
                )
                for leaf, (*args, moments) in enumerate(leaves)
            ]
            w, m, vh, vl, heads, stacks, oks, fps, copy = (list(x) for x in zip(*out, strict=True))
            bound = _head_bound(buf.bound, factors)
            buf = buf._replace(heads=heads, stacks=stacks, bound=bound)
            copy = [c.astype(dt) for c, dt in zip(copy, dtypes, strict=True)]
            return w, (m, vh, vl), buf, spilled, oks, copy, reversible._sum_u64(fps)
        buf, spilled = _fixed.maybe_spill(buf, limit, by_bound=by_bound)
        heads = list(buf.heads)
        _, dm, dv = self._increments(g, om1, om2, *self._scales(hyper))
        m_new, v_new = [], []
        for i in range(len(m)):  # the renormalisations (identities at most steps), then the updates
            x, heads[i] = mul_beta(m[i], *r1[i], heads[i])
            m_new.append(x + dm[i][0])
            x, heads[i] = mul_beta_v((vh[i], vl[i]), *r2[i], heads[i])
            v_new.append(add_v(x, dv[i][0]))
        dws, _ = self._steps(m_new, v_new, hyper)
        if self.weight_decay:  # w' renormalised (the identity at most steps), on the same heads
            w = list(w)
            for i in range(len(w)):
                w[i], heads[i] = mul_beta(w[i], *rw[i], heads[i])
        w = [wi - d for wi, (d, _) in zip(w, dws, strict=True)]
        checks = [
            *(ok for _, ok in dm),
            *(ok for _, ok in dv),
            *(ok for _, ok in dws),
            *map(_fixed.in_range, m_new),
            *map(in_range_v, v_new),
            *map(_fixed.in_range, w),
        ]
        state = (m_new, [x[0] for x in v_new], [x[1] for x in v_new])
        bound = _head_bound(buf.bound, factors) if by_bound else buf.bound
        copy = self._copy(w, sw, dtypes)
        return w, state, buf._replace(heads=heads, bound=bound), spilled, checks, copy, None

    def undo_weights(self, w, state, buf, hyper, spilled, stacks):
        """``w_t = w_{t+1} + fixed((lr / F) u)``, then (AdamW) the weights' renormalisation undone
        where one was due, popping the heads; ``w_aux`` is ``(parts, w_t, f)``: `_parts` per leaf,
        ``w_t`` (the stored weights) and, for AdamW, the decay factors used (else ``None``)."""
        m, vh, vl = state
        dws, parts = self._steps(m, list(zip(vh, vl, strict=True)), hyper)
        rw, sw, _ = self._weight_scales(hyper, len(w))
        if self._fused(
            hyper
        ):  # `parts` are XLA's, for `adjoint_step`; the reverse kernel recomputes them, and XLA
            # then drops them as unused
            lr, _, _, c1, c2 = hyper[:5]
            s1, s2 = self._scales(hyper)
            leaves = zip(
                w,
                m,
                vh,
                vl,
                buf.heads,
                [n for n, _ in rw],
                lr.per_leaf(),
                c1.per_leaf(),
                c2.per_leaf(),
                s1,
                s2,
                sw,
                strict=True,
            )
            fused, xla = self._kernel(_fused.adam_undo_weights, _adam_undo_weights_leaf)
            w, heads = (
                list(x) for x in zip(*[_fused.on_cpu(args, fused, xla) for args in leaves], strict=True)
            )
            return w, state, buf._replace(heads=heads), self._aux(parts, w, hyper)
        w = [wi + d for wi, (d, _) in zip(w, dws, strict=True)]
        if not self.weight_decay:
            return w, state, buf, self._aux(parts, w, hyper)
        heads = list(buf.heads)
        for i in range(len(w)):
            w[i], heads[i] = div_beta(w[i], *rw[i], heads[i])
        return w, state, buf._replace(heads=heads), self._aux(parts, w, hyper)

    def undo_weights_with_copy(self, w, state, buf, hyper, spilled, stacks, dtypes):
        """`undo_weights`, then AdamW's restored weights in the model's ``dtypes`` (``F_t w'_t``, the
        scale before the step: the copy the forward pass made after the step before)."""
        w, state, buf, w_aux = self.undo_weights(w, state, buf, hyper, spilled, stacks)
        _, _, before = self._weight_scales(hyper, len(w))
        return w, state, buf, w_aux, self._copy(w, before, dtypes)

    def _aux(self, parts, w, hyper):
        if not self.weight_decay:
            return parts, w, None
        return parts, w, [n.astype(jnp.float64) / DB for n, _ in self._numerators(hyper[5], decay_numerator)]

    def undo_state(self, state, buf, g, hyper, spilled, stacks):
        """Undo ``v``'s then ``m``'s update and renormalisation (the reverse of the forward's order
        on the shared head), then the step's spill."""
        n1, n2, om1, om2 = self._terms(hyper)
        r1, r2 = self._renorms(hyper)
        s1, s2 = self._scales(hyper)
        leaves = zip(*state, buf.heads, g, r1, r2, om1, om2, s1, s2, strict=True)
        m, vh, vl, heads = (list(x) for x in zip(*[_undo_state_leaf(*args) for args in leaves], strict=True))
        buf = _fixed.unspill(buf._replace(heads=heads), spilled, stacks)
        return (m, vh, vl), buf, (n1, n2, om1, om2)

    @property
    def _no_derivative(self) -> int:
        """How many schedules, last, are the scales' (`renormalisations`): functions of ``b1``, ``b2``
        and the decay factors without a derivative (the hypergradient reaches those through the
        rule's own terms)."""
        return 7 if self.weight_decay else 4

    def _zero_cotangents(self, dw):
        """The scales' schedules' cotangents: zeros, one per parameter."""
        return tuple([jnp.zeros_like(d) for d in dw] for _ in range(self._no_derivative))

    def adjoint_step(self, dw, dstate, g, state, hyper, w_aux, terms):
        lr, _, _, c1, c2 = hyper[:5]
        parts, w_t, factors = w_aux
        n1, n2, om1, om2 = terms
        leaves = zip(
            parts,
            dw,
            *dstate,
            g,
            n1,
            n2,
            om1,
            om2,
            lr.per_leaf(),
            c1.per_leaf(),
            c2.per_leaf(),
            strict=True,
        )
        dw_out, dm, dv, cts, dhyper = (
            list(x) for x in zip(*[_adjoint_leaf(*args) for args in leaves], strict=True)
        )
        dhyper = [list(d) for d in zip(*dhyper, strict=True)]  # (dlr, db1, db2, dc1, dc2), each per leaf
        zeros = self._zero_cotangents(dw)
        if not self.weight_decay:
            return dw_out, (dm, dv), cts, (*dhyper, *zeros)
        _, _, before = self._weight_scales(hyper, len(dw))
        dfactor = [d * (_fixed.from_fixed(x) * s) for d, x, s in zip(dw, w_t, before, strict=True)]
        dw_out = [f * d for f, d in zip(factors, dw, strict=True)]
        return dw_out, (dm, dv), cts, (*dhyper, dfactor, *zeros)

    def _previous(self, hyper_prev, last, leaves: int):
        """Per leaf, the kernels' ``prev``: the step before's ``(rw, lr, c1, c2, s1, s2, sw, F)`` (``F``
        the scale of its weights' copy, before that step), its undo of the weights made the identity
        where ``last`` (``lr = 0``, no renormalisation: step 0 has no step before it)."""
        lr, _, _, c1, c2 = hyper_prev[:5]
        s1, s2 = self._scales(hyper_prev)
        rw, sw, before = self._weight_scales(hyper_prev, leaves)
        lr = [jnp.where(last, 0.0, x) for x in lr.per_leaf()]
        rw = [jnp.where(last, jnp.int64(DB), n) for n, _ in rw]
        return list(zip(rw, lr, c1.per_leaf(), c2.per_leaf(), s1, s2, sw, before, strict=True))

    def undo_adjoint_then_weights(
        self, state, buf, g, hyper, spilled, stacks, dw, dstate, hw, w, hyper_prev, last, dtypes
    ):
        """Step ``t``'s undo of the state and its adjoint (`undo_state`, `adjoint_step`), then step ``t
        - 1``'s `undo_weights_with_copy` from the restored state (``hyper_prev`` its schedules; none
        where ``last``): the engine's reverse loop pipelined (`hypercore.reversible`), so that on a CPU
        one kernel call per weight array does both, reading the state once, and writes the weights'
        copy in the model's dtypes (a pass each that XLA made). ``w`` is ``w_t``; ``w_{t+1}``'s
        cotangent is ``dw - hw`` (`subtracts_hvp`). Returns ``(w, state, buf, dw, dstate, ct, dhyper,
        fp, copy)``: ``w_{t-1}``, ``g``'s fingerprint (``None`` on XLA's path) and the copy (``None``
        where the engine converts)."""
        m, vh, vl = state
        if stacks is None or not self._fused(hyper, g):
            _, parts = self._steps(m, list(zip(vh, vl, strict=True)), hyper)
            dw = [d - h.astype(jnp.float64) for d, h in zip(dw, hw, strict=True)]
            state, buf, s_aux = self.undo_state(state, buf, g, hyper, spilled, stacks)
            out = self.adjoint_step(dw, dstate, g, state, hyper, self._aux(parts, w, hyper), s_aux)
            w_prev, _, buf_prev, _ = self.undo_weights(w, state, buf, hyper_prev, spilled, stacks)
            w = [jnp.where(last, a, b) for a, b in zip(w, w_prev, strict=True)]
            buf = buf._replace(
                heads=[jnp.where(last, a, b) for a, b in zip(buf.heads, buf_prev.heads, strict=True)]
            )
            copy = self._copy(w, self._weight_scales(hyper_prev, len(w))[2], dtypes)
            return (w, state, buf, *out, None, copy)
        lr, b1, b2, c1, c2 = hyper[:5]
        do, k = _fixed.unspill_slot(buf, spilled)
        leaves = zip(
            m,
            vh,
            vl,
            buf.heads,
            stacks,
            g,
            dw,
            hw,
            *dstate,
            w,
            [n for n, _ in self._numerators(b1)],
            [n for n, _ in self._numerators(b2)],
            self._decay_numerators(hyper, len(dw)),
            lr.per_leaf(),
            c1.per_leaf(),
            c2.per_leaf(),
            self._moment_args(hyper),
            self._previous(hyper_prev, last, len(dw)),
            strict=True,
        )
        out = [
            _fused.on_cpu(
                (*args, *moments, k, do, prev),
                functools.partial(_fused.adam_undo_adjoint, eps=self.eps, leaf=leaf),
                functools.partial(_adam_undo_adjoint_leaf, eps=self.eps, leaf=leaf, decay=self.weight_decay),
            )
            for leaf, (*args, moments, prev) in enumerate(leaves)
        ]
        m, vh, vl, heads, dw, dm, dv, cts, sums, fps, w, copy = (list(x) for x in zip(*out, strict=True))
        buf = _fixed.unspill_counters(buf._replace(heads=heads), spilled, do)
        dhyper = tuple([s[j] for s in sums] for j in range(5))
        if self.weight_decay:  # the kernels' sum of dw w' times the scale of w_t
            _, _, before = self._weight_scales(hyper, len(sums))
            dhyper = (*dhyper, [s[5] * b for s, b in zip(sums, before, strict=True)])
        zeros = tuple([jnp.zeros((), jnp.float64)] * len(sums) for _ in range(self._no_derivative))
        dhyper = (*dhyper, *zeros)
        copy = [c.astype(dt) for c, dt in zip(copy, dtypes, strict=True)]  # ``g``'s dtypes: the model's
        return w, (m, vh, vl), buf, dw, (dm, dv), cts, dhyper, reversible._sum_u64(fps), copy


def _parts(m_stored, v_stored, s1, s2, c1, c2, eps):
    """``(m, v, mhat, vhat, den, u)``: the moments (float64, from the stored ones and their scales)
    and `_direction`'s terms, what the undo of the weights hands the adjoint. (``m``'s scaling is a
    power of two times ``s1``, exact, so it may be folded either way.)"""
    m_f = m_stored * s1
    return (m_f, v_stored * s2, *_direction(m_f, v_stored, c1, c2, eps, s2))


def _undo_state_leaf(m, vh, vl, head, g, r1, r2, om1, om2, s1, s2):
    """`Adam.undo_state` on one weight array, before the un-spill: ``(m, vh, vl, head)`` one step
    back; ``r1``, ``r2`` are the renormalisations' ``(R, 1 / R)``, ``s1``, ``s2`` the scales after
    the step."""
    _, dm, dv = Adam._increments([g], [om1], [om2], [s1], [s2])
    (vh, vl), head = div_beta_v(sub_v((vh, vl), dv[0][0]), *r2, head)
    m, head = div_beta(m - dm[0][0], *r1, head)
    return m, vh, vl, head


def _adjoint_leaf(parts, dw, dm, dv, g, n1, n2, om1, om2, lr, c1, c2):
    """`Adam.adjoint_step` on one weight array, but for AdamW's factor: ``(dw, dm, dv, ct, (dlr, db1,
    db2, dc1, dc2))``, per parameter, from the step's ``parts`` (`_parts` of ``m_{t+1}, v_{t+1}``).
    ``db1`` needs ``m_t - g_t``, which is ``(m_{t+1} - g_t) / b1`` exactly in real numbers: no need
    for the restored moments (``v`` likewise)."""
    m_f, v_f, mhat, vhat, den, u = parts
    du = -lr * dw
    dmhat = du / den
    dden = -du * u / den
    pos = vhat > 0
    dvhat = jnp.where(pos, dden * 0.5 / jnp.sqrt(jnp.where(pos, vhat, 1.0)), 0.0)
    dm_next = dm + dmhat / c1
    dv_next = dv + dvhat / c2
    g64 = g.astype(jnp.float64)
    nd1, nd2 = (n[0].astype(jnp.float64) / DB for n in (n1, n2))
    db1 = dm_next * (m_f - g64) / nd1
    db2 = dv_next * (v_f - g64 * g64) / nd2
    ct = -(om1 * dm_next + om2 * 2.0 * g64 * dv_next)
    dhyper = (-dw * u, db1, db2, -dmhat * mhat / c1, -dvhat * vhat / c2)
    return dw, dm_next * nd1, dv_next * nd2, ct, dhyper


# One weight array's steps in XLA's operations, as `hypercore._fused`'s Adam kernels compute them: the
# default branch of `_fused.on_cpu` (so the code off a CPU) and what the tests compare the kernels with.


def _leaf_terms(n1, n2):
    om1 = (jnp.int64(DB) - n1).astype(jnp.float64) / DB
    om2 = (jnp.int64(DB) - n2).astype(jnp.float64) / DB
    return om1, om2


def _with_inverse(n):
    return n, 1.0 / n.astype(jnp.float64)


def _adam_forward_leaf(
    w, m, vh, vl, head, stack, g, n1, n2, rw, lr, c1, c2, r1, s1, r2, s2, sw, k, do, *, eps, decay, leaf
):
    head, stack = _fixed.spill_leaf(head, stack, k, do)
    om1, om2 = _leaf_terms(n1, n2)
    (_, dm, dv) = Adam._increments([g], [om1], [om2], [s1], [s2])
    (dm, ok_m), (dv, ok_v) = dm[0], dv[0]
    x, head = mul_beta(m, *_with_inverse(r1), head)
    m = x + dm
    x, head = mul_beta_v((vh, vl), *_with_inverse(r2), head)
    v = add_v(x, dv)
    u = _direction(_fixed.from_fixed(m) * s1, from_fixed_v(v), c1, c2, eps, s2)[3]
    d, ok_d = _fixed.to_fixed((lr * (1.0 / sw)) * u)
    if decay:
        w, head = mul_beta(w, *_with_inverse(rw), head)
    w = w - d
    ok = jnp.all(ok_m & ok_v & ok_d & _fixed.in_range(m) & in_range_v(v) & _fixed.in_range(w))
    copy = (_fixed.from_fixed(w) * sw).astype(g.dtype)
    return w, m, v[0], v[1], head, stack, ok, reversible._fingerprint_leaf(g, leaf), copy


def _adam_undo_weights_leaf(w, m, vh, vl, head, rw, lr, c1, c2, s1, s2, sw, *, eps, decay):
    u = _direction(_fixed.from_fixed(m) * s1, from_fixed_v((vh, vl)), c1, c2, eps, s2)[3]
    w = w + _fixed.to_fixed((lr * (1.0 / sw)) * u)[0]
    if decay:
        w, head = div_beta(w, *_with_inverse(rw), head)
    return w, head


def _adam_undo_adjoint_leaf(
    m,
    vh,
    vl,
    head,
    stack,
    g,
    dw,
    hw,
    dm,
    dv,
    w,
    n1,
    n2,
    nf,
    lr,
    c1,
    c2,
    r1,
    s1,
    r2,
    s2,
    k,
    do,
    prev,
    *,
    eps,
    leaf,
    decay,
):
    dw = dw - hw.astype(jnp.float64)
    om1, om2 = _leaf_terms(n1, n2)
    parts = _parts(_fixed.from_fixed(m), from_fixed_v((vh, vl)), s1, s2, c1, c2, eps)
    m, vh, vl, head = _undo_state_leaf(
        m, vh, vl, head, g, _with_inverse(r1), _with_inverse(r2), om1, om2, s1, s2
    )
    head = _fixed.unspill_from(head, stack, k, do)
    _, dm, dv, ct, dhyper = _adjoint_leaf(
        parts, dw, dm, dv, g, _with_inverse(n1), _with_inverse(n2), om1, om2, lr, c1, c2
    )
    f = nf.astype(jnp.float64) / DB
    sums = jnp.stack([jnp.sum(x) for x in (*dhyper, dw * _fixed.from_fixed(w))])
    fp = reversible._fingerprint_leaf(g, leaf)
    rw_p, lr_p, c1_p, c2_p, s1_p, s2_p, sw_p, scale = prev  # the step before's weights, and their copy
    w, head = _adam_undo_weights_leaf(
        w, m, vh, vl, head, rw_p, lr_p, c1_p, c2_p, s1_p, s2_p, sw_p, eps=eps, decay=decay
    )
    copy = (_fixed.from_fixed(w) * scale).astype(g.dtype)
    return m, vh, vl, head, f * dw, dm, dv, ct.astype(g.dtype), sums, fp, w, copy


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
    schedules = (*schedules, *renormalisations(b1), *renormalisations(b2))
    if decoupled:  # the weights are stored scaled too: w = F w'
        renorm_w, scale_w = renormalisations(schedules[5])
        before = jax.tree.map(lambda x: jnp.concatenate([jnp.ones_like(x[:1]), x[:-1]]), scale_w)
        schedules = (*schedules, renorm_w, scale_w, before)
    if capacity is None:
        if min_beta is None:
            mins = [_concrete_min(schedules[i]) for i in ((1, 2, 5) if decoupled else (1, 2))]
            if any(x is None for x in mins):
                what = "b1/b2/the decay factors 1 - lr wd" if decoupled else "b1/b2"
                raise ValueError(
                    f"{what} are traced, so the information buffer cannot be sized from them: pass "
                    "capacity=hypercore.adam_capacity(T, b1_min, b2_min, decay_min) or min_beta="
                )
        else:
            mins = [float(min_beta)] * (3 if decoupled else 2)
        capacity = adam_capacity(T, *mins, bucket=False)
    if not (eps > 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
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
      capacity: the stack, in 32-bit slots (static): ``adam_capacity(T, b1_min, b2_min,
        decay_min)`` with the smallest ``b1``, ``b2`` and (with weight decay) decay factor
        ``1 - lr wd`` used. With concrete values it may be omitted; or pass ``min_beta``, a lower
        bound on all of them (larger than needed when ``b2`` is well above ``b1``).

    Returns:
      ``w_T`` shaped like ``w0``; NaN if training left the fixed-point range (``|w|, |m| < 2**14``,
      ``v < 2**30``) or produced a non-finite value (reported as ``overflow``).
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
