"""Reversible SGD with momentum: exact hypergradients without storing the trajectory.

Maclaurin, Duvenaud and Adams, "Gradient-based Hyperparameter Optimization through Reversible
Learning", ICML 2015, Algorithms 1 and 2 (as corrected in HIPS/hypergrad). The forward rule, with
``v_0 = 0``::

    g_t     = grad_w L(w_t, meta, t)
    v_{t+1} = gamma_t v_t - (1 - gamma_t) g_t
    w_{t+1} = w_t + alpha_t v_{t+1}

runs on int64 fixed-point ``w`` and ``v`` (see `hypercore._fixed`), so the backward pass can run it
in reverse bit for bit from ``(w_T, v_T)`` and the information buffer, recomputing each ``g_t``, and
accumulate, for ``t = T-1 .. 0``::

    dalpha_t = dw . v_{t+1}
    dv      += alpha_t dw
    dgamma_t = dv . (v_t + g_t)
    dw      -= H_t ((1 - gamma_t) dv)              } one VJP of grad_w L at (w_t, meta):
    dmeta   -= d/dmeta <g_t, (1 - gamma_t) dv>     } reverse over reverse
    dv      *= gamma_t

Memory is the buffer (about ``log2(1/gamma)`` bits per parameter per step) plus O(N) state, not the
O(N T) trajectory of ordinary reverse mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import _fixed, _schedule
from hypercore._fixed import Buffer

PyTree = Any

_REPORT_SIZE = 8
_NO_STEP = -1


class ReversalReport(NamedTuple):
    """What the engine saw, read from the cotangent of the ``report`` argument.

    exact: the backward pass restored ``w_0``, ``v_0 = 0`` and an empty buffer bit for bit, and
        every recomputed gradient matched its forward fingerprint.
    mismatch_step: the first step, in backward order (so the latest ``t``), whose recomputed gradient
        differed from the forward one; ``None`` if none did. The loss is then not a deterministic
        function of ``(w, meta, t)`` (a stateful minibatch, non-deterministic GPU ops, ...).
    overflow: training diverged: a weight, velocity or step left the fixed-point range
        ``|x| < 2**14`` or became non-finite. ``w_T`` is then NaN.
    buffer_overflow: the stack's capacity was too small for the gammas used (retry with a larger one).
    slots_used, capacity: the stack's 32-bit slots used at the end of the forward pass, and allocated.

    When anything is wrong, every hypergradient is NaN: a wrong number is never returned silently.
    """

    exact: bool
    mismatch_step: int | None
    overflow: bool
    buffer_overflow: bool
    slots_used: int
    capacity: int

    @classmethod
    def from_array(cls, report: jax.Array) -> ReversalReport:
        r = np.asarray(report, dtype=np.float64)
        if r.shape != (_REPORT_SIZE,) or r[0] != 1.0:
            raise ValueError(
                "not an engine report: differentiate with respect to the `report=` argument of "
                "reversible_sgd (start from hypercore.empty_report())"
            )
        step = int(r[2])
        return cls(
            exact=bool(r[1]),
            mismatch_step=None if step == _NO_STEP else step,
            overflow=bool(r[3]),
            buffer_overflow=bool(r[4]),
            slots_used=int(r[5]),
            capacity=int(r[6]),
        )


def empty_report() -> jax.Array:
    """The value to pass as ``report=``; its gradient is the `ReversalReport` as an array."""
    return jnp.zeros((_REPORT_SIZE,), jnp.float64)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each weight leaf sits in the flat vector of N parameters."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    offsets: tuple[int, ...]
    size: int

    @classmethod
    def of(cls, tree: PyTree) -> _Layout:
        leaves, treedef = jax.tree.flatten(tree)
        for leaf in leaves:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise TypeError(f"w0 leaves must be floating point arrays, got dtype {jnp.result_type(leaf)}")
        shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        return cls(
            treedef=treedef,
            shapes=shapes,
            dtypes=tuple(jnp.result_type(x) for x in leaves),
            offsets=tuple(int(o) for o in np.cumsum([0, *sizes])[:-1]),
            size=int(sum(sizes)),
        )

    def flatten(self, tree: PyTree, dtype=jnp.float64) -> jax.Array:
        return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in jax.tree.leaves(tree)])

    def split(self, flat: jax.Array) -> list[jax.Array]:
        return [
            flat[o : o + int(np.prod(s, dtype=np.int64))].reshape(s)
            for o, s in zip(self.offsets, self.shapes, strict=True)
        ]

    def unflatten(self, flat: jax.Array) -> PyTree:
        leaves = [x.astype(dt) for x, dt in zip(self.split(flat), self.dtypes, strict=True)]
        return jax.tree.unflatten(self.treedef, leaves)


def _mix64(x: jax.Array) -> jax.Array:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit."""
    x = x ^ (x >> jnp.uint64(30))
    x = x * jnp.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> jnp.uint64(27))
    x = x * jnp.uint64(0x94D049BB133111EB)
    return x ^ (x >> jnp.uint64(31))


