"""Array inits (warm starts): a spec's ``init`` may be the values themselves, in the layout a download
gives, and the engine starts exactly there; wrong shapes and values are refused naming the field."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from hypercore import vocab
from hypercore.spec import SpecError, problem_from_spec
from hypercore.tune import hyperparameter_values

SPEC = {
    "dataset": {"name": "digits", "train": 60, "valid": 30, "batch_size": 20},
    "model": {"kind": "mlp", "hidden": [6]},
    "training": {"steps": 4},
    "hyperparameters": {
        "learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "step", "learn": True},
        "l2": {"init": 1e-3, "granularity": "weight", "learn": True},
    },
    "meta": {"iterations": 1},
}
ARRAYS = {"layer0.W": (64, 6), "layer0.b": (6,), "layer1.W": (6, 10), "layer1.b": (10,)}


def spec_with(**inits) -> dict:
    spec = copy.deepcopy(SPEC)
    for kind, init in inits.items():
        spec["hyperparameters"][kind]["init"] = init
    return spec


def test_the_engine_starts_from_the_given_values():
    rng = np.random.default_rng(0)
    lr = np.exp(rng.normal(-1.5, 0.3, (4, 4)))  # awkward float64s: any rounding would show
    momentum = 1 / (1 + np.exp(-rng.normal(2.0, 0.5, 4)))
    l2 = {name: np.exp(rng.normal(-7, 1, shape)) for name, shape in ARRAYS.items()}
    problem = problem_from_spec(
        spec_with(
            learning_rate=lr.tolist(),
            momentum=momentum.tolist(),
            l2={k: v.tolist() for k, v in l2.items()},
        )
    )
    values = hyperparameter_values(problem)
    np.testing.assert_allclose(values["learning_rate"].values, lr, rtol=1e-15)
    np.testing.assert_allclose(values["momentum"].values, momentum, rtol=1e-15)
    for name, want in l2.items():
        np.testing.assert_allclose(values[f"l2.{name}"].values, want, rtol=1e-15)
    # A scalar init is the same as an array filled with it.
    same = hyperparameter_values(problem_from_spec(spec_with(learning_rate=np.full((4, 4), 0.3).tolist())))
    np.testing.assert_array_equal(
        same["learning_rate"].values, hyperparameter_values(problem_from_spec(SPEC))["learning_rate"].values
    )


@pytest.mark.parametrize(
    ("inits", "field", "text"),
    [
        (
            {"learning_rate": [0.1] * 4},
            "hyperparameters.learning_rate.init",
            "must have shape [4, 4], got [4]",
        ),
        (
            {"momentum": [0.9, 0.9, 1.0, 0.9]},
            "hyperparameters.momentum.init",
            "(0, 1) exclusive, got 1.0 at index [2]",
        ),
        ({"l2": [[0.1]]}, "hyperparameters.l2.init", "one array per parameter array"),
        (
            {"l2": {k: np.zeros(s).tolist() for k, s in ARRAYS.items()}},
            "hyperparameters.l2.init.layer0.W",
            "cannot start at 0 anywhere",
        ),
        ({"l2": {"layer0.W": np.ones((64, 6)).tolist()}}, "hyperparameters.l2.init", "missing ['layer0.b'"),
        (
            {"learning_rate": {"from_job": "abc", "which": "best"}},
            "hyperparameters.learning_rate.init",
            "resolved by the service",
        ),
    ],
)
def test_wrong_values_are_refused_naming_the_field(inits, field, text):
    with pytest.raises(SpecError) as e:
        problem_from_spec(spec_with(**inits))
    assert e.value.field == field and text in str(e.value)


def test_a_learned_floor_reads_an_array_inits_smallest_value():
    assert vocab.lowest("momentum", [0.95, 0.5, 0.8], learn=False) == 0.5
    assert vocab.lowest("momentum", [0.95, 0.05], learn=True) == pytest.approx(0.05)  # below the 0.1 floor
    assert vocab.decay_problem([1e-3, 0.8], 0.7) is not None  # 1 - 0.8 * 0.7 < 0.5 at the largest
