"""Learned sharing across tasks (the paper's section 3.4): the ``mnist5k_tasks`` data, the
`MultitaskMLP` model, the ``sharing`` hyperparameter, and its hypergradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypercore import Hyper, data, models, problem_from_spec
from hypercore.hyper import HyperparameterError, HyperSet
from hypercore.tune import Problem, ProblemError, hypergradient, initial_hyperparameters, tune
from jobs import templates

N_TASKS, N_IN, N_HID, N_CLASSES = 3, 6, 4, 3


@pytest.fixture(scope="module")
def tasks():
    return data.load("mnist5k_tasks", 100, 100, 200, seed=0, center=False)


def test_tasks_are_five_alphabets_with_own_label_maps_and_their_rotations(tasks):
    assert tasks.n_tasks == 10 and tasks.task_names[:2] == ("A1", "A2") and tasks.task_names[5] == "A1rot"
    assert (tasks.n_train, tasks.n_valid, tasks.n_test) == (100, 100, 200)
    per_task = {split: getattr(tasks, f"y_{split}").reshape(10, -1) for split in ("train", "valid", "test")}
    # every task sees every class equally often, in each split
    for y in per_task.values():
        for s in range(10):
            assert sorted(np.bincount(y[s], minlength=10)) == [len(y[s]) // 10] * 10
    maps = per_task["train"][:, :10]  # one image of every digit, in digit order: the label map
    assert all(sorted(m) == list(range(10)) for m in maps)
    assert len({tuple(m) for m in maps[:5]}) == 5, "each alphabet has its own label map"
    np.testing.assert_array_equal(maps[5:], maps[:5], err_msg="a rotated alphabet keeps its labels")
    X = tasks.X_train.reshape(10, -1, 28, 28)
    np.testing.assert_array_equal(X[5:], np.rot90(X[:5], k=1, axes=(-2, -1)))
    # the alphabets hold disjoint images
    flat = tasks.X_train.reshape(10, -1, 784)[:5].reshape(-1, 784)
    assert len({row.tobytes() for row in flat}) == len(flat)


def test_tasks_keep_their_test_set_when_training_grows_and_are_centred_per_task():
    small = data.load("mnist5k_tasks", 1000, 200, 8700)
    large = data.load("mnist5k_tasks", 1200, 100, 8700)
    np.testing.assert_array_equal(small.y_test, large.y_test)
    # the same images, each centred on its own task's (different) training mean
    diff = (small.X_test - large.X_test).reshape(10, -1, 784)
    assert np.allclose(diff, diff[:, :1], atol=1e-6) and not np.allclose(diff, 0)
    means = small.X_train.reshape(10, -1, 784).mean(axis=1)
    assert np.abs(means).max() < 1e-5


def test_task_counts_must_split_every_task_and_class_alike():
    with pytest.raises(data.DataError, match=r"dataset.train: .* must be a multiple of 100, got 150"):
        data.load("mnist5k_tasks", 150, 100)
    with pytest.raises(data.DataError, match="dataset: train 5000 .* exceeds the 10000"):
        data.load("mnist5k_tasks", 5000, 5000, 100)


def tiny_model(dtype=jnp.float64) -> models.MultitaskMLP:
    return models.multitask_mlp(N_IN, [N_HID], N_CLASSES, N_TASKS, dtype=dtype)


def tiny_latent(model, seed=0):
    return model.init(jax.random.key(seed), {a: 0.5 for a in model.shapes})


def test_each_task_has_its_own_net_on_its_own_rows():
    model = tiny_model()
    assert model.shapes["layer0.W"] == (N_TASKS, N_IN, N_HID) and model.shapes["layer1.b"] == (
        N_TASKS,
        N_CLASSES,
    )
    z = tiny_latent(model)
    X = jax.random.normal(jax.random.key(1), (N_TASKS * 5, N_IN), jnp.float64)
    logits = model.apply(z, X)
    single = models.mlp(N_IN, [N_HID], N_CLASSES, dtype=jnp.float64)
    for s in range(N_TASKS):
        own = single.apply({k: v[s] for k, v in z.items()}, X[5 * s : 5 * s + 5])
        np.testing.assert_allclose(logits[5 * s : 5 * s + 5], own, rtol=1e-12)
    with pytest.raises(ValueError, match="multiple of the 3 tasks"):
        model.apply(z, X[:4])


def test_penalty_on_latent_weights_is_the_cross_task_prior_and_tying_shares_weights():
    model = tiny_model()
    z = tiny_latent(model)
    T = jax.random.normal(jax.random.key(2), (N_TASKS, N_TASKS), jnp.float64) + 2 * jnp.eye(N_TASKS)
    w = model.share(z, {"layer0": T, "layer1": T})
    for name, leaf in w.items():
        cols = leaf.reshape(N_TASKS, -1)
        prior = jnp.sum(cols * jnp.linalg.solve(T @ T.T, cols))  # w^T (T T^T)^-1 w per weight position
        np.testing.assert_allclose(prior, jnp.sum(z[name] ** 2), rtol=1e-9)
    tied = model.share(z, {"layer0": jnp.full((N_TASKS, N_TASKS), 1.0 / N_TASKS)})
    for name in ("layer0.W", "layer0.b"):
        np.testing.assert_allclose(tied[name], jnp.broadcast_to(z[name].mean(0), z[name].shape), rtol=1e-12)
    np.testing.assert_array_equal(tied["layer1.W"], z["layer1.W"])


def test_sharing_starts_between_separate_and_tied_and_needs_a_multitask_model():
    hs = HyperSet.build(
        {"sharing": Hyper("sharing", 0.5, "layer", learn=True)},
        steps=3,
        shapes=tiny_model().shapes,
        train_shape=(6, N_IN),
        train_labels=[0] * 6,
        tasks=("a", "b", "c"),
        sharing_layers=("layer0", "layer1"),
    )
    learned, fixed = hs.init_raw(jax.random.key(0), np.zeros((6, N_IN), np.float32))
    assert sorted(learned) == ["sharing.layer0", "sharing.layer1"]
    np.testing.assert_allclose(learned["sharing.layer0"], 0.5 * np.eye(3) + 0.5 / 3)
    exported = hs.to_natural({**fixed, **learned})["sharing.layer1"]
    assert exported.axes == ["task", "latent"] and exported.labels["task"] == ["a", "b", "c"]
    assert hs.to_natural({**fixed, **learned})["l2"].values == 0
    with pytest.raises(HyperparameterError, match=r"hyperparameters.sharing.init: .* \[0, 1\]"):
        Hyper("sharing", 1.5, "layer").validate()
    with pytest.raises(HyperparameterError, match="sharing.granularity: .* allowed: global, layer"):
        Hyper("sharing", 0.5, "weight").validate()
    digits = data.load("digits", 20, 10)
    with pytest.raises(HyperparameterError, match="hyperparameters.sharing: .* multitask_mlp"):
        Problem.build(
            models.mlp(64, [4], 10), digits, {"sharing": Hyper("sharing", 0.5, learn=True)}, steps=2
        )


def test_a_multitask_problem_refuses_the_wrong_data_and_minibatches(tasks):
    model = models.multitask_mlp(784, [4], 10, 10)
    lr = {"learning_rate": Hyper("learning_rate", 0.1, learn=True)}
    with pytest.raises(ProblemError, match="dataset.batch_size: .* full-batch"):
        Problem.build(model, tasks, lr, steps=2, batch_size=50)
    with pytest.raises(ProblemError, match="model: .* 3 tasks but the dataset has 1: use a multi-task"):
        Problem.build(models.multitask_mlp(64, [4], 10, 3), data.load("digits", 30, 30), lr, steps=2)
    spec = templates.get("sharing-mnist5k-tasks")
    spec["dataset"] = {"name": "digits", "train": 100, "valid": 50}
    with pytest.raises(ValueError, match="model.kind: multitask_mlp needs a multi-task dataset"):
        problem_from_spec(spec)


def small_multitask_problem(**hypers) -> Problem:
    ds = data.load("mnist5k_tasks", 100, 100, 100, seed=1)
    model = models.multitask_mlp(ds.n_features, [3], ds.n_classes, ds.n_tasks, dtype=jnp.float64)
    return Problem.build(model, ds, hypers, steps=5)


def test_sharing_hypergradient_matches_finite_differences_and_reverse_mode(hypergradients_match):
    """Float64 multi-task nets with the sharing matrices (and a global L2 on the latent weights)
    learned: the exact hypergradient against central differences of the whole training, and
    against plain reverse mode through the stored trajectory."""
    problem = small_multitask_problem(
        learning_rate=Hyper("learning_rate", 2.0),
        momentum=Hyper("momentum", 0.5),
        init_scale=Hyper("init_scale", 0.3),
        l2=Hyper("l2", 0.01, learn=True),
        sharing=Hyper("sharing", 0.5, "layer", learn=True),
    )
    x0 = initial_hyperparameters(problem)
    assert sorted(x0) == ["l2", "sharing.layer0", "sharing.layer1"]
    _, metrics, _, _ = hypergradient(problem)
    assert np.isfinite(metrics["valid_loss"])
    hypergradients_match(problem, x0, eps=2e-3)


def test_the_sharing_template_runs_scaled_down_and_exports_the_matrices():
    spec = templates.get("sharing-mnist5k-tasks")
    spec["dataset"].update({"train": 100, "valid": 100, "test": 100})
    spec["model"]["hidden"] = [4, 4]
    spec["training"]["steps"] = 4
    spec["meta"]["iterations"] = 2
    problem = problem_from_spec(spec)
    assert problem.model.n_tasks == 10 and problem.batch_size is None
    result = tune(problem)
    assert [r.reversal_exact for r in result.records] == [True, True]
    T = result.hyperparameters["sharing.layer2"]
    assert T.values.shape == (10, 10) and T.learned and T.labels["task"][5] == "A1rot"
    start = 0.5 * np.eye(10) + 0.05
    assert not np.allclose(T.values, start), "two gradient steps moved the matrix"
    scale = result.hyperparameters["init_scale"]
    assert not scale.learned and scale.values == pytest.approx(np.exp(-2))
