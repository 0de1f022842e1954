"""The semantic rules of a job spec, once: every problem as ``(loc, msg)``, and the counts.

JAX-free. The server (`jobs.spec.validate_spec`, after its pydantic schema and before its size
limits), the CLI's local ``revtune run`` (the same function) and the engine
(`hypercore.spec.problem_from_spec`, after its own type checks) all call `problems`, so a spec is
refused by each on the same field with the same words.

The rules read the spec as the JSON dict of DESIGN.md's "Job spec" (`jobs.spec.JobSpec.to_dict`,
or what a user passes to the engine): types are the caller's to check first; a key that is
absent or None takes its default. Rules that need the dataset's shape take a `DatasetShape`
(`hypercore.families.BUILTIN_DATASETS` for a built-in, the upload's for an ``id``, or None when it
is not known yet, which skips them).

The number of hyperparameters of one kind, for a model with ``K`` parameter arrays holding ``W``
weights in all, ``T`` training steps and ``N x F`` training inputs, is: ``global`` 1, ``layer`` K,
``step`` T, ``layer_step`` T K, ``weight`` W (``training_data``: N F; ``sharing`` over S tasks and
L layers: ``global`` S^2, ``layer`` L S^2). The paper's schedule experiment (784-50-50-50-10,
K = 8, T = 100) has 800 + 800 + 8 = 1,608.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypercore import families, vocab
from hypercore.families import FAMILIES, TOY2D_SHAPE, DatasetShape

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

_BUILTIN_NAMES = ", ".join(families.BUILTIN_DATASETS)


def _section(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = spec.get(name)
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, Mapping) else {}


def given_hyperparameters(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The kinds the spec sets, in the table's order, each as ``{init, granularity, learn}`` (and
    ``min`` where the spec gives one)."""
    section = _section(spec, "hyperparameters")
    out = {}
    for kind in vocab.KINDS:
        setting = section.get(kind)
        if isinstance(setting, Mapping):
            setting = {k: v for k, v in setting.items() if v is not None}
            out[kind] = {"granularity": "global", "learn": False, **setting}
    return out


def dataset_shape(spec: Mapping[str, Any], uploaded: DatasetShape | None = None) -> DatasetShape | None:
    """The shape the rules check the spec against: the toy2d model's observation, a built-in's, or
    ``uploaded`` (the shape of the spec's ``dataset.id``, when the caller knows it)."""
    model = _section(spec, "model")
    family = FAMILIES.get(model.get("kind"))
    if family is not None and not family.needs_data:
        return TOY2D_SHAPE
    name = _section(spec, "dataset").get("name")
    if name is not None:
        return families.BUILTIN_DATASETS.get(name)
    return uploaded


def problems(spec: Mapping[str, Any], shape: DatasetShape | None) -> list[Problem]:
    """Every semantic problem of ``spec`` against a dataset of ``shape`` (see `dataset_shape`)."""
    out: list[Problem] = []
    model = _section(spec, "model")
    family = families.family(model["kind"])
    out += _model_problems(model, family)
    given = given_hyperparameters(spec)
    for kind, setting in given.items():
        for where, message in vocab.check_setting(
            kind, setting.get("init"), setting["granularity"], setting["learn"], setting.get("min")
        ):
            out.append((("hyperparameters", kind, where), message))
    out += _optimizer_problems(spec, given, out)
    if not any(s["learn"] for s in given.values()):
        out.append((("hyperparameters",), "no hyperparameter has learn: true, so there is nothing to tune"))
    if "sharing" in given and not family.multitask:
        out.append(
            (
                ("hyperparameters", "sharing"),
                "couples the per-task nets of a multitask_mlp; this model has one net",
            )
        )
    meta = _section(spec, "meta")
    if meta.get("momentum") is not None and meta.get("optimizer", "adam") != "sgd":
        out.append((("meta", "momentum"), "only the sgd meta-optimiser has a momentum"))
    ds = _section(spec, "dataset") if spec.get("dataset") is not None else None
    if not family.needs_data:
        if ds is not None:
            out.append((("dataset",), f"the {model['kind']} model has no data: leave `dataset` out"))
        for kind in ("init_scale", "training_data", "example_weight"):
            if kind in given:
                out.append(
                    (
                        ("hyperparameters", kind),
                        f"the {model['kind']} model starts from a fixed point and has no data",
                    )
                )
        return out
    if ds is None:
        out.append((("dataset",), f"is required: a built-in `name` ({_BUILTIN_NAMES}) or an uploaded `id`"))
        return out
    source = _source_problem(ds)
    if source:
        out.append(source)
        return out
    if shape is not None:
        out += _dataset_problems(spec, ds, shape)
        out += _target_problems(spec, ds, shape)
        out += _multitask_problems(spec, ds, family, shape)
        out += _example_weight_problems(spec, ds, family, shape)
        out += _conv_shape_problems(model, family, shape)
        if not out and model["kind"] != families.PLUGIN_KIND:
            out += _init_shape_problems(spec, shape)
    return out


