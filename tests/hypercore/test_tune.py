"""The tuning loop: it tunes, it resumes bit for bit, its hypergradients are right, it refuses nonsense."""

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypercore  # noqa: F401  (turns on x64)
from hypercore import data, models
from hypercore.hyper import ConfigError, Hyper
from hypercore.meta import MetaConfig
from hypercore.spec import SpecError, problem_from_spec
from hypercore.tune import (
    Checkpoint,
    CheckpointError,
    Problem,
    ProblemError,
    evaluate,
    hyperparameter_values,
    initial_hyperparameters,
    tune,
)

ITERATIONS = 6


class _CompileCounter(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        if record.getMessage().startswith("Compiling"):
            self.count += 1


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", 200, 200, 100, seed=0)


@pytest.fixture(scope="module")
def schedule_problem(digits):
    """A learning-rate schedule (one per step) started far too small, Adam with a big meta step."""
    return Problem.build(
        models.mlp(digits.n_features, [16], digits.n_classes),
        digits,
        {
            "learning_rate": Hyper("learning_rate", 0.05, "step", learn=True),
            "momentum": Hyper("momentum", 0.5),
            "init_scale": Hyper("init_scale", 0.1),
        },
        steps=20,
        batch_size=50,
        meta=MetaConfig("adam", 1.0),
        iterations=ITERATIONS,
        seed=3,
    )


@pytest.fixture(scope="module")
def schedule_run(schedule_problem):
    """The uninterrupted run, with the number of XLA compilations seen after each meta-iteration."""
    counter = _CompileCounter()
    logger = logging.getLogger("jax")
    logger.addHandler(counter)
    compiles = []
    try:
        with jax.log_compiles(True):
            result = tune(schedule_problem, callback=lambda record: compiles.append(counter.count))
    finally:
        logger.removeHandler(counter)
    return result, compiles


def test_tuning_a_schedule_lowers_the_validation_loss_severalfold(schedule_run):
    result, _ = schedule_run
    records = result.records
    assert [r.meta_iter for r in records] == list(range(ITERATIONS))
    assert records[0].valid_loss > 3 * records[-1].valid_loss
    assert records[-1].valid_error < records[0].valid_error
    assert all(r.reversal_exact for r in records) and not any(r.events for r in records)
    lr = result.hyperparameters["learning_rate"]
    assert lr.axes == ["step"] and lr.labels["step"] == list(range(20)) and lr.learned
    assert np.all(lr.values > 0.05)  # it learned to take bigger steps
    np.testing.assert_array_equal(lr.values, records[-1].hyperparameters["learning_rate"].values)
    momentum = result.hyperparameters["momentum"]
    assert not momentum.learned and momentum.values == pytest.approx(0.5)


def test_records_carry_every_metric(schedule_run):
    record = schedule_run[0].records[1]
    step = record.step()
    assert set(step) == {
        "meta_iter",
        "objective",
        "train_loss",
        "valid_loss",
        "valid_error",
        "test_loss",
        "test_error",
        "hypergrad_norm",
        "elapsed_s",
        "reversal_exact",
    }
    assert step["objective"] == step["valid_loss"]
    assert step["meta_iter"] == 1
    floats = [v for k, v in step.items() if k not in ("meta_iter", "reversal_exact")]
    assert all(isinstance(v, float) and math.isfinite(v) for v in floats)
    assert 0 <= step["test_error"] <= 1 and step["hypergrad_norm"] > 0 and step["reversal_exact"] is True
    assert record.checkpoint.meta_iter == 2


def test_second_meta_iteration_does_not_recompile(schedule_run):
    _, compiles = schedule_run
    assert compiles[0] > 0
    assert compiles[1:] == [compiles[0]] * (ITERATIONS - 1)


@pytest.mark.parametrize("stop_after", [0, 2, 4])
def test_resumed_run_is_bit_identical(schedule_problem, schedule_run, stop_after):
    full, _ = schedule_run
    saved = full.records[stop_after].checkpoint.to_bytes()
    resumed = tune(schedule_problem, checkpoint=Checkpoint.from_bytes(saved))
    assert [r.meta_iter for r in resumed.records] == list(range(stop_after + 1, ITERATIONS))
    for a, b in zip(full.records[stop_after + 1 :], resumed.records, strict=True):
        assert a.objective == b.objective and a.hypergrad_norm == b.hypergrad_norm
    for key, value in full.checkpoint.learned.items():
        assert np.array_equal(value, resumed.checkpoint.learned[key])
    for a, b in zip(full.checkpoint.opt_state, resumed.checkpoint.opt_state, strict=True):
        assert np.array_equal(a, b)
    for key, value in full.hyperparameters.items():
        assert np.array_equal(value.values, resumed.hyperparameters[key].values)


def test_each_record_holds_the_values_it_trained_with(schedule_problem, schedule_run):
    """`Record.trained_with`: the first record's are the initial values (fixed ones included), a later
    one's are the previous record's ``hyperparameters`` (the same arrays), and a resumed run's first
    record's are the checkpoint's: what a recorder sends for snapshot 0 and a best's export."""
    result, _ = schedule_run
    initial = hyperparameter_values(schedule_problem)
    assert set(result.records[0].trained_with) == set(initial) >= {"learning_rate", "momentum"}  # fixed too
    for name, value in initial.items():
        assert np.array_equal(result.records[0].trained_with[name].values, value.values), name
    for before, after in zip(result.records[:-1], result.records[1:], strict=True):
        assert after.trained_with is before.hyperparameters
    saved = result.records[2].checkpoint.to_bytes()
    resumed = tune(schedule_problem, checkpoint=Checkpoint.from_bytes(saved), iterations=4)
    for name, value in result.records[2].hyperparameters.items():
        assert np.array_equal(resumed.records[0].trained_with[name].values, value.values), name


def test_callback_can_stop_the_run(schedule_problem):
    seen = []
    result = tune(
        schedule_problem, callback=lambda record: seen.append(record.meta_iter) or record.meta_iter == 1
    )
    assert result.stopped and seen == [0, 1] and result.checkpoint.meta_iter == 2


def test_chaos_guard_backs_off_and_the_run_goes_on(schedule_problem):
    """A meta step of 5 in log space multiplies the learning rate by ~150: training blows up."""
    wild = dataclasses.replace(schedule_problem, meta=MetaConfig("adam", 5.0), iterations=8)
    result = tune(wild)
    events = [e for r in result.records for e in r.events]
    assert events, "the guard never triggered"
    assert {e.reason for e in events} <= {"jump", "nonfinite"}
    assert [e.scale for e in events] == [0.5**i for i in range(1, len(events) + 1)]
    assert len(result.records) == 8 and math.isfinite(result.records[-1].objective)
    assert all(np.all(np.isfinite(v.values)) for v in result.hyperparameters.values())
    # backing off is part of the state: resuming after an event ends where the run ended
    after = next(r for r in result.records if r.events)
    resumed = tune(wild, checkpoint=Checkpoint.from_bytes(after.checkpoint.to_bytes()))
    for key, value in result.checkpoint.learned.items():
        assert np.array_equal(value, resumed.checkpoint.learned[key])


def test_hypergradients_of_every_kind_match_finite_differences(hypergradients_match):
    """A float64 net with every kind learned; the reversible hypergradient against central
    differences of the whole training (and against plain reverse mode through a stored trajectory).

    Momentum is quantised to n / 2**16 by the reversible engine, so its objective is piecewise
    constant in gamma; its differences are taken through the unrolled engine (gamma = 0.5 is exact)."""
    ds = data.load("digits", 24, 16, 0)
    problem = Problem.build(
        models.mlp(ds.n_features, [5], ds.n_classes, dtype=jnp.float64),
        ds,
        {
            "learning_rate": Hyper("learning_rate", 0.3, "layer_step", learn=True),
            "momentum": Hyper("momentum", 0.5, "step", learn=True),
            "init_scale": Hyper("init_scale", 0.3, "weight", learn=True),
            "l2": Hyper("l2", 0.01, "layer", learn=True),
            "training_data": Hyper("training_data", "data", "weight", learn=True),
        },
        steps=6,
        batch_size=8,
    )
    x0 = initial_hyperparameters(problem)
    assert all(v.dtype == np.float64 for v in x0.values())
    hypergradients_match(problem, x0, eps=1e-2, unrolled_keys=("momentum",))


def test_checkpoint_from_another_problem_or_garbage_is_refused(schedule_problem, digits):
    ckpt = tune(schedule_problem, iterations=1).checkpoint
    other = Problem.build(
        models.mlp(digits.n_features, [16], digits.n_classes),
        digits,
        {"learning_rate": Hyper("learning_rate", 0.05, "layer", learn=True)},
        steps=20,
        batch_size=50,
        seed=3,
    )
    with pytest.raises(CheckpointError, match="do not match"):
        tune(other, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="seed"):
        tune(dataclasses.replace(schedule_problem, seed=4), checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="not a hypercore checkpoint"):
        Checkpoint.from_bytes(b"not a zip file")


def test_initial_hyperparameters_are_the_inits(schedule_problem):
    x0 = initial_hyperparameters(schedule_problem)
    assert list(x0) == ["learning_rate"]
    np.testing.assert_allclose(x0["learning_rate"], np.full(20, np.log(0.05)))


def test_evaluate_scores_what_a_meta_iteration_scores(schedule_problem, schedule_run):
    result, _ = schedule_run
    first, second = result.records[0], result.records[1]
    names = ("train_loss", "valid_loss", "valid_error", "test_loss", "test_error")
    at_start = evaluate(schedule_problem)
    assert set(at_start) == set(names)
    np.testing.assert_allclose([at_start[k] for k in names], [getattr(first, k) for k in names], rtol=1e-5)
    # Record 1 was scored at the hyperparameters record 0 updated to, with meta-iteration 1's draws.
    after = evaluate(schedule_problem, first.checkpoint.learned, meta_iter=1)
    np.testing.assert_allclose([after[k] for k in names], [getattr(second, k) for k in names], rtol=1e-5)
    # A fixed hyperparameter may be overridden too; an unknown one is an error naming the known.
    heavier = evaluate(schedule_problem, {"momentum": np.log(0.9 / 0.1)})
    assert heavier["train_loss"] != at_start["train_loss"]
    with pytest.raises(KeyError, match="learning_rate"):
        evaluate(schedule_problem, {"nonsense": 1.0})


# ---- problems and specs ---------------------------------------------------------------------

SPEC = {
    "name": "lr-schedule-digits",
    "dataset": {"name": "digits", "train": 100, "valid": 50, "test": 20, "batch_size": 25},
    "model": {"kind": "mlp", "hidden": [8], "activation": "tanh"},
    "training": {"steps": 10},
    "hyperparameters": {
        "learning_rate": {"init": 0.5, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "layer_step", "learn": True},
        "init_scale": {"init": 0.1, "granularity": "layer", "learn": True},
        "l2": {"init": 0.0, "granularity": "layer", "learn": False},
    },
    "objective": "valid_loss",
    "meta": {"iterations": 7, "optimizer": "adam", "learning_rate": 0.04},
    "seed": 0,
}


def with_(path: str, value):
    """SPEC with one dotted field replaced (``None``-valued ``value`` drops the field)."""
    spec = {k: dict(v) if isinstance(v, dict) else v for k, v in SPEC.items()}
    spec["hyperparameters"] = {k: dict(v) for k, v in SPEC["hyperparameters"].items()}
    *head, last = path.split(".")
    node = spec
    for part in head:
        node = node[part]
    if value is None:
        node.pop(last)
    else:
        node[last] = value
    return spec


def test_spec_builds_the_problem_it_describes():
    problem = problem_from_spec(SPEC)
    assert problem.dataset.n_train == 100 and problem.dataset.n_valid == 50 and problem.dataset.n_test == 20
    assert list(problem.model.shapes) == ["layer0.W", "layer0.b", "layer1.W", "layer1.b"]
    assert problem.hypers.steps == 10 and problem.batch_size == 25 and problem.iterations == 7
    assert problem.meta == MetaConfig("adam", 0.04)
    assert problem.hypers.hypers["momentum"] == Hyper("momentum", 0.9, "layer_step", True)
    assert problem.hypers.hypers["l2"].off and problem.objective == "valid_loss"
    x0 = initial_hyperparameters(problem)
    assert x0["learning_rate"].shape == (10, 4) and x0["init_scale"].shape == (4,)
    nat = problem.hypers.to_natural(x0)
    assert nat["momentum"].axes == ["step", "layer"] and nat["momentum"].labels["layer"][0] == "layer0.W"


def test_spec_with_a_given_dataset_and_pydantic_style_nones(digits):
    spec = with_("dataset", {"id": "abc123", "name": None, "batch_size": None})
    spec["model"] = {"kind": "logreg", "hidden": None, "activation": None}
    problem = problem_from_spec(spec, dataset=digits)
    assert problem.dataset is digits and problem.batch_size is None
    assert list(problem.model.shapes) == ["layer0.W", "layer0.b"]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("model.kind", "transformer", "model.kind"),
        ("model.hidden", [], "model.hidden"),
        ("model.hidden", [8, 0], "model.hidden[1]"),
        ("model.activation", "sigmoid", "model.activation"),
        ("model.depth", 3, "model.depth"),
        ("training.steps", 0, "training.steps"),
        ("training", None, "training"),
        ("dataset.batch_size", 101, "dataset.batch_size"),
        ("dataset.batch_size", 2.5, "dataset.batch_size"),
        ("dataset", {"id": "abc"}, "dataset.id"),
        ("dataset", {"train": 10, "valid": 10}, "dataset"),
        ("dataset.valid", None, "dataset.valid"),
        ("objective", "test_loss", "objective"),
        ("meta.optimizer", "rmsprop", "meta.optimizer"),
        ("meta.iterations", -1, "meta.iterations"),
        ("meta.learning_rate", "fast", "meta.learning_rate"),
        ("meta.guard", "maybe", "meta.guard"),
        ("hyperparameters.dropout", {"init": 0.5}, "hyperparameters.dropout"),
        ("hyperparameters.l2", {"init": 0.0, "learn": True}, "hyperparameters.l2.init"),
        (
            "hyperparameters.learning_rate",
            {"init": 0.5, "granularity": "weight"},
            "hyperparameters.learning_rate",
        ),
        ("hyperparameters.momentum", {"init": 0.9, "speed": 1}, "hyperparameters.momentum.speed"),
        ("hyperparameters.momentum", {"granularity": "layer"}, "hyperparameters.momentum.init"),
        ("seed", -3, "seed"),
    ],
)
def test_bad_specs_name_the_field(path, value, field):
    with pytest.raises(ConfigError) as err:
        problem_from_spec(with_(path, value))
    assert err.value.field.startswith(field), str(err.value)
    assert str(err.value).startswith(err.value.field + ": ")


def test_nothing_to_learn_is_refused():
    spec = with_("hyperparameters", {"learning_rate": {"init": 0.1}})
    with pytest.raises(ProblemError, match="nothing to tune"):
        problem_from_spec(spec)


def test_bad_datasets_are_refused(digits):
    with pytest.raises(ValueError, match="train"):
        problem_from_spec(with_("dataset.train", 10**6))
    with pytest.raises(SpecError, match="dataset.train"):
        problem_from_spec(with_("dataset.train", "many"))
    no_valid = dataclasses.replace(digits, X_valid=digits.X_valid[:0], y_valid=digits.y_valid[:0])
    with pytest.raises(ProblemError, match="dataset.valid"):
        problem_from_spec(SPEC, dataset=no_valid)
    lr = {"learning_rate": Hyper("learning_rate", 0.1, learn=True)}
    with pytest.raises(ProblemError, match="64 features"):
        Problem.build(models.mlp(10, [4], 10), digits, lr, steps=3)
    with pytest.raises(ProblemError, match="gives 3 logits but the dataset has 10 classes"):
        Problem.build(models.mlp(64, [4], 3), digits, lr, steps=3)
