"""The engine against every other way of getting the same numbers.

Exact reversal bit for bit; hypergradients against ``jax.grad`` through a plain float64 unrolled
``lax.scan`` of the same rule (same quantised gammas) and against central finite differences; the
determinism guard, divergence and buffer overflow reported rather than silently wrong; no
recompilation on new values.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypercore
from hypercore import ReversalReport, check_reversal, empty_report, reversible_sgd, unrolled_sgd

N_IN, N_HID, N_EX = 5, 4, 16


def _data(seed=0):
    kx, _ = jax.random.split(jax.random.key(seed))
    X = jax.random.normal(kx, (N_EX, N_IN), jnp.float64)
    y = jnp.sin(X @ jnp.arange(1.0, N_IN + 1.0) / N_IN)
    return X, y


def make_problem(dtype=jnp.float64, scale=0.3, seed=0):
    """A tiny tanh regression net; minibatches are a pure function of t. ``dtype`` is the model's."""
    X, y = _data(seed)

    def loss(w, meta, t):
        idx = jax.random.randint(jax.random.fold_in(jax.random.key(seed), t), (8,), 0, N_EX)
        Xb = meta.get("X", X)[idx].astype(dtype)
        hidden = jnp.tanh(Xb @ w["W"].astype(dtype) + w["b"].astype(dtype))
        pred = hidden @ w["V"].astype(dtype)
        penalty = jnp.sum(meta["l2"].astype(dtype) * w["W"].astype(dtype) ** 2) if "l2" in meta else 0.0
        return jnp.mean((pred - y[idx].astype(dtype)) ** 2) + penalty

    k1, k2, k3 = jax.random.split(jax.random.key(seed + 1), 3)
    w0 = {
        "W": (scale * jax.random.normal(k1, (N_IN, N_HID), jnp.float64)).astype(dtype),
        "b": (scale * jax.random.normal(k2, (N_HID,), jnp.float64)).astype(dtype),
        "V": (scale * jax.random.normal(k3, (N_HID,), jnp.float64)).astype(dtype),
    }
    return loss, w0, X


def schedules(kind, T, w0, gamma, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "shared":
        a = jnp.asarray(rng.uniform(0.05, 0.2, T))
        g = jnp.asarray(gamma(rng, (T,)))
        return a, g
    if kind == "per_array":
        a = {k: jnp.asarray(rng.uniform(0.05, 0.2, T)) for k in w0}
        g = {k: jnp.asarray(gamma(rng, (T,))) for k in w0}
        return a, g
    a = {k: jnp.asarray(rng.uniform(0.05, 0.2, (T, *v.shape))) for k, v in w0.items()}
    g = {k: jnp.asarray(gamma(rng, (T, *v.shape))) for k, v in w0.items()}
    return a, g


GAMMAS = {
    "0.5": lambda rng, shape: np.full(shape, 0.5),
    "0.9": lambda rng, shape: np.full(shape, 0.9),
    "0.99": lambda rng, shape: np.full(shape, 0.99),
    "random": lambda rng, shape: rng.uniform(0.3, 0.999, shape),
}


def rel_err(a, b):
    a, b = jnp.ravel(jnp.asarray(a, jnp.float64)), jnp.ravel(jnp.asarray(b, jnp.float64))
    return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-300))


@pytest.mark.parametrize("T", [1, 10, 100, 1000])
@pytest.mark.parametrize("gamma", list(GAMMAS))
def test_reversal_is_bit_exact(T, gamma):
    loss, w0, _ = make_problem()
    alphas, gammas = schedules("shared", T, w0, GAMMAS[gamma])
    assert check_reversal(loss, w0, {}, alphas, gammas)