def _init_shape_problems(spec: Mapping[str, Any], shape: DatasetShape) -> list[Problem]:
    """Array inits (warm starts) whose shape is not the job's layout (`hypercore.vocab.init_shape`).
    A plugin model's arrays are known once a worker builds it; the engine checks those."""
    shapes = model_shapes(spec, shape)
    out: list[Problem] = []
    for kind, setting in given_hyperparameters(spec).items():
        if not vocab.is_array_init(setting.get("init")):
            continue
        want = vocab.init_shape(
            kind,
            setting["granularity"],
            steps=_section(spec, "training")["steps"],
            shapes=shapes,
            train_shape=(n_train_rows(spec, shape), shape.n_features),
            n_tasks=shape.n_tasks,
            sharing_layers=tuple(families.sharing_layers(shapes)),
            n_classes=shape.n_classes,
        )
        problem = vocab.init_shape_problem(setting["init"], want)
        if problem:
            field, message = problem
            out.append((("hyperparameters", kind, *field.split(".", 1)), message))
    return out


def _optimizer_problems(
    spec: Mapping[str, Any], given: Mapping[str, Mapping[str, Any]], found: list[Problem]
) -> list[Problem]:
    """The kinds that belong to another training optimizer, and an AdamW start whose weight-decay
    factor the engine cannot run (once the two inits themselves are valid: ``found`` so far)."""
    optimizer = vocab.training_optimizer(spec)
    if optimizer not in vocab.TRAINING_OPTIMIZERS:
        known = ", ".join(vocab.TRAINING_OPTIMIZERS)
        return [(("training", "optimizer"), f"unknown training optimizer {optimizer!r}; known: {known}")]
    out: list[Problem] = []
    for kind in given:
        message = vocab.optimizer_problem(kind, optimizer)
        if message:
            out.append((("hyperparameters", kind), message))
    if optimizer != "adamw" or any(loc[:2] in _DECAY_KINDS for loc, _ in found):
        return out
    defaults = vocab.default_kinds(optimizer)
    inits = {k: given.get(k, {}).get("init", defaults[k]) for k in ("learning_rate", "weight_decay")}
    message = vocab.decay_problem(inits["learning_rate"], inits["weight_decay"])
    if message:
        field = "weight_decay" if "weight_decay" in given else "learning_rate"
        out.append((("hyperparameters", field, "init"), message))
    return out


_DECAY_KINDS = {("hyperparameters", "learning_rate"), ("hyperparameters", "weight_decay")}


def _model_problems(model: Mapping[str, Any], family: families.Family) -> list[Problem]:
    kind, hidden = model["kind"], model.get("hidden") or []
    if kind == families.PLUGIN_KIND:
        return _plugin_problems(model)
    if model.get("name") is not None or model.get("config") is not None:
        field = "name" if model.get("name") is not None else "config"
        return [(("model", field), f"only a plugin model (kind: plugin) has a `{field}`: leave it out")]
    conv = _conv_problems(model, family)
    if conv:
        return conv
    if family.hidden == "refused" and hidden:
        what = (
            "logistic regression has no hidden layers"
            if kind == "logreg"
            else f"the {kind} model has no layers"
        )
        return [(("model",), f"{what}: leave `model.hidden` out")]
    if family.hidden == "required" and not hidden:
        return [(("model", "hidden"), f"{kind} needs at least one hidden layer width in `hidden`")]
    return [
        (("model", "hidden", i), f"every hidden width must be >= 1, got {h}")
        for i, h in enumerate(hidden)
        if h < 1
    ]


