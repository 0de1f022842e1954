"""Fused CPU kernels for the reversible engine: one pass over a weight array per half-step.

XLA on a CPU splits a step's integer work on one weight array into several kernels (the head's
shift, the division by gamma's numerator, the velocity, the weights, the checks), each a pass over
memory, and copies whole arrays where the reverse loop's updates in place conflict. These kernels do
each half of a step in one loop over the elements instead, in place:

* `sgd_forward`: the spill (when the step has one), ``v <- v n / D`` through the buffer's head,
  ``v -= (1 - gamma) g``, ``w += alpha v``, and the step's conversion and range checks as one flag;
* `sgd_undo_weights`: ``w -= alpha v``;
* both also write the new weights in the model's dtype, the copy the next gradient reads, which
  XLA would otherwise make in one more pass over the weights;
* `sgd_undo_state`: ``v += (1 - gamma) g``, ``v <- v D / n`` through the head, and the head's
  un-spill from the stack word the forward pass filled (for `check_reversal`'s reverse pass);
* `sgd_undo_adjoint`: the same undo and the step's float64 adjoint in one pass (``dv``, ``ct``, and
  ``dalpha``, ``dgamma`` summed over the array, ``dw - hw`` subtracted), reading ``v_{t+1}`` before it
  overwrites it, then the step before's undo of the weights and their copy (the engine's reverse loop
  pipelined);
* `fingerprint`: the gradient's hash of `hypercore.reversible._fingerprint`, for any optimizer;
* `adam_forward`, `adam_undo_weights`, `adam_undo_adjoint`: reversible Adam's and AdamW's forward
  step (after the spill, as in SGD's), the undo of its weights, and the undo of ``v`` and ``m`` with the
  un-spill and the step's adjoint, its sums included, then the step before's undo of the weights and
  their model-dtype copy, the engine's reverse loop pipelined (`_fused_kernels_adam`).

The integers (weights, moments, heads, stacks, flags, hashes) are bit for bit those of the
`jax.numpy` formulation (`hypercore._fixed`, the ``_sgd_*_leaf`` functions of `hypercore.reversible`,
the ``_adam_*_leaf`` ones of `hypercore.adam`): the same float64 operations in the same order, and
SGD's division by gamma's numerator exact (in float64 arithmetic, which vectorises, corrected to the
integer quotient). So a forward pass on one path is undone exactly on the other. The adjoints' float64
sums are added in another order (and Adam's reverse loops multiply by reciprocals where XLA divides by
a scalar): the hypergradients agree to rounding, about 1e-15 relative.

The loops are compiled by Numba (cached on disk) and called through XLA's FFI (``jax.ffi.ffi_call``)
as custom calls on the CPU; the handlers decode XLA's C call frame (``xla/ffi/api/c_api.h``)
themselves, and run a large array's elements in chunks on XLA's intra-op thread pool, returning an FFI
future (`hypercore._fused_launch`; the chunks are fixed by the array's size, so the results do not
depend on the threads). The engine keeps the `jax.numpy` formulation where `available` is false (JAX's default
backend not a CPU, no Numba, ``REVTUNE_FUSED_KERNELS=0``, or the check on first use failed, with a
warning), for schedules with a value per weight, and for gradients of other dtypes; inside a program
`on_cpu` picks per platform.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import _x64  # noqa: F401
from hypercore.budget import D

_lock = threading.Lock()
_state: dict[str, object] = {"checked": None}
_override: list[bool] = []


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Turn the fused kernels on or off while tracing inside the block (for tests and benchmarks)."""
    _override.append(on)
    try:
        yield
    finally:
        _override.pop()


