"""Hyperparameter kinds: validation, raw <-> natural units, axes and labels, the engine's shapes."""

import jax.numpy as jnp
import numpy as np
import pytest

import hypercore  # noqa: F401  (turns on x64)
from hypercore.hyper import Hyper, HyperparameterError, HyperSet

SHAPES = {"layer0.W": (4, 3), "layer0.b": (3,), "layer1.W": (3, 2), "layer1.b": (2,)}
T = 5
X = np.arange(12, dtype=np.float32).reshape(6, 2)
Y = np.array([0, 1, 0, 1, 1, 0])


def build(**hypers):
    return HyperSet.build(hypers, steps=T, shapes=SHAPES, train_shape=X.shape, train_labels=Y)


def raw_of(hs):
    learned, fixed = hs.init_raw(None, X)
    return {**fixed, **learned}


@pytest.mark.parametrize(
    ("hyper", "field", "words"),
    [
        (Hyper("dropout", 0.5), "hyperparameters.dropout", "unknown hyperparameter"),
        (Hyper("learning_rate", 0.1, "weight"), "hyperparameters.learning_rate.granularity", "allowed"),
        (Hyper("init_scale", 0.1, "step"), "hyperparameters.init_scale.granularity", "allowed"),
        (Hyper("l2", 0.1, "layer_step"), "hyperparameters.l2.granularity", "allowed"),
        (Hyper("training_data", "data", "layer"), "hyperparameters.training_data.granularity", "weight"),
        (Hyper("momentum", 0.9, "daily"), "hyperparameters.momentum.granularity", "unknown granularity"),
        (Hyper("momentum", 1.0), "hyperparameters.momentum.init", "(0, 1)"),
        (Hyper("momentum", 0.0), "hyperparameters.momentum.init", "(0, 1)"),
        (Hyper("learning_rate", -0.1), "hyperparameters.learning_rate.init", "> 0"),
        (Hyper("init_scale", 0.0), "hyperparameters.init_scale.init", "> 0"),
        (Hyper("learning_rate", float("nan")), "hyperparameters.learning_rate.init", "finite"),
        (Hyper("learning_rate", "big"), "hyperparameters.learning_rate.init", "finite"),
        (Hyper("l2", -1.0), "hyperparameters.l2.init", ">= 0"),
        (Hyper("l2", 0.0, "layer", learn=True), "hyperparameters.l2.init", "cannot be learned"),
        (Hyper("training_data", "noise", "weight"), "hyperparameters.training_data.init", "'data'"),
        (Hyper("learning_rate", 0.1, learn="yes"), "hyperparameters.learning_rate.learn", "true or false"),
    ],
)
def test_bad_settings_name_the_field(hyper, field, words):
    with pytest.raises(HyperparameterError) as err:
        build(**{hyper.kind: hyper})
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")
    assert words in str(err.value)


def test_bad_steps():
    with pytest.raises(HyperparameterError, match="training.steps"):
        HyperSet.build({}, steps=0, shapes=SHAPES, train_shape=X.shape, train_labels=Y)


@pytest.mark.parametrize(
    ("kind", "init", "granularity", "shape", "axes"),
    [
        ("learning_rate", 0.3, "global", (), []),
        ("learning_rate", 0.3, "layer", (4,), ["layer"]),
        ("learning_rate", 0.3, "step", (T,), ["step"]),
        ("momentum", 0.7, "layer_step", (T, 4), ["step", "layer"]),
        ("init_scale", 0.05, "layer", (4,), ["layer"]),
        ("l2", 1e-3, "global", (), []),
    ],
)
def test_natural_round_trip_with_axes_and_labels(kind, init, granularity, shape, axes):
    hs = build(**{kind: Hyper(kind, init, granularity, learn=True)})
    learned, _ = hs.init_raw(None, X)
    assert list(learned) == [kind]
    value = hs.to_natural(learned | hs.init_raw(None, X)[1])[kind]
    assert value.values.shape == shape
    np.testing.assert_allclose(value.values, init, rtol=1e-12)
    assert value.axes == axes and value.learned
    if "step" in axes:
        assert value.labels["step"] == list(range(T))
    if "layer" in axes:
        assert value.labels["layer"] == list(SHAPES)