_BUILTIN_FIELDS = ("hidden", "activation", "channels", "kernel", "pool")


def _plugin_problems(model: Mapping[str, Any]) -> list[Problem]:
    """A plugin model is its ``name`` and its ``config`` (checked against the plugin's own schema by
    whoever knows it: the server from the workers' advertisements, the worker from the plugin); the
    built-in families' fields are not its."""
    out: list[Problem] = [
        (("model", f), f"a plugin model takes its settings in `model.config`: leave `{f}` out")
        for f in _BUILTIN_FIELDS
        if model.get(f) not in (None, [])
    ]
    if not model.get("name"):
        out.append(
            (("model", "name"), "a plugin model needs the `name` of an installed plugin (GET /v1/models)")
        )
    return out


def _conv_problems(model: Mapping[str, Any], family: families.Family) -> list[Problem]:
    """A convolutional family needs its ``channels``; the others take none of its fields."""
    kind = model["kind"]
    fields = [f for f in ("channels", "kernel", "pool") if model.get(f) is not None]
    if not family.conv:
        conv_kinds = " and ".join(k for k, f in FAMILIES.items() if f.conv)
        return [
            (("model", f), f"only {conv_kinds} have convolutions; a {kind} has no `{f}`: leave it out")
            for f in fields
        ]
    channels = model.get("channels") or []
    if not channels:
        return [
            (
                ("model", "channels"),
                f"a {kind} needs the output channels of each convolution, e.g. [8, 16]",
            )
        ]
    out: list[Problem] = [
        (("model", "channels", i), f"every channel count must be >= 1, got {c}")
        for i, c in enumerate(channels)
        if c < 1
    ]
    out += [
        (("model", f), f"must be >= 1, got {model[f]}")
        for f in ("kernel", "pool")
        if f in fields and model[f] < 1
    ]
    return out


def _conv_shape_problems(
    model: Mapping[str, Any], family: families.Family, shape: DatasetShape
) -> list[Problem]:
    """A convolutional family reads the dataset's examples as images or sequences, and its poolings
    must leave at least one pixel (position)."""
    if not family.conv or _conv_problems(model, family):
        return []
    kind = model["kind"]
    input_shape = families.conv_input_shape(kind, shape.example)
    if input_shape is None:
        others = {"cnn": "cnn1d for sequences, or mlp", "cnn1d": "cnn for images, or mlp"}[kind]
        return [
            (
                ("model", "kind"),
                f"a {kind} reads {families.CONV_EXAMPLES[kind]}, but this dataset's examples have shape "
                f"{tuple(shape.example)}: upload X as (n, H, W[, C]) images or (n, L, C) sequences, or "
                f"use {others}",
            )
        ]
    channels, _, pool = families.conv_settings(model)
    last = families.pooled(input_shape[:-1], len(channels), pool)[-1]
    if min(last) >= 1:
        return []
    what = "pixel" if family.conv == 2 else "position"
    return [
        (
            ("model", "pool"),
            f"pooling by {pool} after each of the {len(channels)} convolutions leaves no {what} of the "
            f"{input_shape[:-1]} examples (each pool divides the size, rounding down; they need at least "
            f"{pool ** len(channels)}): a smaller pool, or fewer convolutions",
        )
    ]


def _source_problem(ds: Mapping[str, Any]) -> Problem | None:
    if ("name" in ds) == ("id" in ds):
        return ("dataset",), f"give exactly one of `name` (built-in: {_BUILTIN_NAMES}) or `id` (an upload)"
    for field in ("train", "valid"):
        if "name" in ds and field not in ds:
            return ("dataset", field), "a built-in dataset needs `train` and `valid` counts"
    if "name" in ds and ds.get("shuffle") is not None:
        return (
            "dataset",
            "shuffle",
        ), "a built-in dataset is always shuffled by the spec's seed: leave it out"
    return None


