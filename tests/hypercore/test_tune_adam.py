"""The tuning loop with Adam and AdamW as the *training* optimizer (``training.optimizer``): its
hypergradients match the unrolled engine's, the betas' floors hold, the spec carries the optimizer,
and what belongs to another optimizer is refused on its field."""

from __future__ import annotations

import importlib

import numpy as np
import optax
import pytest

import hypercore  # noqa: F401  (turns on x64)
from hypercore import data, models, vocab
from hypercore.budget import adam_capacity
from hypercore.hyper import Hyper, HyperparameterError, HyperSet
from hypercore.meta import MetaConfig
from hypercore.spec import SpecError, problem_from_spec
from hypercore.tune import Problem, evaluate, hypergradient, tune

tune_module = importlib.import_module("hypercore.tune")
T = 10
LAYERS = ["layer0.W", "layer0.b", "layer1.W", "layer1.b"]


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", 100, 50, 0, seed=0)


@pytest.fixture(scope="module")
def adamw_problem(digits):
    """A tiny net trained by AdamW: a learning rate per layer and step, beta1 per step, one beta2 and a
    weight decay per layer, all learned (the L2 penalty keeps every weight's gradient non-zero)."""
    return Problem.build(
        models.mlp(digits.n_features, [8], digits.n_classes),
        digits,
        {
            "learning_rate": Hyper("learning_rate", 0.01, "layer_step", learn=True),
            "beta1": Hyper("beta1", 0.9, "step", learn=True),
            "beta2": Hyper("beta2", 0.99, learn=True),
            "weight_decay": Hyper("weight_decay", 0.05, "layer", learn=True),
            "l2": Hyper("l2", 1e-3),
        },
        steps=T,
        batch_size=25,
        meta=MetaConfig("adam", 0.02),
        iterations=3,
        seed=0,
        training_optimizer="adamw",
    )


def test_adamw_hypergradients_match_the_unrolled_engine_and_tune_reverses_exactly(adamw_problem):
    objective, metrics, grad, report = hypergradient(adamw_problem)
    assert report.exact and not report.buffer_overflow
    unrolled_objective, _, unrolled, none = hypergradient(adamw_problem, engine="unrolled")
    assert none is None and objective == pytest.approx(unrolled_objective, rel=1e-6)
    assert set(grad) == {"learning_rate", "beta1", "beta2", "weight_decay"}
    shapes = {"learning_rate": (T, 4), "beta1": (T,), "beta2": (), "weight_decay": (4,)}
    for key, want in unrolled.items():
        scale = np.max(np.abs(want))
        assert grad[key].shape == shapes[key] and scale > 0, key
        # float32 weights, the same quantised betas and decay factors in both engines
        np.testing.assert_allclose(grad[key], want, rtol=0, atol=1e-6 * scale, err_msg=key)
    assert evaluate(adamw_problem) == pytest.approx(metrics, rel=1e-12)

    result = tune(adamw_problem)
    assert [r.reversal_exact for r in result.records] == [True, True, True]
    learned = result.hyperparameters
    assert learned["beta1"].axes == ["step"] and learned["beta1"].labels["step"] == list(range(T))
    assert learned["weight_decay"].axes == ["layer"] and learned["weight_decay"].labels["layer"] == LAYERS
    assert learned["weight_decay"].learned and np.all(learned["weight_decay"].values > 0)
    assert not np.allclose(learned["beta1"].values, 0.9)  # the meta-optimiser moved it
    assert "momentum" not in learned


def test_the_buffer_is_sized_by_adam_capacity_and_capped_at_the_floors(adamw_problem):
    hs = adamw_problem.hypers
    raw = tune_module.initial_hyperparameters(adamw_problem, include_fixed=True)
    # every value at its init: the factor is 1 - 0.01 x 0.05
    assert hs.min_decay(raw) == pytest.approx(1 - 0.01 * 0.05)
    assert hypercore.buffer_slots(hs, raw) == adam_capacity(T, 0.9, 0.99, 1 - 0.01 * 0.05)
    # learned betas are clamped to their min (0.5) and a learned learning rate bounds the decay
    # factor by the engine's smallest, 0.5
    assert (hs.floor("beta1"), hs.floor("beta2"), hs.decay_floor()) == (0.5, 0.5, 0.5)
    assert tune_module._buffer_ceiling(hs) == adam_capacity(T, 0.5, 0.5, 0.5)
    low = {**raw, "beta1": np.full(T, -3.0), "learning_rate": np.full((T, 4), 5.0)}
    assert hs.minimum("beta1", low) == 0.5 and hs.min_decay(low) == 0.5


