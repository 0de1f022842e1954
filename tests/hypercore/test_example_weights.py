"""A weight per training example (or per class) on the training loss, ``example_weight``: the
training loss is the weighted mean of the minibatch's own losses, its hypergradient is exact (the
float64 reverse mode through the stored trajectory and finite differences of the whole training
agree), and the layout, labels and refusals follow the kind's table."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from hypercore import data, models
from hypercore.hyper import Hyper
from hypercore.spec import SpecError, problem_from_spec
from hypercore.tune import Problem, hypergradient, hyperparameter_values, initial_hyperparameters


def small_problem(granularity: str = "example", batch_size: int | None = 10, **more) -> Problem:
    ds = data.load("digits", 40, 30, 0, seed=2)
    model = models.mlp(ds.n_features, [4], ds.n_classes, dtype=jnp.float64)
    hypers = {
        "learning_rate": Hyper("learning_rate", 0.5),
        "momentum": Hyper("momentum", 0.5),
        "init_scale": Hyper("init_scale", 0.3),
        "example_weight": Hyper("example_weight", 1.0, granularity, learn=True),
        **more,
    }
    return Problem.build(model, ds, hypers, steps=6, batch_size=batch_size)


@pytest.mark.parametrize(("granularity", "batch_size"), [("example", 10), ("class", None)])
def test_the_hypergradient_of_example_weights_is_exact(hypergradients_match, granularity, batch_size):
    problem = small_problem(granularity, batch_size)
    x0 = initial_hyperparameters(problem)
    rng = np.random.default_rng(0)  # away from all-equal weights, where the weighted mean is the plain one
    x0 = {"example_weight": x0["example_weight"] + rng.normal(0, 0.3, x0["example_weight"].shape)}
    hypergradients_match(problem, x0, eps=1e-3)


def test_equal_weights_train_as_no_weights_and_the_loss_is_the_weighted_mean():
    """Any equal weights give the plain mean; one example weighted up moves the run."""
    weighted, plain = small_problem(), small_problem()
    plain_hypers = {k: v for k, v in weighted.hypers.hypers.items() if k != "example_weight"}
    plain_hypers["init_scale"] = Hyper("init_scale", 0.3, learn=True)  # something to tune
    plain = Problem.build(plain.model, plain.dataset, plain_hypers, steps=6, batch_size=10)
    x = initial_hyperparameters(weighted)
    same = {"example_weight": np.full_like(x["example_weight"], np.log(3.7))}
    objective = lambda p, learned: hypergradient(p, learned)[0]  # noqa: E731
    assert objective(weighted, same) == pytest.approx(objective(plain, None), rel=1e-12)
    tilted = {"example_weight": same["example_weight"].copy()}
    tilted["example_weight"][:20] += 2.0
    assert abs(objective(weighted, tilted) - objective(plain, None)) > 1e-4


def test_the_layout_labels_each_example_and_class():
    problem = small_problem()
    values = hyperparameter_values(problem)["example_weight"]
    assert values.axes == ["example"] and values.values.shape == (40,)
    assert values.labels["label"] == [int(y) for y in problem.dataset.y_train]
    assert values.labels["example"] == [int(r) for r in problem.dataset.train_rows]  # rows of the source
    np.testing.assert_array_equal(values.values, np.ones(40))
    per_class = hyperparameter_values(small_problem("class"))["example_weight"]
    assert per_class.axes == ["class"] and per_class.labels["class"] == list(range(10))


SPEC = {
    "dataset": {"name": "digits", "train": 40, "valid": 30, "batch_size": 10},
    "model": {"kind": "logreg"},
    "training": {"steps": 4},
    "hyperparameters": {"example_weight": {"init": 1.0, "granularity": "example", "learn": True}},
    "meta": {"iterations": 1},
}


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        (
            {"dataset": {**SPEC["dataset"], "resplit": True}},
            "dataset.resplit",
            "would not stay with its example",
        ),
        (
            {"hyperparameters": {"example_weight": {"init": 1.0, "granularity": "step", "learn": True}}},
            "hyperparameters.example_weight.granularity",
            "allowed: example, class",
        ),
        (
            {"hyperparameters": {"example_weight": {"init": 0.0, "granularity": "example", "learn": True}}},
            "hyperparameters.example_weight.init",
            "must be > 0",
        ),
        (
            {
                "hyperparameters": {
                    "example_weight": {"init": [1.0] * 39, "granularity": "example", "learn": True}
                }
            },
            "hyperparameters.example_weight.init",
            "must have shape [40], got [39]",
        ),
    ],
)
def test_refusals_name_the_field(change, field, text):
    with pytest.raises(SpecError) as e:
        problem_from_spec({**SPEC, **change})
    assert e.value.field == field and text in str(e.value)


def test_the_service_counts_one_value_per_example_or_class():
    from jobs.spec import BUILTIN_DATASETS, count_hyperparameters, validate_spec

    spec = validate_spec(SPEC)
    counts = count_hyperparameters(spec, BUILTIN_DATASETS["digits"])
    per_class = validate_spec(
        {**SPEC, "hyperparameters": {"example_weight": {"init": 1.0, "granularity": "class", "learn": True}}}
    )
    assert counts - count_hyperparameters(per_class, BUILTIN_DATASETS["digits"]) == 40 - 10
