"""Models: parameter layout and counts, init scales, forward pass, losses, dtypes, bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypercore  # turns on x64
from hypercore.hyper import ConfigError
from hypercore.models import (
    Model,
    ModelError,
    Toy2D,
    error_rate,
    held_activation_units,
    l2_penalty,
    logistic_regression,
    mlp,
    nll,
    toy2d,
    toy2d_data,
)


def ones(model, value=1.0):
    return {k: value for k in model.shapes}


def test_papers_mlp_has_8_arrays_and_44860_parameters():
    model = mlp(784, [50, 50, 50], 10)
    assert model.layer_names() == [f"layer{i}.{p}" for i in range(4) for p in ("W", "b")]
    assert model.shapes["layer0.W"] == (784, 50) and model.shapes["layer3.b"] == (10,)
    assert model.num_params() == 784 * 50 + 50 + 2 * (50 * 50 + 50) + 50 * 10 + 10 == 44_860
    assert model.name == "mlp" and model.activation == "tanh" and model.dtype == jnp.float32
    assert (model.n_features, model.n_classes) == (784, 10)


def test_logistic_regression_is_one_layer():
    model = logistic_regression(784, 10)
    assert model.shapes == {"layer0.W": (784, 10), "layer0.b": (10,)}
    assert model.num_params() == 7850 and model.name == "logreg" and model.activation is None


def test_layer_names_stay_natural_past_ten_layers():
    model = mlp(3, [4] * 11, 2)
    names = model.layer_names()
    assert names[4:6] == ["layer2.W", "layer2.b"] and names[-2:] == ["layer11.W", "layer11.b"]
    params = model.init(jax.random.key(0), ones(model))
    # JAX sorts dict keys, so leaf order differs; values must still be reached by name.
    leaf_order = [path[0].key for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert leaf_order[4:6] == ["layer10.W", "layer10.b"] and leaf_order != names
    assert {k: v.shape for k, v in params.items()} == model.shapes
    assert model.apply(params, jnp.ones((5, 3), jnp.float32)).shape == (5, 2)


def test_equal_models_hash_equal():
    a, b = mlp(5, [3], 2, activation="relu"), mlp(5, [3], 2, activation="relu")
    assert a == b and hash(a) == hash(b) and len({a, b, mlp(5, [3], 2)}) == 2


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_init_draws_scale_times_standard_normal(dtype):
    model = mlp(300, [200], 10, dtype=dtype)
    scales = {"layer0.W": 0.05, "layer0.b": 1.0, "layer1.W": jnp.float64(0.3), "layer1.b": 2.0}
    params = model.init(jax.random.key(1), scales)
    for name, w in params.items():
        assert w.dtype == dtype and w.shape == model.shapes[name]
        # Sample std of n normals has relative standard error ~ 1/sqrt(2n): 5 of them is a loose bound.
        tol = 5 / np.sqrt(2 * w.size)
        assert float(jnp.std(w)) == pytest.approx(float(scales[name]), rel=tol)
        assert abs(float(jnp.mean(w))) < 5 * float(scales[name]) / np.sqrt(w.size)
    again = model.init(jax.random.key(1), scales)
    assert all(np.array_equal(params[k], again[k]) for k in params)
    other = model.init(jax.random.key(2), scales)
    assert not np.array_equal(params["layer0.W"], other["layer0.W"])


def test_init_is_differentiable_in_traced_scales():
    model = logistic_regression(4, 3)
    key = jax.random.key(0)
    unit = model.init(key, ones(model))

    @jax.jit
    def total(log_scale):
        w = model.init(key, {"layer0.W": jnp.exp(log_scale), "layer0.b": 1.0})
        return jnp.sum(w["layer0.W"])

    grad = jax.grad(total)(jnp.float64(0.3))
    np.testing.assert_allclose(grad, np.exp(0.3) * np.sum(unit["layer0.W"], dtype=np.float64), rtol=1e-5)


def test_init_refuses_missing_or_unknown_scales():
    model = logistic_regression(4, 3)
    with pytest.raises(ModelError, match=r"init_scale: .*missing \['layer0.b'\]"):
        model.init(jax.random.key(0), {"layer0.W": 1.0})
    with pytest.raises(ModelError, match=r"unknown \['layer9.W'\]"):
        model.init(jax.random.key(0), {**ones(model), "layer9.W": 1.0})


@pytest.mark.parametrize("activation, fn", [("tanh", np.tanh), ("relu", lambda h: np.maximum(h, 0))])
def test_apply_matches_numpy(activation, fn):
    model = mlp(6, [5, 4], 3, activation=activation)
    params = model.init(jax.random.key(3), ones(model))
    X = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = fn(X @ p["layer0.W"] + p["layer0.b"])
    h = fn(h @ p["layer1.W"] + p["layer1.b"])
    want = h @ p["layer2.W"] + p["layer2.b"]
    got = model.apply(params, X)
    assert got.dtype == jnp.float32 and got.shape == (7, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_relu_and_tanh_differ():
    X = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    tanh, relu = mlp(3, [8], 2), mlp(3, [8], 2, activation="relu")
    params = tanh.init(jax.random.key(0), ones(tanh))
    assert not np.allclose(tanh.apply(params, X), relu.apply(params, X))


def test_float64_model_computes_in_float64():
    model = mlp(5, [4], 3, dtype=jnp.float64)
    assert model.dtype == jnp.float64
    params = model.init(jax.random.key(0), ones(model, 0.5))
    assert all(w.dtype == jnp.float64 for w in params.values())
    X = np.random.default_rng(1).normal(size=(6, 5))
    logits = model.apply(params, X.astype(np.float32))
    assert logits.dtype == jnp.float64
    y = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)
    assert nll(logits, y).dtype == jnp.float64 and error_rate(logits, y).dtype == jnp.float64


def test_apply_refuses_wrong_feature_count():
    model = mlp(5, [4], 3)
    params = model.init(jax.random.key(0), ones(model))
    with pytest.raises(ValueError, match=r"X must have shape \(n, 5\), got \(2, 4\)"):
        model.apply(params, jnp.ones((2, 4)))


def test_nll_and_error_rate_by_hand():
    logits = jnp.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], jnp.float32)
    y = jnp.array([1, 0], jnp.int32)
    lse0 = np.log(np.exp(1.0) + np.exp(2.0) + np.exp(0.5))
    lse1 = np.log(np.exp(0.0) + np.exp(-1.0) + np.exp(3.0))
    want = ((lse0 - 2.0) + (lse1 - 0.0)) / 2
    got = nll(logits, y)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Row 0 is right (argmax 1), row 1 wrong (argmax 2).
    assert float(error_rate(logits, y)) == 0.5
    assert float(error_rate(logits, jnp.array([1, 2], jnp.int32))) == 0.0


def test_nll_is_stable_for_huge_logits():
    logits = jnp.array([[1000.0, 0.0], [0.0, -1000.0]], jnp.float32)
    np.testing.assert_allclose(nll(logits, jnp.array([1, 1], jnp.int32)), 1000.0, rtol=1e-6)


def test_losses_refuse_mismatched_labels():
    with pytest.raises(ValueError, match="logits must be"):
        nll(jnp.zeros((3, 2)), jnp.zeros((2,), jnp.int32))
    with pytest.raises(TypeError, match="integer class labels"):
        error_rate(jnp.zeros((2, 2)), jnp.zeros((2,)))


def test_l2_penalty_per_array_and_per_weight():
    params = {"a": jnp.array([1.0, -2.0], jnp.float32), "b": jnp.array([[3.0]], jnp.float32)}
    per_array = {"a": jnp.float64(0.5), "b": jnp.float64(2.0)}
    got = l2_penalty(params, per_array)
    assert got.dtype == jnp.float32
    assert float(got) == 0.5 * (1 + 4) + 2.0 * 9  # no factor 1/2, as the paper
    per_weight = {"a": jnp.array([1.0, 10.0])}
    assert float(l2_penalty(params, per_weight)) == 1 + 40
    assert float(l2_penalty(params, {})) == 0.0
    with pytest.raises(ValueError, match=r"l2\['a'\] must be a scalar or of shape \(2,\)"):
        l2_penalty(params, {"a": jnp.ones(3)})
    with pytest.raises(ValueError, match="does not have: \\['c'\\]"):
        l2_penalty(params, {"c": 1.0})


def test_l2_penalty_gradient():
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    lam = jnp.array([0.1, 0.2, 0.3])
    g_w = jax.grad(l2_penalty)(params, {"w": lam})["w"]
    np.testing.assert_allclose(g_w, 2 * lam * params["w"], rtol=1e-6)
    g_lam = jax.grad(lambda lam: l2_penalty(params, {"w": lam}))(lam)
    np.testing.assert_allclose(g_lam, params["w"] ** 2, rtol=1e-6)


def test_no_implicit_promotion_in_the_float32_path():
    model = mlp(4, [3], 2)
    with jax.numpy_dtype_promotion("strict"):
        params = model.init(jax.random.key(0), {k: jnp.float64(0.1) for k in model.shapes})
        logits = model.apply(params, jnp.ones((2, 4), jnp.float32))
        y = jnp.array([0, 1], jnp.int32)
        loss = nll(logits, y) + l2_penalty(params, {k: jnp.float64(1e-3) for k in params})
        err = error_rate(logits, y)
    assert loss.dtype == err.dtype == jnp.float32


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: mlp(0, [4], 3), "model.n_features"),
        (lambda: mlp(5, [4, -1], 3), r"model.hidden\[1\]"),
        (lambda: mlp(5, [4, 2.5], 3), r"model.hidden\[1\]"),
        (lambda: mlp(5, [True], 3), r"model.hidden\[0\]"),
        (lambda: mlp(5, [], 3), "model.hidden"),
        (lambda: mlp(5, 4, 3), "model.hidden"),
        (lambda: mlp(5, [4], 1), "model.n_classes: must be an integer >= 2"),
        (lambda: mlp(5, [4], 3, activation="sigmoid"), "model.activation: must be one of tanh, relu"),
        (lambda: logistic_regression(5, 0), "model.n_classes"),
        (lambda: logistic_regression(5, 3, dtype=jnp.int32), "model.dtype"),
        (lambda: logistic_regression(5, 3, dtype="nonsense"), "model.dtype"),
        (lambda: Model("mlp", {"layer0.W": (3, 4), "layer0.b": (5,)}, None), "model.shapes.layer0"),
        (lambda: Model("mlp", {"layer0.W": (3, 4)}, None), "model.shapes"),
        (
            lambda: Model(
                "x", {"layer0.W": (3, 4), "layer0.b": (4,), "layer1.W": (5, 2), "layer1.b": (2,)}, "tanh"
            ),
            "model.shapes.layer1",
        ),
        (
            lambda: Model(
                "x", {"layer0.W": (3, 4), "layer0.b": (4,), "layer1.W": (4, 2), "layer1.b": (2,)}, None
            ),
            "model.activation",
        ),
    ],
)
def test_bad_arguments_name_the_field(build, field):
    with pytest.raises(ModelError, match=field) as info:
        build()
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


# ---- the figure-1 toy -------------------------------------------------------------------------


def toy_loss_by_hand(w1: float, w2: float) -> float:
    r = 100.0 * (w2 - w1**2) ** 2 + (1.0 - w1) ** 2 + 200.0 * w1
    return 800.0 / (1.0 + np.exp(-r / 500.0))


def test_toy2d_nll_is_its_loss_with_the_same_gradient():
    model = toy2d()
    assert model.shapes == {"w": (2,)} and model.num_params() == 2 and model.layer_names() == ["w"]
    assert (model.n_features, model.n_classes, model.dtype) == (1, 2, jnp.float64)
    data = toy2d_data()
    assert (data.n_train, data.n_valid, data.n_test, data.n_classes) == (1, 1, 1, 2)
    X, y = jnp.asarray(data.X_train), jnp.asarray(data.y_train)
    for w in ([1.4, 3.9], [-0.5, 0.3], [2.0, 0.0], [-60.0, 3600.0]):
        params = {"w": jnp.asarray(w, jnp.float64)}
        as_nll = nll(model.apply(params, X), y)
        assert as_nll.dtype == jnp.float64
        np.testing.assert_allclose(float(as_nll), toy_loss_by_hand(*w), rtol=1e-12)
        g_nll = jax.grad(lambda p: nll(model.apply(p, X), y))(params)["w"]
        g_loss = jax.grad(model.loss)(params)["w"]
        np.testing.assert_allclose(np.asarray(g_nll), np.asarray(g_loss), rtol=1e-9, atol=1e-12)
    assert model.apply({"w": jnp.zeros(2)}, jnp.ones((3, 1))).shape == (3, 2)
    with pytest.raises(ValueError, match=r"X must have shape \(n, 1\)"):
        model.apply({"w": jnp.zeros(2)}, jnp.ones((3, 2)))


def test_toy2d_starts_at_the_papers_fixed_point_whatever_the_key():
    model = toy2d()
    a, b = model.init(jax.random.key(0), {"w": 0.1}), model.init(jax.random.key(7), {"w": 5.0})
    np.testing.assert_array_equal(np.asarray(a["w"]), [1.4, 3.9])
    np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
    assert toy2d() == model and hash(toy2d()) == hash(model)
    with pytest.raises(ModelError, match="init_scale"):
        model.init(jax.random.key(0), {"layer0.W": 1.0})
    with pytest.raises(ModelError, match="model.start"):
        toy2d((1.0, float("nan")))


TOY_SPEC = {
    "name": "toy-figure1",
    "model": {"kind": "toy2d"},
    "training": {"steps": 50},
    "hyperparameters": {
        "learning_rate": {"init": float(np.exp(-4.5)), "granularity": "step", "learn": True},
        "momentum": {"init": 0.99, "granularity": "step", "learn": True},
    },
    "objective": "train_loss",
    "meta": {"iterations": 3, "optimizer": "sgd", "learning_rate": 0.001, "momentum": 0.9},
}


def test_toy2d_tunes_to_the_papers_figure_1_losses():
    problem = hypercore.problem_from_spec(TOY_SPEC)
    assert isinstance(problem.model, Toy2D)
    # Ordinary reverse mode on the paper's gammas: the paper's 395.3 -> 356.6 -> 356.3.
    unrolled = [r.objective for r in hypercore.tune(problem, engine="unrolled").records]
    np.testing.assert_allclose(unrolled, [395.3, 356.6, 356.3], atol=0.1)
    # The reversible engine trains with gamma rounded to n / 2**16 (0.99 -> 0.9900055): a hair
    # different training, so the same trend a few tenths away.
    records = hypercore.tune(problem).records
    assert all(r.reversal_exact for r in records)
    np.testing.assert_allclose([r.objective for r in records], unrolled, atol=0.5)
    assert records[0].objective > records[1].objective > records[2].objective


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dataset": {"name": "digits", "train": 10, "valid": 10}}, "dataset"),
        ({"model": {"kind": "toy2d", "hidden": [3]}}, "model.hidden"),
        (
            {"hyperparameters": {**TOY_SPEC["hyperparameters"], "init_scale": {"init": 0.1}}},
            "hyperparameters.init_scale",
        ),
    ],
)
def test_toy2d_spec_refuses_what_does_not_apply(change, field):
    with pytest.raises(hypercore.SpecError, match=field):
        hypercore.problem_from_spec(TOY_SPEC | change)


def test_held_activation_units_grow_with_the_layers_and_not_with_the_weights():
    """`held_activation_units`: per example, the outputs and what the gradient keeps between its passes
    (the input, and one to three copies of each hidden layer: its output, its activation's derivative),
    counted without running anything; the weights the gradient also keeps do not count."""
    narrow = held_activation_units(mlp(64, [32], 10), (64,))
    wide = held_activation_units(mlp(64, [256], 10), (64,))
    assert 64 + 32 + 10 <= narrow <= 64 + 3 * 32 + 10
    assert 224 <= wide - narrow <= 3 * 224  # not 64 * 224 more: the wider first matrix is not counted
    deeper = held_activation_units(mlp(64, [32, 32, 32], 10), (64,))
    assert 64 <= deeper - narrow <= 3 * 64
    assert held_activation_units(logistic_regression(64, 10), (64,)) in (10, 64 + 10)


def test_held_activation_units_follow_a_plugin_s_own_apply():
    """A model revtune knows nothing of (the example plugin's residual MLP, with residual blocks):
    each block adds at least its width, and the count is the same for float32 and float64 inputs."""
    from revtune_plugin_example import ResidualMLP

    one, three = (held_activation_units(ResidualMLP(64, 16, 10, blocks=b), (64,)) for b in (1, 3))
    assert 2 * 16 <= three - one <= 2 * 3 * 16
    assert one == held_activation_units(ResidualMLP(64, 16, 10, blocks=1), (64,), np.float64)