def _hyperset(optimizer: str, **hypers) -> HyperSet:
    return HyperSet.build(
        hypers,
        steps=T,
        shapes={"layer0.W": (3, 2), "layer0.b": (2,)},
        train_shape=(4, 3),
        train_labels=[0, 1, 0, 1],
        training_optimizer=optimizer,
    )


def test_a_learned_beta_is_clamped_to_its_min_and_a_fixed_one_keeps_its_init():
    hs = _hyperset(
        "adam",
        beta1=Hyper("beta1", 0.9, "layer", learn=True, min=0.7),
        beta2=Hyper("beta2", 0.95, "layer_step"),
    )
    raw = {"beta1": np.array([0.0, 5.0]), "beta2": np.full((T, 2), vocab.to_raw("beta2", 0.95))}
    b1 = hs.schedule("beta1", raw)
    np.testing.assert_allclose(b1["layer0.W"], 0.7)  # logit 0 is 0.5, below the min
    np.testing.assert_allclose(b1["layer0.b"], 1 / (1 + np.exp(-5.0)))
    np.testing.assert_allclose(hs.schedule("beta2", raw)["layer0.b"], 0.95)
    assert (hs.floor("beta1"), hs.floor("beta2")) == (0.7, pytest.approx(0.95))
    assert hs.decay_floor() is None and hs.weight_decay(raw) == 0.0  # plain Adam: no decay factor


def test_the_training_optimizer_decides_defaults_and_refuses_the_others_kinds():
    adamw = _hyperset("adamw")
    assert {k: h.init for k, h in adamw.hypers.items()} == {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "weight_decay": 1e-4,  # optax's adamw default
        "init_scale": 0.1,
        "l2": 0.0,
    }
    assert "weight_decay" not in _hyperset("adam").hypers
    assert set(_hyperset("sgd_momentum").hypers) == {"learning_rate", "momentum", "init_scale", "l2"}
    assert _hyperset("adamw", weight_decay=Hyper("weight_decay", 0.0)).decay_floor() is None
    cases = [
        ("adam", Hyper("momentum", 0.9), "hyperparameters.momentum", "use sgd_momentum"),
        ("adam", Hyper("weight_decay", 1e-3), "hyperparameters.weight_decay", "use adamw"),
        ("sgd_momentum", Hyper("beta1", 0.9), "hyperparameters.beta1", "use adam or adamw"),
        ("adamw", Hyper("beta2", 0.4), "hyperparameters.beta2.init", "cannot run below 0.5"),
        ("adamw", Hyper("weight_decay", 600.0), "hyperparameters.weight_decay.init", "below 0.5"),
    ]
    for optimizer, h, field, says in cases:
        with pytest.raises(HyperparameterError) as caught:
            _hyperset(optimizer, **{h.kind: h})
        assert caught.value.field == field and says in caught.value.message, caught.value
    with pytest.raises(HyperparameterError) as caught:
        _hyperset("lbfgs")
    assert caught.value.field == "training.optimizer"


SPEC = {
    "name": "adam-spec",
    "dataset": {"name": "digits", "train": 40, "valid": 20},
    "model": {"kind": "logreg"},
    "training": {"steps": 5, "optimizer": "adamw"},
    "hyperparameters": {
        "learning_rate": {"init": 0.01, "granularity": "step", "learn": True},
        "beta1": {"init": 0.8, "granularity": "layer", "learn": True, "min": 0.6},
        "weight_decay": {"init": 0.01, "granularity": "global", "learn": True},
    },
}


def test_a_spec_carries_the_training_optimizer_into_the_problem():
    problem = problem_from_spec(SPEC)
    hs = problem.hypers
    assert hs.training_optimizer == "adamw" and problem.meta.optimizer == "adam"  # two optimizers
    assert hs.hypers["beta1"] == Hyper("beta1", 0.8, "layer", True, 0.6)
    assert hs.hypers["beta2"] == Hyper("beta2", 0.999) and hs.floor("beta1") == 0.6
    no_optimizer = {**SPEC, "training": {"steps": 5}}
    with pytest.raises(SpecError) as caught:
        problem_from_spec(no_optimizer)  # sgd_momentum by default: the betas are not its own
    assert caught.value.loc == ("hyperparameters", "beta1") and "use adam or adamw" in str(caught.value)
    with pytest.raises(SpecError) as caught:
        problem_from_spec({**SPEC, "training": {"steps": 5, "optimizer": "rmsprop"}})
    assert caught.value.loc == ("training", "optimizer")