def wanted() -> bool:
    if _override:
        return _override[-1]
    return os.environ.get("REVTUNE_FUSED_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def available() -> bool:
    """Whether the engine may call the fused kernels: wanted, JAX's default backend a CPU (a GPU host
    loads no Numba and compiles nothing for it), compiled and checked."""
    if not wanted() or jax.default_backend() != "cpu":
        return False
    with _lock:
        if _state["checked"] is None:
            _state["checked"] = _register_and_check()
    return bool(_state["checked"])


def prepare() -> bool:
    """Load the kernels and run their check now, not in the first engine step (which then traces
    faster): a worker calls it at its start, so its first job does not wait for Numba. Returns whether
    the engine will use them (`available`); with them off, or off a CPU, it does nothing."""
    return available()


def _register_and_check() -> bool:
    try:
        kernels = importlib.import_module("hypercore._fused_kernels")  # Numba: loaded on first use
        kernels.register()
    except Exception as e:  # noqa: BLE001  (no Numba, or it cannot compile here: keep XLA's path)
        if not isinstance(e, ImportError):
            warnings.warn(f"revtune: fused CPU kernels unavailable ({e!r}); using XLA's", stacklevel=3)
        return False
    try:
        with jax.ensure_compile_time_eval():  # the first call may come while a step is being traced
            _self_check()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"revtune: fused CPU kernels failed their check ({e!r}); using XLA's", stacklevel=3)
        return False
    return True


# ----------------------------------------------------------------------------------------------------
# The calls. Scalars travel as rank-0 buffers.

_S64, _U64, _F64 = jnp.int64, jnp.uint64, jnp.float64


def _call(name: str, outs, *args, aliases: dict[int, int]):
    """The custom call ``name``; ``aliases`` (argument -> result) are updated in place, as the loops
    read each element before they write it. Refused while tracing where its buffers would not fit the
    launch record's table (`hypercore._fused_launch.MAX_TABLE`), which the handler would write past."""
    importlib.import_module("hypercore._fused_kernels").register()  # once; the engine calls `available` first
    limit = importlib.import_module("hypercore._fused_launch").MAX_TABLE
    results = len(outs) if isinstance(outs, (tuple, list)) else 1  # one result: not in a tuple
    if len(args) + results > limit:
        raise ValueError(
            f"{name}: {len(args)} arguments and {results} results, more than the {limit} buffers "
            "of hypercore._fused_launch.MAX_TABLE"
        )
    return jax.ffi.ffi_call(name, outs, input_output_aliases=aliases)(*args)


def _like(x, dtype=None):
    return jax.ShapeDtypeStruct(x.shape, dtype or x.dtype)


def _scalar(x, dtype):
    return jnp.asarray(x).astype(dtype).reshape(())


def sgd_forward(w, v, head, stack, g, n, one_minus, alpha, k, do, *, leaf):
    """``(w, v, head, stack, w_model, ok, fp)`` after one forward step on one weight array
    (`SGDM.forward_step`): the spill of the head into slot ``k`` of ``stack`` if ``do``, then the
    step. ``w_model``: the new weights in ``g``'s dtype (the model's). ``ok``: every conversion and
    range check passed. ``fp``: `fingerprint` ``(g, leaf)``, taken in the same pass."""
    word, shift = _slot(k)
    return _call(
        f"revtune_sgd_forward_{g.dtype.name}",
        (
            _like(w),
            _like(v),
            _like(head),
            _like(stack),
            _like(w, g.dtype),
            jax.ShapeDtypeStruct((), jnp.bool_),
            jax.ShapeDtypeStruct((), _U64),
        ),
        w,
        v,
        head,
        stack,
        g,
        _scalar(n, _S64),
        _scalar(one_minus, _F64),
        _scalar(alpha, _F64),
        word,
        shift,
        _scalar(do, jnp.bool_),
        _scalar(leaf, _S64),
        aliases={0: 0, 1: 1, 2: 2, 3: 3},
    )


def sgd_undo_weights(w, v, alpha, dtype):
    """``(w - alpha v, w_model)`` in fixed point (`SGDM.undo_weights`), ``w_model`` the restored
    weights in the model's ``dtype``."""
    dtype = jnp.dtype(dtype)
    return _call(
        f"revtune_sgd_undo_weights_{dtype.name}",
        (_like(w), _like(w, dtype)),
        w,
        v,
        _scalar(alpha, _F64),
        aliases={0: 0},
    )


def sgd_undo_state(v, head, g, n, one_minus, stack, k, do):
    """``(v, head)`` one step back (`SGDM.undo_state`): the velocity update, the division by gamma,
    and the head's un-spill of slot ``k`` of the read-only ``stack`` if ``do``."""
    word, shift = _slot(k)
    return _call(
        f"revtune_sgd_undo_state_{g.dtype.name}",
        (_like(v), _like(head)),
        v,
        head,
        g,
        stack,
        _scalar(n, _S64),
        _scalar(one_minus, _F64),
        word,
        shift,
        _scalar(do, jnp.bool_),
        aliases={0: 0, 1: 1},
    )


