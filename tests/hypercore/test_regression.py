"""Regression (a real target, a float ``y``): the data path, the mean squared error, exact
hypergradients through the reversible engine against an unrolled float64 reference for every model
family, and a `tune` run that reverses exactly and lowers the validation MSE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypercore  # turns on x64
from hypercore import ReversalReport, empty_report, reversible_sgd, unrolled_sgd
from hypercore import arrays as A
from hypercore.cnn import cnn, cnn1d
from hypercore.families import DatasetShape
from hypercore.models import ModelError, logistic_regression, loss_of, mlp, mse, nll
from hypercore.rules import dataset_shape, model_shapes, problems
from hypercore.tune import ProblemError


def linear_data(n=120, d=6, k=1, noise=0.1, seed=0):
    """``y = X w + noise``, ``k`` outputs (a 1-D ``y`` for ``k = 1``)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=(d, k))
    y = X @ w + noise * rng.normal(size=(n, k))
    return X, (y[:, 0] if k == 1 else y)


def rel_err(a, b):
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ---- data ---------------------------------------------------------------------------------------


def test_a_float_y_is_a_real_target_of_k_outputs():
    X, y = linear_data(k=1)
    ds = A.from_arrays(X, y, 60, 30, 30, shuffle_seed=3)
    assert (ds.target, ds.n_classes, ds.n_outputs) == ("real", 0, 1)
    assert ds.y_train.dtype == np.float32 and ds.y_train.shape == (60, 1)
    order = np.random.default_rng(3).permutation(len(y))
    np.testing.assert_array_equal(ds.y_valid[:, 0], y[order][60:90].astype(np.float32))
    # center moves X only
    assert abs(float(ds.X_train.mean())) < 1e-6
    np.testing.assert_array_equal(ds.y_train[:, 0], y[order][:60].astype(np.float32))

    X2, y2 = linear_data(k=3)
    split = A.from_splits(X2[:80], y2[:80], X2[80:], y2[80:])
    assert (split.target, split.n_outputs, split.y_test.shape) == ("real", 3, (0, 3))
    assert np.array_equal(A.split_strata(split), np.zeros(120, np.int32))


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda X, y: A.from_arrays(X, y, 60, 30, stratify=True), "dataset.stratify"),
        (lambda X, y: A.from_arrays(X, y, 60, 30, n_classes=2), "n_classes"),
        (lambda X, y: A.from_arrays(X, y, 60, 30, task=np.arange(120) % 2), "task"),
        (lambda X, y: A.from_arrays(X, np.where(y > 0, np.inf, y), 60, 30), "y"),
        (lambda X, y: A.from_splits(X[:60], y[:60], X[60:], (y[60:] > 0).astype(int)), "y_valid"),
        (lambda X, y: A.from_splits(X[:60], y[:60], X[60:], np.stack([y[60:]] * 2, 1)), "y_valid"),
    ],
    ids=["stratify", "n_classes", "task", "infinite", "mixed-kinds", "outputs"],
)
def test_what_a_real_target_cannot_have_is_refused(call, field):
    with pytest.raises(A.DataError) as e:
        call(*linear_data())
    assert e.value.field == field


def test_inspect_reads_a_float_y_as_a_real_target():
    X, y = linear_data(k=2)
    found = A.inspect_arrays({"X": X, "y": y})
    assert (found.target, found.n_classes, found.n_outputs, found.n_rows) == ("real", 0, 2, 120)
    labels = A.inspect_arrays({"X": X, "y": np.arange(120) % 4})
    assert (labels.target, labels.n_classes, labels.n_outputs) == ("class", 4, 4)
    with pytest.raises(A.LayoutError, match="y_valid must be a float array of real targets"):
        A.inspect_arrays({"X_train": X, "y_train": y, "X_valid": X, "y_valid": np.arange(120) % 2})
    with pytest.raises(A.LayoutError, match="y holds values beyond float32's range"):
        A.inspect_arrays({"X": X, "y": np.full((120, 2), 1e300)})


# ---- the rules ------------------------------------------------------------------------------------

SPEC = {
    "dataset": {"id": "d1", "train": 60, "valid": 30},
    "model": {"kind": "mlp", "hidden": [8]},
    "training": {"steps": 10},
    "hyperparameters": {"learning_rate": {"init": 0.1, "granularity": "global", "learn": True}},
}
REAL = DatasetShape(n_features=6, n_classes=0, n_rows=120, target="real", n_outputs=2)


def test_the_rules_refuse_what_needs_classes_on_their_field():
    assert problems(SPEC, REAL) == []
    spec = {
        **SPEC,
        "dataset": {**SPEC["dataset"], "stratify": True},
        "hyperparameters": {
            **SPEC["hyperparameters"],
            "training_data": {"init": "data", "granularity": "weight", "learn": True},
        },
    }
    found = dict(problems(spec, REAL))
    assert set(found) == {("dataset", "stratify"), ("hyperparameters", "training_data")}
    assert "target is real" in found[("dataset", "stratify")]
    multitask = {**SPEC, "model": {"kind": "multitask_mlp", "hidden": [8]}}
    assert [loc for loc, _ in problems(multitask, REAL)] == [("model", "kind")]
    # the output layer has one unit per output of the target
    assert model_shapes(SPEC, REAL)["layer1.W"] == (8, 2)
    assert dataset_shape(SPEC, REAL) is REAL


# ---- the loss -----------------------------------------------------------------------------------


