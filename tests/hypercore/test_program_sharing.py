"""Jobs of the same structure share one compiled program (issue 21, item 2).

The seed, the datasets and every hyperparameter value are arguments of the jitted programs, not
constants, so a problem that differs from an earlier one only in those compiles nothing; sharing must
not change a single bit of its results (each is compared with the same problem run on a program built
for it alone)."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
from spec_changes import changed

import hypercore

tune_module = importlib.import_module("hypercore.tune")


def spec(**changes) -> dict:
    s = {
        "dataset": {"name": "digits", "train": 120, "valid": 60, "test": 50, "batch_size": 20},
        "model": {"kind": "mlp", "hidden": [8]},
        "training": {"steps": 6},
        "hyperparameters": {
            "learning_rate": {"init": 0.3, "granularity": "step", "learn": True},
            "momentum": {"init": 0.9, "granularity": "global", "learn": True},
            "init_scale": {"init": 0.1, "granularity": "layer", "learn": True},
            "l2": {"init": 0.001, "granularity": "global", "learn": True},
        },
        "meta": {"iterations": 2},
        "seed": 0,
    }
    return changed(s, **changes)


def outcome(problem) -> tuple:
    """Everything a run reports, to the bit: the records' numbers, the learned values, and an
    evaluation at another meta-iteration."""
    result = hypercore.tune(problem)
    numbers = [
        (r.objective, r.train_loss, r.valid_loss, r.test_loss, r.valid_error, r.hypergrad_norm)
        for r in result.records
    ]
    learned = {k: v.tobytes() for k, v in result.checkpoint.learned.items()}
    return numbers, learned, hypercore.evaluate(problem, meta_iter=3)


def alone(s: dict) -> tuple:
    """The outcome of ``s`` on programs built for it alone (an empty program cache)."""
    tune_module._PROGRAMS.clear()
    return outcome(hypercore.problem_from_spec(copy.deepcopy(s)))


def compiles(problem) -> int:
    """How many executables the problem's hypergradient program holds (one per capacity)."""
    return tune_module._program(problem, "reversible")._cache_size()


def noisy_class_weights(noise_seed: int) -> dict:
    s = spec()
    s["dataset"]["label_noise"] = {"fraction": 0.3, "seed": noise_seed}
    s["hyperparameters"]["example_weight"] = {"init": 1.0, "granularity": "class", "learn": True}
    return s


SAME_STRUCTURE = {
    "seed": (spec(), spec(seed=5)),  # other initial weights, minibatches and split
    "data": (spec(), spec(dataset__center=False)),  # other inputs, same shapes
    "learned-value": (
        spec(),
        spec(hyperparameters__learning_rate={"init": 0.1, "granularity": "step", "learn": True}),
    ),
    "fixed-value": (
        spec(hyperparameters__l2={"init": 0.001, "granularity": "global", "learn": False}),
        spec(hyperparameters__l2={"init": 0.01, "granularity": "global", "learn": False}),
    ),
    "resplit-seed": (spec(dataset__resplit=True), spec(dataset__resplit=True, seed=3)),  # strata too
    # a per-class weight takes each example's label from the dataset argument
    "class-weight-labels": (noisy_class_weights(noise_seed=1), noisy_class_weights(noise_seed=2)),
}


def lowered(make, built_from, run_on) -> str:
    """The program ``make`` builds from problem ``built_from``, lowered for ``run_on``'s arguments
    (StableHLO text, which spells out every constant)."""
    raw = {**tune_module._fixed_raw(run_on), **tune_module.initial_hyperparameters(run_on)}
    inputs = tune_module._inputs(run_on)
    program = make(built_from, "reversible")
    if make is tune_module._make_evaluate:
        return program.lower(inputs, tune_module._device(raw), np.int32(0), 4).as_text()
    learned = tune_module._device(tune_module.initial_hyperparameters(run_on))
    fixed = tune_module._device(tune_module._fixed_raw(run_on))
    return program.lower(inputs, learned, fixed, np.int32(0), 4).as_text()


@pytest.mark.parametrize("make", ["_make_hypergrad", "_make_evaluate"])
@pytest.mark.parametrize("case", list(SAME_STRUCTURE))
def test_jobs_that_differ_only_in_seed_data_or_values_have_one_program(case, make):
    """Built from either problem, the program is the same text: nothing of the seed, the data or
    the values is baked into it, so one compiled program serves both."""
    make = getattr(tune_module, make)
    first, second = (hypercore.problem_from_spec(copy.deepcopy(s)) for s in SAME_STRUCTURE[case])
    assert tune_module._program_key(first, "reversible", make) == (
        tune_module._program_key(second, "reversible", make)
    )
    assert lowered(make, first, second) == lowered(make, second, second)


def test_a_job_on_a_shared_program_compiles_nothing_and_changes_no_bit():
    first, second = SAME_STRUCTURE["seed"]
    expected = alone(second)
    tune_module._PROGRAMS.clear()
    a = hypercore.problem_from_spec(copy.deepcopy(first))
    first_outcome = outcome(a)
    held = compiles(a)
    b = hypercore.problem_from_spec(copy.deepcopy(second))
    assert tune_module._program(b, "reversible") is tune_module._program(a, "reversible")
    assert outcome(b) == expected
    assert compiles(b) == held, "the second job compiled its hypergradient again"
    assert first_outcome != expected, "the two jobs should differ in their results"


@pytest.mark.parametrize(
    "other",
    [
        spec(dataset__batch_size=30),
        spec(training__steps=7),
        spec(model__hidden=[9]),
        spec(hyperparameters__momentum={"init": 0.9, "granularity": "global", "learn": False}),
        spec(hyperparameters__momentum={"init": 0.9, "granularity": "global", "learn": True, "min": 0.5}),
        spec(hyperparameters__l2={"init": 0.0, "granularity": "global", "learn": False}),  # off
        spec(dataset__test=0),
        spec(objective="train_loss"),
    ],
    ids=["batch-size", "steps", "width", "learn-flag", "floor", "l2-off", "no-test", "objective"],
)
def test_a_job_of_another_structure_gets_its_own_program(other):
    tune_module._PROGRAMS.clear()
    a = hypercore.problem_from_spec(spec())
    b = hypercore.problem_from_spec(other)
    assert tune_module._program_key(a, "reversible", tune_module._make_hypergrad) != (
        tune_module._program_key(b, "reversible", tune_module._make_hypergrad)
    )
    assert tune_module._program(b, "reversible") is not tune_module._program(a, "reversible")


def test_the_seed_is_an_int64_argument_and_the_program_cache_is_bounded():
    tune_module._PROGRAMS.clear()
    problem = hypercore.problem_from_spec(spec(seed=2**31 - 1))
    inputs = tune_module._inputs(problem)
    assert inputs["seed"].dtype == np.int64 and int(inputs["seed"]) == 2**31 - 1
    assert inputs["X_train"].dtype == np.float32 and inputs["y_train"].shape == (120,)
    for steps in range(1, tune_module._PROGRAM_CACHE_SIZE + 3):
        tune_module._program(hypercore.problem_from_spec(spec(training__steps=steps)), "reversible")
    assert len(tune_module._PROGRAMS) == tune_module._PROGRAM_CACHE_SIZE
