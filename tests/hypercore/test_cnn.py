"""Convolutional families (`hypercore.cnn`): names and shapes, the forward pass against a naive numpy
reference, init scales, validation, exact hypergradients through the reversible engine against an
unrolled float64 reference, and a `tune` smoke run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypercore  # turns on x64
from hypercore import ReversalReport, empty_report, reversible_sgd, unrolled_sgd
from hypercore.cnn import CNN, CNN1D, cnn, cnn1d
from hypercore.models import ModelError, TrainableModel, nll, normal_init


def ones(model, value=1.0):
    return {k: value for k in model.shapes}


def rel_err(a, b):
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ---- shapes and names ------------------------------------------------------------------------


def test_2d_shapes_and_names_in_order():
    model = cnn((8, 8, 1), 10, [4, 6], kernel=3, pool=2, hidden=[8])
    assert isinstance(model, CNN) and isinstance(model, TrainableModel) and model.kind == "cnn"
    assert list(model.shapes.items()) == [
        ("conv0.W", (3, 3, 1, 4)),
        ("conv0.b", (4,)),
        ("conv1.W", (3, 3, 4, 6)),
        ("conv1.b", (6,)),
        ("layer0.W", (24, 8)),  # 8 -> 4 -> 2: 2 * 2 * 6
        ("layer0.b", (8,)),
        ("layer1.W", (8, 10)),
        ("layer1.b", (10,)),
    ]
    assert model.layer_names() == list(model.shapes)
    assert (model.n_features, model.n_classes, model.spatial_shape) == (64, 10, (2, 2))
    assert model.num_params() == 36 + 4 + 216 + 6 + 192 + 8 + 80 + 10
    params = model.init(jax.random.key(0), ones(model, 0.3))
    X = jax.random.normal(jax.random.key(1), (5, 64), jnp.float32)
    logits = model.apply(params, X)
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(logits, model.apply(params, X.reshape(5, 8, 8, 1)))
    np.testing.assert_array_equal(logits, model.apply(params, X.reshape(5, 8, 8)))
    # a shape without the channel axis means one channel; equal descriptions hash equal
    assert cnn((8, 8), 10, [4, 6], hidden=[8]) == model
    assert hash(cnn((8, 8), 10, (4, 6), hidden=(8,))) == hash(model)
    assert len({model, cnn((8, 8), 10, [4, 6], hidden=[8], activation="relu")}) == 2


def test_1d_shapes_and_names_in_order():
    model = cnn1d((40,), 3, [4], pool=2)
    assert isinstance(model, CNN1D) and model.kind == "cnn1d" and model.input_shape == (40, 1)
    assert list(model.shapes.items()) == [
        ("conv0.W", (3, 1, 4)),
        ("conv0.b", (4,)),
        ("layer0.W", (80, 3)),  # 40 -> 20, 4 channels
        ("layer0.b", (3,)),
    ]
    params = model.init(jax.random.key(0), ones(model, 0.3))
    X = jax.random.normal(jax.random.key(1), (7, 40), jnp.float32)
    logits = model.apply(params, X)
    assert logits.shape == (7, 3)
    np.testing.assert_array_equal(logits, model.apply(params, X.reshape(7, 40, 1)))
    two = cnn1d((10, 2), 3, [4, 5], kernel=5, pool=1, hidden=[6, 7])
    assert two.shapes["conv1.W"] == (5, 4, 5) and two.shapes["layer0.W"] == (10 * 5, 6)
    assert list(two.shapes)[-2:] == ["layer2.W", "layer2.b"] and two.n_features == 20
    assert cnn1d((40,), 3, [4], pool=1) != cnn((40, 1), 3, [4], pool=1)  # 1-D is not 2-D


def test_wrong_inputs_are_refused():
    model = cnn((6, 6, 2), 3, [2])
    params = model.init(jax.random.key(0), ones(model))
    with pytest.raises(ValueError, match=r"X must have shape \(n, 72\) or \(n, 6, 6, 2\)"):
        model.apply(params, jnp.ones((4, 36)))
    with pytest.raises(ValueError, match="X must have shape"):
        model.apply(params, jnp.ones((4, 6, 6)))  # two channels: the channel axis is needed


# ---- the forward pass against a naive reference ----------------------------------------------


def _conv_same(x, W):
    """Naive cross-correlation, stride 1, SAME padding (low side gets (k - 1) // 2), channels last.
    ``x``: (n, *spatial, c_in), ``W``: (*kernel, c_in, c_out)."""
    kernel = W.shape[:-2]
    pads = [(0, 0)] + [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel] + [(0, 0)]
    xp = np.pad(x, pads)
    out = np.zeros((*x.shape[:-1], W.shape[-1]), x.dtype)
    for pos in np.ndindex(*x.shape[1:-1]):
        for off in np.ndindex(*kernel):
            idx = (slice(None), *(p + o for p, o in zip(pos, off, strict=True)), slice(None))
            out[(slice(None), *pos, slice(None))] += xp[idx] @ W[(*off, slice(None), slice(None))]
    return out


def _avg_pool(x, p):
    spatial = x.shape[1:-1]
    kept = tuple(s // p for s in spatial)
    x = x[(slice(None), *(slice(0, k * p) for k in kept), slice(None))]
    shape = [x.shape[0]]
    for k in kept:
        shape += [k, p]
    x = x.reshape(*shape, x.shape[-1])
    return x.mean(axis=tuple(2 + 2 * i for i in range(len(kept))))


def reference_apply(model, params, X):
    act = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}[model.activation]
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = np.asarray(X, np.float64).reshape(X.shape[0], *model.input_shape)
    for i in range(len(model.channels)):
        h = act(_conv_same(h, p[f"conv{i}.W"]) + p[f"conv{i}.b"])
        if model.pool > 1:
            h = _avg_pool(h, model.pool)
    h = h.reshape(h.shape[0], -1)
    for j in range(len(model.hidden) + 1):
        h = h @ p[f"layer{j}.W"] + p[f"layer{j}.b"]
        if j < len(model.hidden):
            h = act(h)
    return h


MODELS = {
    "2d": lambda dtype: cnn((7, 9, 2), 4, [3, 2], kernel=3, pool=2, hidden=[5], dtype=dtype),
    "2d even kernel relu": lambda dtype: cnn(
        (6, 5), 3, [2], kernel=4, pool=3, activation="relu", dtype=dtype
    ),
    "2d no pool": lambda dtype: cnn((5, 5), 3, [2, 3], kernel=1, pool=1, hidden=[4, 3], dtype=dtype),
    "1d": lambda dtype: cnn1d((11, 3), 4, [3, 2], kernel=3, pool=2, hidden=[5], dtype=dtype),
    "1d even kernel": lambda dtype: cnn1d((13,), 3, [4], kernel=2, pool=3, dtype=dtype),
}


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)], ids=["float32", "float64"])
@pytest.mark.parametrize("which", list(MODELS))
def test_apply_matches_naive_numpy_reference(which, dtype, tol):
    model = MODELS[which](dtype)
    params = model.init(jax.random.key(3), ones(model, 0.7))
    X = np.random.default_rng(0).normal(size=(4, model.n_features))
    logits = model.apply(params, jnp.asarray(X))
    assert logits.dtype == dtype and logits.shape == (4, model.n_classes)
    expected = reference_apply(model, params, X)
    assert rel_err(logits, expected) <= tol


# ---- init ------------------------------------------------------------------------------------


def test_init_draws_scale_times_standard_normal():
    model = cnn((8, 8), 10, [16, 32], kernel=5, hidden=[64])
    scales = {name: 0.1 * (i + 1) for i, name in enumerate(model.shapes)}
    params = model.init(jax.random.key(1), scales)
    expected = normal_init(model.shapes, model.dtype, jax.random.key(1), scales)
    assert list(params) == list(model.shapes)
    for name, w in params.items():
        assert w.shape == model.shapes[name] and w.dtype == jnp.float32
        np.testing.assert_array_equal(w, expected[name])
    for name in ("conv1.W", "layer0.W"):  # big arrays: the sample std is close to the scale
        w = params[name]
        assert float(jnp.std(w)) == pytest.approx(scales[name], rel=5 / np.sqrt(2 * w.size))
    assert not np.array_equal(params["conv0.W"], model.init(jax.random.key(2), scales)["conv0.W"])


def test_init_is_differentiable_in_the_scales():
    model = cnn1d((6,), 3, [2], dtype=jnp.float64)
    key = jax.random.key(0)
    unit = model.init(key, ones(model))

    def total(s):
        w = model.init(key, {**ones(model), "conv0.W": s[0], "layer0.b": s[1]})
        return jnp.sum(w["conv0.W"]) + 2 * jnp.sum(w["layer0.b"])

    grad = jax.grad(total)(jnp.asarray([0.5, 2.0]))
    np.testing.assert_allclose(grad, [jnp.sum(unit["conv0.W"]), 2 * jnp.sum(unit["layer0.b"])], rtol=1e-12)
    # a per-weight scale (the `weight` granularity) broadcasts against the kernel's shape
    per_weight = jnp.full(model.shapes["conv0.W"], 0.25)
    w = model.init(key, {**ones(model), "conv0.W": per_weight})
    np.testing.assert_allclose(w["conv0.W"], 0.25 * unit["conv0.W"], rtol=1e-12)


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,field",
    [
        (lambda: cnn((4, 4), 3, [2, 2, 2], pool=2), "model.pool"),  # 4 -> 2 -> 1 -> 0
        (lambda: cnn((8, 3), 3, [2, 2], pool=2), "model.pool"),  # 3 -> 1 -> 0 along one axis
        (lambda: cnn1d((5,), 3, [2], pool=6), "model.pool"),
        (lambda: cnn((8, 8), 3, []), "model.channels"),
        (lambda: cnn((8, 8), 3, [2, 0]), "model.channels[1]"),
        (lambda: cnn((8, 8), 3, "4"), "model.channels"),
        (lambda: cnn((8, 8), 3, [2], hidden=[4, -1]), "model.hidden[1]"),
        (lambda: cnn((8, 8), 3, [2], activation="sigmoid"), "model.activation"),
        (lambda: cnn((8, 8), 3, [2], kernel=0), "model.kernel"),
        (lambda: cnn((8, 8), 3, [2], pool=0), "model.pool"),
        (lambda: cnn((8, 8), 1, [2]), "model.n_classes"),
        (lambda: cnn((8, 8), 3, [2], dtype=jnp.int32), "model.dtype"),
        (lambda: cnn((64,), 3, [2]), "model.image_shape"),
        (lambda: cnn((8, 8, 1, 1), 3, [2]), "model.image_shape"),
        (lambda: cnn(64, 3, [2]), "model.image_shape"),
        (lambda: cnn((0, 8), 3, [2]), "model.image_shape[0]"),
        (lambda: cnn((8, 8, 2.5), 3, [2]), "model.image_shape[2]"),
        (lambda: cnn1d((8, 8, 1), 3, [2]), "model.sequence_shape"),
        (lambda: cnn1d((8, 0), 3, [2]), "model.sequence_shape[1]"),
    ],
)
def test_invalid_descriptions_name_their_field(build, field):
    with pytest.raises(ModelError) as info:
        build()
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_pool_error_says_what_the_input_needs():
    with pytest.raises(ModelError, match=r"model.pool: .*leaves no pixel.*needs at least 8"):
        cnn((4, 4), 3, [2, 2, 2])
    cnn((8, 8), 3, [2, 2, 2])  # 8 -> 4 -> 2 -> 1: one pixel is enough


# ---- exact hypergradients through the engine ---------------------------------------------------

T, N_TRAIN, BATCH = 10, 12, 6


def _engine_problem(model):
    """Random inputs and labels, a minibatch drawn from the step index, and a validation NLL."""
    kx, ky, kv, kw, ki = jax.random.split(jax.random.key(0), 5)
    X = jax.random.normal(kx, (N_TRAIN, model.n_features), jnp.float64)
    y = jax.random.randint(ky, (N_TRAIN,), 0, model.n_classes)
    Xv = jax.random.normal(kv, (8, model.n_features), jnp.float64)
    yv = jax.random.randint(kw, (8,), 0, model.n_classes)

    def loss(w, meta, t):
        idx = jax.random.randint(jax.random.fold_in(jax.random.key(7), t), (BATCH,), 0, N_TRAIN)
        penalty = sum(jnp.sum(meta["l2"] * w[k] ** 2) for k in w if k.endswith(".W"))
        return nll(model.apply(w, X[idx]), y[idx]) + penalty

    def objective(engine):
        def f(w0, meta, alphas, gammas, report):
            if engine == "reversible":
                w_T = reversible_sgd(loss, w0, meta, alphas, gammas, min_gamma=0.5, report=report)
            else:
                w_T = unrolled_sgd(loss, w0, meta, alphas, gammas)
            return nll(model.apply(w_T, Xv), yv)

        return f

    w0 = model.init(ki, ones(model, 0.5))
    rng = np.random.default_rng(0)
    alphas = jnp.asarray(rng.uniform(0.05, 0.3, T))
    gammas = hypercore.quantize_gamma(jnp.asarray(rng.uniform(0.5, 0.95, T)))
    meta = {"l2": jnp.asarray(1e-3)}
    return objective, w0, meta, alphas, gammas


@pytest.mark.parametrize(
    "build",
    [
        lambda: cnn((6, 6, 1), 3, [2], hidden=[], dtype=jnp.float64),
        lambda: cnn1d((10,), 3, [2], hidden=[3], dtype=jnp.float64),
    ],
    ids=["2d", "1d"],
)
def test_hypergradients_match_unrolled_float64(build):
    model = build()
    objective, w0, meta, alphas, gammas = _engine_problem(model)
    argnums = (0, 1, 2, 3)
    g_rev = jax.jit(jax.grad(objective("reversible"), (*argnums, 4)))(
        w0, meta, alphas, gammas, empty_report()
    )
    report = ReversalReport.from_array(g_rev[4])
    assert report.exact and not report.overflow and not report.buffer_overflow
    g_ref = jax.jit(jax.grad(objective("unrolled"), argnums))(w0, meta, alphas, gammas, None)
    for name, a, b in zip(["w0", "meta", "alphas", "gammas"], g_rev[:4], g_ref, strict=True):
        assert jax.tree.structure(a) == jax.tree.structure(b), name
        for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert leaf_a.shape == leaf_b.shape
            assert float(jnp.linalg.norm(jnp.ravel(leaf_b))) > 0, name
            assert rel_err(leaf_a, leaf_b) <= 1e-6, name


# ---- tune --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return hypercore.data.load("digits", 60, 30, 0, seed=0)


def test_tune_runs_with_exact_reversal(digits):
    model = cnn((8, 8), 10, [2], hidden=[])
    hypers = {"learning_rate": hypercore.Hyper("learning_rate", 0.1, "layer_step", learn=True)}
    problem = hypercore.Problem.build(model, digits, hypers, steps=5, batch_size=20, iterations=2)
    result = hypercore.tune(problem)
    assert [r.reversal_exact for r in result.records] == [True, True]
    assert all(np.isfinite([r.objective for r in result.records]))
    exported = problem.hypers.to_natural(hypercore.initial_hyperparameters(problem, include_fixed=True))
    assert exported["learning_rate"].labels["layer"] == list(model.shapes)
