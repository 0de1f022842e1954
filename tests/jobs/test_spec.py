"""JobSpec: every limit and every wrong type is refused with the field's name."""

from __future__ import annotations

import copy
import math

import pytest

from jobs.spec import (
    BUILTIN_DATASETS,
    DatasetShape,
    SpecError,
    SpecLimits,
    count_hyperparameters,
    validate_spec,
)

BASE = {
    "name": "base",
    "dataset": {"name": "digits", "train": 1000, "valid": 400, "test": 397, "batch_size": 100},
    "model": {"kind": "mlp", "hidden": [50, 50], "activation": "tanh"},
    "training": {"steps": 100},
    "hyperparameters": {
        "learning_rate": {"init": 0.5, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "layer_step", "learn": True},
        "init_scale": {"init": 0.1, "granularity": "layer", "learn": True},
        "l2": {"init": 0.0, "granularity": "layer", "learn": False},
    },
    "objective": "valid_loss",
    "meta": {"iterations": 50, "optimizer": "adam", "learning_rate": 0.04},
    "seed": 0,
}


def with_(path: str, value, base: dict = BASE):
    spec = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node[p]
    node[last] = value
    return spec


def errors_of(spec, **kwargs) -> dict[str, str]:
    with pytest.raises(SpecError) as e:
        validate_spec(spec, **kwargs)
    found: dict[str, str] = {}
    for err in e.value.errors:
        field = ".".join(str(p) for p in err["loc"])
        found[field] = f"{found[field]}; {err['msg']}" if field in found else err["msg"]
    return found


def test_the_design_example_is_valid_and_round_trips():
    spec = validate_spec(BASE)
    assert validate_spec(spec.to_dict()) == spec
    assert spec.to_dict()["hyperparameters"]["l2"] == {"init": 0.0, "granularity": "layer", "learn": False}


@pytest.mark.parametrize(
    ("path", "value", "field", "limit"),
    [
        ("training.steps", 1001, "training.steps", "1000"),
        ("meta.iterations", 501, "meta.iterations", "500"),
        ("model.hidden", [10] * 9, "model.hidden", "8"),
        ("model.hidden", [10, 4096], "model.hidden.1", "2048"),
        ("dataset.train", 200_000, "dataset.train", "100000"),
        ("dataset.batch_size", 200_000, "dataset.batch_size", "100000"),
    ],
)
def test_every_limit_is_refused_naming_the_field_and_the_limit(path, value, field, limit):
    errors = errors_of(with_(path, value))
    assert field in errors and limit in errors[field], errors


def test_limits_come_from_the_caller():
    small = SpecLimits(max_steps=10, max_hyperparameters=100)
    errors = errors_of(BASE, limits=small)
    assert "10" in errors["training.steps"]
    errors = errors_of(with_("training.steps", 10), limits=small)
    assert "at most 100" in errors["hyperparameters"], "2 x (10 x 6) + 6 + 6 = 138 > 100"


def test_dataset_sizes_are_checked_against_the_builtin():
    errors = errors_of(with_("dataset.train", 1500))
    assert "1797" in errors["dataset.train"]
    errors = errors_of(with_("dataset.batch_size", 1001))
    assert "1000 training examples" in errors["dataset.batch_size"]