def sgd_undo_adjoint(
    v, head, dv, g, stack, dw, hw, w, n, one_minus, alpha, alpha_prev, om, gamma, s1, s0, k, do, *, leaf
):
    """`sgd_undo_state` (``n``, ``one_minus``: the stored velocity's multiplier and increment factor)
    and the rule's adjoint (``alpha``, ``om = 1 - gamma``, ``gamma``; ``s1``, ``s0`` the velocity's
    scales after and before the step) in one pass, then the step before's `sgd_undo_weights`
    (`SGDM.undo_adjoint_then_weights`): ``(v, head, dv, ct, dalpha, dgamma, fp, dw, w, w_model)``,
    ``ct`` in ``g``'s dtype, ``dalpha`` and ``dgamma`` summed over the array, ``fp`` `fingerprint`
    ``(g, leaf)``. ``w_{t+1}``'s cotangent is ``dw - hw`` (``hw`` in ``g``'s dtype, the later step's
    vector-Jacobian product), returned as ``dw``; ``w`` is ``w_t``, returned as ``w_{t-1}`` with
    ``alpha_prev`` (0: unchanged), and ``w_model`` its copy in ``g``'s dtype."""
    word, shift = _slot(k)
    scalar = jax.ShapeDtypeStruct((), _F64)
    return _call(
        f"revtune_sgd_undo_adjoint_{g.dtype.name}",
        (
            _like(v),
            _like(head),
            _like(dv),
            _like(g),
            scalar,
            scalar,
            jax.ShapeDtypeStruct((), _U64),
            _like(dw),
            _like(w),
            _like(w, g.dtype),
        ),
        v,
        head,
        dv,
        g,
        stack,
        dw,
        _scalar(n, _S64),
        _scalar(one_minus, _F64),
        _scalar(alpha, _F64),
        word,
        shift,
        _scalar(do, jnp.bool_),
        _scalar(leaf, _S64),
        hw,
        w,
        _scalar(alpha_prev, _F64),
        *(_scalar(x, _F64) for x in (om, gamma, s1, s0)),
        aliases={0: 0, 1: 1, 2: 2, 5: 7, 14: 8},
    )


def fingerprint(g, leaf: int):
    """`hypercore.reversible._fingerprint`'s term for leaf number ``leaf``, in one pass (in chunks on
    XLA's threads for a large leaf). The step kernels that read a gradient take the same term in their
    own pass (their ``fp``); this one is for the steps without one."""
    return _call(
        f"revtune_fingerprint_{g.dtype.name}",
        jax.ShapeDtypeStruct((), _U64),
        g,
        jnp.int64(leaf),
        aliases={},
    )


def adam_forward(
    w, m, vh, vl, head, stack, g, n1, n2, rw, lr, c1, c2, r1, s1, r2, s2, sw, k, do, *, eps, leaf
):
    """``(w, m, vh, vl, head, stack, ok, fp, wf)`` after one forward step of Adam or AdamW on one
    weight array (`hypercore.adam.Adam.forward_step`), the spill into slot ``k`` first if ``do``; ``r1,
    s1, r2, s2, rw, sw`` are the renormalisations and scales of ``m``, ``v`` and ``w`` at this step
    (`hypercore.adam.renormalisations`; ``rw = 2**24``, ``sw = 1`` for Adam), ``fp`` is `fingerprint`
    ``(g, leaf)``, ``wf`` the new weights in ``g``'s dtype, ``sw w'`` (the copy the next gradient
    reads)."""
    word, shift = _slot(k)
    outs = (
        *(_like(x) for x in (w, m, vh, vl, head, stack)),
        jax.ShapeDtypeStruct((), jnp.bool_),
        jax.ShapeDtypeStruct((), _U64),
        _like(w, g.dtype),
    )
    return _call(
        f"revtune_adam_forward_{g.dtype.name}",
        outs,
        w,
        m,
        vh,
        vl,
        head,
        stack,
        g,
        *(_scalar(x, _S64) for x in (n1, n2, rw)),
        *(_scalar(x, _F64) for x in (lr, c1, c2, eps)),
        word,
        shift,
        _scalar(do, jnp.bool_),
        _scalar(leaf, _S64),
        *_moment_scalars(r1, s1, r2, s2),
        _scalar(sw, _F64),
        aliases={0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5},
    )