def _dataset_problems(spec: Mapping[str, Any], ds: Mapping[str, Any], shape: DatasetShape) -> list[Problem]:
    out: list[Problem] = []

    def refuse(field: str, msg: str) -> None:
        out.append((("dataset", field), msg))

    if shape.layout == "splits":
        if ds.get("stratify", False):
            refuse("stratify", "this uploaded dataset is already split into train/valid/test: leave it out")
        for field in ("train", "valid", "test"):
            if ds.get(field) is not None:
                refuse(
                    field,
                    "this uploaded dataset is already split into train/valid/test: leave the counts out",
                )
    elif shape.layout == "xy":
        if ds.get("train") is None or ds.get("valid") is None:
            refuse("train", "an uploaded X/y dataset is split by the spec: give `train` and `valid` counts")
            return out
        wanted = ds["train"] + ds["valid"] + ds.get("test", 0)
        if wanted > shape.n_rows:
            refuse(
                "train", f"train + valid + test = {wanted} examples, but the dataset has only {shape.n_rows}"
            )
        elif shape.task_rows and wanted > shape.task_rows * shape.n_tasks:
            refuse(
                "train",
                f"train + valid + test = {wanted} examples take {wanted / shape.n_tasks:g} of each of the "
                f"{shape.n_tasks} tasks, but the smallest task has only {shape.task_rows}",
            )
    n_train = n_train_rows(spec, shape)
    batch_size = ds.get("batch_size")
    if batch_size is not None and batch_size > n_train:
        refuse("batch_size", f"must be at most the {n_train} training examples, got {batch_size}")
    if ds.get("resplit", False) and "training_data" in given_hyperparameters(spec):
        refuse(
            "resplit",
            "re-draws the training examples every meta-iteration, which hyperparameters.training_data "
            "tunes: use one or the other",
        )
    out += _label_noise_problems(ds, shape)
    return out


_NOISE = "flips the class labels of a fraction of the training examples"


def _label_noise_problems(ds: Mapping[str, Any], shape: DatasetShape) -> list[Problem]:
    """Where the noisy examples would not stay put: a re-split moves examples between training and
    validation every meta-iteration (a flipped label would turn up among the labels the objective
    trusts), and a multi-task dataset's tasks label their examples each in their own way. A real
    target is `_target_problems`'."""
    if ds.get("label_noise") is None:
        return []
    field = ("dataset", "label_noise")
    out: list[Problem] = []
    if ds.get("resplit", False):
        out.append(
            (
                field,
                f"{_NOISE}, which dataset.resplit moves into the validation split every meta-iteration: "
                "use one or the other",
            )
        )
    if shape.n_tasks > 1:
        out.append((field, f"{_NOISE} of a single-task dataset; this one has {shape.n_tasks} tasks"))
    return out


def _target_problems(spec: Mapping[str, Any], ds: Mapping[str, Any], shape: DatasetShape) -> list[Problem]:
    """What needs class labels, on a dataset whose target is real (a float ``y``, a regression):
    stratifying by class, label noise and learned training data (its examples are labelled by
    class). A multi-task family is refused by `_multitask_problems` (a real target has one task)."""
    if shape.target != "real":
        return []
    regression = "this dataset's target is real (a float y: a regression, with no classes)"
    out: list[Problem] = []
    if ds.get("stratify", False) and shape.layout != "splits":
        out.append((("dataset", "stratify"), f"interleaves the classes, but {regression}: leave it out"))
    if ds.get("label_noise") is not None:
        out.append((("dataset", "label_noise"), f"{_NOISE}, but {regression}: leave it out"))
    if "training_data" in given_hyperparameters(spec):
        out.append(
            (
                ("hyperparameters", "training_data"),
                f"learns training inputs labelled by class, but {regression}: leave it out",
            )
        )
    return out


def _example_weight_problems(
    spec: Mapping[str, Any], ds: Mapping[str, Any], family: families.Family, shape: DatasetShape
) -> list[Problem]:
    """Where a weight per training example (or class) cannot follow its examples: a re-split moves
    them between splits every meta-iteration, a multi-task model trains its tasks' rows full-batch
    as blocks, and a real target has no classes to weigh."""
    setting = given_hyperparameters(spec).get("example_weight")
    if setting is None:
        return []
    field = ("hyperparameters", "example_weight")
    out: list[Problem] = []
    if ds.get("resplit", False):
        out.append(
            (
                ("dataset", "resplit"),
                "re-draws which examples train every meta-iteration, so a weight per training example "
                "(hyperparameters.example_weight) would not stay with its example: use one or the other",
            )
        )
    if family.multitask:
        out.append((field, "weighs the examples of a single-task model; a multitask_mlp has none to weigh"))
    if setting["granularity"] == "class" and shape.target == "real":
        out.append(
            (
                (*field, "granularity"),
                "one weight per class needs class labels, but this dataset's target is real (a "
                "regression): use granularity example",
            )
        )
    return out