def test_parametrisations_are_log_and_logit():
    hs = build(
        learning_rate=Hyper("learning_rate", 0.5),
        momentum=Hyper("momentum", 0.9),
        init_scale=Hyper("init_scale", 0.1),
        l2=Hyper("l2", 0.01),
    )
    raw = raw_of(hs)
    np.testing.assert_allclose(raw["learning_rate"], np.log(0.5))
    np.testing.assert_allclose(raw["momentum"], np.log(0.9 / 0.1))
    np.testing.assert_allclose(raw["init_scale"], np.log(0.1))
    np.testing.assert_allclose(raw["l2"], np.log(0.01))
    assert all(v.dtype == np.float64 for v in raw.values())


def test_per_weight_kinds_have_one_raw_array_per_parameter_array():
    hs = build(
        l2=Hyper("l2", 1e-3, "weight", learn=True),
        init_scale=Hyper("init_scale", 0.2, "weight", learn=True),
    )
    learned, _ = hs.init_raw(None, X)
    assert sorted(learned) == sorted([f"{k}.{a}" for k in ("l2", "init_scale") for a in SHAPES])
    for a, shape in SHAPES.items():
        assert learned[f"l2.{a}"].shape == shape
    nat = hs.to_natural(raw_of(hs))
    assert nat["l2.layer0.W"].axes == ["in", "out"] and nat["l2.layer0.b"].axes == ["out"]
    l2 = hs.l2(learned)
    assert set(l2) == set(SHAPES) and l2["layer1.W"].shape == (3, 2)
    np.testing.assert_allclose(hs.init_scales(learned)["layer0.b"], np.full(3, 0.2))


def test_l2_zero_is_off():
    hs = build(l2=Hyper("l2", 0.0, "layer"))
    raw = raw_of(hs)
    assert not any(k.startswith("l2") for k in raw)
    assert hs.l2(raw) is None
    off = hs.to_natural(raw)["l2"]
    assert off.values.shape == () and off.values == 0 and not off.learned


def test_schedules_in_the_engine_shapes():
    hs = build(
        learning_rate=Hyper("learning_rate", 0.5, "layer_step"),
        momentum=Hyper("momentum", 0.9, "global"),
    )
    raw = {k: jnp.asarray(v) for k, v in raw_of(hs).items()}
    raw["learning_rate"] = raw["learning_rate"].at[2, 1].set(np.log(0.25))
    alphas = hs.schedule("learning_rate", raw)
    assert set(alphas) == set(SHAPES) and all(a.shape == (T,) for a in alphas.values())
    np.testing.assert_allclose(alphas["layer0.b"], [0.5, 0.5, 0.25, 0.5, 0.5])
    gammas = hs.schedule("momentum", raw)
    assert gammas.shape == (T,)
    np.testing.assert_allclose(gammas, 0.9)
    assert hs.min_momentum(raw_of(hs)) == pytest.approx(0.9)

    hs = build(learning_rate=Hyper("learning_rate", 0.5, "layer"), momentum=Hyper("momentum", 0.9, "step"))
    raw = raw_of(hs)
    assert set(hs.schedule("learning_rate", raw)) == set(SHAPES)
    assert hs.schedule("momentum", raw).shape == (T,)


def test_training_data_starts_from_the_data_or_from_noise():
    hs = build(training_data=Hyper("training_data", "data", "weight", learn=True))
    learned, _ = hs.init_raw(None, X)
    np.testing.assert_array_equal(learned["training_data"], X)
    assert learned["training_data"] is not X
    value = hs.to_natural(raw_of(hs))["training_data"]
    assert value.axes == ["example", "feature"] and value.labels["example"] == Y.tolist()

    import jax

    hs = build(training_data=Hyper("training_data", 0.01, "weight", learn=True))
    noise = hs.init_raw(jax.random.PRNGKey(0), X)[0]["training_data"]
    assert noise.shape == X.shape and noise.dtype == X.dtype
    assert 0.003 < noise.std() < 0.03


def test_defaults_fill_the_missing_kinds():
    hs = build(learning_rate=Hyper("learning_rate", 0.5, learn=True))
    assert set(hs.hypers) == {"learning_rate", "momentum", "init_scale", "l2"}
    assert hs.learned_kinds() == ["learning_rate"]
    assert "training_data" not in hs.hypers and hs.training_data(raw_of(hs)) is None