@pytest.mark.parametrize("kind", ["shared", "per_array", "per_weight"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_reversal_schedule_shapes_and_dtypes(kind, dtype):
    loss, w0, _ = make_problem(dtype)
    alphas, gammas = schedules(kind, 200, w0, GAMMAS["random"])
    assert check_reversal(loss, w0, {"l2": jnp.asarray(0.01)}, alphas, gammas)


def test_reversal_with_large_and_negative_weights():
    loss, w0, _ = make_problem(scale=1.0)
    w0 = {"W": w0["W"] * 1000.0 - 2000.0, "b": -jnp.abs(w0["b"]) * 5000.0, "V": w0["V"] * 1e-3}
    alphas, gammas = schedules("shared", 300, w0, GAMMAS["random"])
    assert check_reversal(loss, w0, {}, alphas * 1e-3, gammas)
    w_T = reversible_sgd(loss, w0, {}, alphas * 1e-3, gammas)
    assert all(jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(w_T))


def _objective(engine, loss, meta_key="l2"):
    def f(w0, meta, alphas, gammas, report):
        if engine == "reversible":
            w_T = reversible_sgd(loss, w0, meta, alphas, gammas, min_gamma=0.3, report=report)
        else:
            w_T = unrolled_sgd(loss, w0, meta, alphas, gammas)
        return loss(w_T, meta, jnp.int32(0)) + 0.1 * jnp.sum(jnp.tanh(w_T["V"]))

    return f


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-6), (jnp.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["shared", "per_array", "per_weight"])
def test_hypergradients_match_unrolled_float64(dtype, tol, kind):
    T = 100
    loss, w0, X = make_problem(dtype)
    alphas, gammas = schedules(kind, T, w0, GAMMAS["random"])
    gammas = jax.tree.map(hypercore.quantize_gamma, gammas)
    meta = {"l2": jnp.full((N_IN, N_HID), 1e-3), "X": X}
    argnums = (0, 1, 2, 3, 4)
    g_rev = jax.jit(jax.grad(_objective("reversible", loss), argnums))(
        w0, meta, alphas, gammas, empty_report()
    )
    report = ReversalReport.from_array(g_rev[4])
    assert report.exact and not report.overflow and not report.buffer_overflow
    # the reference keeps its weights in float64; the model casts them to its own dtype, like the engine
    w0_64 = jax.tree.map(lambda x: x.astype(jnp.float64), w0)
    g_ref = jax.grad(_objective("unrolled", loss), argnums[:4])(w0_64, meta, alphas, gammas, None)
    names = ["w0", "meta", "alphas", "gammas"]
    for name, a, b in zip(names, g_rev[:4], g_ref, strict=True):
        for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert leaf_a.shape == leaf_b.shape
            assert rel_err(leaf_a, leaf_b) <= tol, name


def test_hypergradients_match_central_finite_differences():
    T = 30
    loss, w0, X = make_problem(jnp.float64)
    alphas, gammas = schedules("per_array", T, w0, GAMMAS["0.9"])
    meta = {"l2": jnp.asarray(0.01), "X": X}
    f = _objective("reversible", loss)
    f_val = jax.jit(lambda w0, meta, a, g: f(w0, meta, a, g, empty_report()))
    grads = jax.jit(jax.grad(f, (0, 1, 2, 3)))(w0, meta, alphas, gammas, empty_report())

    # Exact multiplication by gamma puts up to n / 2**48 (about 2**-32) of buffer bits into v each
    # step, so the engine's loss is smooth only above ~1e-10: perturb by 2**-10 (which also keeps
    # gamma on its 2**-16 lattice) and extrapolate.
    checks = [
        (
            lambda e: (jax.tree.map(lambda x: x + e * jnp.ones_like(x), w0), meta, alphas, gammas),
            lambda: sum(float(jnp.sum(x)) for x in jax.tree.leaves(grads[0])),
            2.0**-10,
        ),
        (
            lambda e: (w0, {"l2": meta["l2"] + e, "X": meta["X"]}, alphas, gammas),
            lambda: float(grads[1]["l2"]),
            2.0**-10,
        ),
        (
            lambda e: (w0, {"l2": meta["l2"], "X": meta["X"] + e}, alphas, gammas),
            lambda: float(jnp.sum(grads[1]["X"])),
            2.0**-10,
        ),
        (
            lambda e: (w0, meta, jax.tree.map(lambda x: x + e, alphas), gammas),
            lambda: sum(float(jnp.sum(x)) for x in jax.tree.leaves(grads[2])),
            2.0**-10,
        ),
        (
            lambda e: (w0, meta, alphas, jax.tree.map(lambda x: x + e, gammas)),
            lambda: sum(float(jnp.sum(x)) for x in jax.tree.leaves(grads[3])),
            2.0**-10,
        ),
    ]

    def central(perturb, eps):
        return (float(f_val(*perturb(eps))) - float(f_val(*perturb(-eps)))) / (2 * eps)

    for i, (perturb, analytic, eps) in enumerate(checks):
        # Richardson extrapolation cancels the O(eps^2) term of the central difference
        fd = (4 * central(perturb, eps / 2) - central(perturb, eps)) / 3
        assert abs(fd - analytic()) <= 1e-6 * max(1.0, abs(fd)), (i, fd, analytic())


def test_engine_sees_arrays_closed_over_under_jit():
    """Data passed into jit and closed over by the loss is handled (closure conversion)."""
    _, w0, X = make_problem()

    @jax.jit
    def grad_l2(l2, X):
        def loss(w, meta, t):
            return jnp.mean((X @ w["W"] @ w["V"]) ** 2) + meta * jnp.sum(w["W"] ** 2)

        def f(l2):
            w_T = reversible_sgd(loss, w0, l2, jnp.full((20,), 0.1), jnp.full((20,), 0.9), min_gamma=0.9)
            return jnp.sum(w_T["V"])

        return jax.grad(f)(l2)

    def loss_ref(w, meta, t):
        return jnp.mean((X @ w["W"] @ w["V"]) ** 2) + meta * jnp.sum(w["W"] ** 2)

    ref = jax.grad(
        lambda l2: jnp.sum(
            unrolled_sgd(
                loss_ref, w0, l2, jnp.full((20,), 0.1), hypercore.quantize_gamma(jnp.full((20,), 0.9))
            )["V"]
        )
    )
    assert rel_err(grad_l2(jnp.asarray(0.01), X), ref(jnp.asarray(0.01))) < 1e-8


def test_second_call_with_new_values_does_not_recompile():
    loss, w0, _ = make_problem()
    T = 20
    traces = []

    def f(alphas, gammas, report):
        traces.append(1)
        w_T = reversible_sgd(
            loss, w0, {}, alphas, gammas, capacity=hypercore.buffer_capacity(T, 0.5), report=report
        )
        return jnp.sum(w_T["V"] ** 2)

    g = jax.jit(jax.grad(f, (0, 1, 2)))
    g(jnp.full((T,), 0.1), jnp.full((T,), 0.9), empty_report())
    g(jnp.full((T,), 0.05), jnp.full((T,), 0.7), empty_report())
    assert len(traces) == 1


def test_gradient_mismatch_names_the_step_and_poisons_the_hypergradient():
    """A loss that is not a pure function of (w, meta, t) is caught by the fingerprint guard."""
    calls = {"n": 0}
    T = 10

    def drift(_):
        calls["n"] += 1
        # the 4th evaluation onwards (the backward pass of step 7 in a 10-step run) gets a nudge
        return np.float64(0.0 if calls["n"] <= T + 2 else 1e-9)

    def loss(w, meta, t):
        nudge = jax.pure_callback(drift, jax.ShapeDtypeStruct((), jnp.float64), t)
        return jnp.sum((w["x"] - 1.0) ** 2) + nudge * jnp.sum(w["x"])

    w0 = {"x": jnp.zeros(3)}

    def f(alphas, report):
        return jnp.sum(reversible_sgd(loss, w0, {}, alphas, jnp.full((T,), 0.9), report=report)["x"])

    d_alpha, rep = jax.grad(f, (0, 1))(jnp.full((T,), 0.1), empty_report())
    report = ReversalReport.from_array(rep)
    assert not report.exact
    assert report.mismatch_step == T - 3
    assert bool(jnp.all(jnp.isnan(d_alpha)))


def test_divergence_is_reported_not_crashed():
    loss, w0, _ = make_problem()
    T = 200

    def f(alphas, report):
        w_T = reversible_sgd(
            lambda w, m, t: jnp.sum(w["W"] ** 2), w0, {}, alphas, jnp.full((T,), 0.9), report=report
        )
        return jnp.sum(w_T["W"])

    value = f(jnp.full((T,), 50.0), empty_report())
    assert bool(jnp.isnan(value))
    d_alpha, rep = jax.grad(f, (0, 1))(jnp.full((T,), 50.0), empty_report())
    report = ReversalReport.from_array(rep)
    assert report.overflow
    assert bool(jnp.all(jnp.isnan(d_alpha)))


def test_buffer_overflow_is_detected_and_reported():
    loss, w0, _ = make_problem()
    T = 300
    gammas = jnp.full((T,), 0.5)  # 1 bit per parameter per step: 300 bits need ~9 slots

    def f(alphas, report):
        return jnp.sum(reversible_sgd(loss, w0, {}, alphas, gammas, capacity=2, report=report)["V"])

    d_alpha, rep = jax.grad(f, (0, 1))(jnp.full((T,), 0.05), empty_report())
    report = ReversalReport.from_array(rep)
    assert report.buffer_overflow and report.capacity == 2
    assert bool(jnp.all(jnp.isnan(d_alpha)))
    assert not check_reversal(loss, w0, {}, jnp.full((T,), 0.05), gammas, capacity=2)
    assert check_reversal(loss, w0, {}, jnp.full((T,), 0.05), gammas)


def test_the_scaled_velocity_s_schedules_follow_gamma_s_running_product():
    """`sgd_renormalisations`: each step's multiplier is ``2**16 / 2**k`` (``k`` doublings of the
    scale, several a step for gammas below one half), the scale after it is in ``(1/2, 1]`` and the
    one before it the previous step's, and the scale times the multipliers so far is gamma's
    running product (the quantised one) to float64's rounding, over 5,000 steps down to gamma
    ``2**-16`` and up to 1."""
    from hypercore import reversible

    rng = np.random.default_rng(3)
    T = 5000
    gammas = jnp.asarray(np.concatenate([rng.uniform(0.0, 1.0, T - 4), [2.0**-16, 0.5, 1.0, 0.25]]))
    renorms, scales, before = reversible.sgd_renormalisations(gammas)
    r, s, b = (np.asarray(x) for x in (renorms, scales, before))
    k = np.log2(2.0**16 / r)
    assert np.array_equal(k, np.round(k)) and k.min() == 0 and k.max() >= 15
    assert np.all((s > 0.5) & (s <= 1.0))
    assert b[0] == 1.0 and np.array_equal(b[1:], s[:-1])
    q = np.asarray(hypercore.quantize_gamma(gammas), np.float64)
    log_product = np.cumsum(np.log2(q))
    np.testing.assert_allclose(np.log2(s) - np.cumsum(k), log_product, rtol=1e-12, atol=1e-9)
    # a per-weight schedule gets one scale per weight
    per_weight = {"W": jnp.asarray(rng.uniform(0.3, 1.0, (50, 3, 2)))}
    shapes = [x.shape for x in jax.tree.leaves(reversible.sgd_renormalisations(per_weight))]
    assert shapes == [(50, 3, 2)] * 3


@pytest.mark.parametrize("gamma,T", [(0.5, 300), (0.9, 1000), (0.3, 200), (0.99, 1000)])
def test_capacity_bound_holds_for_the_gammas_it_was_derived_from(gamma, T):
    loss, w0, _ = make_problem()
    capacity = hypercore._fixed.capacity_for(T, gamma, bucket=False)
    rng = np.random.default_rng(T)
    for gammas in (np.full(T, gamma), rng.uniform(gamma, 1.0, T)):
        state = hypercore.forward_state(
            loss, w0, {}, jnp.full((T,), 0.05), jnp.asarray(gammas), capacity=capacity
        )
        assert not bool(state.buf.overflow)
        assert int(state.buf.used) <= capacity


def test_traced_gammas_without_capacity_is_a_clear_error():
    loss, w0, _ = make_problem()

    @jax.jit
    def f(gammas):
        return reversible_sgd(loss, w0, {}, jnp.full((5,), 0.1), gammas)["V"]

    with pytest.raises(ValueError, match="capacity"):
        f(jnp.full((5,), 0.9))


def test_schedule_shape_errors_name_the_leaf():
    loss, w0, _ = make_problem()
    with pytest.raises(ValueError, match=r"alphas\['W'\]"):
        reversible_sgd(
            loss, w0, {}, {"W": jnp.ones((5, 2)), "b": jnp.ones(5), "V": jnp.ones(5)}, jnp.full((5,), 0.9)
        )
    with pytest.raises(ValueError, match="same number of steps"):
        reversible_sgd(loss, w0, {}, jnp.ones(5), jnp.full((6,), 0.9))


@pytest.mark.parametrize("entry", ["reversible_sgd", "check_reversal", "forward_state"])
def test_every_entry_point_checks_the_schedules_alike(entry):
    """The three entry points share one preparation: each refuses gammas of another length (one
    of three copies once lost that check and failed deep inside ``lax.scan`` instead)."""
    loss, w0, _ = make_problem()
    fn = getattr(hypercore, entry)
    with pytest.raises(ValueError, match="alphas and gammas must have the same number of steps"):
        fn(loss, w0, {}, jnp.full((5,), 0.1), jnp.full((4,), 0.9))
    with pytest.raises(ValueError, match=r"gammas\['W'\]"):
        fn(loss, w0, {}, jnp.full((5,), 0.1), {"W": jnp.ones((5, 2)), "b": jnp.ones(5), "V": jnp.ones(5)})


def test_an_unknown_training_optimizer_is_a_clear_error():
    from hypercore import reversible

    loss, w0, _ = make_problem()
    with pytest.raises(ValueError, match="unknown training optimizer 'lion'"):
        reversible._prepare(
            loss, w0, {}, (jnp.ones(5), jnp.ones(5)), capacity=8, min_gamma=None, optimizer="lion"
        )
    with pytest.raises(TypeError, match="takes 5 schedules"):
        reversible._prepare(loss, w0, {}, (jnp.ones(5),), capacity=8, min_gamma=None)


def test_engine_state_dtypes_are_64_bit():
    loss, w0, _ = make_problem(jnp.float32)
    state = hypercore.forward_state(loss, w0, {}, jnp.full((5,), 0.1), jnp.full((5,), 0.9))
    assert state.w[0].dtype == jnp.int64 and state.v[0].dtype == jnp.int64
    assert state.buf.heads[0].dtype == jnp.uint64 and state.buf.stacks[0].dtype == jnp.uint64
    w_T = reversible_sgd(loss, w0, {}, jnp.full((5,), 0.1), jnp.full((5,), 0.9))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(w_T))