def adam_undo_weights(w, m, vh, vl, head, rw, lr, c1, c2, s1, s2, sw, *, eps):
    """``(w, head)``: ``w_t`` from ``w_{t+1}`` and the state (`hypercore.adam.Adam.undo_weights`), with
    the scales and ``w``'s renormalisation of `adam_forward`."""
    return _call(
        "revtune_adam_undo_weights",
        (_like(w), _like(head)),
        w,
        m,
        vh,
        vl,
        head,
        _scalar(rw, _S64),
        *(_scalar(x, _F64) for x in (lr, c1, c2, eps, s1, s2, sw)),
        aliases={0: 0, 4: 1},
    )


def adam_undo_adjoint(
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
):
    """`hypercore.adam.Adam.undo_adjoint_then_weights` on one weight array: ``(m, vh, vl, head, dw, dm,
    dv, ct, sums, fp, w, wf)``. First the step's: the state one step back (un-spilling slot ``k`` of the
    read-only ``stack`` if ``do``), the adjoint, ``ct`` in ``g``'s dtype, ``sums`` those of ``(dlr,
    db1, db2, dc1, dc2, df)`` over the array and ``fp`` `fingerprint` ``(g, leaf)``. ``w_{t+1}``'s
    cotangent is ``dw - hw``, ``hw`` (``g``'s dtype) the part the engine did not subtract
    (`hypercore.reversible`'s ``subtracts_hvp``); ``w`` is ``w_t`` (fixed point); ``nf`` is ``2**24``
    for Adam; ``r1, s1, r2, s2`` as in `adam_forward`. Then the step before's `adam_undo_weights` from
    the restored state, ``w_{t-1}``, and its copy ``wf`` in ``g``'s dtype: ``prev`` is that step's ``(rw,
    lr, c1, c2, s1, s2, sw, scale)``, ``scale`` the copy's (``lr = 0``, ``rw = 2**24``: none)."""
    word, shift = _slot(k)
    outs = (
        *(_like(x) for x in (m, vh, vl, head, dw, dm, dv, g)),
        jax.ShapeDtypeStruct((6,), _F64),
        jax.ShapeDtypeStruct((), _U64),
        _like(w),
        _like(g),
    )
    rw_p, *floats = prev
    # the kernel's order: lr, c1, c2, s1, s2, sw, scale, then rw (exact in a float64: at most 2**24)
    packed = jnp.stack([_scalar(x, _F64) for x in (*floats, rw_p)])
    return _call(
        f"revtune_adam_undo_adjoint_{g.dtype.name}",
        outs,
        m,
        vh,
        vl,
        head,
        stack,
        g,
        dw,
        dm,
        dv,
        w,
        *(_scalar(x, _S64) for x in (n1, n2, nf)),
        *(_scalar(x, _F64) for x in (lr, c1, c2, eps)),
        word,
        shift,
        _scalar(do, jnp.bool_),
        _scalar(leaf, _S64),
        *_moment_scalars(r1, s1, r2, s2),
        hw,
        packed,
        aliases={0: 0, 1: 1, 2: 2, 3: 3, 6: 4, 7: 5, 8: 6, 9: 10},
    )


def _moment_scalars(r1, s1, r2, s2):
    return _scalar(r1, _S64), _scalar(s1, _F64), _scalar(r2, _S64), _scalar(s2, _F64)


def _slot(k):
    from hypercore._fixed import slot_position

    word, shift = slot_position(k)
    return _scalar(word, _S64), _scalar(shift, _U64)


FUSED_DTYPES = ("float32", "float64")
"""The gradient dtypes the kernels are compiled for; other models keep XLA's path."""


def on_cpu(args, fused: Callable, xla: Callable):
    """``fused(*args)`` where the computation runs on a CPU and the kernels are available, else
    ``xla(*args)`` (decided when lowering, per platform)."""
    if not available():
        return xla(*args)
    return jax.lax.platform_dependent(*args, cpu=fused, default=xla)