def test_mse_is_the_mean_over_examples_and_outputs():
    out = jnp.asarray([[1.0, 2.0], [3.0, 5.0]])
    y = jnp.asarray([[0.0, 2.0], [1.0, 2.0]], jnp.float32)
    assert float(mse(out, y)) == pytest.approx((1 + 0 + 4 + 9) / 4)
    assert loss_of(object(), "real") is mse and loss_of(object()) is nll


# ---- exact hypergradients through the engine, every family --------------------------------------

T, N_TRAIN, BATCH, K = 10, 12, 6, 2


def _engine_problem(model):
    """Random inputs and real targets, a minibatch drawn from the step index, a validation MSE."""
    kx, ky, kv, kw, ki = jax.random.split(jax.random.key(0), 5)
    X = jax.random.normal(kx, (N_TRAIN, model.n_features), jnp.float64)
    y = jax.random.normal(ky, (N_TRAIN, K), jnp.float64)
    Xv = jax.random.normal(kv, (8, model.n_features), jnp.float64)
    yv = jax.random.normal(kw, (8, K), jnp.float64)

    def loss(w, meta, t):
        idx = jax.random.randint(jax.random.fold_in(jax.random.key(7), t), (BATCH,), 0, N_TRAIN)
        penalty = sum(jnp.sum(meta["l2"] * w[k] ** 2) for k in w if k.endswith(".W"))
        return mse(model.apply(w, X[idx]), y[idx]) + penalty

    def objective(engine):
        def f(w0, meta, alphas, gammas, report):
            if engine == "reversible":
                w_T = reversible_sgd(loss, w0, meta, alphas, gammas, min_gamma=0.5, report=report)
            else:
                w_T = unrolled_sgd(loss, w0, meta, alphas, gammas)
            return mse(model.apply(w_T, Xv), yv)

        return f

    w0 = model.init(ki, {k: 0.5 for k in model.shapes})
    rng = np.random.default_rng(0)
    alphas = jnp.asarray(rng.uniform(0.02, 0.1, T))
    gammas = hypercore.quantize_gamma(jnp.asarray(rng.uniform(0.5, 0.95, T)))
    meta = {"l2": jnp.asarray(1e-3)}
    return objective, w0, meta, alphas, gammas


@pytest.mark.parametrize(
    "build",
    [
        lambda: logistic_regression(5, K, jnp.float64, target="real"),
        lambda: mlp(5, [4], K, dtype=jnp.float64, target="real"),
        lambda: cnn((6, 6, 1), K, [2], hidden=[], dtype=jnp.float64, target="real"),
        lambda: cnn1d((10,), K, [2], hidden=[3], dtype=jnp.float64, target="real"),
    ],
    ids=["logreg", "mlp", "cnn", "cnn1d"],
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


def test_a_single_output_needs_the_real_target():
    with pytest.raises(ModelError, match="model.n_classes: must be an integer >= 2"):
        mlp(5, [4], 1)
    assert mlp(5, [4], 1, target="real").shapes["layer1.W"] == (4, 1)
    with pytest.raises(ModelError, match="model.n_outputs: must be an integer >= 1"):
        cnn((6, 6), 0, [2], target="real")


# ---- tune ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression():
    X, y = linear_data(n=160, d=6, k=2, noise=0.1, seed=1)
    return A.from_arrays(X, y, 80, 40, 40, shuffle_seed=0)


def test_tune_reverses_exactly_and_lowers_the_validation_mse(regression):
    spec = {
        "dataset": {"id": "mine", "batch_size": 20},
        "model": {"kind": "mlp", "hidden": [8]},
        "training": {"steps": 20},
        "hyperparameters": {
            "learning_rate": {"init": 0.02, "granularity": "layer", "learn": True},
            "momentum": {"init": 0.5, "granularity": "global", "learn": False},
            "l2": {"init": 1e-4, "granularity": "layer", "learn": True},
        },
        "meta": {"iterations": 6, "learning_rate": 0.3},
        "seed": 0,
    }
    problem = hypercore.problem_from_spec(spec, dataset=regression)
    assert problem.target == "real" and problem.model.shapes["layer1.W"] == (8, 2)
    records = hypercore.tune(problem).records
    assert [r.reversal_exact for r in records] == [True] * 6
    assert all(r.valid_error is None and r.test_error is None for r in records)
    assert all(r.step()["valid_error"] is None and r.step()["test_error"] is None for r in records)
    losses = [r.valid_loss for r in records]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    # the objective is the validation MSE of the trained net
    metrics = hypercore.evaluate(problem)
    assert set(metrics) == {"train_loss", "valid_loss", "test_loss"}
    assert metrics["valid_loss"] == pytest.approx(records[0].valid_loss, rel=1e-12)


def test_resplit_and_the_unrolled_engine_work_on_a_real_target(regression):
    model = mlp(6, [4], 2, target="real")
    hypers = {"learning_rate": hypercore.Hyper("learning_rate", 0.02, "global", learn=True)}
    problem = hypercore.Problem.build(model, regression, hypers, steps=5, batch_size=20, resplit=True)
    obj, metrics, _, report = hypercore.hypergradient(problem)
    assert report.exact and np.isfinite(obj) and "valid_error" not in metrics
    obj_unrolled, *_ = hypercore.hypergradient(problem, engine="unrolled")
    assert obj_unrolled == pytest.approx(obj, rel=1e-5)
    with pytest.raises(ProblemError, match="hyperparameters.training_data"):
        hypercore.Problem.build(
            model,
            regression,
            {**hypers, "training_data": hypercore.Hyper("training_data", "data", "weight", learn=True)},
            steps=5,
        )
