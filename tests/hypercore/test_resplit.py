"""``dataset.resplit``: a new train/valid split every meta-iteration.

The split is a pure function of ``(seed, meta_iter)`` that keeps every row's class (and task), a
re-split meta-iteration scores exactly what a fixed-split problem on that split scores, its
hypergradients are exact, and a resumed run re-draws the same splits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypercore  # noqa: F401  (turns on x64)
from hypercore import data, models
from hypercore.data import DataError, Dataset, resplit_indices, split_strata
from hypercore.hyper import Hyper
from hypercore.meta import MetaConfig
from hypercore.spec import SpecError, problem_from_spec
from hypercore.tune import Problem, ProblemError, evaluate, initial_hyperparameters, tune


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", 120, 60, 40, seed=1)


def resplit_problem(ds, *, resplit=True, iterations=4, **hypers):
    return Problem.build(
        models.mlp(ds.n_features, [8], ds.n_classes),
        ds,
        hypers
        or {
            "learning_rate": Hyper("learning_rate", 0.3, "step", learn=True),
            "l2": Hyper("l2", 1e-3, "layer", learn=True),
        },
        steps=8,
        batch_size=30,
        meta=MetaConfig("adam", 0.1),
        iterations=iterations,
        seed=5,
        resplit=resplit,
    )


def split_at(ds, seed, meta_iter) -> Dataset:
    """The dataset a fixed-split problem would need to train and validate as meta-iteration
    ``meta_iter`` of a re-split one does, built with numpy from the drawn indices."""
    train_rows, valid_rows = (
        np.asarray(r) for r in resplit_indices(seed, meta_iter, split_strata(ds), ds.n_train)
    )
    X = np.concatenate([ds.X_train, ds.X_valid])
    y = np.concatenate([ds.y_train, ds.y_valid])
    return data.from_splits(
        X[train_rows],
        y[train_rows],
        X[valid_rows],
        y[valid_rows],
        ds.X_test,
        ds.y_test,
        n_classes=ds.n_classes,
        center=False,
    )


def test_a_resplit_keeps_each_rows_class_and_draws_a_fresh_permutation(digits):
    strata = split_strata(digits)
    assert strata.dtype == np.int32 and strata.shape == (digits.n_train + digits.n_valid,)
    pool = len(strata)
    draws = [resplit_indices(7, m, strata, digits.n_train) for m in range(3)]
    for train_rows, valid_rows in draws:
        assert train_rows.dtype == jnp.int32 and valid_rows.dtype == jnp.int32
        assert train_rows.shape == (digits.n_train,) and valid_rows.shape == (digits.n_valid,)
        rows = np.concatenate([train_rows, valid_rows])
        np.testing.assert_array_equal(np.sort(rows), np.arange(pool))  # a permutation of the pool
        np.testing.assert_array_equal(strata[rows], strata)  # every row keeps its class
    # Fresh per meta-iteration and per seed, repeatable for the same pair, and never the identity.
    for (a, _), (b, _) in ((draws[0], draws[1]), (draws[1], draws[2])):
        assert not np.array_equal(a, b)
    assert not np.array_equal(draws[0][0], resplit_indices(8, 0, strata, digits.n_train)[0])
    np.testing.assert_array_equal(draws[1][0], resplit_indices(7, 1, strata, digits.n_train)[0])
    np.testing.assert_array_equal(
        draws[1][0], resplit_indices(jax.random.key(7), 1, strata, digits.n_train)[0]
    )
    assert not np.array_equal(draws[0][0], np.arange(digits.n_train))


def test_every_example_of_a_class_is_equally_likely_to_validate():
    """Uniform within each stratum: over 400 draws each example validates in about its stratum's
    share of them (3 of 6 for class 0, 1 of 4 for class 1)."""
    strata = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1], np.int32)  # 6 training rows, then 4 validation
    drawn = jax.jit(jax.vmap(lambda m: resplit_indices(0, m, strata, 6)[1]))(jnp.arange(400))
    counts = np.bincount(np.asarray(drawn).ravel(), minlength=10) / 400
    share = np.where(strata == 0, 3 / 6, 1 / 4)
    # Binomial(400, p) has a standard deviation of at most 0.025 of the draws.
    np.testing.assert_allclose(counts, share, atol=0.1)
    assert np.all(np.asarray(strata)[np.asarray(drawn)] == strata[6:])


def test_a_multitask_dataset_resplits_inside_each_task_and_class():
    rng = np.random.default_rng(0)

    def split(n):
        # 2 tasks, task-major, 2 classes each
        return rng.normal(size=(n, 3)).astype(np.float32), np.tile(np.array([0, 1], np.int32), n // 2)

    (Xt, yt), (Xv, yv) = split(8), split(4)
    ds = Dataset(
        "two", Xt, yt, Xv, yv, np.zeros((0, 3), np.float32), np.zeros(0, np.int32), 2, None, 2, ("a", "b")
    )
    strata = split_strata(ds)
    np.testing.assert_array_equal(strata, [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 2, 3])
    train_rows, valid_rows = resplit_indices(0, 3, strata, 8)
    np.testing.assert_array_equal(strata[np.asarray(train_rows)], strata[:8])
    np.testing.assert_array_equal(strata[np.asarray(valid_rows)], strata[8:])


def test_resplit_indices_refuse_nonsense():
    with pytest.raises(DataError, match="n_train"):
        resplit_indices(0, 0, np.zeros(5, np.int32), 5)
    with pytest.raises(DataError, match="strata"):
        resplit_indices(0, 0, np.zeros((5, 2), np.int32), 2)


def test_a_resplit_meta_iteration_scores_what_a_fixed_problem_on_its_split_scores(digits):
    """Same seed, same meta-iteration: the same initial weights and minibatch draws, so the only
    difference is the data, which the fixed problem gets from numpy."""
    resplit = resplit_problem(digits)
    x = {k: v + 0.1 for k, v in initial_hyperparameters(resplit).items()}
    scores = [evaluate(resplit, x, meta_iter=m) for m in (0, 2)]
    for m, score in zip((0, 2), scores, strict=True):
        fixed = resplit_problem(split_at(digits, 5, m), resplit=False)
        expected = evaluate(fixed, x, meta_iter=m)
        assert score.keys() == expected.keys()
        np.testing.assert_allclose([score[k] for k in expected], list(expected.values()), rtol=1e-6)
    # The test split is the same for every draw, the validation split is not.
    assert scores[0]["valid_loss"] != scores[1]["valid_loss"]


def test_resplit_hypergradients_are_exact(hypergradients_match):
    ds = data.load("digits", 24, 16, 0, seed=2)
    problem = Problem.build(
        models.mlp(ds.n_features, [5], ds.n_classes, dtype=jnp.float64),
        ds,
        {
            "learning_rate": Hyper("learning_rate", 0.3, "layer_step", learn=True),
            "momentum": Hyper("momentum", 0.5),  # exact in the engine's fixed point, as unrolled has it
            "init_scale": Hyper("init_scale", 0.3, "layer", learn=True),
            "l2": Hyper("l2", 0.01, "weight", learn=True),
        },
        steps=6,
        batch_size=8,
        resplit=True,
    )
    hypergradients_match(problem, initial_hyperparameters(problem), eps=1e-2)


def test_a_resplit_run_tunes_and_resumes_bit_for_bit(digits):
    problem = resplit_problem(digits)
    whole = tune(problem)
    assert len(whole.records) == 4 and all(r.reversal_exact for r in whole.records)
    assert all(np.isfinite(r.valid_loss) and np.isfinite(r.test_loss) for r in whole.records)
    first = tune(problem, iterations=2)
    rest = tune(problem, checkpoint=first.checkpoint)
    for a, b in zip(whole.records, first.records + rest.records, strict=True):
        assert (a.meta_iter, a.valid_loss, a.test_loss) == (b.meta_iter, b.valid_loss, b.test_loss)
    for key, value in whole.checkpoint.learned.items():
        np.testing.assert_array_equal(value, rest.checkpoint.learned[key])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"valid": 0, "objective": "train_loss"}, "there are none"),
        ({"resplit": "yes"}, "true or false"),
        ({"training_data": True}, "training_data"),
    ],
)
def test_resplit_is_refused_where_it_cannot_apply(digits, change, message):
    ds = digits
    if change.get("valid") == 0:  # only a hand-made Dataset can lack validation rows
        ds = dataclasses.replace(ds, X_valid=ds.X_valid[:0], y_valid=ds.y_valid[:0])
    hypers = {"learning_rate": Hyper("learning_rate", 0.3, "step", learn=True)}
    if change.get("training_data"):
        hypers["training_data"] = Hyper("training_data", "data", "weight", learn=True)
    with pytest.raises(ProblemError, match=message) as caught:
        Problem.build(
            models.mlp(ds.n_features, [8], ds.n_classes),
            ds,
            hypers,
            steps=4,
            objective=change.get("objective", "valid_loss"),
            resplit=change.get("resplit", True),
        )
    assert caught.value.field == "dataset.resplit"


def test_the_spec_field_reaches_the_problem():
    spec = {
        "dataset": {"name": "digits", "train": 100, "valid": 50, "resplit": True},
        "model": {"kind": "logreg"},
        "training": {"steps": 4},
        "hyperparameters": {"l2": {"init": 0.01, "granularity": "weight", "learn": True}},
    }
    assert problem_from_spec(spec).resplit
    assert not problem_from_spec({**spec, "dataset": {**spec["dataset"], "resplit": None}}).resplit
    with pytest.raises(SpecError, match="dataset.resplit"):
        problem_from_spec({**spec, "dataset": {**spec["dataset"], "resplit": 1}})


def test_a_replaced_problem_compiles_its_own_splits(digits):
    """`dataclasses.replace` shares the compiled functions; re-splitting must not reuse the fixed
    split's (nor the other way round)."""
    fixed = resplit_problem(digits, resplit=False)
    at_fixed = evaluate(fixed, meta_iter=1)
    replaced = dataclasses.replace(fixed, resplit=True)
    assert replaced.compiled is fixed.compiled
    assert evaluate(replaced, meta_iter=1) == evaluate(resplit_problem(digits), meta_iter=1)
    assert evaluate(replaced, meta_iter=1)["valid_loss"] != at_fixed["valid_loss"]
    assert evaluate(fixed, meta_iter=1) == at_fixed