def _self_check() -> None:
    """Run every kernel once on two problems, through a spill and back, in one compiled program: the
    undo must restore the state bit for bit, the fingerprint must see a one-bit change, and the step
    kernels' fingerprints must be the fingerprint kernel's. The float32
    problem is large enough to run in chunks on XLA's threads (`hypercore._fused_launch`), so a runtime
    that ran them wrongly fails here. (That they compute what the XLA formulation computes, bit for
    bit, is tests/hypercore/test_fused.py's; here the XLA side would cost seconds of compilation at
    every start.)"""
    rng = np.random.default_rng(0)
    chunked = 2 * importlib.import_module("hypercore._fused_launch").MIN_CHUNK // 5 + 1
    problems = [
        (
            jnp.asarray(rng.integers(-(2**50), 2**50, shape), _S64),
            jnp.asarray(rng.integers(-(2**50), 2**50, shape), _S64),
            jnp.asarray(rng.integers(0, 2**47, shape), _U64),
            jnp.asarray(rng.integers(0, 2**32, (2, *shape)), _U64),
            jnp.asarray(rng.normal(size=shape) * 3, dt),
            jnp.asarray(rng.normal(size=shape), _F64),
        )
        for dt, shape in zip(FUSED_DTYPES, ((chunked, 5), (37, 5)), strict=True)
    ]

    from hypercore._fixed import from_fixed, to_fixed

    def check(problems):
        n = jnp.int64(58982)
        om = (jnp.int64(D) - n).astype(_F64) / D
        a, k, do = jnp.float64(0.3), jnp.int32(1), jnp.bool_(True)
        failures = []
        for w, v, head, stack, g, dv in problems:
            w1, v1, h1, s1, wm1, ok, fp1 = sgd_forward(w, v, head, stack, g, n, om, a, k, do, leaf=1)
            moved = jnp.any(w1 != w) & jnp.any(v1 != v) & jnp.any(h1 != head) & jnp.any(s1 != stack)
            w_b, wm_b = sgd_undo_weights(w1, v1, a, g.dtype)
            v_b, h_b = sgd_undo_state(v1, h1, g, n, om, s1, k, do)
            rule = (om, 1.0 - om, 0.9, 0.8)  # the adjoint's own values, which move no integer
            v_c, h_c, *_, fp_c, _, w_c, wm_c = sgd_undo_adjoint(
                v1, h1, dv, g, s1, dv, g, w_b, n, om, a, 0.75, *rule, k, do, leaf=1
            )  # and the weights of a step before, alpha 0.75, from the restored v
            copies = [wm1 == from_fixed(w1).astype(g.dtype), wm_b == from_fixed(w).astype(g.dtype)]
            before = w - to_fixed(0.75 * from_fixed(v))[0]
            copies += [w_c == before, wm_c == from_fixed(before).astype(g.dtype)]
            # a second step whose multiplier is the identity (the kernels' loops without the division),
            # undone with the first's weights
            w2, v2, h2, s2, _, ok2, fp2 = sgd_forward(w1, v1, h1, s1, g, D, om, a, k, False, leaf=1)
            v_d, h_d, *_, fp_d, _, w_d, _ = sgd_undo_adjoint(
                v2, h2, dv, g, s2, dv, g, w1, D, om, a, a, *rule, k, False, leaf=1
            )
            plain = [h2 == h1, v_d == v1, h_d == h1, w_d == w, jnp.any(w2 != w1), fp2 == fp1, fp_d == fp1]
            fp = fingerprint(g, 1)
            same = [
                w_b == w,
                v_b == v,
                h_b == head,
                v_c == v,
                h_c == head,
                *copies,
                *plain,
                fp1 == fp,
                fp_c == fp,
            ]
            failures.append(~(ok & ok2 & moved & jnp.all(jnp.stack([jnp.all(x) for x in same]))))
            flipped = g.at[3, 2].set(jnp.nextafter(g[3, 2], jnp.inf))
            fp0 = fingerprint(g, 0)
            failures.append((fp0 == fingerprint(flipped, 0)) | (fp0 == fp))
            failures.append(~_adam_round_trip(w, v, head, stack, g, k, do, fp))
        return jnp.stack(failures)

    failed = np.asarray(jax.jit(check)(problems))
    if failed.any():
        what = ("step and undo", "fingerprint", "AdamW's step and undo")
        bad = sorted({f"{what[i % 3]} ({FUSED_DTYPES[i // 3]})" for i in np.flatnonzero(failed)})
        raise AssertionError("failed: " + ", ".join(bad))