def test_the_number_of_hyperparameters_counts_every_granularity():
    mnist = validate_spec(
        with_("model.hidden", [50, 50, 50])
        | {"dataset": {"name": "mnist5k", "train": 3000, "valid": 1000, "batch_size": 200}}
    )
    assert count_hyperparameters(mnist, BUILTIN_DATASETS["mnist5k"]) == 800 + 800 + 8 + 8
    logreg = validate_spec(
        {
            **BASE,
            "model": {"kind": "logreg"},
            "hyperparameters": {
                "l2": {"init": 0.027, "granularity": "weight", "learn": True},
                "training_data": {"init": 0.01, "granularity": "weight", "learn": True},
            },
            "dataset": {"name": "mnist5k", "train": 10, "valid": 100},
        }
    )
    # l2 per weight 784*10+10, training data 10*784, and the global defaults lr, momentum, init_scale.
    assert count_hyperparameters(logreg, BUILTIN_DATASETS["mnist5k"]) == 7850 + 7840 + 3
    many_weights = with_("model.hidden", [2048] * 8)
    assert "weights" in errors_of(many_weights)["model"]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("training.steps", "100", "training.steps"),
        ("training.steps", 10.5, "training.steps"),
        ("training.steps", 0, "training.steps"),
        ("meta.learning_rate", math.nan, "meta.learning_rate"),
        ("meta.learning_rate", math.inf, "meta.learning_rate"),
        ("hyperparameters.learning_rate.init", math.nan, "hyperparameters.learning_rate.init"),
        ("hyperparameters.learning_rate.init", -1.0, "hyperparameters.learning_rate.init"),
        ("hyperparameters.momentum.init", 1.0, "hyperparameters.momentum.init"),
        ("hyperparameters.momentum.learn", "yes", "hyperparameters.momentum.learn"),
        ("hyperparameters.momentum.granularity", "weight", "hyperparameters.momentum.granularity"),
        ("hyperparameters.l2.learn", True, "hyperparameters.l2.learn"),
        ("model.kind", "rnn", "model.kind"),
        ("model.activation", "gelu", "model.activation"),
        # the width itself: one rule for the server and the engine (the engine's field is model.hidden[0])
        ("model.hidden", [0], "model.hidden.0"),
        ("objective", "test_loss", "objective"),
        ("meta.optimizer", "lbfgs", "meta.optimizer"),
        ("meta.momentum", 0.5, "meta.momentum"),
        ("seed", -1, "seed"),
        ("name", "../etc", "name"),
        ("dataset.name", "imagenet", "dataset.name"),
        ("dataset.valid", 0, "dataset.valid"),
        ("dataset.resplit", "yes", "dataset.resplit"),
        ("surprise", 1, "surprise"),
        ("training.epochs", 3, "training.epochs"),
    ],
)
def test_wrong_values_and_types_name_the_field(path, value, field):
    assert field in errors_of(with_(path, value))


def test_nothing_learned_and_two_dataset_sources_are_refused():
    spec = with_("hyperparameters", {"learning_rate": {"init": 0.1}})
    assert "nothing to tune" in errors_of(spec)["hyperparameters"]
    assert "exactly one" in errors_of(with_("dataset.id", "abc"))["dataset"]
    assert "JSON object" in errors_of([1, 2])[""]


def test_center_stratify_and_shuffle_are_flags_and_an_upload_is_stored_shuffled():
    assert validate_spec(with_("dataset.stratify", True)).dataset.stratify is True
    assert validate_spec(with_("dataset.center", False)).dataset.center is False
    assert "dataset.center" in errors_of(with_("dataset.center", "yes please"))
    assert "dataset.shuffle" in errors_of(with_("dataset.shuffle", "yes"))
    # a built-in is always shuffled by the seed: the flag is refused, and not stored
    assert "always shuffled" in errors_of(with_("dataset.shuffle", False))["dataset.shuffle"]
    assert "shuffle" not in validate_spec(BASE).to_dict()["dataset"]
    # an X/y upload: shuffled unless the spec says otherwise, stored explicitly either way, and
    # stratify applies to it too; a pre-split upload keeps its splits (nothing stored, stratify refused)
    xy = {"d1": DatasetShape(n_features=64, n_classes=10, n_rows=100)}
    upload = with_("dataset", {"id": "d1", "train": 50, "valid": 20, "stratify": True})
    stored = validate_spec(upload, resolve_dataset=xy.get).to_dict()["dataset"]
    assert stored["shuffle"] is True and stored["stratify"] is True
    in_order = with_("dataset", {"id": "d1", "train": 50, "valid": 20, "shuffle": False})
    assert validate_spec(in_order, resolve_dataset=xy.get).to_dict()["dataset"]["shuffle"] is False
    splits = {"d1": DatasetShape(n_features=64, n_classes=10, layout="splits", n_train=50, n_valid=20)}
    pre_split = with_("dataset", {"id": "d1"})
    assert "shuffle" not in validate_spec(pre_split, resolve_dataset=splits.get).to_dict()["dataset"]
    refused = errors_of(with_("dataset", {"id": "d1", "stratify": True}), resolve_dataset=splits.get)
    assert "already split" in refused["dataset.stratify"]


