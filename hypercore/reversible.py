"""Reversible SGD with momentum: exact hypergradients without storing the trajectory.

Maclaurin, Duvenaud and Adams, "Gradient-based Hyperparameter Optimization through Reversible
Learning", ICML 2015, Algorithms 1 and 2 (as corrected in HIPS/hypergrad). The forward rule, with
``v_0 = 0``::

    g_t     = grad_w L(w_t, meta, t)
    v_{t+1} = gamma_t v_t - (1 - gamma_t) g_t
    w_{t+1} = w_t + alpha_t v_{t+1}

runs on int64 fixed-point ``w`` and ``v`` (see `hypercore._fixed`; ``v`` stored scaled by gamma's
running product, so that most steps are additions: `SGDM`), so the backward pass can run it in
reverse bit for bit from ``(w_T, v_T)`` and the information buffer, recomputing each ``g_t``, and
accumulate, for ``t = T-1 .. 0``::

    dalpha_t = dw . v_{t+1}
    dv      += alpha_t dw
    dgamma_t = dv . (v_t + g_t)
    dw      -= H_t ((1 - gamma_t) dv)              } one VJP of grad_w L at (w_t, meta):
    dmeta   -= d/dmeta <g_t, (1 - gamma_t) dv>     } reverse over reverse
    dv      *= gamma_t

Memory is the buffer (about ``log2(1/gamma)`` bits per parameter per step) plus O(N) state, not the
O(N T) trajectory of ordinary reverse mode.

The training-optimizer slot
---------------------------
The engine is split in two. The generic part (`_prepare`, `_make_engine`, `_train`) owns the
fixed-point weights, the information buffer, the forward and reverse ``lax.scan`` loops, the
recomputation of ``g_t`` and its fingerprint check, the one reverse-over-reverse VJP per step, the
divergence and overflow flags and the `ReversalReport`; it knows no update formula. The formulas
live in a `TrainingOptimizer`: its exact forward step, that step's exact inverse (in two halves,
because ``g_t`` must be recomputed at the restored ``w_t`` in between, each half with the buffer, so
that a decay of ``w`` as well as of the state can be undone) and the step's adjoint, which returns
``w_t``'s direct cotangent too (so a step may scale ``w``). `SGDM` (the paper's SGD with momentum,
above) is registered in `OPTIMIZERS` under ``"sgd_momentum"`` and is the default of every internal
function that takes ``optimizer=``; `hypercore.adam` registers ``"adam"`` and ``"adamw"``.

Per step ``t`` the generic loops call, with ``hyper`` a tuple of `Hyper` (the optimizer's schedules
at ``t``, in the order of its ``schedule_names``) and ``buf`` the `hypercore._fixed.Buffer`::

    forward:   g = grad_w L(w_t);  fingerprint(g)
               w, state, buf, record, checks = opt.forward_step(w, state, buf, g, hyper)
    reverse:   w, state, buf, w_aux = opt.undo_weights(w, state, buf, hyper, record, stacks)
               g, vjp = vjp(grad_w L, w_t, meta);  compare fingerprint(g)   # at the restored w_t
               state, buf, s_aux = opt.undo_state(state, buf, g, hyper, record, stacks)
    backward:  dw, dstate, ct, dhyper = opt.adjoint_step(dw, dstate, g, state, hyper, w_aux, s_aux)
               dw -= H_t ct;  dmeta -= d/dmeta <g_t, ct>                       # from the VJP

``undo_weights`` takes ``w_{t+1}`` back to ``w_t`` (popping the buffer if the step multiplied ``w``
by a decay) and hands ``state`` and ``buf`` on to ``undo_state``. ``adjoint_step``'s ``dw`` is
``w_t``'s cotangent through the step's direct path (SGD with momentum: ``dw`` itself; AdamW:
``(1 - lr_t wd_t) dw``), to which the engine adds ``-H_t ct``. ``ct`` is *minus* the cotangent of
``g_t`` (SGD with momentum: ``(1 - gamma_t) dv``), so that the paper's arithmetic is kept operation
for operation. ``dhyper`` holds, per schedule, one cotangent per
weight leaf (per parameter); the engine sums it over shared parameters. ``record`` is anything the
inverse needs per step that must not depend on recomputed data (SGD with momentum: the buffer's
spill flag); the forward scan stacks it. ``checks`` are boolean arrays that must all be true (the
optimizer's fixed-point conversions and state range): otherwise the run is reported as diverged.
``stacks`` are the buffer's stacks, read-only in reverse (pass them to `_fixed.div_gamma`).
``decay_schedule`` is the index, or a tuple of indices, of the schedules whose values multiply
something through the buffer: the smallest value over them, with ``buffer_slots`` (bucketed by
`buffer_capacity(steps, min_gamma, optimizer=...)`), sizes the stack.

Optional members let an optimizer do more in one pass (for `hypercore._fused`'s CPU kernels):
``undo_and_adjoint(state, buf, g, hyper, record, stacks, dw, dstate, w_aux)``, which the
backward pass then calls instead of ``undo_state`` and ``adjoint_step`` and which returns
``(state, buf, dw, dstate, ct, dhyper, fp)``; ``forward_step_fused(w, state, buf, g, hyper)``, which
returns what ``forward_step`` does and then ``(copy, fp)``; ``checks_weights = True``, which says
``checks`` already hold the new weights' range, so the engine does not test it again;
``subtracts_hvp = True`` (`SGDM`, `hypercore.adam.Adam`), which says the backward pass's member takes one
more argument, ``hw``: the later step's vector-Jacobian product of the gradient (a list in the model's
dtypes), which ``dw`` has yet to lose (``w_{t+1}``'s cotangent is ``dw - hw``), subtracted in the
optimizer's own pass over ``dw`` rather than in one of XLA's;
``undo_adjoint_then_weights(state, buf, g, hyper, record, stacks, dw, dstate, hw, w, hyper_prev, last,
dtypes)`` (`SGDM`, `hypercore.adam.Adam`), which pipelines the reverse loop: step ``t``'s undo of the state
and adjoint, then step ``t - 1``'s undo of the weights (``hyper_prev`` its values; ``last``, at ``t
= 0``, says there is none, and ``w`` comes back as it was), returning ``(w, state, buf, dw, dstate,
ct, dhyper, fp, copy)``, so that one pass over the weights does both (the engine undoes step ``T -
1``'s weights before its loop, with ``undo_weights``); and
``undo_weights_with_copy(w, state, buf, hyper, record, stacks, dtypes)``, which returns what
``undo_weights`` does and, last, ``copy``. ``copy`` is the new weights in the model's dtypes
(``dtypes``, one per leaf; ``g``'s in the forward step), the copy the next gradient reads, made in the
same pass over the weights; ``fp`` is ``g``'s fingerprint (`_fingerprint`, the same bits), taken in
the pass that reads ``g``. Either may be ``None``: the engine then converts the weights or hashes the
gradient itself, as for an optimizer without these members. An optimizer that stores the weights
scaled (`hypercore.adam`'s AdamW: ``w = F w'``) makes both copies itself and has
``final_weights(w, hyper)``, the float64 weights from the stored ones after the last step (``hyper``
that step's values), which the engine returns; it compares the stored weights with ``w_0`` after the
reverse pass as they are, so the scale must be 1 at ``t = 0``.

A second exact optimizer is a class with these members, registered under a name, and an entry
point that passes its schedules; nothing in the engine is copied. `hypercore.adam` is the worked
example; in outline (its ``m`` and ``v``, and with weight decay ``w``, are stored scaled by float64
factors that follow their decays, and halved exactly, the lost bit pushed onto one head per parameter
that the three share, when a decay's running product crosses a power of two: "Scaled state" there)::

    @dataclasses.dataclass(frozen=True)
    class Adam:
        eps: float = 1e-8
        weight_decay: bool = False       # AdamW: w_{t+1} = f_t w_t - lr_t u_t, f_t = 1 - lr_t wd_t
        name = "adam"                    # "adamw" with weight decay
        schedule_names = ("learning_rates", "b1", "b2", "bias1", "bias2")   # + "decay_factors",
        # + the scales' schedules: "renorm1", "scale1", "renorm2", "scale2" (+ w's three)
        decay_schedule = (1, 2)          # + 5: the smallest of b1, b2 (and f) sizes the buffer

        def buffer_shapes(self, shapes):  # one head per parameter, shared by m's, v's (, w's) bits
            return list(shapes)
        def buffer_slots(self, steps, min_decay):
            return adam_capacity(steps, min_decay, min_decay, min_decay, bucket=False)
        def init_state(self, shapes):    # fixed-point state at t = 0, any pytree of int64 arrays
            return tuple([jnp.zeros(s, jnp.int64) for s in shapes] for _ in range(3))  # m, v's limbs
        def init_adjoint(self, dw_T):    # the state's cotangent at T, float64, same structure
            return ([jnp.zeros_like(x) for x in dw_T], [jnp.zeros_like(x) for x in dw_T])
        def forward_step(self, w, state, buf, g, hyper): ...   # renormalisations (mul_beta) push
        # m's, v's, w's bits where due; then m' += fixed((1 - b1) g / S1), v' likewise, w' -= ...
        def undo_weights(self, w, state, buf, hyper, record, stacks): ...  # + (lr / F) u; div_beta
        def undo_state(self, state, buf, g, hyper, record, stacks): ...   # - increments; div_beta
        def adjoint_step(self, dw, dstate, g, state, hyper, w_aux, s_aux): ...  # dw -> f dw

    OPTIMIZERS["adam"], OPTIMIZERS["adamw"] = Adam(), Adam(weight_decay=True)

    def reversible_adam(loss, w0, meta, learning_rates, b1, b2, weight_decay=0.0, *, capacity=None,
                        min_beta=None, report=None):
        schedules = (learning_rates, b1, b2, c1, c2, f, *scales)   # quantised, f = weight_decay_factors(...)
        engine, meta_all = _prepare(loss, w0, meta, schedules, capacity=capacity,
                                    min_gamma=min_beta, optimizer="adamw")
        return _train(engine, w0, meta_all, schedules, report)

Its `check_reversal` and `forward_state` are `_prepare` followed by `_roundtrip(engine, w0, meta_all,
schedules)` and by ``jax.jit(engine.forward)(w0, meta_all, schedules)``. The contract
that makes it exact: ``undo_weights`` then ``undo_state`` restore the state and the buffer bit for
bit given the same ``g``, and every rounding the forward step does is of values the inverse can
recompute (add or subtract fixed-point integers; multiply by a decay only through the buffer, and
pop a head in the reverse of the order the forward step pushed it).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import (
    _fixed,
    _fused,
    _schedule,
    _x64,  # noqa: F401  (configures JAX for the engine before any array exists)
)
from hypercore._fixed import Buffer
from hypercore.budget import bucket_slots

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
    """A uint64 hash of the exact bits of a gradient: ``sum_l L sum_e bits_le * (e M + 2 l + 1) mod
    2**64`` over the leaves ``l`` and their elements ``e`` in C order (`_fingerprint_leaf`), with
    ``M`` even and ``L`` odd, so every element's multiplier is odd: any change of a single element
    changes the hash, and several changes cancel only by a coincidence mod 2**64.

    The multiplier is computed, not read (an array of them was once a constant as large as the
    weights that every step read from memory), and affine in the element's index, so any contiguous
    part of a leaf adds its share from its first index: the CPU kernels that read the gradient anyway
    (a fused forward step, an undo with its adjoint) take it in their own pass and the optimizer hands
    it to the engine (see the module's docstring). Elsewhere, on a CPU, leaves of a dtype
    `hypercore._fused` compiles are hashed by its fingerprint kernel, in one pass (the same bits)."""
    total = jnp.zeros((), jnp.uint64)
    for leaf, g in enumerate(g_leaves):
        if g.dtype.name in _fused.FUSED_DTYPES and _fused.available():
            term = _fused.on_cpu(
                (g,),
                lambda g, leaf=leaf: _fused.fingerprint(g, leaf),
                lambda g, leaf=leaf: _fingerprint_leaf(g, leaf),
            )
        else:
            term = _fingerprint_leaf(g, leaf)
        total = total + term
    return total


def _fingerprint_leaf(g: jax.Array, leaf: int) -> jax.Array:
    """Leaf number ``leaf``'s term of `_fingerprint`."""
    uint = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[g.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(jnp.reshape(g, (-1,)), uint).astype(jnp.uint64)
    elem_mul = jnp.uint64(_fixed.FINGERPRINT_ELEM_MUL)
    mul = jnp.arange(bits.size, dtype=jnp.uint64) * elem_mul + jnp.uint64(2 * leaf + 1)
    return jnp.sum(bits * mul, dtype=jnp.uint64) * jnp.uint64(_fixed.FINGERPRINT_LEAF_MUL)


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


class Hyper:
    """One hyperparameter schedule's values at one step, as a `TrainingOptimizer` reads them."""

    __slots__ = ("_schedule", "leaves")

    def __init__(self, schedule: _Schedule, leaves: list[jax.Array]):
        self._schedule = schedule
        self.leaves = leaves

    def per_leaf(self, fn=lambda x: jnp.asarray(x, jnp.float64)) -> list[jax.Array]:
        """One array per weight leaf (``fn`` applied), each a scalar or shaped like the leaf; a
        shared schedule's value is converted once and repeated."""
        return self._schedule.per_leaf(self.leaves, fn)


@runtime_checkable
class TrainingOptimizer(Protocol):
    """The optimizer-specific part of the reversible engine (see the module docstring).

    Conventions: ``w`` and the state are int64 fixed point (`hypercore._fixed`), lists with one array
    per weight leaf (the state may be any pytree of such lists); ``g`` is the gradient, one array per
    leaf in the model's dtype; ``hyper`` is a tuple of `Hyper`, one per name in ``schedule_names``;
    cotangents are float64. Every method is traced inside a ``lax.scan`` body: no Python state, no
    host syncs, no copies of ``buf.stacks`` (read them, or update them only through `_fixed`).
    """

    name: str
    schedule_names: tuple[str, ...]
    decay_schedule: int | tuple[int, ...]

    def buffer_shapes(self, shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """The information buffer's leaves: one head per array the step multiplies by a decay."""
        ...

    def buffer_slots(self, steps: int, min_decay: float) -> int:
        """Stack slots enough for ``steps`` steps with every value of the schedules
        ``decay_schedule`` names (one index or a tuple of them) at least ``min_decay`` (no
        bucketing; `buffer_capacity` buckets)."""
        ...

    def init_state(self, shapes: list[tuple[int, ...]]) -> PyTree:
        """The fixed-point state at ``t = 0``; the backward pass checks it is restored exactly."""
        ...

    def init_adjoint(self, dw_T: list[jax.Array]) -> PyTree:
        """The state's cotangent at ``t = T`` (float64, the state's structure)."""
        ...

    def forward_step(
        self, w: list[jax.Array], state: PyTree, buf: Buffer, g: list[jax.Array], hyper: tuple[Hyper, ...]
    ) -> tuple[list[jax.Array], PyTree, Buffer, PyTree, list[jax.Array]]:
        """``(w_{t+1}, state_{t+1}, buf, record, checks)`` from step ``t``'s values and gradient."""
        ...

    def undo_weights(
        self,
        w: list[jax.Array],
        state: PyTree,
        buf: Buffer,
        hyper: tuple[Hyper, ...],
        record: PyTree,
        stacks: list[jax.Array],
    ) -> tuple[list[jax.Array], PyTree, Buffer, PyTree]:
        """``(w_t, state, buf, w_aux)`` from ``w_{t+1}`` and ``state_{t+1}``, before ``g_t`` is
        recomputed at ``w_t``: a decay of ``w`` is undone here, popping its bits off ``buf``.
        ``state`` and ``buf`` go on to `undo_state`, ``w_aux`` to `adjoint_step`; ``record`` and
        ``stacks`` are as in `undo_state`."""
        ...

    def undo_state(
        self,
        state: PyTree,
        buf: Buffer,
        g: list[jax.Array],
        hyper: tuple[Hyper, ...],
        record: PyTree,
        stacks: list[jax.Array],
    ) -> tuple[PyTree, Buffer, PyTree]:
        """``(state_t, buf, s_aux)`` from ``state_{t+1}`` and the recomputed ``g_t``, exactly undoing
        `forward_step`; ``stacks`` are the buffer's stacks, read-only."""
        ...

    def adjoint_step(
        self,
        dw: list[jax.Array],
        dstate: PyTree,
        g: list[jax.Array],
        state: PyTree,
        hyper: tuple[Hyper, ...],
        w_aux: PyTree,
        s_aux: PyTree,
    ) -> tuple[list[jax.Array], PyTree, list[jax.Array], tuple[list[jax.Array], ...]]:
        """The step's VJP but for the gradient's own: ``(dw_t, dstate_t, ct, dhyper)`` from the
        cotangents ``dw``, ``dstate`` of ``w_{t+1}``, ``state_{t+1}``. ``dw_t`` is ``w_t``'s
        cotangent through the step's direct path only (``dw`` itself when ``w_{t+1} = w_t + ...``;
        ``(1 - lr wd) dw`` for decoupled weight decay); the engine then does ``dw_t -= H_t ct`` and
        the meta term. ``ct`` is minus the cotangent of ``g_t``; ``dhyper`` has, per schedule, one
        per-parameter cotangent per weight leaf."""
        ...


def sgd_renormalisations(gammas: PyTree) -> tuple[PyTree, PyTree, PyTree]:
    """SGD's scaled velocity's three schedules (see `SGDM`), from the gammas shaped as a schedule:
    ``(renorms, scales, scales_before)``, float64, functions of the quantised gammas alone (no data,
    no derivative: `jax.lax.stop_gradient`), so both passes read the same values.

    ``scales[t] = S_{t+1}``: gamma's running product ``P_{t+1} = prod_{s<=t} n_s / 2**16`` times the
    power of two ``2**k`` that brings it into ``(1/2, 1]``, kept so as it runs (``P`` itself
    underflows). ``renorms[t]``: the numerator ``2**(16 - k_t)`` of the exact multiplication by
    ``2**-k_t`` that step ``t`` applies to the stored velocity (through the buffer: ``k_t`` bits),
    ``k_t`` the doublings the scale takes at that step; ``2**16``, the identity, at most steps (0.15
    doublings a step at gamma 0.9). ``scales_before[t] = S_t`` (``S_0 = 1``). So ``S_{t+1} prod_{s<=t}
    2**-k_s = P_{t+1}``, exactly but for float64's rounding of each step's product: no drift."""

    def step(scale, gamma):
        s = scale * gamma  # in (2**-17, 1]: gamma >= 2**-16, the scale above 1/2
        mantissa, exponent = jnp.frexp(s)  # s = mantissa 2**exponent, mantissa in [1/2, 1)
        k = jnp.where(mantissa == 0.5, 1, 0) - exponent  # the doublings into (1/2, 1]
        return jnp.ldexp(s, k), (jnp.ldexp(jnp.float64(_fixed.D), -k), jnp.ldexp(s, k), scale)

    def one(g):
        g = jax.lax.stop_gradient(_fixed.gamma_numerator(g).astype(jnp.float64) / _fixed.D)
        return jax.lax.scan(step, jnp.ones(g.shape[1:], jnp.float64), g)[1]

    leaves, treedef = jax.tree.flatten(gammas)
    triples = [one(g) for g in leaves]
    return tuple(jax.tree.unflatten(treedef, [x[i] for x in triples]) for i in range(3))


def _sgd_schedules(alphas: PyTree, gammas: PyTree) -> tuple[PyTree, ...]:
    """`SGDM`'s five schedules from the user's two."""
    return (alphas, gammas, *sgd_renormalisations(gammas))


@dataclasses.dataclass(frozen=True)
class SGDM:
    """SGD with momentum, the paper's rule: ``v <- gamma v - (1 - gamma) g; w <- w + alpha v``.

    State: the velocity, one int64 array per weight leaf, stored scaled: ``v = S v'`` with ``S`` the
    running product of the quantised gammas brought into ``(1/2, 1]`` by powers of two
    (`sgd_renormalisations`, schedules with no data in them: ``renorms, scales, scales_before``), so
    that a step's update is an addition, ``v'_{t+1} = v'_t - fixed(((1 - gamma_t) / S_{t+1}) g_t)``,
    ``w_{t+1} = w_t + fixed((alpha_t S_{t+1}) v'_{t+1})``, and its undo a subtraction of the same
    integers. Where the product crosses powers of two, the stored velocity is first multiplied by
    ``2**-k`` exactly, through the buffer (`_fixed.mul_gamma` by ``2**(16 - k)``, undone by
    `_fixed.div_gamma`; ``record`` is that push's spill flag), and the scale by ``2**k``: at gamma
    0.9 one step in 6.6, where the paper's rule multiplied every step through the buffer. The buffer
    takes the same bits in fewer pushes. This is AdamW's scaled state (`hypercore.adam`, "Scaled
    state"), with SGD's factors below one half too: a change of representation, not of rule. The
    stored velocity needs one bit of `_fixed`'s range more (``|v| < 2**13``); the true one's
    resolution is at least as fine. ``v_0 = 0`` and ``S_0 = 1``, so the reverse pass still ends at
    ``v_0 = 0`` exactly. The adjoint is the rule's (the hypergradients reach the gammas through the
    rule's own terms, as before); the three derived schedules get no cotangent.
    """

    name = "sgd_momentum"
    schedule_names = ("alphas", "gammas", "renorms", "scales", "scales_before")
    decay_schedule = 1
    checks_weights = True  # its checks hold the new weights' range: the engine need not test them again
    subtracts_hvp = True  # the reverse member takes the engine's last vector-Jacobian product, ``hw``

    def buffer_shapes(self, shapes):
        return list(shapes)

    def buffer_slots(self, steps, min_decay):
        return _fixed.capacity_for(steps, max(min(min_decay, 1.0), 1.0 / _fixed.D), bucket=False)

    def init_state(self, shapes):
        return [jnp.zeros(s, jnp.int64) for s in shapes]

    def init_adjoint(self, dw_T):
        return [jnp.zeros_like(x) for x in dw_T]

    @staticmethod
    def _terms(hyper):
        """Per leaf, the step's ``(renorm, om', alpha', om, gamma, S_{t+1}, S_t)``: the stored
        velocity's multiplier (int64) and the scaled factors of its update and of the weights', then
        the rule's own ``1 - gamma`` and ``gamma`` (the quantised ones) and the scales."""
        alpha, gamma, renorm, scale, before = hyper
        ns = gamma.per_leaf(_fixed.gamma_numerator)
        rs = renorm.per_leaf(lambda x: jnp.asarray(x).astype(jnp.int64))  # exact: 2**(16 - k)
        s1, s0 = scale.per_leaf(), before.per_leaf()
        om = [(jnp.int64(_fixed.D) - n).astype(jnp.float64) / _fixed.D for n in ns]
        gm = [n.astype(jnp.float64) / _fixed.D for n in ns]
        om_s = [o * (1.0 / s) for o, s in zip(om, s1, strict=True)]
        alpha_s = [a * s for a, s in zip(alpha.per_leaf(), s1, strict=True)]
        return list(zip(rs, om_s, alpha_s, om, gm, s1, s0, strict=True))

    @staticmethod
    def _fused(g, *per_leaf) -> bool:
        """Whether this step may go through `hypercore._fused`'s kernels on a CPU: one value of each
        schedule per weight array (not per weight) and gradients of a compiled dtype. Static."""
        return (
            all(jnp.ndim(x) == 0 for values in per_leaf for x in jax.tree.leaves(values))
            and all(gi.dtype.name in _fused.FUSED_DTYPES for gi in g)
            and _fused.available()
        )

    def forward_step(self, w, v, buf, g, hyper):
        return self.forward_step_fused(w, v, buf, g, hyper)[:5]

    def forward_step_fused(self, w, v, buf, g, hyper):
        """`forward_step`, then the new weights in ``g``'s dtypes and ``g``'s fingerprint where the
        kernels made them in the step's own pass (``None, None`` on XLA's path, where converting the
        weights is a fusion of its own)."""
        terms = self._terms(hyper)
        rs, om_s, alpha_s = ([x[i] for x in terms] for i in range(3))
        if buf.bound is not None and self._fused(g, terms):
            buf, spilled, do, k = _fixed.plan_mul_gamma(buf, rs)
            out = [
                _fused.on_cpu(
                    (*args, k, do),
                    functools.partial(_fused.sgd_forward, leaf=leaf),
                    functools.partial(_sgd_forward_leaf, leaf=leaf),
                )
                for leaf, args in enumerate(
                    zip(w, v, buf.heads, buf.stacks, g, rs, om_s, alpha_s, strict=True)
                )
            ]
            w, v, heads, stacks, copy, oks, fps = (list(x) for x in zip(*out, strict=True))
            return w, v, buf._replace(heads=heads, stacks=stacks), spilled, oks, copy, _sum_u64(fps)
        v, buf, spilled = _fixed.mul_gamma(v, rs, buf)
        dv, ok1 = zip(
            *[_fixed.to_fixed(om * gi.astype(jnp.float64)) for om, gi in zip(om_s, g, strict=True)],
            strict=True,
        )
        v = [vi - d for vi, d in zip(v, dv, strict=True)]
        dw, ok2 = zip(
            *[_fixed.to_fixed(a * _fixed.from_fixed(vi)) for a, vi in zip(alpha_s, v, strict=True)],
            strict=True,
        )
        w = [wi + d for wi, d in zip(w, dw, strict=True)]
        checks = [*ok1, *ok2, *map(_fixed.in_range, v), *map(_fixed.in_range, w)]
        return w, v, buf, spilled, checks, None, None

    def undo_weights(self, w, v, buf, hyper, spilled, stacks):
        """Undo the weight update (no decay of ``w``: state and buffer pass through); ``w_aux`` is
        ``v'_{t+1}`` (fixed point)."""
        dtypes = [jnp.float64] * len(w)  # a copy no one reads: the kernels' path takes one dtype
        return self.undo_weights_with_copy(w, v, buf, hyper, spilled, stacks, dtypes)[:4]

    def undo_weights_with_copy(self, w, v, buf, hyper, spilled, stacks, dtypes):
        """`undo_weights`, and the restored weights in ``dtypes`` where the kernels made them in the
        same pass (``None`` on XLA's path)."""
        alphas = [x[2] for x in self._terms(hyper)]
        if (
            all(jnp.ndim(a) == 0 for a in alphas)
            and all(jnp.dtype(dt).name in _fused.FUSED_DTYPES for dt in dtypes)
            and _fused.available()
        ):
            out = [
                _fused.on_cpu(
                    args,
                    functools.partial(_fused.sgd_undo_weights, dtype=dt),
                    functools.partial(_sgd_undo_weights_leaf, dtype=dt),
                )
                for *args, dt in zip(w, v, alphas, dtypes, strict=True)
            ]
            w, copy = (list(x) for x in zip(*out, strict=True))
            return w, v, buf, v, copy
        w = [_sgd_undo_weights_leaf(wi, vi, a)[0] for wi, vi, a in zip(w, v, alphas, strict=True)]
        return w, v, buf, v, None

    def undo_state(self, v, buf, g, hyper, spilled, stacks):
        """Undo the velocity's update given the recomputed gradient, then its renormalisation;
        ``s_aux`` is the step's `_terms`."""
        terms = self._terms(hyper)
        rs, om_s = [x[0] for x in terms], [x[1] for x in terms]
        if stacks is not None and self._fused(g, rs, om_s):
            do, k = _fixed.unspill_slot(buf, spilled)
            out = [
                _fused.on_cpu((*args, k, do), _fused.sgd_undo_state, _sgd_undo_state_leaf)
                for args in zip(v, buf.heads, g, rs, om_s, stacks, strict=True)
            ]
            v, heads = (list(x) for x in zip(*out, strict=True))
            return v, _fixed.unspill_counters(buf._replace(heads=heads), spilled, do), terms
        v = [
            vi + _fixed.to_fixed(om * gi.astype(jnp.float64))[0]
            for vi, om, gi in zip(v, om_s, g, strict=True)
        ]
        v, buf = _fixed.div_gamma(v, rs, buf, spilled, stacks)
        return v, buf, terms

    def adjoint_step(self, dw, dv, g, v, hyper, v_next, terms):
        """The rule's adjoint, from the stored velocities and their scales (``v_next`` is
        ``v'_{t+1}``, ``v`` is ``v'_t``)."""
        alphas = hyper[0].per_leaf()
        _, _, _, om, gm, s1, s0 = zip(*terms, strict=True)
        dalpha = [x * (s * _fixed.from_fixed(y)) for x, y, s in zip(dw, v_next, s1, strict=True)]
        dv = [d + a * x for d, a, x in zip(dv, alphas, dw, strict=True)]
        dgamma = [
            d * (s * _fixed.from_fixed(vi) + gi.astype(jnp.float64))
            for d, vi, gi, s in zip(dv, v, g, s0, strict=True)
        ]
        ct = [o * d for o, d in zip(om, dv, strict=True)]
        dv = [d * x for d, x in zip(dv, gm, strict=True)]
        zeros = tuple([jnp.zeros_like(d) for d in dw] for _ in range(3))
        return dw, dv, ct, (dalpha, dgamma, *zeros)

    def undo_adjoint_then_weights(
        self, v, buf, g, hyper, spilled, stacks, dw, dv, hw, w, hyper_prev, last, dtypes
    ):
        """`undo_state` then `adjoint_step` (``w_{t+1}``'s cotangent ``dw - hw``), then the step before's
        `undo_weights_with_copy` from the restored ``v'_t`` (``hyper_prev`` its values; none where
        ``last``), in one pass per weight array on a CPU: ``v'_{t+1}`` is read before it is
        overwritten, so nothing keeps a copy of it, and the weights are read once (the engine's
        pipelined reverse loop). Returns ``(w, v, buf, dw, dv, ct, dhyper, fp, copy)``; with one value
        of each schedule per array, ``dhyper`` holds their sums per array; ``fp`` is ``g``'s
        fingerprint from the same pass and ``copy`` the weights in ``dtypes``, or ``None`` (XLA's
        path)."""
        terms = self._terms(hyper)
        alphas = hyper[0].per_leaf()
        alphas_prev = [jnp.where(last, 0.0, x[2]) for x in self._terms(hyper_prev)]
        if stacks is None or not self._fused(g, terms, alphas, alphas_prev):
            v_next, dw = v, _minus(dw, hw)
            v, buf, s_aux = self.undo_state(v, buf, g, hyper, spilled, stacks)
            dw, dv, ct, dhyper = self.adjoint_step(dw, dv, g, v, hyper, v_next, s_aux)
            w = [_sgd_undo_weights_leaf(wi, vi, a)[0] for wi, vi, a in zip(w, v, alphas_prev, strict=True)]
            return w, v, buf, dw, dv, ct, dhyper, None, None
        do, k = _fixed.unspill_slot(buf, spilled)
        out = [
            _fused.on_cpu(
                (v_i, h_i, dv_i, g_i, st_i, dw_i, hw_i, w_i, *x[:2], a, a_p, *x[3:], k, do),
                functools.partial(_fused.sgd_undo_adjoint, leaf=leaf),
                functools.partial(_sgd_undo_adjoint_leaf, leaf=leaf),
            )
            for leaf, (v_i, h_i, dv_i, g_i, st_i, dw_i, hw_i, w_i, x, a, a_p) in enumerate(
                zip(v, buf.heads, dv, g, stacks, dw, hw, w, terms, alphas, alphas_prev, strict=True)
            )
        ]
        v, heads, dv, ct, dalpha, dgamma, fps, dw, w, copy = (list(x) for x in zip(*out, strict=True))
        buf = _fixed.unspill_counters(buf._replace(heads=heads), spilled, do)
        copy = [c.astype(dt) for c, dt in zip(copy, dtypes, strict=True)]  # ``g``'s dtypes: the model's
        zeros = tuple([jnp.zeros((), jnp.float64)] * len(dalpha) for _ in range(3))
        return w, v, buf, dw, dv, ct, (dalpha, dgamma, *zeros), _sum_u64(fps), copy


# One weight array's steps in XLA's operations, as `hypercore._fused`'s kernels compute them: the
# default branch of `_fused.on_cpu` (so the code off a CPU) and what `_fused`'s check compares with.


def _sum_u64(terms: list[jax.Array]) -> jax.Array:
    """Fingerprint terms added mod 2**64 (`_fingerprint`)."""
    return functools.reduce(jnp.add, terms, jnp.zeros((), jnp.uint64))


def _sgd_forward_leaf(w, v, head, stack, g, n, om, alpha, k, do, *, leaf):
    head, stack = _fixed.spill_leaf(head, stack, k, do)
    v, head = _fixed.mul_gamma_leaf(v, n, head)
    dv, ok1 = _fixed.to_fixed(om * g.astype(jnp.float64))
    v = v - dv
    dw, ok2 = _fixed.to_fixed(alpha * _fixed.from_fixed(v))
    w = w + dw
    ok = jnp.all(ok1 & ok2 & _fixed.in_range(v) & _fixed.in_range(w))
    return w, v, head, stack, _fixed.from_fixed(w).astype(g.dtype), ok, _fingerprint_leaf(g, leaf)


def _sgd_undo_weights_leaf(w, v, alpha, dtype=jnp.float64):
    w = w - _fixed.to_fixed(alpha * _fixed.from_fixed(v))[0]
    return w, _fixed.from_fixed(w).astype(dtype)


def _sgd_undo_state_leaf(v, head, g, n, om, stack, k, do):
    v = v + _fixed.to_fixed(om * g.astype(jnp.float64))[0]
    v, head = _fixed.div_gamma_leaf(v, n, head)
    return v, _fixed.unspill_from(head, stack, k, do)


def _sgd_undo_adjoint_leaf(
    v, head, dv, g, stack, dw, hw, w, n, om_s, alpha, alpha_prev, om, gamma, s1, s0, k, do, *, leaf
):
    """`_fused.sgd_undo_adjoint` in XLA's operations: ``n``, ``om_s`` the stored velocity's multiplier
    and increment factor, ``alpha``, ``om``, ``gamma`` the rule's, ``alpha_prev`` the step before's
    scaled one, ``s1``, ``s0`` the scales after and before the step."""
    dw = dw - hw.astype(jnp.float64)
    dalpha = s1 * jnp.sum(dw * _fixed.from_fixed(v))
    v, head = _sgd_undo_state_leaf(v, head, g, n, om_s, stack, k, do)
    dv = dv + alpha * dw
    dgamma = jnp.sum(dv * (s0 * _fixed.from_fixed(v) + g.astype(jnp.float64)))
    ct = (om * dv).astype(g.dtype)
    fp = _fingerprint_leaf(g, leaf)
    w, copy = _sgd_undo_weights_leaf(w, v, alpha_prev, g.dtype)
    return v, head, dv * gamma, ct, dalpha, dgamma, fp, dw, w, copy


OPTIMIZERS: dict[str, TrainingOptimizer] = {"sgd_momentum": SGDM()}
"""The registered training optimizers, by name; ``optimizer=`` takes a name or an instance."""

_REGISTERED_BY = {"adam": "hypercore.adam", "adamw": "hypercore.adam"}
"""The module that registers each optimizer living outside this one, imported on first use by name."""


def _optimizer(optimizer: str | TrainingOptimizer) -> TrainingOptimizer:
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS and optimizer in _REGISTERED_BY:
            importlib.import_module(_REGISTERED_BY[optimizer])
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown training optimizer {optimizer!r}; registered: {sorted(OPTIMIZERS)}")
        return OPTIMIZERS[optimizer]
    if not isinstance(optimizer, TrainingOptimizer):
        raise TypeError(f"optimizer must be a name in OPTIMIZERS or a TrainingOptimizer, got {optimizer!r}")
    return optimizer


class _Forward(NamedTuple):
    """The forward pass's final state. ``records``: the optimizer's per-step records, stacked."""

    w: list[jax.Array]
    state: PyTree
    buf: Buffer
    diverged: jax.Array
    fingerprints: jax.Array
    records: PyTree

    @property
    def v(self) -> PyTree:
        """The optimizer's state under SGD with momentum's name for it: the velocity."""
        return self.state

    @property
    def spills(self) -> PyTree:
        """The per-step records under SGD with momentum's name for them: the spill flags."""
        return self.records


def _all(xs: list[jax.Array]) -> jax.Array:
    """True iff every element of every array is. Arrays of one shape (a step's checks on one weight
    array) are combined elementwise first, so that they cost one reduction, not one each."""
    by_shape: dict[tuple[int, ...], jax.Array] = {}
    for x in xs:
        shape = jnp.shape(x)
        by_shape[shape] = by_shape[shape] & x if shape in by_shape else x
    return jnp.all(jnp.stack([jnp.all(x) for x in by_shape.values()]))


def _carried(buf: Buffer) -> Buffer:
    """The part of the buffer a reverse scan carries: heads and counters, not the stacks.

    Reverse passes only read the stacks (closed over, read-only): carried through the transposed scan,
    XLA copied the whole stack every step, O(N * capacity) per step instead of O(N).
    """
    return buf._replace(stacks=[])


def _model_copy(w: list[jax.Array], dtypes) -> list[jax.Array]:
    """The fixed-point weights in the model's dtypes, the values the gradient is taken at."""
    return [_fixed.from_fixed(x).astype(dt) for x, dt in zip(w, dtypes, strict=True)]


def _forward_step(opt: TrainingOptimizer, w, state, buf, g, hyper, dtypes):
    """``forward_step``, the new weights in the model's ``dtypes`` and ``g``'s fingerprint: the
    optimizer's own where it makes them in the step's pass (``forward_step_fused``), else here."""
    fused = getattr(opt, "forward_step_fused", None)
    if fused is None:
        w, state, buf, record, checks = opt.forward_step(w, state, buf, g, hyper)
        copy = fp = None
    else:
        w, state, buf, record, checks, copy, fp = fused(w, state, buf, g, hyper)
    return w, state, buf, record, checks, _or_converted(copy, w, dtypes), _or_hashed(fp, g)


def _undo_weights(opt: TrainingOptimizer, w, state, buf, hyper, record, stacks, dtypes):
    """``undo_weights``, and the restored weights in the model's ``dtypes`` (see `_forward_step`)."""
    with_copy = getattr(opt, "undo_weights_with_copy", None)
    if with_copy is None:
        w, state, buf, w_aux = opt.undo_weights(w, state, buf, hyper, record, stacks)
        copy = None
    else:
        w, state, buf, w_aux, copy = with_copy(w, state, buf, hyper, record, stacks, dtypes)
    return w, state, buf, w_aux, _or_converted(copy, w, dtypes)


def _or_converted(copy: list[jax.Array] | None, w: list[jax.Array], dtypes) -> list[jax.Array]:
    """The optimizer's copy of the weights in the model's dtypes, or ``w`` converted to them."""
    return _model_copy(w, dtypes) if copy is None else copy


def _or_hashed(fp: jax.Array | None, g: list[jax.Array]) -> jax.Array:
    """The optimizer's fingerprint of ``g``, or `_fingerprint`'s pass of its own."""
    return _fingerprint(g) if fp is None else fp


def _undo_and_adjoint(opt: TrainingOptimizer, state, buf, g, hyper, record, stacks, dw, dstate, w_aux, hw):
    """``undo_state`` then ``adjoint_step``, or the optimizer's ``undo_and_adjoint`` where it has one
    (the two in one call per weight array: `SGDM`, `hypercore.adam.Adam`). ``hw`` is the later step's
    vector-Jacobian product of the gradient, still to be subtracted from ``dw`` where the optimizer
    ``subtracts_hvp`` (else ``None``). Returns ``(state, buf, dw, dstate, ct, dhyper, fp)``, ``fp``
    ``g``'s fingerprint (the optimizer's, or taken here)."""
    both = getattr(opt, "undo_and_adjoint", None)
    if both is not None:
        extra = () if hw is None else (hw,)
        *out, fp = both(state, buf, g, hyper, record, stacks, dw, dstate, w_aux, *extra)
        return (*out, _or_hashed(fp, g))
    if hw is not None:  # ``subtracts_hvp`` without the member that would: subtracted here
        dw = _minus(dw, hw)
    state, buf, s_aux = opt.undo_state(state, buf, g, hyper, record, stacks)
    return (state, buf, *opt.adjoint_step(dw, dstate, g, state, hyper, w_aux, s_aux), _fingerprint(g))


def _minus(dw, hw):
    """``dw - hw``, leaf by leaf, ``hw`` (a vector-Jacobian product in the model's dtypes) in float64."""
    return [d - h.astype(jnp.float64) for d, h in zip(dw, hw, strict=True)]


class _Engine(NamedTuple):
    """The passes `_make_engine` builds for one problem's shapes."""

    layout: _Layout
    forward: Callable
    reverse: Callable
    backward: Callable
    restored: Callable
    to_fixed_w0: Callable
    final_weights: Callable


def _make_engine(
    loss, w0, meta_all, schedules, capacity, optimizer: TrainingOptimizer = OPTIMIZERS["sgd_momentum"]
):
    """Build the forward and reverse passes for fixed shapes; ``meta_all = (meta, consts)``,
    ``schedules`` in the order of ``optimizer.schedule_names``."""
    opt = optimizer
    layout = _Layout.of(w0)
    scheds = tuple(_Schedule(s, layout) for s in schedules)
    T = _schedule.num_steps(schedules[0])

    def grad_w(w_tree, meta, consts, t):
        return jax.tree.leaves(jax.grad(loss)(w_tree, meta, t, *consts))

    def schedule_leaves(schedules):
        return tuple(s.leaves(x) for s, x in zip(scheds, schedules, strict=True))

    def hypers(leaves_t):
        return tuple(Hyper(s, x) for s, x in zip(scheds, leaves_t, strict=True))

    def forward(w0, meta_all, schedules) -> _Forward:
        meta, consts = meta_all
        w, ok_w = zip(*[_fixed.to_fixed(x) for x in layout.from_model(w0)], strict=True)
        state = opt.init_state(list(layout.shapes))
        buf = _fixed.empty_buffer(opt.buffer_shapes(list(layout.shapes)), capacity)

        # The weights are carried in the model's dtypes too, the copy each step's gradient reads:
        # made by the step that changes them, in the same pass where the optimizer can.
        def step(carry, xs):
            w, w_model, state, buf, diverged = carry
            t, leaves_t = xs
            g = grad_w(layout.to_model(w_model), meta, consts, t)
            w, state, buf, record, checks, w_model, fp = _forward_step(
                opt, w, state, buf, g, hypers(leaves_t), layout.dtypes
            )
            ok = _all([*checks, *([] if getattr(opt, "checks_weights", False) else map(_fixed.in_range, w))])
            return (w, w_model, state, buf, diverged | ~ok), (fp, record)

        xs = (jnp.arange(T, dtype=jnp.int32), schedule_leaves(schedules))
        init = (list(w), _model_copy(list(w), layout.dtypes), state, buf, ~_all(list(ok_w)))
        (w, _, state, buf, diverged), (fps, records) = jax.lax.scan(step, init, xs)
        return _Forward(w, state, buf, diverged, fps, records)

    def scan_backwards(body, init, fwd, schedules):
        xs = (jnp.arange(T, dtype=jnp.int32), schedule_leaves(schedules), fwd.fingerprints, fwd.records)
        return jax.lax.scan(body, init, xs, reverse=True)

    def first_mismatch(mismatch, fp_now, fp, t):
        return jnp.where((mismatch == _NO_STEP) & (fp_now != fp), t, mismatch)

    def reverse(fwd: _Forward, meta_all, schedules):
        """Run the training backwards without derivatives; for `check_reversal`."""
        meta, consts = meta_all

        def step(carry, xs):
            w, state, buf, mismatch = carry
            t, leaves_t, fp, record = xs
            hyper = hypers(leaves_t)
            w, state, buf, _, w_model = _undo_weights(
                opt, w, state, buf, hyper, record, fwd.buf.stacks, layout.dtypes
            )
            g = grad_w(layout.to_model(w_model), meta, consts, t)
            state, buf, _ = opt.undo_state(state, buf, g, hyper, record, fwd.buf.stacks)
            return (w, state, buf, first_mismatch(mismatch, _fingerprint(g), fp, t)), None

        init = (fwd.w, fwd.state, _carried(fwd.buf), jnp.asarray(_NO_STEP, jnp.int32))
        (w, state, buf, mismatch), _ = scan_backwards(step, init, fwd, schedules)
        return w, state, buf, mismatch

    def backward(fwd: _Forward, meta_all, schedules, dw_T):
        """Algorithm 2: reverse the training and accumulate every hypergradient."""
        stacks = fwd.buf.stacks

        def step(carry, xs):
            w, w_model, state, buf, mismatch, dw, hw, dstate, dmeta = carry
            t, leaves_t, leaves_prev, fp, record = xs
            hyper = hypers(leaves_t)
            if not pipelined:
                w, state, buf, w_aux, w_model = _undo_weights(
                    opt, w, state, buf, hyper, record, stacks, layout.dtypes
                )
            meta, consts = meta_all
            g, vjp = jax.vjp(lambda w, m, c: grad_w(w, m, c, t), layout.to_model(w_model), meta, consts)
            if pipelined:  # this step's undo and adjoint, then the step before's weights
                w, state, buf, dw, dstate, ct, dhyper, fp_now, copy = opt.undo_adjoint_then_weights(
                    state,
                    buf,
                    g,
                    hyper,
                    record,
                    stacks,
                    dw,
                    dstate,
                    hw,
                    w,
                    hypers(leaves_prev),
                    t == 0,
                    layout.dtypes,
                )
                fp_now, w_model = _or_hashed(fp_now, g), _or_converted(copy, w, layout.dtypes)
            else:
                state, buf, dw, dstate, ct, dhyper, fp_now = _undo_and_adjoint(
                    opt, state, buf, g, hyper, record, stacks, dw, dstate, w_aux, hw
                )
            dhyper = tuple(s.reduce(d, x) for s, d, x in zip(scheds, dhyper, leaves_t, strict=True))
            h, hmeta, hconsts = vjp([c.astype(dt) for c, dt in zip(ct, layout.dtypes, strict=True)])
            if deferred:  # the next step's pass subtracts it
                hw = jax.tree.leaves(h)
            else:
                dw = _minus(dw, jax.tree.leaves(h))
            dmeta = jax.tree.map(lambda acc, h: acc - h.astype(acc.dtype), dmeta, (hmeta, hconsts))
            carry = (w, w_model if pipelined else None, state, buf)
            return (*carry, first_mismatch(mismatch, fp_now, fp, t), dw, hw, dstate, dmeta), dhyper

        # An optimizer that ``subtracts_hvp`` takes each step's vector-Jacobian product into the next
        # (earlier) step's pass over ``dw``: ``w_t``'s cotangent is ``dw - hw``, saving an XLA pass over
        # the weights per step; the last is subtracted here.
        deferred = getattr(opt, "subtracts_hvp", False)
        hw0 = [jnp.zeros(s, dt) for s, dt in zip(layout.shapes, layout.dtypes, strict=True)]
        # A pipelined optimizer's loop starts at ``w_{T-1}``, the last step's weights undone here, and
        # each step undoes the weights of the step before (the values of step 0's for step 0: unused)
        pipelined = getattr(opt, "undo_adjoint_then_weights", None) is not None
        leaves = schedule_leaves(schedules)
        w, w_model, state, buf = fwd.w, None, fwd.state, _carried(fwd.buf)
        if pipelined:
            last = jax.tree.map(lambda x: x[-1], (leaves, fwd.records))
            w, state, buf, _, w_model = _undo_weights(
                opt, w, state, buf, hypers(last[0]), last[1], stacks, layout.dtypes
            )
        init = (
            w,
            w_model,
            state,
            buf,
            jnp.asarray(_NO_STEP, jnp.int32),
            dw_T,
            hw0 if deferred else None,
            opt.init_adjoint(dw_T),
            jax.tree.map(jnp.zeros_like, meta_all),
        )
        prev = jax.tree.map(lambda x: jnp.concatenate([x[:1], x[:-1]]), leaves) if pipelined else None
        xs = (jnp.arange(T, dtype=jnp.int32), leaves, prev, fwd.fingerprints, fwd.records)
        (w, _, state, buf, mismatch, dw, hw, _, dmeta), dhypers = jax.lax.scan(step, init, xs, reverse=True)
        dw = _minus(dw, hw) if deferred else dw
        return w, state, buf, mismatch, dw, dmeta, dhypers

    def restored(w, state, buf, w0_fixed):
        # Every slot was popped (used == 0) and every head emptied; the stacks themselves are read-only
        # in reverse (see `_carried`), so there is nothing left in them to check.
        state0 = jax.tree.leaves(opt.init_state(list(layout.shapes)))
        return (
            _all([a == b for a, b in zip(w, w0_fixed, strict=True)])
            & _all([x == x0 for x, x0 in zip(jax.tree.leaves(state), state0, strict=True)])
            & _all([h == 0 for h in buf.heads])
            & (buf.used == 0)
        )

    def to_fixed_w0(w0):
        return [_fixed.to_fixed(x)[0] for x in layout.from_model(w0)]

    def final_weights(w, schedules):
        """The float64 weights from the stored ones after the last step."""
        final = getattr(opt, "final_weights", None)
        if final is None:
            return [_fixed.from_fixed(x) for x in w]
        last = tuple([x[-1] for x in leaves] for leaves in schedule_leaves(schedules))
        return final(w, hypers(last))

    return _Engine(layout, forward, reverse, backward, restored, to_fixed_w0, final_weights)


def _decay_indices(optimizer: TrainingOptimizer) -> tuple[int, ...]:
    """``decay_schedule`` as a tuple of schedule indices."""
    d = optimizer.decay_schedule
    return tuple(d) if isinstance(d, (tuple, list)) else (d,)


def _resolve_capacity(
    T: int,
    decays: PyTree,
    capacity: int | None,
    min_decay: float | None,
    optimizer: TrainingOptimizer,
) -> int:
    if capacity is not None:
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive int (32-bit slots), got {capacity!r}")
        return int(capacity)
    if min_decay is None:
        min_decay = _concrete_min_gamma(decays)
        if min_decay is None:
            names = "/".join(optimizer.schedule_names[i] for i in _decay_indices(optimizer))
            raise ValueError(
                f"{names} are traced, so the information buffer cannot be sized from them: pass "
                "capacity=hypercore.buffer_capacity(T, min_gamma) or min_gamma= computed from concrete "
                "values"
            )
    return optimizer.buffer_slots(T, float(min_decay))


def _prepare(
    loss: Callable,
    w0: PyTree,
    meta: PyTree,
    schedules: tuple[PyTree, ...],
    *,
    capacity: int | None,
    min_gamma: float | None,
    optimizer: str | TrainingOptimizer = "sgd_momentum",
) -> tuple[_Engine, tuple[PyTree, tuple]]:
    """What every entry point does before running: check the arguments (x64, every schedule's
    shapes against ``w0``, one step count), size the buffer, closure-convert the loss (arrays it
    closes over become ``consts``, differentiated like ``meta``) and build the engine.

    Returns ``(engine, meta_all)`` with ``meta_all = (meta, consts)``, the engine's meta argument.
    """
    _fixed.require_x64()
    opt = _optimizer(optimizer)
    names = opt.schedule_names
    if len(schedules) != len(names):
        raise TypeError(
            f"the {opt.name} optimizer takes {len(names)} schedules {names}, got {len(schedules)}"
        )
    steps = [_schedule.check(s, w0, name) for s, name in zip(schedules, names, strict=True)]
    if len(set(steps)) != 1:
        raise ValueError(f"{' and '.join(names)} must have the same number of steps")
    T = steps[0]
    decays = tuple(schedules[i] for i in _decay_indices(opt))
    capacity = _resolve_capacity(T, decays, capacity, min_gamma, opt)
    t0 = jnp.zeros((), jnp.int32)
    closed, consts = jax.closure_convert(loss, w0, meta, t0)
    return _make_engine(closed, w0, (meta, consts), schedules, capacity, opt), (meta, consts)


def _train(engine: _Engine, w0: PyTree, meta_all, schedules: tuple, report: jax.Array | None) -> PyTree:
    """``w_T``, differentiable by reversal with respect to ``w0``, ``meta_all``, every schedule and
    ``report`` (whose cotangent is the `ReversalReport`)."""
    layout, forward, _, backward, restored, to_fixed_w0, final_weights = engine
    if report is None:
        report = empty_report()

    def output(fwd: _Forward, schedules):
        w = [jnp.where(fwd.diverged, jnp.nan, x) for x in final_weights(fwd.w, schedules)]
        return layout.to_model(w)

    @jax.custom_vjp
    def run(w0, meta_all, schedules, report):
        return output(forward(w0, meta_all, schedules), schedules)

    def run_fwd(w0, meta_all, schedules, report):
        fwd = forward(w0, meta_all, schedules)
        return output(fwd, schedules), (fwd, to_fixed_w0(w0), meta_all, schedules)

    def run_bwd(res, w_bar):
        fwd, w0_fixed, meta_all, schedules = res
        w, state, buf, mismatch, dw, dmeta, dhypers = backward(
            fwd, meta_all, schedules, layout.from_model(w_bar)
        )
        exact = restored(w, state, buf, w0_fixed) & (mismatch == _NO_STEP)
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
            tuple(jax.tree.map(poison, _unstack(s, d)) for s, d in zip(schedules, dhypers, strict=True)),
            rep,
        )

    run.defvjp(run_fwd, run_bwd)
    return run(w0, meta_all, tuple(schedules), report)


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
    engine, meta_all, schedules = _prepare_sgd(loss, w0, meta, alphas, gammas, capacity, min_gamma)
    return _train(engine, w0, meta_all, schedules, report)


def _prepare_sgd(loss, w0, meta, alphas, gammas, capacity, min_gamma):
    """`_prepare` for `SGDM`: the user's two schedules checked, then its five."""
    steps = [_schedule.check(s, w0, name) for s, name in ((alphas, "alphas"), (gammas, "gammas"))]
    if steps[0] != steps[1]:
        raise ValueError("alphas and gammas must have the same number of steps")
    schedules = _sgd_schedules(alphas, gammas)
    engine, meta_all = _prepare(loss, w0, meta, schedules, capacity=capacity, min_gamma=min_gamma)
    return engine, meta_all, schedules


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
    engine, meta_all, schedules = _prepare_sgd(loss, w0, meta, alphas, gammas, capacity, min_gamma)
    return _roundtrip(engine, w0, meta_all, schedules)


def _roundtrip(engine: _Engine, w0: PyTree, meta_all, schedules: tuple) -> bool:
    @jax.jit
    def roundtrip(w0, meta_all, schedules):
        fwd = engine.forward(w0, meta_all, schedules)
        w, state, buf, mismatch = engine.reverse(fwd, meta_all, schedules)
        ok = ~fwd.diverged & ~fwd.buf.overflow & (mismatch == _NO_STEP)
        return ok & engine.restored(w, state, buf, engine.to_fixed_w0(w0))

    return bool(roundtrip(w0, meta_all, tuple(schedules)))


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
    engine, meta_all, schedules = _prepare_sgd(loss, w0, meta, alphas, gammas, capacity, min_gamma)
    return jax.jit(engine.forward)(w0, meta_all, schedules)


def buffer_capacity(steps: int, min_gamma: float, optimizer: str | TrainingOptimizer = "sgd_momentum") -> int:
    """Stack slots for ``steps`` steps with every decay >= ``min_gamma`` (SGD with momentum: every
    gamma; another optimizer: every value of its ``decay_schedule``s), the optimizer's
    ``buffer_slots`` rounded up to a bucket (2, 3, 4, 6, 8, 12, ...) so that a tuning loop whose
    decays drift does not recompile."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0.0 < min_gamma <= 1.0 or not math.isfinite(min_gamma):
        raise ValueError(f"min_gamma must be in (0, 1], got {min_gamma}")
    return bucket_slots(_optimizer(optimizer).buffer_slots(steps, float(min_gamma)))