def _adam_round_trip(w, m, head, stack, g, k, do, fp):
    """AdamW's three kernels over two steps: the first renormalises the moments and the weights and
    spills, the second neither (as most steps). The undo of the second's weights, then of its state
    with the first's weights in the same pass, then of the first's state with no step before it
    restore the weights, the moments and the heads bit for bit, with the weights' copies; every
    fingerprint is ``fp``, leaf 1's."""
    from hypercore._fixed import from_fixed

    n1, n2, nf = jnp.int64(15099494), jnp.int64(16760439), jnp.int64(16760000)  # 0.9, 0.999, 1 - 1e-5
    lr, c1, c2 = jnp.float64(1e-3), jnp.float64(0.1), jnp.float64(1e-3)
    moments = (jnp.int64(10066330), jnp.float64(0.55), jnp.int64(9000000), jnp.float64(0.7))
    rw, sw = jnp.int64(8500000), jnp.float64(0.95)
    one = jnp.int64(1 << 24)
    lr_b, c1_b, c2_b, sw_b = jnp.float64(2e-3), jnp.float64(0.2), jnp.float64(2e-3), jnp.float64(0.9)
    moments_b = (one, jnp.float64(0.5), one, jnp.float64(0.65))
    vh, vl = jnp.abs(m) >> 30, jnp.abs(w) >> 2
    h = head >> jnp.uint64(4)
    w1, m1, vh1, vl1, h1, s1, ok, fp1, wf1 = adam_forward(
        w, m, vh, vl, h, stack, g, n1, n2, rw, lr, c1, c2, *moments, sw, k, do, eps=1e-8, leaf=1
    )
    moved = jnp.any(w1 != w) & jnp.any(m1 != m) & jnp.any(vh1 != vh) & jnp.any(s1 != stack)
    kw = {"eps": 1e-8, "leaf": 1}
    step_b = (n1, n2, one, lr_b, c1_b, c2_b, *moments_b, sw_b)
    w2, m2, vh2, vl2, h2, s2, ok2, fp2, wf2 = adam_forward(
        w1, m1, vh1, vl1, h1, s1, g, *step_b, k, False, **kw
    )
    w_b, h_b = adam_undo_weights(w2, m2, vh2, vl2, h2, one, lr_b, c1_b, c2_b, 0.5, 0.65, sw_b, eps=1e-8)
    d = g.astype(_F64)
    adjoint = (g, d, g, d, d)  # g, dw, hw, dm, dv
    first = (rw, lr, c1, c2, moments[1], moments[3], sw, 0.5)  # the first step's weights, copy at 0.5
    hyper_b = (n1, n2, nf, lr_b, c1_b, c2_b, *moments_b, k, False)
    back = adam_undo_adjoint(m2, vh2, vl2, h_b, s2, *adjoint, w_b, *hyper_b, first, **kw)
    none = (one, 0.0, c1, c2, moments[1], moments[3], sw, 1.0)
    hyper_a = (n1, n2, nf, lr, c1, c2, *moments, k, do)
    m0, vh0, vl0, h0, *_, fp0, w0, wf0 = adam_undo_adjoint(
        *back[:4], s1, *adjoint, back[10], *hyper_a, none, **kw
    )
    copies = [back[11] == (from_fixed(w) * 0.5).astype(g.dtype), wf0 == from_fixed(w).astype(g.dtype)]
    copies += [wf1 == (from_fixed(w1) * sw).astype(g.dtype), wf2 == (from_fixed(w2) * sw_b).astype(g.dtype)]
    restored = [back[10] == w, w_b == w1, back[0] == m1, back[1] == vh1, back[2] == vl1, w0 == w]
    same = [*restored, m0 == m, vh0 == vh, vl0 == vl, h0 == h, *copies, fp1 == fp, fp2 == fp, back[9] == fp]
    return ok & ok2 & moved & jnp.all(jnp.stack([jnp.all(x) for x in same])) & jnp.all(jnp.isfinite(back[8]))