def test_resplit_is_a_flag_that_cannot_be_combined_with_tuning_the_training_data():
    assert validate_spec(BASE).dataset.resplit is False
    assert validate_spec(with_("dataset.resplit", True)).dataset.resplit is True
    learned_data = with_(
        "hyperparameters.training_data",
        {"init": "data", "granularity": "weight", "learn": True},
        with_("dataset.resplit", True),
    )
    assert "training_data" in errors_of(learned_data)["dataset.resplit"]


def test_an_uploaded_dataset_is_resolved_by_the_caller():
    spec = with_("dataset", {"id": "d1", "train": 50, "valid": 20})
    shapes = {"d1": DatasetShape(n_features=4, n_classes=3, n_rows=60)}
    errors = errors_of(spec, resolve_dataset=shapes.get)
    assert "only 60" in errors["dataset.train"]
    assert (
        "no dataset with id 'nope'"
        in errors_of(with_("dataset", {"id": "nope"}), resolve_dataset=shapes.get)["dataset.id"]
    )
    split = {"d1": DatasetShape(n_features=4, n_classes=3, layout="splits", n_train=40, n_valid=10)}
    assert "already split" in errors_of(spec, resolve_dataset=split.get)["dataset.train"]
    ok = with_("dataset", {"id": "d1", "batch_size": 20})
    assert validate_spec(ok, resolve_dataset=split.get).dataset.id == "d1"


def test_multitask_specs_are_checked_at_submit_naming_the_field():
    """The paper's sharing experiment: a multitask_mlp on the multi-task built-in, coupled by
    `sharing`; each misuse is refused on its own field before a worker ever sees the job."""
    from jobs.templates import get

    template = get("sharing-mnist5k-tasks")
    spec = validate_spec(template)
    shape = BUILTIN_DATASETS["mnist5k_tasks"]
    # 3 layers x 10 x 10 sharing entries, plus the four fixed globals
    assert count_hyperparameters(spec, shape) == 300 + 4
    global_sharing = copy.deepcopy(template)
    global_sharing["hyperparameters"]["sharing"]["granularity"] = "global"
    assert count_hyperparameters(validate_spec(global_sharing), shape) == 100 + 4

    def variant(path: str, value):
        return with_(path, value, template)

    assert "must be a multiple of 100, got 1050" in errors_of(variant("dataset.train", 1050))["dataset.train"]
    assert "full-batch" in errors_of(variant("dataset.batch_size", 100))["dataset.batch_size"]
    on_mnist = variant("dataset", {"name": "mnist5k", "train": 1000, "valid": 200})
    assert "needs a multi-task dataset" in errors_of(on_mnist)["model.kind"]
    one_net = variant("model", {"kind": "mlp", "hidden": [400, 200]})
    assert "this model has one net" in errors_of(one_net)["hyperparameters.sharing"]
    assert "[0, 1]" in errors_of(variant("hyperparameters.sharing.init", 1.5))["hyperparameters.sharing.init"]
    weight = errors_of(variant("hyperparameters.sharing.granularity", "weight"))
    assert "allowed: global, layer" in weight["hyperparameters.sharing.granularity"]
    no_hidden = errors_of(variant("model", {"kind": "multitask_mlp"}))
    assert "multitask_mlp needs at least one hidden layer" in no_hidden["model.hidden"]
    # the weight limit counts every task's net: 10 x 396,210
    small = errors_of(template, limits=SpecLimits(max_weights=3_000_000))
    assert "the model has 3962100 weights" in small["model"]