def _multitask_problems(
    spec: Mapping[str, Any], ds: Mapping[str, Any], family: families.Family, shape: DatasetShape
) -> list[Problem]:
    """A multi-task family needs a multi-task dataset (and full batches, if it says so); sharing
    needs a multi-task family; a multi-task dataset's counts split every task (and class) alike."""
    out: list[Problem] = []
    kind = _section(spec, "model")["kind"]
    if family.multitask and shape.n_tasks < 2:
        out.append(
            (
                ("model", "kind"),
                f"{kind} needs a multi-task dataset (mnist5k_tasks, or an upload with task ids)",
            )
        )
    if family.full_batch and ds.get("batch_size") is not None:
        out.append(
            (
                ("dataset", "batch_size"),
                f"a {kind} trains full-batch (its rows are laid out task by task): leave it out",
            )
        )
    if shape.split_unit > 1 and shape.layout != "loaded":
        for field in ("train", "valid", "test"):
            value = ds.get(field)
            if value is not None and value % shape.split_unit:
                alike = (
                    f"{ds['name']} splits every one of its {shape.n_tasks} tasks and "
                    f"{shape.n_classes} classes alike"
                    if ds.get("name") is not None
                    else f"this upload splits its {shape.n_tasks} tasks alike"
                )
                out.append(
                    (("dataset", field), f"{alike}: must be a multiple of {shape.split_unit}, got {value}")
                )
    return out


def n_train_rows(spec: Mapping[str, Any], shape: DatasetShape) -> int:
    """The training examples the spec trains on."""
    if shape.layout in ("splits", "loaded"):
        return shape.n_train
    return _section(spec, "dataset").get("train") or 0


def model_shapes(spec: Mapping[str, Any], shape: DatasetShape) -> families.Shapes:
    """The parameter arrays of the spec's model on a dataset of ``shape`` (a built-in family's: a
    plugin model's are known only once a worker has built it)."""
    return families.parameter_shapes(_section(spec, "model"), shape)


def count_hyperparameters(
    spec: Mapping[str, Any], shape: DatasetShape, shapes: families.Shapes | None = None
) -> int:
    """How many hyperparameter values the spec implies (learned or fixed); see the module docstring.
    ``shapes``: the model's parameter arrays when the spec cannot say them (a plugin model, built)."""
    return sum(hyperparameter_counts(spec, shape, shapes).values())


def hyperparameter_counts(
    spec: Mapping[str, Any], shape: DatasetShape, shapes: families.Shapes | None = None
) -> dict[str, int]:
    """The values of each kind the spec implies, the defaults of the kinds it leaves out included
    (``shapes``: as `count_hyperparameters`)."""
    shapes = model_shapes(spec, shape) if shapes is None else shapes
    n_arrays, steps = len(shapes), _section(spec, "training")["steps"]
    per_granularity = {
        "global": 1,
        "layer": n_arrays,
        "step": steps,
        "layer_step": steps * n_arrays,
        "weight": families.n_weights(shapes),
        "example": n_train_rows(spec, shape),
        "class": shape.n_classes,
    }
    given = given_hyperparameters(spec)
    defaults = vocab.default_kinds(vocab.training_optimizer(spec))
    counts = {kind: 1 for kind in defaults if kind not in given}
    for kind, setting in given.items():
        if kind == "training_data":
            counts[kind] = n_train_rows(spec, shape) * shape.n_features
        elif kind == "sharing":
            layers = len(families.sharing_layers(shapes)) if setting["granularity"] == "layer" else 1
            counts[kind] = shape.n_tasks**2 * layers
        else:
            counts[kind] = per_granularity[setting["granularity"]]
    return counts
