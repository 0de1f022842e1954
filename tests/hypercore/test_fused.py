"""The fused CPU kernels (`hypercore._fused`) against the XLA formulation they replace.

Integer results (weights, velocities, heads, stacks, fingerprints, range flags) must be the XLA
formulation's bit for bit, for any numerator, velocity, head and gradient, so that a forward pass on
one path is undone exactly on the other; float64 adjoints agree to rounding (their sums are taken in
another order). The engine must pick the kernels on a CPU, fall back where they do not apply, and
keep working without Numba.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reversible import GAMMAS, _while_bodies, make_problem, rel_err, schedules  # the tiny net

import hypercore
from hypercore import _fixed, _fused, check_reversal, reversible
from hypercore.reversible import forward_state

SHAPE = (6, 5)
N = SHAPE[0] * SHAPE[1]
STACK_WORDS = 2


def test_the_kernels_are_available_on_this_machine():
    """Numba is a dependency: CI must run the kernels, not silently the fallback."""
    assert _fused.available()


LEAF = 3  # the leaf number the step kernels' fingerprints are taken for


@functools.cache
def _pair(name, dtype=None):
    """The fused kernel and its XLA formulation, each compiled once for SHAPE (and for the model's
    ``dtype``, the undo of the weights; for leaf number `LEAF`, the steps that take the gradient's
    fingerprint)."""
    fused = {
        "forward": _fused.sgd_forward,
        "undo_weights": _fused.sgd_undo_weights,
        "undo_state": _fused.sgd_undo_state,
        "undo_adjoint": _fused.sgd_undo_adjoint,
    }[name]
    xla = {
        "forward": reversible._sgd_forward_leaf,
        "undo_weights": reversible._sgd_undo_weights_leaf,
        "undo_state": reversible._sgd_undo_state_leaf,
        "undo_adjoint": reversible._sgd_undo_adjoint_leaf,
    }[name]
    if dtype is not None:
        fused, xla = functools.partial(fused, dtype=dtype), functools.partial(xla, dtype=dtype)
    if name in ("forward", "undo_adjoint"):
        fused, xla = functools.partial(fused, leaf=LEAF), functools.partial(xla, leaf=LEAF)
    return jax.jit(fused), jax.jit(xla)


def _array(values, dtype):
    return jnp.asarray(np.asarray(values, dtype=object).astype(dtype).reshape(SHAPE))


def _ints(lo, hi):
    return st.lists(st.integers(lo, hi), min_size=N, max_size=N)


# gradients: ordinary values, and at times one whose step leaves the fixed-point range or is not finite
_grads = st.lists(st.floats(-10.0, 10.0, width=32), min_size=N, max_size=N)
_bad_gradient = st.sampled_from([None, None, None, 1e-30, -3e4, 5e5, float("inf"), float("nan")])


def _empty_slot(stack, k):
    """The stack with slot ``k`` cleared, as a spill finds it."""
    word, shift = k // 2, 32 * (k % 2)
    return stack.at[word].set(stack[word] & ~jnp.uint64(0xFFFFFFFF << shift))


@settings(max_examples=40, deadline=None)
@given(
    n=st.one_of(  # with the powers of two, which the kernels divide by in shifts
        st.integers(1, _fixed.D), st.sampled_from([1, 2, 3, 255, 4096, 2**14, 2**15, 58982, 65535, _fixed.D])
    ),
    w=_ints(-(2**61), 2**61),
    v=_ints(-(2**62) + 1, 2**62 - 1),
    heads=_ints(0, 2**48 - 1),
    stack=st.lists(st.integers(0, 2**64 - 1), min_size=STACK_WORDS * N, max_size=STACK_WORDS * N),
    g=_grads,
    bad=_bad_gradient,
    alpha=st.floats(1e-4, 3.0),
    k=st.integers(0, 2 * STACK_WORDS - 1),
    do=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_each_kernel_matches_the_xla_formulation_bit_for_bit(
    n, w, v, heads, stack, g, bad, alpha, k, do, dtype
):
    n = jnp.int64(n)
    om = (jnp.int64(_fixed.D) - n).astype(jnp.float64) / _fixed.D
    alpha = jnp.float64(alpha)
    k, do = jnp.int32(k), jnp.bool_(do)
    w, v = _array(w, np.int64), _array(v, np.int64)
    heads = _array(heads, np.uint64)
    stack = jnp.asarray(np.asarray(stack, dtype=object).astype(np.uint64).reshape((STACK_WORDS, *SHAPE)))
    stack = _empty_slot(stack, int(k))
    g = np.asarray(g, np.float64).reshape(SHAPE)
    if bad is not None:
        g[1, 2] = bad
    g = jnp.asarray(g, dtype)
    # a spilled step's heads are below 2**48 again only after the spill; keep the pushed heads in range
    heads = jnp.where(do, heads, heads >> jnp.uint64(1))

    fused, xla = _pair("forward")
    ours, theirs = (
        fused(w, v, heads, stack, g, n, om, alpha, k, do),
        xla(w, v, heads, stack, g, n, om, alpha, k, do),
    )
    for name, a, b in zip(("w", "v", "head", "stack", "w_model", "ok", "fp"), ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"forward: {name}")
    w1, v1, h1, s1, w1_model, ok, fp = ours
    assert fp.dtype == jnp.uint64 and int(fp) == int(reversible._fingerprint_leaf(g, LEAF))
    assert w1_model.dtype == g.dtype
    np.testing.assert_array_equal(np.asarray(w1_model), np.asarray(_fixed.from_fixed(w1).astype(g.dtype)))

    fused, xla = _pair("undo_weights", dtype)
    w_back, w_back_model = fused(w1, v1, alpha)
    for a, b in zip((w_back, w_back_model), xla(w1, v1, alpha), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg="undo_weights")
    assert w_back_model.dtype == g.dtype
    converted = _fixed.from_fixed(w_back).astype(g.dtype)
    np.testing.assert_array_equal(np.asarray(w_back_model), np.asarray(converted))
    fused, xla = _pair("undo_state")
    v_back, h_back = fused(v1, h1, g, n, om, s1, k, do)
    v_xla, h_xla = xla(v1, h1, g, n, om, s1, k, do)
    np.testing.assert_array_equal(np.asarray(v_back), np.asarray(v_xla))
    np.testing.assert_array_equal(np.asarray(h_back), np.asarray(h_xla))
    if bool(ok):  # an in-range step is undone exactly, by either path
        np.testing.assert_array_equal(np.asarray(w_back), np.asarray(w))
        np.testing.assert_array_equal(np.asarray(v_back), np.asarray(v))
        np.testing.assert_array_equal(np.asarray(h_back), np.asarray(heads))

    # the undo with the adjoint, ``dw - hw`` the cotangent, then a step before's weights (alpha_p) from
    # the restored v: the weights and their copy bit for bit, as the undo of the weights makes them
    rng = np.random.default_rng(int(n))
    dw, dv = (jnp.asarray(rng.normal(size=SHAPE)) for _ in range(2))
    hw = jnp.asarray(rng.normal(size=SHAPE) * 0.1, dtype)
    alpha_p = jnp.float64(alpha * 0.5)
    # the rule's 1 - gamma and gamma, and the velocity's scales after and before the step: the
    # adjoint's own values, which the scaled velocity's factors above (``om``, ``alpha``) are not
    rule = tuple(jnp.float64(x) for x in rng.uniform(0.5, 1.0, 4))
    fused, xla = _pair("undo_adjoint")
    args = (v1, h1, dv, g, s1, dw, hw, w_back, n, om, alpha, alpha_p, *rule, k, do)
    ours, theirs = fused(*args), xla(*args)
    np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(v_xla))
    np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(h_xla))
    assert int(ours[6]) == int(theirs[6]) == int(fp), "undo_adjoint: the gradient's fingerprint"
    for name, a, b in zip(("dv", "ct", "dalpha", "dgamma"), ours[2:6], theirs[2:6], strict=True):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=1e-6 if name == "ct" else 1e-12, err_msg=name
        )
    np.testing.assert_array_equal(np.asarray(ours[7]), np.asarray(dw - hw.astype(jnp.float64)))
    before = reversible._sgd_undo_weights_leaf(w_back, v_xla, alpha_p, g.dtype)
    for name, a, b, c in zip(("w", "w_model"), ours[8:], theirs[8:], before, strict=True):
        assert a.dtype == c.dtype, name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"undo_adjoint: {name}")
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c), err_msg=f"undo_adjoint: {name}")


# The large shapes run in chunks (`hypercore._fused_launch.chunk_count`) that start and end inside rows
# (301 x 333: six chunks of 16,706 elements, 50.2 rows) or within one long row (40,000).
@pytest.mark.parametrize("shape", [(), (7,), (3, 11), (2, 3, 4), (301, 333), (40_000,)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_fingerprint_kernel_hashes_the_same_bits(shape, dtype):
    g = jax.random.normal(jax.random.key(1), shape, dtype)
    ours = jax.jit(_fused.fingerprint, static_argnums=1)(g, 2)
    assert int(ours) == int(reversible._fingerprint_leaf(g, 2))
    flat = g.reshape(-1)
    flipped = flat.at[flat.size // 2].set(jnp.nextafter(flat[flat.size // 2], jnp.inf)).reshape(shape)
    assert int(jax.jit(_fused.fingerprint, static_argnums=1)(flipped, 2)) != int(ours)


def _paths(fn):
    """``fn()`` traced with the kernels off, then on."""
    out = []
    for on in (False, True):
        with _fused.enabled(on):
            out.append(fn())
    return out


@pytest.mark.parametrize("kind", ["shared", "per_array"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_the_engine_on_either_path_reaches_the_same_state(kind, dtype):
    """A forward pass with spills (gammas down to 0.3) ends in the same bits on both paths."""
    loss, w0, _ = make_problem(dtype)
    alphas, gammas = schedules(kind, 300, w0, GAMMAS["random"])
    xla, fused = _paths(lambda: forward_state(loss, w0, {}, alphas, gammas))
    assert int(fused.buf.used) > 2, "the run should spill"
    for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(fused), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with _fused.enabled(True):
        assert check_reversal(loss, w0, {}, alphas, gammas)


@pytest.mark.parametrize("kind", ["shared", "per_array"])
def test_the_hypergradients_agree_across_paths(kind):
    T = 150
    loss, w0, X = make_problem(jnp.float32)
    alphas, gammas = schedules(kind, T, w0, GAMMAS["random"])
    meta = {"l2": jnp.full(w0["W"].shape, 1e-3), "X": X}

    def objective(w0, meta, alphas, gammas):
        w_T = hypercore.reversible_sgd(loss, w0, meta, alphas, gammas, min_gamma=0.3)
        return loss(w_T, meta, jnp.int32(0))

    xla, fused = _paths(lambda: jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3)))(w0, meta, alphas, gammas))
    for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(fused), strict=True):
        assert bool(jnp.all(jnp.isfinite(b)))
        assert rel_err(b, a) < 1e-9


def test_the_pipelined_reverse_loop_matches_the_step_by_step_one(monkeypatch):
    """The engine's pipelined reverse loop (`SGDM.undo_adjoint_then_weights`: the last step's weights
    undone before the loop, each step's state then the step before's weights, none at step 0) gives
    the step-by-step loop's hypergradients (`undo_weights`, then `undo_state` and `adjoint_step`, as
    for an optimizer without the member): bit for bit on XLA's path, where both do the same
    operations, and to rounding with the kernels; all three restore ``w_0`` exactly."""
    loss, w0, X = make_problem(jnp.float64)
    alphas, gammas = schedules("per_array", 60, w0, GAMMAS["random"])
    meta = {"l2": jnp.full(w0["W"].shape, 1e-3), "X": X}

    def objective(w0, meta, alphas, gammas, report):
        w_T = hypercore.reversible_sgd(loss, w0, meta, alphas, gammas, min_gamma=0.3, report=report)
        return loss(w_T, meta, jnp.int32(0))

    def run():
        grad = jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3, 4)))
        return grad(w0, meta, alphas, gammas, hypercore.empty_report())

    xla, fused = _paths(run)
    with monkeypatch.context() as patch:
        patch.setattr(reversible.SGDM, "undo_adjoint_then_weights", None)
        step_by_step = _paths(run)[0]
    for got in (xla, fused, step_by_step):
        assert hypercore.ReversalReport.from_array(got[-1]).exact
    for a, b in zip(jax.tree.leaves(xla[:-1]), jax.tree.leaves(step_by_step[:-1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(fused[:-1]), jax.tree.leaves(step_by_step[:-1]), strict=True):
        assert bool(jnp.all(jnp.isfinite(a)))
        assert rel_err(a, b) < 1e-9


def _custom_calls(fn, *args) -> set[str]:
    text = jax.jit(fn).lower(*args).compile().as_text()
    return {
        line.split('custom_call_target="')[1].split('"')[0]
        for line in text.splitlines()
        if "custom_call_target" in line
    }


@pytest.mark.parametrize("kind", ["shared", "per_array", "per_weight"])
def test_the_engine_calls_the_kernels_where_they_apply(kind):
    loss, w0, _ = make_problem(jnp.float32)
    alphas, gammas = schedules(kind, 20, w0, GAMMAS["0.9"])

    def f(alphas, gammas):
        return jnp.sum(hypercore.reversible_sgd(loss, w0, {}, alphas, gammas, min_gamma=0.9)["V"])

    off, on = _paths(lambda: _custom_calls(jax.grad(f, argnums=(0, 1)), alphas, gammas))
    assert not any(c.startswith("revtune_") for c in off)
    steps = {
        "revtune_sgd_forward_float32",
        "revtune_sgd_undo_weights_float32",
        "revtune_sgd_undo_adjoint_float32",
    }
    if kind == "per_weight":  # one value per weight: the XLA formulation, which broadcasts
        assert not steps & on
        assert "revtune_fingerprint_float32" in on  # the gradient's hash in a pass of its own
    else:
        assert steps <= on
        assert "revtune_fingerprint_float32" not in on  # taken by the steps, in their own passes


def test_a_call_with_more_buffers_than_the_launch_record_holds_is_refused():
    """Past `MAX_TABLE` buffers the handler would write past its launch record (it once segfaulted
    the self-check): the call is refused while tracing, before anything runs."""
    from hypercore import _fused_launch

    x = jnp.zeros(3, jnp.float32)
    out = jax.ShapeDtypeStruct((), jnp.uint64)
    for outs in (out, (out,)):  # one result, bare or in a tuple, after a full table of arguments

        def call(x, outs=outs):
            return _fused._call(
                "revtune_fingerprint_float32", outs, *[x] * _fused_launch.MAX_TABLE, aliases={}
            )

        with pytest.raises(ValueError, match="MAX_TABLE"):
            jax.jit(call).lower(x)
    # and one that fits runs as before
    assert int(jax.jit(lambda x: _fused.fingerprint(x, 1))(x)) == int(reversible._fingerprint_leaf(x, 1))


def test_the_environment_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("REVTUNE_FUSED_KERNELS", "0")
    assert not _fused.available()
    monkeypatch.setenv("REVTUNE_FUSED_KERNELS", "1")
    assert _fused.available()


def test_without_numba_the_engine_keeps_xla_s_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "hypercore._fused_kernels", raising=False)
    monkeypatch.setitem(_fused._state, "checked", None)
    assert not _fused.available()
    loss, w0, _ = make_problem()
    alphas, gammas = schedules("shared", 30, w0, GAMMAS["0.9"])
    assert check_reversal(loss, w0, {}, alphas, gammas)


def test_the_fused_loops_copy_no_weight_matrix():
    """The kernels update in place (``input_output_aliases``); a copy of a weight matrix in a training
    loop would cost a pass over memory each step (the XLA formulation's loops copy three of them here).
    Nor does XLA pass over the weight matrix to make the float32 copy the gradient reads: the kernels
    that change the weights write it.
    Structural, not timed. (XLA may still copy a tiny leaf whose conversion it fuses into the gradient:
    that costs nothing.)"""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(64, 96)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 64))
    w0 = {
        "W1": jnp.asarray(rng.normal(size=(96, 48)) * 0.1, jnp.float32),
        "W2": jnp.zeros((48, 10), jnp.float32),
    }

    def loss(w, meta, t):
        idx = (jnp.arange(16) + 16 * t) % 64
        logits = jnp.tanh(X[idx] @ w["W1"]) @ w["W2"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[idx, None], axis=1))

    def f(a, g):
        return loss(hypercore.reversible_sgd(loss, w0, {}, a, g, capacity=8), {}, 0)

    with _fused.enabled(True):
        hlo = (
            jax.jit(jax.grad(f, argnums=(0, 1)))
            .lower(jnp.full((20,), 0.1), jnp.full((20,), 0.9))
            .compile()
            .as_text()
        )
    bodies = list(_while_bodies(hlo).values())
    assert len(bodies) >= 2
    assert any("revtune_sgd_undo_adjoint" in line for lines in bodies for line in lines)
    copies = [line.strip() for lines in bodies for line in lines if " copy(" in line and "[96,48]" in line]
    assert copies == [], copies
    fusions = [line.strip().split(" = ", 1) for lines in bodies for line in lines if " fusion(" in line]
    converts = [name for name, rhs in fusions if "convert" in name and rhs.startswith("f32[96,48]")]
    assert converts == [], converts


def _large(rng, shape):
    """A weight array's worth of valid SGD state: large enough to run in several chunks."""
    ints = functools.partial(rng.integers, size=shape)
    return (
        jnp.asarray(ints(-(2**50), 2**50), jnp.int64),
        jnp.asarray(ints(-(2**50), 2**50), jnp.int64),
        jnp.asarray(ints(0, 2**47), jnp.uint64),
        jnp.asarray(rng.integers(0, 2**63, (STACK_WORDS, *shape)), jnp.uint64),
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("numerator", [58982, 2**15, _fixed.D])
def test_large_arrays_run_in_chunks_on_xla_s_threads_and_match_the_xla_formulation(dtype, numerator):
    """An array of several chunks (`hypercore._fused_launch`: its chunks go to XLA's thread pool, the
    call returns a future) gives the XLA formulation's integers bit for bit, and its sums to rounding,
    through a spill and back (with a halving, the scaled velocity's renormalisation, the division a
    shift; or, with the identity for a multiplier, as the scaled velocity's most steps, the loops
    without the division and no spill), four such arrays in one program; on one thread, every bit
    the same."""
    from hypercore import _fused_launch

    shape = (5 * _fused_launch.MIN_CHUNK // 128 + 3, 128)
    assert _fused_launch.chunk_count(shape[0] * shape[1]) == 5
    rng = np.random.default_rng(7)
    leaves = [_large(rng, shape) for _ in range(4)]
    gs = [jnp.asarray(rng.normal(size=shape) * 3, dtype) for _ in leaves]
    dvs = [jnp.asarray(rng.normal(size=shape)) for _ in leaves]
    n, a, k, do = jnp.int64(numerator), jnp.float64(0.3), jnp.int32(1), jnp.bool_(numerator != _fixed.D)
    rule = (jnp.float64(0.1), jnp.float64(0.9), jnp.float64(0.7), jnp.float64(0.8))
    om = (jnp.int64(_fixed.D) - n).astype(jnp.float64) / _fixed.D

    def round_trip(impl, leaves, gs, dvs):
        out = []
        for (w, v, head, stack), g, dv in zip(leaves, gs, dvs, strict=True):
            stack = _empty_slot(stack, 1)
            w1, v1, h1, s1, copy1, ok, fp1 = impl["forward"](w, v, head, stack, g, n, om, a, k, do, leaf=2)
            w0, copy0 = impl["undo_weights"](w1, v1, a, g.dtype)
            v0, h0 = impl["undo_state"](v1, h1, g, n, om, s1, k, do)
            hw = (g * 0.5).astype(g.dtype)  # a later step's product, and the weights of a step before
            adj = impl["undo_adjoint"](v1, h1, dv, g, s1, dv, hw, w0, n, om, a, a * 0.5, *rule, k, do, leaf=2)
            ints = (w1, v1, h1, s1, ok, w0, v0, h0, *adj[:2], copy1, copy0, fp1, adj[6], *adj[8:])
            out.append((ints, (*adj[2:6], adj[7])))
        return out

    fused = {
        name: getattr(_fused, f"sgd_{name}")
        for name in ("forward", "undo_weights", "undo_state", "undo_adjoint")
    }
    xla = {name: getattr(reversible, f"_sgd_{name}_leaf") for name in fused}
    compiled = jax.jit(functools.partial(round_trip, fused))
    ours = compiled(leaves, gs, dvs)
    theirs = jax.jit(functools.partial(round_trip, xla))(leaves, gs, dvs)
    _fused_launch.thread_limit.value = 1  # the same chunks, all on the calling thread
    try:
        alone = compiled(leaves, gs, dvs)
    finally:
        _fused_launch.thread_limit.value = 0
    for a_, b_ in zip(jax.tree.leaves(ours), jax.tree.leaves(alone), strict=True):  # sums included
        np.testing.assert_array_equal(np.asarray(a_), np.asarray(b_))
    for (w, v, head, _), g, (ints, floats), (ints_x, floats_x) in zip(leaves, gs, ours, theirs, strict=True):
        for a_, b_ in zip(ints, ints_x, strict=True):
            np.testing.assert_array_equal(np.asarray(a_), np.asarray(b_))
        assert bool(ints[4]), "the step should stay in range"
        for restored, original in zip(ints[5:10], (w, v, head, v, head), strict=True):
            np.testing.assert_array_equal(np.asarray(restored), np.asarray(original))
        want = int(reversible._fingerprint_leaf(g, 2))  # the chunks' parts of the gradient's hash, added
        assert int(ints[12]) == int(ints[13]) == want
        for copy, fixed in zip(ints[10:12], (ints[0], w), strict=True):  # the weights in g's dtype
            assert copy.dtype == dtype
            converted = _fixed.from_fixed(fixed).astype(dtype)
            np.testing.assert_array_equal(np.asarray(copy), np.asarray(converted))
        for a_, b_ in zip(floats, floats_x, strict=True):
            np.testing.assert_allclose(np.asarray(a_), np.asarray(b_), rtol=1e-12, atol=0)


def _conversion_loops():
    """Numba loops over `hypercore._fused_kernels`' conversions and the hardware's own."""
    from numba import njit

    from hypercore import _fused_kernels as k

    def loop(fn):
        @njit
        def run(x, out):
            for i in range(x.size):
                out[i] = fn(x[i])

        return run

    names = ("i2f", "u2f", "f2i", "f2u", "i2f_small", "f2i_small")
    ours = {name: loop(getattr(k, f"_{name}")) for name in names}  # what this CPU's kernels use
    ours |= {f"{name}_bits": loop(getattr(k, f"_{name}_bits")) for name in names}  # what AVX2's use
    theirs = {
        "i2f": loop(njit(lambda x: np.float64(x))),
        "u2f": loop(njit(lambda x: np.float64(x))),
        "f2i": loop(njit(lambda x: np.int64(x))),
        "f2u": loop(njit(lambda x: np.uint64(x))),
    }
    theirs["i2f_small"], theirs["f2i_small"] = theirs["i2f"], theirs["f2i"]
    return ours, theirs


def test_the_vector_friendly_conversions_give_the_hardware_s_bits():
    """The kernels convert 64-bit integers to and from float64 through the floats' bits on x86 without
    AVX-512DQ (no vector conversion there): every result must be the hardware conversion's, over each
    function's whole range, its ends, rounding ties and both signs. Both the bit-built conversions and
    whichever this CPU's kernels use are checked."""
    ours, theirs = _conversion_loops()
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**64, 200_000, dtype=np.uint64)
    shifts = rng.integers(0, 64, words.size).astype(np.uint64)  # every magnitude, not just the top ones
    ends = [0, 1, 2, 2**31, 2**32 - 1, 2**32, 2**51 - 1, 2**52 + 1, 2**53 - 1, 2**53 + 1, 2**54 + 2]
    ends += [2**62, 2**63 - 1, 2**63 - 2, 2**64 - 1, 2**64 - 2]  # ties included (2**53 + 1, ...)
    unsigned = np.concatenate([words >> shifts, np.array(ends, dtype=np.uint64)])
    signed = np.concatenate(
        [words.view(np.int64) >> shifts.astype(np.int64), np.array(ends, dtype=np.uint64).view(np.int64)]
    )
    signed = np.concatenate([signed, -signed[signed > -(2**63)], [-(2**63), 2**63 - 1]])
    small = signed[(signed > -(2**51)) & (signed < 2**51)]
    cases = {"i2f": signed, "u2f": unsigned, "i2f_small": small}
    floats = np.rint(rng.standard_normal(200_000) * np.exp2(rng.uniform(0, 64, 200_000)))
    floats = np.concatenate([floats, [0.0, -0.0, 1.0, -1.0, 2.0**51 - 1, 2.0**52, 2.0**62, 2.0**63 - 1024]])
    floats = np.concatenate([floats, -floats, np.nextafter(2.0**64, 0) - np.arange(3) * 4096])
    cases["f2i"] = floats[np.abs(floats) < 2.0**63]
    cases["f2u"] = floats[(floats >= 0) & (floats < 2.0**64)]
    cases["f2i_small"] = floats[np.abs(floats) < 2.0**51]
    for name, x in [(f"{n}{tail}", x) for n, x in cases.items() for tail in ("", "_bits")]:
        base = name.removesuffix("_bits")
        dtype = (
            np.float64 if base in ("i2f", "u2f", "i2f_small") else (np.uint64 if base == "f2u" else np.int64)
        )
        a, b = np.empty(x.size, dtype), np.empty(x.size, dtype)
        ours[name](x, a)
        theirs[base](x, b)
        bad = np.flatnonzero(a.view(np.uint64) != b.view(np.uint64))
        assert bad.size == 0, f"{name}: {x[bad[:3]]} -> {a[bad[:3]]}, not {b[bad[:3]]}"


def test_the_kernels_cache_is_keyed_by_every_kernel_source(tmp_path, monkeypatch):
    """Numba keys a cached function by its own file alone, and the handlers hold compiled copies of
    the loops of the other kernel modules: every kernel function must be stamped with one digest of
    all of `_kernel_cache.SOURCES`, which any change to any of them changes."""
    from hypercore import _fused_kernels, _fused_kernels_adam, _fused_launch, _kernel_cache

    functions = [_fused_kernels._forward_loop, _fused_kernels_adam._undo_adjoint_loop, _fused_launch._body]
    functions += [_fused_launch._task, _fused_launch.HANDLERS["revtune_adam_forward_float32"]]
    for fn in functions:
        locator = fn._cache._impl.locator
        assert isinstance(locator, _kernel_cache._AllSources), fn
        assert locator.get_source_stamp() == _kernel_cache.sources_digest()

    original = _kernel_cache.sources_digest()
    copies = []
    for path in map(Path, _kernel_cache._PATHS):
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    monkeypatch.setattr(_kernel_cache, "_PATHS", tuple(map(str, copies)))
    before = _kernel_cache.sources_digest()
    assert before == original  # the same contents elsewhere: the same digest
    for copy in copies:
        copy.write_text(copy.read_text() + "\n# an edit\n")
        after = _kernel_cache.sources_digest()
        assert after != before, copy
        before = after


def test_the_roundings_and_fixed_point_conversions_give_the_formulation_s_bits():
    """`_rint_i64` (and the bit-built `_f2i_bits`, which rounds half to even as it converts) on any
    float, `_to_fixed` and `_from_fixed` (each also in its bit-built form, with the scale folded in)
    and the range flag `_outside`, against numpy's ``rint``, ``int64`` and compares: ties of both
    signs, small negative non-integers (which a rounding of the rest after a floor gets wrong),
    values just beside multiples of 2**32 and the ends of each range."""
    from numba import njit

    from hypercore import _fused_kernels as k

    def loop(fn, dtype):
        fn = fn if hasattr(fn, "py_func") else njit(fn)

        @njit
        def run(x):
            out = np.empty(x.size, dtype)
            for i in range(x.size):
                out[i] = fn(x[i])
            return out

        return run

    rng = np.random.default_rng(5)
    mags = np.exp2(rng.uniform(-60, 62.9, 200_000))
    d = rng.choice([-1.0, 1.0], mags.size) * mags
    ties = np.rint(rng.standard_normal(50_000) * np.exp2(rng.uniform(0, 50, 50_000))) + 0.5
    near = np.ldexp(rng.integers(-(2**30), 2**30, 50_000).astype(np.float64), 32)
    near = np.concatenate([near + o for o in (-0.5, -0.25, 0.5, 0.75, -1e-6)])
    ends = [0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, -0.5 - 2**-30, -1e-300]
    ends += [2.0**32 - 0.5, -(2.0**32) - 0.5]
    ends += [2.0**52 - 0.5, 2.0**62, np.nextafter(2.0**63, 0), -(2.0**63), 4294967295.5, -4294967295.5]
    d = np.concatenate([d, ties, -ties, near, ends])
    want = np.rint(d).astype(np.int64)
    for fn in (k._rint_i64, k._f2i_bits):
        np.testing.assert_array_equal(loop(fn, np.int64)(d), want)

    x = np.concatenate([d * 2.0**-48, rng.standard_normal(100_000) * 1e-3, [np.nan, np.inf, -np.inf]])
    r = _fixed.RANGE
    x = np.concatenate([x, [r, -r, np.nextafter(r, 0), -np.nextafter(r, 0), 2.0**-49, -(2.0**-49)]])
    ok = np.abs(x) < _fixed.RANGE
    want = np.rint(np.where(ok, x, 0.0) * _fixed.SCALE).astype(np.int64)
    to_fixed, rint_hi, scale_hi, limit_f = k._to_fixed, k._rint_hi_bits, k.SCALE_HI, k.RANGE
    values = loop(lambda v: to_fixed(v)[0], np.int64)(x)
    flags = loop(lambda v: to_fixed(v)[1], np.bool_)(x)
    bits = loop(lambda v: rint_hi((v if abs(v) < limit_f else 0.0) * scale_hi), np.int64)(x)
    np.testing.assert_array_equal(values, want)
    np.testing.assert_array_equal(bits, want)
    np.testing.assert_array_equal(flags, ok)

    limit = int(k.LIMIT)
    words = rng.integers(0, 2**64, 200_000, dtype=np.uint64).view(np.int64)
    i = np.concatenate([words, words >> rng.integers(0, 64, words.size)])
    i = np.concatenate([i, [0, 1, -1, limit, -limit, limit - 1, 1 - limit, limit + 1, -limit - 1]])
    i = np.concatenate([i, [2**63 - 1, -(2**63), 2**53 + 1, -(2**53) - 1, 2**62 + 2**9, -(2**62) - 2**9]])
    want = i.astype(np.float64) * 2.0**-48
    for fn in (k._from_fixed, k._from_fixed_bits):
        got = loop(fn, np.float64)(i)
        bad = np.flatnonzero(got.view(np.uint64) != want.view(np.uint64))
        assert bad.size == 0, f"{fn}: {i[bad[:3]]} -> {got[bad[:3]]}, not {want[bad[:3]]}"
    outside_fn = k._outside
    outside = loop(lambda v: outside_fn(v) < 0, np.bool_)(i)
    np.testing.assert_array_equal(outside, (i <= -limit) | (i >= limit))