def _fingerprint(g_leaves: list[jax.Array]) -> jax.Array:
    """A uint64 hash of the exact bits of a gradient: any changed bit changes it (w.h.p.)."""
    total = jnp.zeros((), jnp.uint64)
    for i, g in enumerate(g_leaves):
        g = jnp.ravel(g)
        uint = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[g.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(g, uint).astype(jnp.uint64)
        idx = jnp.arange(g.size, dtype=jnp.uint64) * jnp.uint64(0x9E3779B97F4A7C15)
        leaf_hash = jnp.sum(_mix64(bits ^ idx ^ jnp.uint64(i)), dtype=jnp.uint64)
        total = total + _mix64(leaf_hash + jnp.uint64(i))
    return total


class _Schedule:
    """A learning-rate or momentum schedule in one of its three shapes, seen per step and flattened."""

    def __init__(self, sched: PyTree, layout: _Layout):
        self.shared = _schedule.is_shared(sched)
        self.layout = layout

    def leaves(self, sched: PyTree) -> list[jax.Array]:
        return [sched] if self.shared else jax.tree.leaves(sched)

    def flat_at(self, leaves_t: list[jax.Array], dtype=jnp.float64) -> jax.Array:
        """Values at one step (``leaves_t`` = each leaf indexed at t), broadcast to all N parameters."""
        if self.shared:
            return jnp.full((self.layout.size,), leaves_t[0], dtype)
        return jnp.concatenate(
            [
                jnp.broadcast_to(jnp.asarray(x, dtype), s).ravel()
                for x, s in zip(leaves_t, self.layout.shapes, strict=True)
            ]
        )

    def reduce(self, flat: jax.Array, leaves_t: list[jax.Array]) -> list[jax.Array]:
        """The cotangent of one step's values from a per-parameter one (sum over shared parameters)."""
        if self.shared:
            return [jnp.sum(flat).astype(leaves_t[0].dtype)]
        out = []
        for part, x in zip(self.layout.split(flat), leaves_t, strict=True):
            out.append((part if jnp.ndim(x) else jnp.sum(part)).astype(jnp.result_type(x)))
        return out


def _concrete_min_gamma(gammas: PyTree) -> float | None:
    try:
        return float(min(np.min(np.asarray(leaf)) for leaf in jax.tree.leaves(gammas)))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _resolve_capacity(T: int, gammas: PyTree, capacity: int | None, min_gamma: float | None) -> int:
    if capacity is not None:
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive int (32-bit slots), got {capacity!r}")
        return int(capacity)
    if min_gamma is None:
        min_gamma = _concrete_min_gamma(gammas)
        if min_gamma is None:
            raise ValueError(
                "gammas are traced, so the information buffer cannot be sized from them: pass "
                "capacity=hypercore.buffer_capacity(T, min_gamma) or min_gamma= computed from concrete values"
            )
    return _fixed.capacity_for(T, max(min(float(min_gamma), 1.0), 1.0 / _fixed.D), bucket=False)


class _Forward(NamedTuple):
    w: jax.Array
    v: jax.Array
    buf: Buffer
    diverged: jax.Array
    fingerprints: jax.Array
    spills: jax.Array


def _make_engine(loss, w0, meta_all, alphas, gammas, capacity):
    """Build the forward and reverse passes for fixed shapes; ``meta_all = (meta, consts)``."""
    layout = _Layout.of(w0)
    a_s = _Schedule(alphas, layout)
    g_s = _Schedule(gammas, layout)
    T = _schedule.num_steps(alphas)

    def grad_leaves(w_flat64, meta_all, t):
        meta, consts = meta_all
        g = jax.grad(loss)(layout.unflatten(w_flat64), meta, t, *consts)
        return jax.tree.leaves(g)

    def numerators(g_leaves_t):
        return g_s.flat_at([_fixed.gamma_numerator(x) for x in g_leaves_t], jnp.int64)

    def forward(w0, meta_all, alphas, gammas) -> _Forward:
        w, ok_w = _fixed.to_fixed(layout.flatten(w0))
        v = jnp.zeros((layout.size,), jnp.int64)
        buf = _fixed.empty_buffer(layout.size, capacity)

        def step(carry, xs):
            w, v, buf, diverged = carry
            t, a_t, c_t = xs
            g = grad_leaves(_fixed.from_fixed(w), meta_all, t)
            fp = _fingerprint(g)
            g64 = jnp.concatenate([jnp.ravel(x).astype(jnp.float64) for x in g])
            n = numerators(c_t)
            v, buf, spilled = _fixed.mul_gamma(v, n, buf)
            one_minus = (jnp.int64(_fixed.D) - n).astype(jnp.float64) / _fixed.D
            dv, ok1 = _fixed.to_fixed(one_minus * g64)
            v = v - dv
            dw, ok2 = _fixed.to_fixed(a_s.flat_at(a_t) * _fixed.from_fixed(v))
            w = w + dw
            bad = ~jnp.all(ok1 & ok2 & _fixed.in_range(v) & _fixed.in_range(w))
            return (w, v, buf, diverged | bad), (fp, spilled)

        xs = (jnp.arange(T, dtype=jnp.int32), a_s.leaves(alphas), g_s.leaves(gammas))
        (w, v, buf, diverged), (fps, spills) = jax.lax.scan(step, (w, v, buf, ~jnp.all(ok_w)), xs)
        return _Forward(w, v, buf, diverged, fps, spills)

    def unstep(w, v, a_t):
        """Undo one step's weight update; return ``w_t`` and ``v_{t+1}`` as floats."""
        v_next = _fixed.from_fixed(v)
        w = w - _fixed.to_fixed(a_s.flat_at(a_t) * v_next)[0]
        return w, v_next

    def unvelocity(v, buf, g64, c_t, spilled):
        n = numerators(c_t)
        one_minus = (jnp.int64(_fixed.D) - n).astype(jnp.float64) / _fixed.D
        v = v + _fixed.to_fixed(one_minus * g64)[0]
        v, buf = _fixed.div_gamma(v, n, buf, spilled)
        return v, buf, n, one_minus

    def reverse(fwd: _Forward, meta_all, alphas, gammas):
        """Run the training backwards without derivatives; for `check_reversal`."""

        def step(carry, xs):
            w, v, buf, mismatch = carry
            t, a_t, c_t, fp, spilled = xs
            w, _ = unstep(w, v, a_t)
            g = grad_leaves(_fixed.from_fixed(w), meta_all, t)
            g64 = jnp.concatenate([jnp.ravel(x).astype(jnp.float64) for x in g])
            mismatch = jnp.where((mismatch == _NO_STEP) & (_fingerprint(g) != fp), t, mismatch)
            v, buf, _, _ = unvelocity(v, buf, g64, c_t, spilled)
            return (w, v, buf, mismatch), None

        xs = (jnp.arange(T, dtype=jnp.int32), a_s.leaves(alphas), g_s.leaves(gammas), fwd.fingerprints, fwd.spills)
        init = (fwd.w, fwd.v, fwd.buf, jnp.asarray(_NO_STEP, jnp.int32))
        (w, v, buf, mismatch), _ = jax.lax.scan(step, init, xs, reverse=True)
        return w, v, buf, mismatch

    def backward(fwd: _Forward, w0_fixed, meta_all, alphas, gammas, dw_T):
        """Algorithm 2: reverse the training and accumulate every hypergradient."""
        zeros_meta = jax.tree.map(jnp.zeros_like, meta_all)

        def step(carry, xs):
            w, v, buf, mismatch, dw, dv, dmeta = carry
            t, a_t, c_t, fp, spilled = xs
            w, v_next = unstep(w, v, a_t)
            dalpha = a_s.reduce(dw * v_next, a_t)
            w_tree = layout.unflatten(_fixed.from_fixed(w))
            meta, consts = meta_all

            def grad_w(w_tree, meta, consts):
                return jax.tree.leaves(jax.grad(loss)(w_tree, meta, t, *consts))

            g, vjp = jax.vjp(grad_w, w_tree, meta, consts)
            g64 = jnp.concatenate([jnp.ravel(x).astype(jnp.float64) for x in g])
            mismatch = jnp.where((mismatch == _NO_STEP) & (_fingerprint(g) != fp), t, mismatch)
            v, buf, n, one_minus = unvelocity(v, buf, g64, c_t, spilled)
            dv = dv + a_s.flat_at(a_t) * dw
            dgamma = g_s.reduce(dv * (_fixed.from_fixed(v) + g64), c_t)
            cot = [x.astype(dt) for x, dt in zip(layout.split(one_minus * dv), layout.dtypes, strict=True)]
            hw, hmeta, hconsts = vjp(cot)
            dw = dw - layout.flatten(hw)
            dmeta = jax.tree.map(lambda acc, h: acc - h.astype(acc.dtype), dmeta, (hmeta, hconsts))
            dv = dv * (n.astype(jnp.float64) / _fixed.D)
            return (w, v, buf, mismatch, dw, dv, dmeta), (dalpha, dgamma)

        xs = (jnp.arange(T, dtype=jnp.int32), a_s.leaves(alphas), g_s.leaves(gammas), fwd.fingerprints, fwd.spills)
        init = (
            fwd.w,
            fwd.v,
            fwd.buf,
            jnp.asarray(_NO_STEP, jnp.int32),
            dw_T,
            jnp.zeros_like(dw_T),
            zeros_meta,
        )
        (w, v, buf, mismatch, dw, _, dmeta), (dalphas, dgammas) = jax.lax.scan(step, init, xs, reverse=True)
        restored = (
            jnp.all(w == w0_fixed)
            & jnp.all(v == 0)
            & jnp.all(buf.head == 0)
            & (buf.used == 0)
            & jnp.all(buf.stack == 0)
        )
        return dw, dmeta, dalphas, dgammas, restored, mismatch

    return layout, a_s, g_s, forward, reverse, backward


def reversible_sgd(
    loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
    w0: PyTree,
    meta: PyTree,
    alphas: PyTree,
    gammas: PyTree,
    *,
    capacity: int | None = None,
    min_gamma: float | None = None,
    report: jax.Array | None = None,
) -> PyTree:
    """Train by SGD with momentum for T steps and return ``w_T``; differentiable, exactly, by reversal.

    Args:
      loss: ``loss(w, meta, t) -> scalar`` with ``t`` an int32 scalar in ``0..T-1``. Must be a pure
        function of its arguments (and of arrays it closes over): the backward pass calls it again.
      w0: pytree of float arrays (float32 or float64: the model's arithmetic stays in that dtype).
      meta: pytree of float arrays entering the loss (L2 penalties, training data, ...); may be ``{}``.
      alphas, gammas: learning rates and momentum decays in natural units, shaped ``(T,)`` (shared),
        or pytrees shaped like ``w0`` with leaves ``(T,)`` (per array) or ``(T, *leaf.shape)`` (per
        weight). Gamma is quantised to ``round(gamma * 2**16) / 2**16`` (see `quantize_gamma`); the
        hypergradient is the derivative at that value, passed straight through.
      capacity: the information buffer's stack, in 32-bit slots (static). Under ``jit``/``grad``
        the gammas are traced, so either pass this, from `buffer_capacity(T, min_gamma)` with the
        smallest gamma you will use, or pass ``min_gamma``. With concrete gammas it may be omitted.
        Memory: ``8 N`` bytes of heads + ``4 N capacity`` bytes of stack + O(N + T) state, for N
        parameters; about ``N T log2(1/gamma) / 8`` bytes are really needed.
      min_gamma: a lower bound on every gamma, to size the buffer from (ignored if ``capacity`` is set).
      report: ``empty_report()``; differentiate with respect to it as well and read the result with
        `ReversalReport.from_array`: exactness, the first step whose gradient did not recompute
        identically, divergence and buffer overflow.

    Returns:
      ``w_T``, shaped like ``w0``; NaN if training left the fixed-point range (|w| < 2**14) or
      produced a non-finite gradient.
    """
    _fixed.require_x64()
    T = _schedule.check(alphas, w0, "alphas")
    if _schedule.check(gammas, w0, "gammas") != T:
        raise ValueError("alphas and gammas must have the same number of steps")
    capacity = _resolve_capacity(T, gammas, capacity, min_gamma)
    if report is None:
        report = empty_report()

    t0 = jnp.zeros((), jnp.int32)
    closed, consts = jax.closure_convert(loss, w0, meta, t0)
    layout, _, _, forward, _, backward = _make_engine(closed, w0, (meta, consts), alphas, gammas, capacity)

    @jax.custom_vjp
    def run(w0, meta_all, alphas, gammas, report):
        fwd = forward(w0, meta_all, alphas, gammas)
        return _output(fwd)

    def _output(fwd: _Forward):
        w = _fixed.from_fixed(fwd.w)
        return layout.unflatten(jnp.where(fwd.diverged, jnp.nan, w))

    def run_fwd(w0, meta_all, alphas, gammas, report):
        fwd = forward(w0, meta_all, alphas, gammas)
        w0_fixed, _ = _fixed.to_fixed(layout.flatten(w0))
        return _output(fwd), (fwd, w0_fixed, meta_all, alphas, gammas)

    def run_bwd(res, w_bar):
        fwd, w0_fixed, meta_all, alphas, gammas = res
        dw_T = layout.flatten(w_bar)
        dw, dmeta, dalphas, dgammas, restored, mismatch = backward(
            fwd, w0_fixed, meta_all, alphas, gammas, dw_T
        )
        exact = restored & (mismatch == _NO_STEP)
        trusted = exact & ~fwd.diverged & ~fwd.buf.overflow
        poison = lambda x: jnp.where(trusted, x, jnp.nan).astype(jnp.result_type(x))
        rep = jnp.stack(
            [
                jnp.float64(1.0),
                exact.astype(jnp.float64),
                mismatch.astype(jnp.float64),
                fwd.diverged.astype(jnp.float64),
                fwd.buf.overflow.astype(jnp.float64),
                fwd.buf.used.astype(jnp.float64),
                jnp.float64(fwd.buf.capacity),
                jnp.float64(0.0),
            ]
        )
        d_alphas = _unstack(alphas, dalphas)
        d_gammas = _unstack(gammas, dgammas)
        return (
            jax.tree.map(poison, layout.unflatten(dw)),
            jax.tree.map(poison, dmeta),
            jax.tree.map(poison, d_alphas),
            jax.tree.map(poison, d_gammas),
            rep,
        )

    run.defvjp(run_fwd, run_bwd)
    return run(w0, (meta, consts), alphas, gammas, report)


def _unstack(sched: PyTree, per_step: list[jax.Array]) -> PyTree:
    """Scan outputs (one list entry per schedule leaf, stacked over t) back in the schedule's structure."""
    if _schedule.is_shared(sched):
        return per_step[0].astype(jnp.result_type(sched))
    return jax.tree.unflatten(
        jax.tree.structure(sched),
        [x.astype(jnp.result_type(s)) for x, s in zip(per_step, jax.tree.leaves(sched), strict=True)],
    )


def check_reversal(
    loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
    w0: PyTree,
    meta: PyTree,
    alphas: PyTree,
    gammas: PyTree,
    *,
    capacity: int | None = None,
    min_gamma: float | None = None,
) -> bool:
    """True iff training forward then backward restores ``w_0``, ``v_0 = 0`` and an empty buffer
    bit for bit, with every recomputed gradient identical to the forward one."""
    _fixed.require_x64()
    T = _schedule.check(alphas, w0, "alphas")
    if _schedule.check(gammas, w0, "gammas") != T:
        raise ValueError("alphas and gammas must have the same number of steps")
    capacity = _resolve_capacity(T, gammas, capacity, min_gamma)
    t0 = jnp.zeros((), jnp.int32)
    closed, consts = jax.closure_convert(loss, w0, meta, t0)
    layout, _, _, forward, reverse, _ = _make_engine(closed, w0, (meta, consts), alphas, gammas, capacity)

    @jax.jit
    def roundtrip(w0, meta_all, alphas, gammas):
        fwd = forward(w0, meta_all, alphas, gammas)
        w, v, buf, mismatch = reverse(fwd, meta_all, alphas, gammas)
        w0_fixed, _ = _fixed.to_fixed(layout.flatten(w0))
        return (
            ~fwd.diverged
            & ~fwd.buf.overflow
            & (mismatch == _NO_STEP)
            & jnp.all(w == w0_fixed)
            & jnp.all(v == 0)
            & jnp.all(buf.head == 0)
            & (buf.used == 0)
            & jnp.all(buf.stack == 0)
        )

    return bool(roundtrip(w0, (meta, consts), alphas, gammas))


def forward_state(
    loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
    w0: PyTree,
    meta: PyTree,
    alphas: PyTree,
    gammas: PyTree,
    *,
    capacity: int | None = None,
    min_gamma: float | None = None,
) -> _Forward:
    """The forward pass's final fixed-point state (``w``, ``v``, buffer, flags), for diagnostics and
    benchmarks: ``buf.used`` slots of ``buf.capacity`` were needed."""
    _fixed.require_x64()
    T = _schedule.check(alphas, w0, "alphas")
    capacity = _resolve_capacity(T, gammas, capacity, min_gamma)
    t0 = jnp.zeros((), jnp.int32)
    closed, consts = jax.closure_convert(loss, w0, meta, t0)
    _, _, _, forward, _, _ = _make_engine(closed, w0, (meta, consts), alphas, gammas, capacity)
    return jax.jit(forward)(w0, (meta, consts), alphas, gammas)


def buffer_capacity(steps: int, min_gamma: float) -> int:
    """Stack slots for ``steps`` steps with every gamma >= ``min_gamma``, rounded up to a bucket
    (2, 3, 4, 6, 8, 12, ...) so that a tuning loop whose gammas drift does not recompile."""
    return _fixed.capacity_for(steps, min_gamma, bucket=True)