# A regression: with beta1 per array (a scalar bias correction per leaf) and b2 differentiated, XLA
# compiled ``(m / c1) / den`` as ``(m * (1 / c1)) / den`` in one pass and not in the other, and the
# weights came back a unit off (`hypercore.adam._direction`).
@pytest.mark.parametrize(("granularity", "learn_beta2"), [("layer", False), ("layer_step", True)])
def test_adamw_with_beta1_per_layer_reverses_exactly(digits, granularity, learn_beta2):
    problem = Problem.build(
        models.mlp(digits.n_features, [8], digits.n_classes),
        digits,
        {
            "learning_rate": Hyper("learning_rate", 0.01, learn=True),
            "beta1": Hyper("beta1", 0.9, granularity),
            "beta2": Hyper("beta2", 0.99, learn=learn_beta2),
            "l2": Hyper("l2", 1e-3),
        },
        steps=T,
        batch_size=25,
        training_optimizer="adamw",
    )
    reports = [hypergradient(problem, meta_iter=k)[3] for k in range(3)]
    assert all(r.exact and not r.overflow for r in reports), reports


def test_evaluate_with_an_optax_optimizer_trains_the_same_run_in_floating_point(digits):
    """``evaluate(optimizer=...)`` runs optax from the same weights on the same minibatches: optax's
    adam with the spec's values ends where the exact engine does (its betas on the 2**-24 lattice,
    its weights in fixed point), and the tuning-free baselines of benchmarks/vs_blackbox.py run."""
    problem = Problem.build(
        models.mlp(digits.n_features, [8], digits.n_classes),
        digits,
        {
            "learning_rate": Hyper("learning_rate", 0.01),
            "beta1": Hyper("beta1", 0.9),
            "beta2": Hyper("beta2", 0.999),
            "l2": Hyper("l2", 1e-3, learn=True),
        },
        steps=T,
        batch_size=25,
        training_optimizer="adam",
    )
    exact = evaluate(problem, meta_iter=2)
    plain = evaluate(problem, meta_iter=2, optimizer=optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-8))
    assert exact.keys() == plain.keys()
    for key in exact:
        assert plain[key] == pytest.approx(exact[key], rel=1e-4), key
    # another meta-iteration's weights and minibatches: not the same run
    assert evaluate(problem, meta_iter=3)["train_loss"] != pytest.approx(exact["train_loss"], rel=1e-4)
    untrained = evaluate(problem, optimizer=optax.sgd(0.0))["train_loss"]
    for opt in (optax.contrib.prodigy(), optax.contrib.schedule_free_adamw(1e-2), optax.contrib.dog()):
        metrics = evaluate(problem, optimizer=opt)
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        # each moved the weights downhill (prodigy and DoG only a little in 10 steps: they start
        # from a step of 1e-6 and grow it)
        assert metrics["train_loss"] < untrained, (opt, metrics)


def test_an_adam_job_on_mnist1d_validates_and_tunes():
    """The built-in MNIST-1D through the spec (40 features for an mlp) with Adam as the training
    optimizer: the server's validation accepts it and the tuning loop reverses every run exactly."""
    from jobs.spec import BUILTIN_DATASETS, count_hyperparameters, validate_spec

    spec = {
        "name": "mnist1d-adam",
        "dataset": {"name": "mnist1d", "train": 200, "valid": 100, "test": 100, "batch_size": 50},
        "model": {"kind": "mlp", "hidden": [16]},
        "training": {"steps": 8, "optimizer": "adam"},
        "hyperparameters": {
            "learning_rate": {"init": 0.01, "granularity": "layer", "learn": True},
            "beta1": {"init": 0.9, "granularity": "global", "learn": True},
        },
        "meta": {"iterations": 2},
    }
    checked = validate_spec(spec)
    # a learning rate per array (4), beta1, and the fixed beta2, initial scale and l2
    assert count_hyperparameters(checked, BUILTIN_DATASETS["mnist1d"]) == 4 + 1 + 3
    problem = problem_from_spec(spec)
    assert problem.dataset.n_features == 40 and problem.model.shapes["layer0.W"] == (40, 16)
    result = tune(problem)
    assert [r.reversal_exact for r in result.records] == [True, True]
    assert np.isfinite(result.records[-1].test_loss)
