"""`worker.health`: which inputs and meta-iterations make a warning, and what it says (no database,
no engine run; tests/worker/test_worker_warnings.py runs jobs)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hypercore import arrays
from hypercore.meta import GuardEvent
from jobs.repository import StepTally
from worker import health


@pytest.mark.parametrize("name", ["digits", "mnist5k", "mnist1d"])
@pytest.mark.parametrize("center", [True, False])
def test_the_built_in_datasets_are_scaled(name, center):
    dataset = arrays.load(name, 1000, 100, 0, center=center)
    assert health.unscaled_inputs(dataset.X_train) is None


def test_digits_times_1000_are_told_to_standardise():
    X = arrays.load("digits", 1000, 100, 0).X_train * 1000
    warning = health.unscaled_inputs(X)
    assert warning is not None and (warning.code, warning.meta_iter) == ("unscaled_inputs", None)
    assert warning.message.startswith("the training inputs are not scaled: feature ")
    assert "standardise X per feature before uploading" in warning.message


def test_image_shaped_inputs_are_read_per_pixel():
    X = np.zeros((20, 4, 4, 1), np.float32)
    X[:, 2, 3, 0] = np.arange(20) * 10.0  # standard deviation 57.7 in pixel 11
    warning = health.unscaled_inputs(X)
    assert warning is not None and "feature 11 of 16 has a standard deviation of 57.7" in warning.message


def test_a_feature_far_from_zero_is_told_to_center():
    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    X[:, 1] += 50  # uncentred (dataset.center: false), its spread still 1
    warning = health.unscaled_inputs(X)
    assert warning is not None and "feature 1 of 3 has a root-mean-square of 50" in warning.message
    assert "center the inputs (dataset.center: true" in warning.message
    assert health.unscaled_inputs(X - X.mean(axis=0)) is None


def test_the_bound_is_on_the_largest_feature():
    X = np.random.default_rng(1).normal(size=(500, 2))
    assert health.unscaled_inputs(X * [1, 9.5]) is None
    assert health.unscaled_inputs(X * [1, 10.5]) is not None


def record(k: int, objective: float, hypergrad_norm: float, *events: GuardEvent):
    return SimpleNamespace(meta_iter=k, objective=objective, hypergrad_norm=hypergrad_norm, events=events)


def codes(warnings) -> list[str]:
    return [w.code for w in warnings]


def test_a_healthy_meta_iteration_warns_of_nothing():
    tally = StepTally(recorded=3, diverged=0, hypergrad_beyond=0)
    assert health.meta_iteration_warnings(record(2, 0.5, 3.0), tally, 0.5) == []
    assert health.meta_iteration_warnings(record(2, 0.5, health.MAX_HYPERGRAD_NORM), tally, 0.5) == []


@pytest.mark.parametrize("norm", [1.5e6, float("inf"), float("nan")])
def test_a_hypergradient_beyond_the_bound_or_not_finite_is_reported(norm):
    tally = StepTally(recorded=4, diverged=0, hypergrad_beyond=2)
    (warning,) = health.meta_iteration_warnings(record(3, 0.7, norm), tally, 0.5)
    assert (warning.code, warning.meta_iter) == ("hypergradient_norm", 3)
    assert warning.message.startswith(
        f"the hypergradient norm was {norm:.3g} at meta-iteration 3, beyond 1e+06 (2 meta-iterations so far)"
    )


def test_a_diverged_meta_iteration_is_counted_and_the_guards_back_offs_too():
    nan = float("nan")
    event = GuardEvent(meta_iter=4, reason="nonfinite", objective=nan, hypergrad_norm=nan, scale=0.125)
    tally = StepTally(recorded=5, diverged=2, hypergrad_beyond=0)
    diverged, guard = health.meta_iteration_warnings(record(4, nan, nan, event), tally, 0.5)
    assert (diverged.code, diverged.meta_iter) == ("diverged", 4)
    assert "in 2 of the 5 meta-iterations so far" in diverged.message
    assert (guard.code, guard.meta_iter) == ("chaos_guard", 4)
    assert guard.message.startswith(
        "the chaos guard backed off 3 times so far, the latest at meta-iteration 4 (the objective or"
    )
    assert "now 0.125 x meta.learning_rate" in guard.message


def test_the_diverged_count_is_kept_current_after_a_finite_meta_iteration():
    tally = StepTally(recorded=6, diverged=2, hypergrad_beyond=0)
    assert codes(health.meta_iteration_warnings(record(5, 0.4, 1.0), tally, 0.5)) == ["diverged"]