def _while_bodies(hlo: str) -> dict[str, list[str]]:
    """The instructions of every while-loop body in compiled HLO text, by computation name."""
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    blocks, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^%?([\w.\-]+) .*\{$", line)
        if head:
            name = head.group(1)
            blocks[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            blocks[name].append(line)
    return {b: blocks[b] for b in bodies if b in blocks}


def test_reverse_pass_does_not_copy_the_information_stack():
    """The scans update or read the stacks in place: a copy per step made each step O(N * capacity).

    Structural, not timed: no while-loop body of the compiled hypergradient may copy a stack array
    (the uint64 arrays with a leading dimension of ``words``).
    """
    loss, w0, _ = make_problem()
    T, words = 20, 37
    f = jax.jit(
        jax.grad(
            lambda a, g: jnp.sum(reversible_sgd(loss, w0, {}, a, g, capacity=2 * words)["V"] ** 2),
            argnums=(0, 1),
        )
    )
    hlo = f.lower(jnp.full((T,), 0.1), jnp.full((T,), 0.9)).compile().as_text()
    stack_shapes = [f"u64[{words},{','.join(map(str, x.shape))}]" for x in jax.tree.leaves(w0)]
    bodies = _while_bodies(hlo)
    assert len(bodies) >= 2, "expected the forward and the reverse scan as while loops"
    assert any(s in line for lines in bodies.values() for line in lines for s in stack_shapes)
    copies = [
        line.strip()
        for lines in bodies.values()
        for line in lines
        if " copy(" in line and any(s in line for s in stack_shapes)
    ]
    assert copies == [], copies


def test_a_deferred_product_reaches_an_optimizer_without_its_own_undo_and_adjoint():
    """``subtracts_hvp`` leaves the vector-Jacobian product ``hw`` to the optimizer's pass; one that
    declares it but has no ``undo_and_adjoint`` still gets ``dw - hw`` in its ``adjoint_step``."""
    from hypercore import reversible

    seen = []

    class Plain:
        subtracts_hvp = True

        def undo_state(self, state, buf, g, hyper, record, stacks):
            return state, buf, None

        def adjoint_step(self, dw, dstate, g, state, hyper, w_aux, s_aux):
            seen.append(dw)
            return dw, dstate, [jnp.zeros_like(x) for x in g], ()

    dw, hw = [jnp.array([1.0, 2.0])], [jnp.array([0.5, 0.25], jnp.float32)]
    g = [jnp.zeros(2, jnp.float32)]
    out = reversible._undo_and_adjoint(Plain(), None, None, g, None, None, None, dw, None, None, hw)
    np.testing.assert_array_equal(np.asarray(seen[0][0]), [0.5, 1.75])
    np.testing.assert_array_equal(np.asarray(out[2][0]), [0.5, 1.75])
