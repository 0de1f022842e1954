"""A model written against `hypercore.models.TrainableModel`, not one of the built-ins, tunes: a
small convolutional net on the 8x8 digits (the module docstring's example), with exact hypergradients."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypercore
from hypercore import data, models
from hypercore.models import ModelError
from hypercore.tune import ProblemError


@dataclasses.dataclass(frozen=True)
class SmallCNN:
    """3x3 convolution with 4 channels, tanh, then a dense layer: names nothing like ``layer{i}``."""

    shapes = {"conv.W": (3, 3, 1, 4), "conv.b": (4,), "out.W": (144, 10), "out.b": (10,)}
    dtype: Any = jnp.float32

    def init(self, key, scales):
        return models.normal_init(self.shapes, self.dtype, key, scales)

    def apply(self, params, X):
        images = X.reshape(-1, 8, 8, 1).astype(params["conv.W"].dtype)
        h = jax.lax.conv_general_dilated(
            images, params["conv.W"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jnp.tanh(h + params["conv.b"]).reshape(X.shape[0], -1)
        return h @ params["out.W"] + params["out.b"]


@dataclasses.dataclass(frozen=True)
class SquaredLossCNN(SmallCNN):
    """The same net trained on its own loss: squared error against one-hot labels."""

    def training_loss(self, logits, y):
        return jnp.mean(jnp.sum((logits - jax.nn.one_hot(y, 10)) ** 2, axis=-1))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", 60, 30, 20)


HYPERS = {
    "learning_rate": hypercore.Hyper("learning_rate", 0.2, "layer_step", learn=True),
    "init_scale": hypercore.Hyper("init_scale", 0.2, "layer", learn=True),
    "l2": hypercore.Hyper("l2", 1e-3, "weight", learn=True),
}


def test_a_cnn_tunes_with_exact_reversal(digits):
    problem = hypercore.Problem.build(
        SmallCNN(),
        digits,
        HYPERS,
        steps=6,
        batch_size=20,
        iterations=3,
        meta=hypercore.MetaConfig(learning_rate=0.02),
    )
    result = hypercore.tune(problem)
    assert [r.reversal_exact for r in result.records] == [True] * 3
    assert all(np.isfinite([r.objective for r in result.records]))
    # Each meta-iteration draws its own initial weights; on one draw, the tuned values score better.
    start = hypercore.evaluate(problem, meta_iter=0)["valid_loss"]
    tuned = hypercore.evaluate(problem, result.checkpoint.learned, meta_iter=0)["valid_loss"]
    assert tuned < start
    # the layer axis is labelled with the model's own names
    exported = problem.hypers.to_natural(hypercore.initial_hyperparameters(problem, include_fixed=True))
    assert exported["learning_rate"].labels["layer"] == ["conv.W", "conv.b", "out.W", "out.b"]
    assert exported["l2.conv.W"].values.shape == (3, 3, 1, 4)


@pytest.mark.parametrize("model", [SmallCNN, SquaredLossCNN], ids=["nll", "own loss"])
def test_its_hypergradient_is_exact(digits, model, hypergradients_match):
    """Against plain reverse mode (1e-8) and central differences (1e-5), in float64 with a momentum
    the fixed point holds exactly (as in the engine's other hypergradient tests)."""
    hypers = {
        **HYPERS,
        "learning_rate": hypercore.Hyper("learning_rate", 0.05, "layer_step", learn=True),
        "momentum": hypercore.Hyper("momentum", 0.5),
        "l2": hypercore.Hyper("l2", 0.01, "weight", learn=True),
    }
    problem = hypercore.Problem.build(model(dtype=jnp.float64), digits, hypers, steps=5, batch_size=20)
    x0 = hypercore.initial_hyperparameters(problem)
    hypergradients_match(problem, x0, eps=1e-2, unrolled_keys=tuple(x0))


def test_a_models_own_loss_is_what_it_trains_and_reports(digits):
    def run(model):
        problem = hypercore.Problem.build(model, digits, HYPERS, steps=5, batch_size=20)
        return hypercore.hypergradient(problem)

    _, nll_metrics, nll_grad, _ = run(SmallCNN())
    _, sq_metrics, sq_grad, _ = run(SquaredLossCNN())
    # the same weights from the same draws: only the loss differs, in training and in the report
    assert sq_metrics["valid_loss"] != pytest.approx(nll_metrics["valid_loss"], rel=1e-3)
    assert not np.allclose(sq_grad["learning_rate"], nll_grad["learning_rate"])


def test_what_is_not_a_model_is_refused_on_model(digits):
    class NoApply:
        shapes = {"w": (3,)}

        def init(self, key, scales):
            return {}

    with pytest.raises(ModelError, match=r"model: NoApply lacks apply"):
        hypercore.Problem.build(NoApply(), digits, HYPERS, steps=2)

    @dataclasses.dataclass(frozen=True)
    class WrongWidth(SmallCNN):
        shapes = {"conv.W": (3, 3, 1, 4), "conv.b": (4,), "out.W": (144, 7), "out.b": (7,)}

    with pytest.raises(ProblemError, match="gives 7 logits but the dataset has 10 classes"):
        hypercore.Problem.build(WrongWidth(), digits, HYPERS, steps=2)
