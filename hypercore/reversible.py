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

from hypercore import (
    _fixed,
    _schedule,
    _x64,  # noqa: F401  (configures JAX for the engine before any array exists)
)
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
    """The weight pytree's structure; the engine works on its list of leaves."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]

    @classmethod
    def of(cls, tree: PyTree) -> _Layout:
        leaves, treedef = jax.tree.flatten(tree)
        for leaf in leaves:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise TypeError(f"w0 leaves must be floating point arrays, got dtype {jnp.result_type(leaf)}")
        return cls(
            treedef=treedef,
            shapes=tuple(tuple(jnp.shape(x)) for x in leaves),
            dtypes=tuple(jnp.result_type(x) for x in leaves),
        )

    def to_model(self, leaves64: list[jax.Array]) -> PyTree:
        return jax.tree.unflatten(
            self.treedef, [x.astype(dt) for x, dt in zip(leaves64, self.dtypes, strict=True)]
        )

    def from_model(self, tree: PyTree) -> list[jax.Array]:
        return [jnp.asarray(x).astype(jnp.float64) for x in jax.tree.leaves(tree)]


def _fingerprint(g_leaves: list[jax.Array]) -> jax.Array:
    """A uint64 hash of the exact bits of a gradient: ``sum_i bits_i * k_i mod 2**64`` with distinct
    odd multipliers ``k_i``, so any change of a single element changes it, and several changes
    cancel only by a 2**-64 coincidence."""
    total = jnp.zeros((), jnp.uint64)
    for leaf, g in enumerate(g_leaves):
        g = jnp.ravel(g)
        uint = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[g.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(g, uint).astype(jnp.uint64)
        k = jnp.arange(g.size, dtype=jnp.uint64) * jnp.uint64((0x9E3779B97F4A7C15 * 2) % 2**64) + jnp.uint64(
            2 * leaf + 1
        )
        total = total + jnp.sum(bits * k, dtype=jnp.uint64) * jnp.uint64(0xBF58476D1CE4E5B9)
    return total


class _Schedule:
    """A learning-rate or momentum schedule in one of its three shapes, read one step at a time."""

    def __init__(self, sched: PyTree, layout: _Layout):
        self.shared = _schedule.is_shared(sched)
        self.n_leaves = len(layout.shapes)

    def leaves(self, sched: PyTree) -> list[jax.Array]:
        return [sched] if self.shared else jax.tree.leaves(sched)

    def per_leaf(
        self, leaves_t: list[jax.Array], fn=lambda x: jnp.asarray(x, jnp.float64)
    ) -> list[jax.Array]:
        """One step's values as one array per weight leaf, each a scalar or shaped like the leaf."""
        return [fn(leaves_t[0])] * self.n_leaves if self.shared else [fn(x) for x in leaves_t]

    def reduce(self, per_param: list[jax.Array], leaves_t: list[jax.Array]) -> list[jax.Array]:
        """The cotangent of one step's values from a per-parameter one (sum over shared parameters)."""
        if self.shared:
            return [sum(jnp.sum(x) for x in per_param).astype(jnp.result_type(leaves_t[0]))]
        return [
            (x if jnp.ndim(s) else jnp.sum(x)).astype(jnp.result_type(s))
            for x, s in zip(per_param, leaves_t, strict=True)
        ]


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
    w: list[jax.Array]
    v: list[jax.Array]
    buf: Buffer
    diverged: jax.Array
    fingerprints: jax.Array
    spills: jax.Array


def _all(xs: list[jax.Array]) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(x) for x in xs]))


def _carried(buf: Buffer) -> Buffer:
    """The part of the buffer a reverse scan carries: heads and counters, not the stacks.

    Reverse passes only read the stacks (closed over, read-only): carried through the transposed scan,
    XLA copied the whole stack every step, O(N * capacity) per step instead of O(N).
    """
    return buf._replace(stacks=[])


