"""The fused CPU kernels for reversible Adam and AdamW (`hypercore._fused`: the forward step, the
undo of the weights, and the undo of the state with the step's adjoint) against `hypercore.adam`'s XLA
formulation: integers bit for bit (so either path undoes the other's forward pass), the adjoint's
floats to rounding, the engine on either path to the same state and the same hypergradients, and the
kernels where they apply.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_adam import decays, rel_err, schedules  # the tiny net's Adam schedules
from test_fused import _empty_slot, _paths
from test_reversible import make_problem

from hypercore import ReversalReport, _fixed, _fused, adam, empty_report, reversible
from hypercore.adam import check_reversal_adam, forward_state_adam, reversible_adam

SHAPE = (4, 7)
N = SHAPE[0] * SHAPE[1]
LEAF = 5


@functools.cache
def _pair(name, decay):
    """The fused kernel and its XLA formulation, compiled; the steps that read the gradient take its
    fingerprint for leaf number `LEAF`."""
    kw = {"eps": 1e-8} if name == "undo_weights" else {"eps": 1e-8, "leaf": LEAF}
    xla_kw = {**kw, "decay": decay}  # the kernels need no flag
    fused = {
        "forward": _fused.adam_forward,
        "undo_weights": _fused.adam_undo_weights,
        "undo_adjoint": _fused.adam_undo_adjoint,
    }[name]
    xla = {
        "forward": adam._adam_forward_leaf,
        "undo_weights": adam._adam_undo_weights_leaf,
        "undo_adjoint": adam._adam_undo_adjoint_leaf,
    }[name]
    return jax.jit(functools.partial(fused, **kw)), jax.jit(functools.partial(xla, **xla_kw))


def _array(values, dtype, shape=SHAPE):
    return jnp.asarray(np.asarray(values, dtype=object).astype(dtype).reshape(shape))


def _ints(lo, hi):
    return st.lists(st.integers(lo, hi), min_size=N, max_size=N)


@settings(max_examples=30, deadline=None)
@given(
    decay=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
    n1=st.integers(adam.N_MIN, adam.N_MAX),
    n2=st.one_of(st.integers(adam.N_MIN, adam.N_MAX), st.just(16760439)),  # 0.999
    nf=st.one_of(st.integers(adam.N_MIN, adam.DB), st.just(adam.DB)),
    w=_ints(-(2**60), 2**60),
    m=_ints(-(2**58), 2**58),
    vh=_ints(0, 2**40),
    vl=_ints(0, 2**62 - 1),
    heads=_ints(0, 2**59),
    g=st.lists(st.floats(-50.0, 50.0, width=32), min_size=N, max_size=N),
    lr=st.floats(1e-5, 0.1),
    c1=st.floats(0.05, 1.0),
    c2=st.floats(1e-3, 1.0),
    k=st.integers(0, 3),
    do=st.booleans(),
    r1=st.one_of(st.just(adam.DB), st.integers(adam.N_MIN, adam.DB)),  # mostly no renormalisation
    r2=st.one_of(st.just(adam.DB), st.integers(adam.N_MIN, adam.DB)),
    rw=st.one_of(st.just(adam.DB), st.integers(adam.N_MIN, adam.DB)),  # AdamW's only
    s1=st.floats(0.5, 1.0),
    s2=st.floats(0.5, 1.0),
    sw=st.floats(0.5, 1.0),
)
def test_each_kernel_matches_the_xla_formulation_and_undoes_the_weights(
    decay, dtype, n1, n2, nf, w, m, vh, vl, heads, g, lr, c1, c2, k, do, r1, r2, rw, s1, s2, sw
):
    w, m, vh, vl = (_array(x, np.int64) for x in (w, m, vh, vl))
    heads = _array(heads, np.uint64)
    heads = jnp.where(do, heads, heads >> jnp.uint64(1))  # below 2**58 without a spill, as the step needs
    stack = _empty_slot(
        _array(np.random.default_rng(n1).integers(0, 2**63, 2 * N), np.uint64, (2, *SHAPE)), k
    )
    g = jnp.asarray(np.asarray(g).reshape(SHAPE), dtype)
    n1, n2, nf = jnp.int64(n1), jnp.int64(n2), jnp.int64(nf if decay else adam.DB)
    lr, c1, c2, k, do = jnp.float64(lr), jnp.float64(c1), jnp.float64(c2), jnp.int32(k), jnp.bool_(do)
    moments = (jnp.int64(r1), jnp.float64(s1), jnp.int64(r2), jnp.float64(s2))
    rw, sw = (jnp.int64(rw), jnp.float64(sw)) if decay else (jnp.int64(adam.DB), jnp.float64(1.0))

    fused, xla = _pair("forward", decay)
    args = (w, m, vh, vl, heads, stack, g, n1, n2, rw, lr, c1, c2, *moments, sw, k, do)
    ours, theirs = fused(*args), xla(*args)
    forward_names = ("w", "m", "vh", "vl", "head", "stack", "ok", "fp", "copy")
    for name, a, b in zip(forward_names, ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"forward: {name}")
    w1, m1, vh1, vl1, h1, s1, ok, fp, copy = ours
    assert fp.dtype == jnp.uint64 and int(fp) == int(reversible._fingerprint_leaf(g, LEAF))
    assert copy.dtype == g.dtype  # the new weights as the next gradient reads them, ``sw w'``
    np.testing.assert_array_equal(np.asarray(copy), np.asarray((_fixed.from_fixed(w1) * sw).astype(g.dtype)))

    fused, xla = _pair("undo_weights", decay)
    args = (w1, m1, vh1, vl1, h1, rw, lr, c1, c2, moments[1], moments[3], sw)
    (w0, h0), theirs = fused(*args), xla(*args)
    np.testing.assert_array_equal(np.asarray(w0), np.asarray(theirs[0]))
    np.testing.assert_array_equal(np.asarray(h0), np.asarray(theirs[1]))

    # A second step, as most are (no renormalisation, no spill), undone with its weights, then its
    # state with the first step's weights in the same call (``prev``), then the first step's state
    # with no step before it (``lr = 0``, no renormalisation: the weights come back as they are)
    one = jnp.int64(adam.DB)
    lr_b, c1_b, c2_b, sw_b = lr * 1.5, c1 * 0.75, c2 * 0.5, sw * 0.875
    s1_b, s2_b = moments[1] * 0.75, moments[3] * 0.875  # (``s1`` is now the stack)
    moments_b = (one, jnp.float64(s1_b), one, jnp.float64(s2_b))
    rw_b, sw_b = (one, jnp.float64(sw_b)) if decay else (one, jnp.float64(1.0))
    g_b = (g * 0.5).astype(g.dtype)
    fused, xla = _pair("forward", decay)
    hyper_b = (n1, n2, rw_b, lr_b, c1_b, c2_b, *moments_b, sw_b)
    args = (w1, m1, vh1, vl1, h1, s1, g_b, *hyper_b, k, jnp.bool_(False))
    ours, theirs = fused(*args), xla(*args)
    for name, a, b in zip(forward_names, ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"second forward: {name}")
    w2, m2, vh2, vl2, h2, s2, ok_b, _, _ = ours
    fused, xla = _pair("undo_weights", decay)
    w1_back, h2_back = fused(w2, m2, vh2, vl2, h2, rw_b, lr_b, c1_b, c2_b, s1_b, s2_b, sw_b)

    fused, xla = _pair("undo_adjoint", decay)
    rng = np.random.default_rng(int(n2))
    names = ("m", "vh", "vl", "head", "dw", "dm", "dv", "ct", "sums", "fp", "w", "copy")
    scale = jnp.float64(sw * 0.5)  # the first step's copy's scale (any: the kernel multiplies by it)

    def undo_adjoint(what, state, stack, g, w, hyper, k, do, prev):
        dw, hw, dm, dv = (jnp.asarray(rng.normal(size=SHAPE) * 10.0 ** rng.integers(-3, 3)) for _ in range(4))
        hw = hw.astype(g.dtype)  # the later step's vector-Jacobian product, which the kernel subtracts
        args = (*state, stack, g, dw, hw, dm, dv, w, n1, n2, nf, *hyper, k, do, prev)
        ours, theirs = fused(*args), xla(*args)
        assert int(ours[9]) == int(reversible._fingerprint_leaf(g, LEAF)), f"{what}: the fingerprint"
        for name, a, b in zip(names, ours, theirs, strict=True):
            a, b = np.asarray(a), np.asarray(b)
            if name in ("m", "vh", "vl", "head", "fp", "w", "copy"):  # integers and copies bit for bit
                np.testing.assert_array_equal(a, b, err_msg=f"{what}: {name}")
            else:  # the adjoint's floats: the kernel reassociates, so an ulp or a few of the array's
                # scale apart (where terms cancel, as ``dw - hw`` or ``ct``'s two can, the result is
                # smaller than its terms, and so is its relative precision)
                assert a.dtype == b.dtype, name
                scale_b = np.max(np.abs(b))
                np.testing.assert_array_less(
                    np.abs(a - b), 1e-12 * scale_b + 1e-300, err_msg=f"{what}: {name}"
                )
        return ours

    first = (rw, lr, c1, c2, moments[1], moments[3], sw, scale)
    state = (m2, vh2, vl2, h2_back)
    back = undo_adjoint(
        "second", state, s2, g_b, w1_back, (lr_b, c1_b, c2_b, *moments_b), k, jnp.bool_(False), first
    )
    none = (one, jnp.float64(0.0), c1, c2, moments[1], moments[3], sw, jnp.float64(1.0))
    ours = undo_adjoint("first", back[:4], s1, g, back[10], (lr, c1, c2, *moments), k, do, none)
    np.testing.assert_array_equal(np.asarray(ours[10]), np.asarray(back[10]), err_msg="no step before: w")
    np.testing.assert_array_equal(
        np.asarray(ours[11]), np.asarray(_fixed.from_fixed(back[10]).astype(g.dtype)), err_msg="its copy"
    )
    if bool(ok) and bool(ok_b):  # in-range steps come back exactly: the weights, then the state and heads
        np.testing.assert_array_equal(np.asarray(w1_back), np.asarray(w1), err_msg="second: w")
        for name, a, b in zip(names, back[:4], (m1, vh1, vl1, h0), strict=False):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"after the second: {name}")
        # the first step's weights undone in the second's call, as its own kernel undoes them
        np.testing.assert_array_equal(np.asarray(back[10]), np.asarray(w0), err_msg="first: w")
        np.testing.assert_array_equal(np.asarray(back[10]), np.asarray(w), err_msg="first: w")
        np.testing.assert_array_equal(
            np.asarray(back[11]), np.asarray((_fixed.from_fixed(w) * scale).astype(g.dtype)), err_msg="copy"
        )
        for name, a, b in zip(names, ours[:4], (m, vh, vl, heads), strict=False):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"restored: {name}")


@pytest.mark.parametrize("decay", [False, True])
def test_the_forward_step_flags_weights_it_moves_out_of_range(decay):
    """The step's range flag covers the new weights (`Adam.checks_weights`: the engine does not test
    them again), on both paths: one weight at the edge of the fixed-point range, moved past it by the
    step, makes it false; the same weight moved the other way keeps it true."""
    limit = int(_fixed.RANGE) << _fixed.FRAC_BITS
    m = jnp.zeros(SHAPE, jnp.int64)
    vh, vl = jnp.zeros(SHAPE, jnp.int64), jnp.zeros(SHAPE, jnp.int64)
    heads = jnp.full(SHAPE, 12345, jnp.uint64)
    stack = _empty_slot(jnp.zeros((2, *SHAPE), jnp.uint64), 0)
    one = (jnp.int64(adam.DB), jnp.float64(1.0))
    hyper = (jnp.int64(15099494), jnp.int64(16760439), jnp.int64(adam.DB))  # b1 0.9, b2 0.999, no decay
    rest = (jnp.float64(1e-3), jnp.float64(0.1), jnp.float64(1e-3), *one, *one, jnp.float64(1.0))
    fused, xla = _pair("forward", decay)
    for sign, expect in ((1.0, False), (-1.0, True)):
        # w - lr u with u = sign(g): a positive gradient lowers the weight past -limit, a negative one
        # raises it back inside
        w = jnp.zeros(SHAPE, jnp.int64).at[1, 2].set(-(limit - 1))
        g = jnp.zeros(SHAPE, jnp.float32).at[1, 2].set(sign)
        args = (w, m, vh, vl, heads, stack, g, *hyper, *rest, jnp.int32(0), jnp.bool_(False))
        ours, theirs = fused(*args), xla(*args)
        assert bool(ours[6]) is expect and bool(theirs[6]) is expect, (sign, bool(ours[6]), bool(theirs[6]))
        np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(theirs[0]))


@pytest.mark.parametrize("kind", ["shared", "per_weight"])
def test_weights_that_drift_out_of_range_are_reported_on_either_path(kind):
    """Each step within range (``|lr u|`` about 1e4, under ``2**14``), the weights past it after the
    second: the run reports an overflow, with the kernels and without (shared schedules take them,
    per-weight ones XLA's list of leaves), though no single step's conversion failed."""
    _, w0, _ = make_problem()
    T = 4
    lr = jnp.full((T,), 1e4) if kind == "shared" else {k: jnp.full((T, *v.shape), 1e4) for k, v in w0.items()}

    def run():
        def f(lr, report):
            w_T = reversible_adam(lambda w, m, t: jnp.sum(w["W"]), w0, {}, lr, 0.9, 0.999, report=report)
            return jnp.sum(w_T["W"])

        return f(lr, empty_report()), jax.grad(f, 1)(lr, empty_report())

    for value, rep in _paths(run):
        assert bool(jnp.isnan(value))
        assert ReversalReport.from_array(rep).overflow


@pytest.mark.parametrize("kind", ["shared", "per_array"])
@pytest.mark.parametrize("weight_decay", [False, True])
def test_the_engine_on_either_path_reaches_the_same_state(kind, weight_decay):
    loss, w0, _ = make_problem(jnp.float32)
    lr, b1, b2 = schedules(kind, 200, w0, "random")
    wd = decays(kind, 200, w0) if weight_decay else 0.0
    xla, fused = _paths(lambda: forward_state_adam(loss, w0, {}, lr, b1, b2, wd))
    assert int(fused.buf.used) > 1, "the run should spill"
    for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(fused), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with _fused.enabled(True):
        assert check_reversal_adam(loss, w0, {}, lr, b1, b2, wd)


@pytest.mark.parametrize("kind", ["shared", "per_array"])
@pytest.mark.parametrize("weight_decay", [False, True])
def test_the_hypergradients_agree_across_paths(kind, weight_decay):
    loss, w0, X = make_problem(jnp.float64)
    lr, b1, b2 = schedules(kind, 100, w0, "random")
    wd = decays(kind, 100, w0) if weight_decay else jnp.zeros(())

    def objective(w0, lr, b1, b2, wd):
        w_T = reversible_adam(loss, w0, {}, lr, b1, b2, wd if weight_decay else 0.0, min_beta=0.5)
        return loss(w_T, {}, jnp.int32(0))

    xla, fused = _paths(lambda: jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3, 4)))(w0, lr, b1, b2, wd))
    for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(fused), strict=True):
        assert bool(jnp.all(jnp.isfinite(b)))
        assert rel_err(b, a) < 1e-9


@pytest.mark.parametrize("weight_decay", [False, True])
def test_the_pipelined_reverse_loop_matches_the_step_by_step_one(weight_decay, monkeypatch):
    """The engine's pipelined reverse loop (`Adam.undo_adjoint_then_weights`: the last step's weights
    undone before the loop, each step's state then the step before's weights, none at step 0) gives
    the step-by-step loop's hypergradients (`undo_weights`, then `undo_state` and `adjoint_step`, as
    for an optimizer without the member): bit for bit on XLA's path, where both do the same
    operations, and to rounding with the kernels; both restore ``w_0`` exactly."""
    loss, w0, _ = make_problem(jnp.float64)
    lr, b1, b2 = schedules("per_array", 40, w0, "random")
    wd = decays("per_array", 40, w0) if weight_decay else jnp.zeros(())

    def objective(w0, lr, b1, b2, wd, report):
        w_T = reversible_adam(
            loss, w0, {}, lr, b1, b2, wd if weight_decay else 0.0, min_beta=0.5, report=report
        )
        return loss(w_T, {}, jnp.int32(0))

    def run():
        return jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3, 4, 5)))(w0, lr, b1, b2, wd, empty_report())

    xla, fused = _paths(run)
    with monkeypatch.context() as patch:
        patch.setattr(adam.Adam, "undo_adjoint_then_weights", None)
        step_by_step = _paths(run)[0]
    for got in (xla, fused, step_by_step):
        assert ReversalReport.from_array(got[-1]).exact
    for a, b in zip(jax.tree.leaves(xla[:-1]), jax.tree.leaves(step_by_step[:-1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(fused[:-1]), jax.tree.leaves(step_by_step[:-1]), strict=True):
        assert bool(jnp.all(jnp.isfinite(a)))
        assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("kind", ["shared", "per_weight"])
def test_the_engine_calls_the_kernels_where_they_apply(kind):
    loss, w0, _ = make_problem(jnp.float32)
    lr, b1, b2 = schedules(kind, 10, w0, "constant")

    def f(lr):
        return jnp.sum(reversible_adam(loss, w0, {}, lr, b1, b2, 0.01, min_beta=0.9)["V"])

    def calls():
        text = jax.jit(jax.grad(f)).lower(lr).compile().as_text()
        return {
            line.split('custom_call_target="')[1].split('"')[0]
            for line in text.splitlines()
            if "custom_call_target" in line
        }

    off, on = _paths(calls)
    assert not any(c.startswith("revtune_adam") for c in off)
    steps = {"revtune_adam_forward_float32", "revtune_adam_undo_weights", "revtune_adam_undo_adjoint_float32"}
    assert not steps & on if kind == "per_weight" else steps <= on


@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("decay", [False, True])
def test_large_arrays_run_in_chunks_and_match_the_xla_formulation(decay, renorm):
    """Arrays of several chunks (`hypercore._fused_launch`, on XLA's thread pool) give the XLA
    formulation's integers bit for bit and its adjoint to rounding, and undo the step exactly; two such
    arrays in one program. ``renorm``: a step that renormalises both moments (and AdamW's weights)."""
    from hypercore import _fused_launch

    shape = (3 * _fused_launch.MIN_CHUNK // 64 + 1, 64)
    rng = np.random.default_rng(11)

    def leaf():
        ints = functools.partial(rng.integers, size=shape)
        w, m = (jnp.asarray(ints(-(2**50), 2**50)) for _ in range(2))
        vh, vl = jnp.asarray(ints(0, 2**20)), jnp.asarray(ints(0, 2**62))
        head = jnp.asarray(ints(0, 2**50), jnp.uint64)
        stack = _empty_slot(jnp.asarray(rng.integers(0, 2**63, (2, *shape)), jnp.uint64), 2)
        g = jnp.asarray(rng.normal(size=shape), jnp.float32)
        return w, m, vh, vl, head, stack, g

    leaves = [leaf() for _ in range(2)]
    n1, n2 = jnp.int64(15099494), jnp.int64(16760439)
    nf = jnp.int64(16760000 if decay else adam.DB)
    lr, c1, c2, k, do = jnp.float64(1e-3), jnp.float64(0.3), jnp.float64(0.01), jnp.int32(2), jnp.bool_(True)
    r1, r2 = (jnp.int64(10066330), jnp.int64(9000000)) if renorm else (jnp.int64(adam.DB),) * 2
    moments = (r1, jnp.float64(0.6), r2, jnp.float64(0.8))
    rw = jnp.int64(8500000 if renorm and decay else adam.DB)
    sw = jnp.float64(0.9 if decay else 1.0)
    # a step before this one, undone with its weights' copy in the reverse call: no renormalisation,
    # so the heads come back as they were
    prev = (jnp.int64(adam.DB), jnp.float64(2e-3), jnp.float64(0.2), jnp.float64(0.02), 0.7, 0.9, sw, 0.5)

    def round_trip(impl, leaves):
        out = []
        for w, m, vh, vl, head, stack, g in leaves:
            step = impl["forward"](w, m, vh, vl, head, stack, g, n1, n2, rw, lr, c1, c2, *moments, sw, k, do)
            w1, m1, vh1, vl1, h1, s1, ok, _, _ = step
            w0, h0 = impl["undo_weights"](w1, m1, vh1, vl1, h1, rw, lr, c1, c2, moments[1], moments[3], sw)
            d, hw = g.astype(jnp.float64), g * jnp.float32(0.25)
            back = impl["undo_adjoint"](
                m1, vh1, vl1, h0, s1, g, d, hw, d, d, w0, n1, n2, nf, lr, c1, c2, *moments, k, do, prev
            )
            out.append(((*step[:8], w0, *back[:4], back[9], back[10], back[11], step[8]), back[4:9]))
        return out

    names = ("forward", "undo_weights", "undo_adjoint")
    ours = jax.jit(lambda x: round_trip({n: _pair(n, decay)[0] for n in names}, x))(leaves)
    theirs = jax.jit(lambda x: round_trip({n: _pair(n, decay)[1] for n in names}, x))(leaves)
    for (w, m, vh, vl, head, _, g), (ints, floats), (ints_x, floats_x) in zip(
        leaves, ours, theirs, strict=True
    ):
        for a, b in zip(ints, ints_x, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert bool(ints[6]), "the step should stay in range"
        for restored, original in zip(ints[8:13], (w, m, vh, vl, head), strict=True):
            np.testing.assert_array_equal(np.asarray(restored), np.asarray(original))
        want = int(reversible._fingerprint_leaf(g, LEAF))  # chunks' and blocks' parts of the hash, added
        assert int(ints[7]) == int(ints[13]) == want
        for a, b in zip(floats, floats_x, strict=True):
            scale = np.max(np.abs(np.asarray(b)))
            np.testing.assert_array_less(np.abs(np.asarray(a) - np.asarray(b)), 1e-12 * scale + 1e-300)


def test_the_kernels_division_is_exact_at_its_ends():
    """The kernels' exact division (`_divmod`: a float estimate biased low and rounded to nearest by
    the float adds, one correction) is floor division for every dividend the kernels pass, up to
    ``|x| < 2**63``, and both ends of ``n``."""
    from numba import njit

    from hypercore import _fused_kernels_adam as k

    @njit
    def run(x, n, q, r):
        inv = 1.0 / np.float64(n)
        for i in range(x.size):
            q[i], r[i] = k._divmod(x[i], n, inv)

    rng = np.random.default_rng(5)
    for n in (adam.N_MIN, adam.N_MIN + 1, 12582912, 16760438, adam.N_MAX, adam.DB):
        near = [
            j * n + d
            for j in (0, 1, -1, 2**39, -(2**39), (2**63 - 1) // n, -(2**63) // n)
            for d in (-1, 0, 1)
        ]
        near += [2**63 - 1, -(2**63), 2**62, -(2**62)]
        x = [int(v) for v in rng.integers(-(2**63), 2**63 - 1, 50_000, dtype=np.int64)]
        x += [
            int(v) >> int(s)
            for v, s in zip(
                rng.integers(-(2**63), 2**63 - 1, 50_000), rng.integers(0, 63, 50_000), strict=True
            )
        ]
        x = np.array([v for v in near + x if -(2**63) <= v < 2**63], dtype=np.int64)
        q, r = np.empty_like(x), np.empty_like(x)
        run(x, np.int64(n), q, r)
        want = [divmod(int(v), n) for v in x]
        np.testing.assert_array_equal(q, np.array([a for a, _ in want], dtype=np.int64), err_msg=f"n = {n}")
        np.testing.assert_array_equal(r, np.array([b for _, b in want], dtype=np.int64), err_msg=f"n = {n}")