def _make_engine(loss, w0, meta_all, alphas, gammas, capacity):
    """Build the forward and reverse passes for fixed shapes; ``meta_all = (meta, consts)``."""
    layout = _Layout.of(w0)
    a_s = _Schedule(alphas, layout)
    g_s = _Schedule(gammas, layout)
    T = _schedule.num_steps(alphas)

    def grad_w(w_tree, meta, consts, t):
        return jax.tree.leaves(jax.grad(loss)(w_tree, meta, t, *consts))

    def weights(w_fixed):
        return layout.to_model([_fixed.from_fixed(x) for x in w_fixed])

    def decay_terms(c_t):
        ns = g_s.per_leaf(c_t, _fixed.gamma_numerator)
        one_minus = [(jnp.int64(_fixed.D) - n).astype(jnp.float64) / _fixed.D for n in ns]
        return ns, one_minus

    def forward(w0, meta_all, alphas, gammas) -> _Forward:
        meta, consts = meta_all
        w, ok_w = zip(*[_fixed.to_fixed(x) for x in layout.from_model(w0)], strict=True)
        v = [jnp.zeros(s, jnp.int64) for s in layout.shapes]
        buf = _fixed.empty_buffer(list(layout.shapes), capacity)

        def step(carry, xs):
            w, v, buf, diverged = carry
            t, a_t, c_t = xs
            g = grad_w(weights(w), meta, consts, t)
            ns, one_minus = decay_terms(c_t)
            v, buf, spilled = _fixed.mul_gamma(v, ns, buf)
            dv, ok1 = zip(
                *[_fixed.to_fixed(om * gi.astype(jnp.float64)) for om, gi in zip(one_minus, g, strict=True)],
                strict=True,
            )
            v = [vi - d for vi, d in zip(v, dv, strict=True)]
            dw, ok2 = zip(
                *[
                    _fixed.to_fixed(a * _fixed.from_fixed(vi))
                    for a, vi in zip(a_s.per_leaf(a_t), v, strict=True)
                ],
                strict=True,
            )
            w = [wi + d for wi, d in zip(w, dw, strict=True)]
            ok = _all([*ok1, *ok2, *map(_fixed.in_range, v), *map(_fixed.in_range, w)])
            return (w, v, buf, diverged | ~ok), (_fingerprint(g), spilled)

        xs = (jnp.arange(T, dtype=jnp.int32), a_s.leaves(alphas), g_s.leaves(gammas))
        (w, v, buf, diverged), (fps, spills) = jax.lax.scan(step, (list(w), v, buf, ~_all(list(ok_w))), xs)
        return _Forward(w, v, buf, diverged, fps, spills)

    def unstep(w, v, a_t):
        """Undo one step's weight update; return ``w_t`` and ``v_{t+1}`` as floats."""
        v_next = [_fixed.from_fixed(x) for x in v]
        w = [wi - _fixed.to_fixed(a * vn)[0] for wi, a, vn in zip(w, a_s.per_leaf(a_t), v_next, strict=True)]
        return w, v_next

    def unvelocity(v, buf, g, c_t, spilled, stacks):
        """Undo one step's velocity update given the recomputed gradient; ``stacks`` read-only."""
        ns, one_minus = decay_terms(c_t)
        v = [
            vi + _fixed.to_fixed(om * gi.astype(jnp.float64))[0]
            for vi, om, gi in zip(v, one_minus, g, strict=True)
        ]
        v, buf = _fixed.div_gamma(v, ns, buf, spilled, stacks)
        return v, buf, ns, one_minus

    def scan_backwards(body, init, fwd, alphas, gammas):
        xs = (
            jnp.arange(T, dtype=jnp.int32),
            a_s.leaves(alphas),
            g_s.leaves(gammas),
            fwd.fingerprints,
            fwd.spills,
        )
        return jax.lax.scan(body, init, xs, reverse=True)

    def first_mismatch(mismatch, g, fp, t):
        return jnp.where((mismatch == _NO_STEP) & (_fingerprint(g) != fp), t, mismatch)

    def reverse(fwd: _Forward, meta_all, alphas, gammas):
        """Run the training backwards without derivatives; for `check_reversal`."""
        meta, consts = meta_all

        def step(carry, xs):
            w, v, buf, mismatch = carry
            t, a_t, c_t, fp, spilled = xs
            w, _ = unstep(w, v, a_t)
            g = grad_w(weights(w), meta, consts, t)
            v, buf, _, _ = unvelocity(v, buf, g, c_t, spilled, fwd.buf.stacks)
            return (w, v, buf, first_mismatch(mismatch, g, fp, t)), None

        init = (fwd.w, fwd.v, _carried(fwd.buf), jnp.asarray(_NO_STEP, jnp.int32))
        (w, v, buf, mismatch), _ = scan_backwards(step, init, fwd, alphas, gammas)
        return w, v, buf, mismatch

    def backward(fwd: _Forward, meta_all, alphas, gammas, dw_T):
        """Algorithm 2: reverse the training and accumulate every hypergradient."""

        def step(carry, xs):
            w, v, buf, mismatch, dw, dv, dmeta = carry
            t, a_t, c_t, fp, spilled = xs
            w, v_next = unstep(w, v, a_t)
            alpha = a_s.per_leaf(a_t)
            dalpha = a_s.reduce([x * y for x, y in zip(dw, v_next, strict=True)], a_t)
            meta, consts = meta_all
            g, vjp = jax.vjp(lambda w, m, c: grad_w(w, m, c, t), weights(w), meta, consts)
            v, buf, ns, one_minus = unvelocity(v, buf, g, c_t, spilled, fwd.buf.stacks)
            dv = [d + a * x for d, a, x in zip(dv, alpha, dw, strict=True)]
            dgamma = g_s.reduce(
                [
                    d * (_fixed.from_fixed(vi) + gi.astype(jnp.float64))
                    for d, vi, gi in zip(dv, v, g, strict=True)
                ],
                c_t,
            )
            hw, hmeta, hconsts = vjp(
                [(om * d).astype(dt) for om, d, dt in zip(one_minus, dv, layout.dtypes, strict=True)]
            )
            dw = [d - h.astype(jnp.float64) for d, h in zip(dw, jax.tree.leaves(hw), strict=True)]
            dmeta = jax.tree.map(lambda acc, h: acc - h.astype(acc.dtype), dmeta, (hmeta, hconsts))
            dv = [d * (n.astype(jnp.float64) / _fixed.D) for d, n in zip(dv, ns, strict=True)]
            return (w, v, buf, first_mismatch(mismatch, g, fp, t), dw, dv, dmeta), (dalpha, dgamma)

        init = (
            fwd.w,
            fwd.v,
            _carried(fwd.buf),
            jnp.asarray(_NO_STEP, jnp.int32),
            dw_T,
            [jnp.zeros_like(x) for x in dw_T],
            jax.tree.map(jnp.zeros_like, meta_all),
        )
        (w, v, buf, mismatch, dw, _, dmeta), (dalphas, dgammas) = scan_backwards(
            step, init, fwd, alphas, gammas
        )
        return w, v, buf, mismatch, dw, dmeta, dalphas, dgammas

    def restored(w, v, buf, w0_fixed):
        # Every slot was popped (used == 0) and every head emptied; the stacks themselves are read-only
        # in reverse (see `_carried`), so there is nothing left in them to check.
        return (
            _all([a == b for a, b in zip(w, w0_fixed, strict=True)])
            & _all([x == 0 for x in v])
            & _all([h == 0 for h in buf.heads])
            & (buf.used == 0)
        )

    def to_fixed_w0(w0):
        return [_fixed.to_fixed(x)[0] for x in layout.from_model(w0)]

    return layout, forward, reverse, backward, restored, to_fixed_w0


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
        Memory: ``8 N`` bytes of heads + ``8 N ceil(capacity / 2)`` bytes of stack + O(N + T)
        state, for N parameters; about ``N T log2(1/gamma) / 8`` bytes are really needed.
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
    layout, forward, _, backward, restored, to_fixed_w0 = _make_engine(
        closed, w0, (meta, consts), alphas, gammas, capacity
    )

    def output(fwd: _Forward):
        w = [jnp.where(fwd.diverged, jnp.nan, _fixed.from_fixed(x)) for x in fwd.w]
        return layout.to_model(w)

    @jax.custom_vjp
    def run(w0, meta_all, alphas, gammas, report):
        return output(forward(w0, meta_all, alphas, gammas))

    def run_fwd(w0, meta_all, alphas, gammas, report):
        fwd = forward(w0, meta_all, alphas, gammas)
        return output(fwd), (fwd, to_fixed_w0(w0), meta_all, alphas, gammas)

    def run_bwd(res, w_bar):
        fwd, w0_fixed, meta_all, alphas, gammas = res
        w, v, buf, mismatch, dw, dmeta, dalphas, dgammas = backward(
            fwd, meta_all, alphas, gammas, layout.from_model(w_bar)
        )
        exact = restored(w, v, buf, w0_fixed) & (mismatch == _NO_STEP)
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
        return (
            jax.tree.map(poison, layout.to_model(dw)),
            jax.tree.map(poison, dmeta),
            jax.tree.map(poison, _unstack(alphas, dalphas)),
            jax.tree.map(poison, _unstack(gammas, dgammas)),
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
    _, forward, reverse, _, restored, to_fixed_w0 = _make_engine(
        closed, w0, (meta, consts), alphas, gammas, capacity
    )

    @jax.jit
    def roundtrip(w0, meta_all, alphas, gammas):
        fwd = forward(w0, meta_all, alphas, gammas)
        w, v, buf, mismatch = reverse(fwd, meta_all, alphas, gammas)
        ok = ~fwd.diverged & ~fwd.buf.overflow & (mismatch == _NO_STEP)
        return ok & restored(w, v, buf, to_fixed_w0(w0))

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
    _, forward, _, _, _, _ = _make_engine(closed, w0, (meta, consts), alphas, gammas, capacity)
    return jax.jit(forward)(w0, (meta, consts), alphas, gammas)


def buffer_capacity(steps: int, min_gamma: float) -> int:
    """Stack slots for ``steps`` steps with every gamma >= ``min_gamma``, rounded up to a bucket
    (2, 3, 4, 6, 8, 12, ...) so that a tuning loop whose gammas drift does not recompile."""
    return _fixed.capacity_for(steps, min_gamma, bucket=True)
