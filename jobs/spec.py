"""The job spec: what a user submits, as one pydantic model, and the limits it must respect.

The fields are DESIGN.md's "Job spec" (the same dict `hypercore.spec.problem_from_spec` reads)::

    name: lr-schedule-digits
    dataset: {name: digits, train: 1000, valid: 400, test: 397, batch_size: 100}   # or {id: <uploaded>}
             # optional: center, stratify, resplit (a new train/valid split every meta-iteration)
    model: {kind: mlp, hidden: [50, 50], activation: tanh}        # or logreg, toy2d, multitask_mlp
    training: {steps: 100}
    hyperparameters:            # each: init, granularity, learn (a kind left out keeps its default)
      learning_rate: {init: 0.5, granularity: layer_step, learn: true}
      momentum:      {init: 0.9, granularity: layer_step, learn: true}
      init_scale:    {init: 0.1, granularity: layer, learn: true}
      l2:            {init: 0.0, granularity: layer, learn: false}
    objective: valid_loss       # or train_loss
    meta: {iterations: 50, optimizer: adam, learning_rate: 0.04}   # optional: momentum, clip, guard
    seed: 0

``model: {kind: toy2d}`` is the paper's two-weight figure-1 problem: it has no data, so ``dataset``
is left out (every other kind needs it), and it starts from a fixed point, so ``init_scale`` and
``training_data`` are refused. ``model: {kind: multitask_mlp, hidden: [...]}`` is one net per task
of the multi-task dataset ``mnist5k_tasks`` (full-batch), coupled by the ``sharing`` hyperparameter.

Validation happens in two layers, both through `validate_spec`, which raises one `SpecError`
holding every problem as ``{"loc": [...], "msg": ...}`` (the shape of FastAPI's 422 body):

1. the schema: types (strict: ``"100"`` is not a number), unknown fields, finite numbers only
   (NaN and Inf are refused), allowed values;
2. the limits (`SpecLimits`, from `jobs.settings.Settings`): training steps, meta-iterations, model
   depth and width, dataset rows and features, the number of model weights and the number of
   hyperparameters the spec implies. The counts need the dataset's shape: a built-in's is known
   here (`BUILTIN_DATASETS`), an uploaded one's comes from the caller as `DatasetShape`.

The number of hyperparameters of one kind, for a model with ``K`` parameter arrays holding ``W``
weights in all, ``T`` training steps and ``N x F`` training inputs, is: ``global`` 1, ``layer`` K,
``step`` T, ``layer_step`` T K, ``weight`` W (``training_data``: N F; ``sharing`` over S tasks and
L layers: ``global`` S^2, ``layer`` L S^2). The paper's schedule
experiment (784-50-50-50-10, K = 8, T = 100) has 800 + 800 + 8 = 1,608.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Granularity = Literal["global", "layer", "step", "layer_step", "weight"]

# Which granularities each kind supports (as hypercore.hyper.ALLOWED_GRANULARITIES: jobs may not
# import the engine, and a spec the engine would refuse must be refused here, at submit time).
ALLOWED_GRANULARITIES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("global", "layer", "step", "layer_step"),
    "momentum": ("global", "layer", "step", "layer_step"),
    "init_scale": ("global", "layer", "weight"),
    "l2": ("global", "layer", "weight"),
    "training_data": ("weight",),
    "sharing": ("global", "layer"),
}


@dataclasses.dataclass(frozen=True)
class DatasetShape:
    """What the limits need to know of a dataset.

    ``n_rows``: examples available to split by the spec's counts (``layout="xy"``); for a pre-split
    upload (``layout="splits"``) the split sizes are fixed by the file and ``n_train`` etc. hold them.
    A multi-task dataset has ``n_tasks`` tasks, and every count must be a multiple of ``split_unit``;
    ``task_rows``: the fewest rows of any task of an X/y upload (0: not such an upload).
    """

    n_features: int
    n_classes: int
    n_rows: int = 0
    layout: Literal["xy", "splits"] = "xy"
    n_train: int = 0
    n_valid: int = 0
    n_test: int = 0
    n_tasks: int = 1
    split_unit: int = 1
    task_rows: int = 0


BUILTIN_DATASETS: dict[str, DatasetShape] = {
    "digits": DatasetShape(n_features=64, n_classes=10, n_rows=1797),
    "mnist5k": DatasetShape(n_features=784, n_classes=10, n_rows=5000),
    # as hypercore.data's: every image upright and rotated, 10 tasks x 10 classes split alike
    "mnist5k_tasks": DatasetShape(n_features=784, n_classes=10, n_rows=10000, n_tasks=10, split_unit=100),
}
_BUILTIN_NAMES = ", ".join(BUILTIN_DATASETS)


@dataclasses.dataclass(frozen=True)
class SpecLimits:
    """The largest job a server accepts. Each is a ``REVTUNE_MAX_*`` setting."""

    max_steps: int = 1000
    max_meta_iterations: int = 500
    max_layers: int = 8
    max_hidden_width: int = 2048
    max_weights: int = 4_000_000  # the paper's multi-task nets (sharing-mnist5k-tasks) hold 3,962,100
    max_hyperparameters: int = 1_000_000
    max_dataset_rows: int = 100_000
    max_features: int = 4096
    max_classes: int = 1000


class SpecError(ValueError):
    """A spec is invalid. ``errors``: ``[{"loc": ["training", "steps"], "msg": "..."}]``."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors))


class _Strict(BaseModel):
    # strict: a number written as a string is a client bug to report, not to guess at.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class DatasetSection(_Strict):
    name: Literal["digits", "mnist5k", "mnist5k_tasks"] | None = Field(None, description="a built-in dataset")
    id: str | None = Field(None, min_length=1, max_length=64, description="an uploaded dataset's id")
    train: int | None = Field(None, ge=1)
    valid: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1, description="minibatch size; full batch when absent")
    center: bool = Field(True, description="subtract the training split's mean example from every split")
    stratify: bool = Field(
        False, description="built-in datasets: interleave the classes so every split is class-balanced"
    )
    resplit: bool = Field(
        False,
        description="draw a new train/valid split of the training and validation examples every "
        "meta-iteration (each class, and task, keeps its counts; the test split stays fixed), so many "
        "hyperparameters cannot fit one validation set",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSection:
        if (self.name is None) == (self.id is None):
            raise ValueError(f"give exactly one of `name` (built-in: {_BUILTIN_NAMES}) or `id` (an upload)")
        if self.name is not None and (self.train is None or self.valid is None):
            raise ValueError("a built-in dataset needs `train` and `valid` counts")
        if self.id is not None and self.stratify:
            raise ValueError("`stratify` applies to built-in datasets; an upload is split in the order given")
        return self


class ModelSection(_Strict):
    kind: Literal["mlp", "logreg", "toy2d", "multitask_mlp"] = Field(
        description="mlp, logreg, toy2d (the paper's two-weight figure-1 problem, no dataset), or "
        "multitask_mlp (one mlp per task of a multi-task dataset, coupled by `sharing`)"
    )
    hidden: list[int] = Field(default_factory=list, description="hidden layer widths (mlp, multitask_mlp)")
    activation: Literal["tanh", "relu"] = "tanh"

    @model_validator(mode="after")
    def _layers(self) -> ModelSection:
        if self.kind == "toy2d" and self.hidden:
            raise ValueError("the toy2d model has no layers: leave `hidden` out")
        if self.kind in ("mlp", "multitask_mlp") and not self.hidden:
            raise ValueError(f"{self.kind} needs at least one hidden layer width in `hidden`")
        if self.kind == "logreg" and self.hidden:
            raise ValueError("logistic regression has no hidden layers: leave `hidden` out")
        if any(h < 1 for h in self.hidden):
            raise ValueError("every hidden width must be >= 1")
        return self


class TrainingSection(_Strict):
    steps: int = Field(ge=1)


class HyperSetting(_Strict):
    """One kind: its initial natural value, how finely it varies, and whether it is learned."""

    init: float | str = Field(
        description="a finite number, or 'data' for training_data",
        json_schema_extra={"anyOf": [{"type": "number"}, {"const": "data"}]},
    )
    granularity: Granularity = "global"
    learn: bool = False

    @field_validator("init", mode="plain")
    @classmethod
    def _number_or_data(cls, value: Any) -> float | str:
        # A plain validator, so an error is reported on `init` itself, not on a union member.
        if value == "data":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"must be a finite number (or 'data' for training_data), got {value!r}")
        return float(value)


class HyperparametersSection(_Strict):
    learning_rate: HyperSetting | None = None
    momentum: HyperSetting | None = None
    init_scale: HyperSetting | None = None
    l2: HyperSetting | None = None
    training_data: HyperSetting | None = None
    sharing: HyperSetting | None = None

    def given(self) -> dict[str, HyperSetting]:
        return {k: v for k in ALLOWED_GRANULARITIES if (v := getattr(self, k)) is not None}


# What hypercore uses for a kind the spec leaves out (hypercore.hyper.DEFAULTS): all global.
_DEFAULT_KINDS = ("learning_rate", "momentum", "init_scale", "l2")


class MetaSection(_Strict):
    iterations: int = Field(50, ge=1)
    optimizer: Literal["adam", "adam_paper", "sgd"] = Field(
        "adam", description="adam (optax), adam_paper (the paper's Adam settings), or sgd with momentum"
    )
    learning_rate: float = Field(0.04, gt=0)
    momentum: float | None = Field(None, ge=0, lt=1, description="sgd's momentum (default 0.9)")
    clip: float | None = Field(None, gt=0, description="clip the hypergradient's global norm")
    guard: bool | None = Field(None, description="the chaos guard (default on)")


class JobSpec(_Strict):
    """A tuning job. See the module docstring for the fields; `validate_spec` adds the limits."""

    name: str = Field("job", min_length=1, max_length=100, pattern=r"^[\w][\w .:+-]*$")
    dataset: DatasetSection | None = Field(None, description="required, except with model kind toy2d")
    model: ModelSection
    training: TrainingSection
    hyperparameters: HyperparametersSection = Field(default_factory=HyperparametersSection)
    objective: Literal["valid_loss", "train_loss"] = "valid_loss"
    meta: MetaSection = Field(default_factory=MetaSection)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with the job and read by the worker (absent optionals left out)."""
        return self.model_dump(mode="json", exclude_none=True)


def parameter_shapes(
    model: ModelSection, n_features: int, n_classes: int, n_tasks: int = 1
) -> dict[str, tuple[int, ...]]:
    """The model's parameter arrays as hypercore names them: ``layer{i}.W`` (in, out), ``layer{i}.b``
    (a multitask_mlp's with a leading axis of ``n_tasks``); the toy2d model has one, ``w`` (2,)."""
    if model.kind == "toy2d":
        return {"w": (2,)}
    widths = [n_features, *model.hidden, n_classes]
    tasks = (n_tasks,) if model.kind == "multitask_mlp" else ()
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        shapes[f"layer{i}.W"] = (*tasks, n_in, n_out)
        shapes[f"layer{i}.b"] = (*tasks, n_out)
    return shapes


def count_hyperparameters(spec: JobSpec, shape: DatasetShape) -> int:
    """How many hyperparameter values the spec implies (learned or fixed); see the module docstring."""
    shapes = parameter_shapes(spec.model, shape.n_features, shape.n_classes, shape.n_tasks)
    n_arrays, n_weights, steps = len(shapes), sum(math.prod(s) for s in shapes.values()), spec.training.steps
    n_train = _n_train(spec, shape)
    per_granularity = {
        "global": 1,
        "layer": n_arrays,
        "step": steps,
        "layer_step": steps * n_arrays,
        "weight": n_weights,
    }
    given = spec.hyperparameters.given()
    total = sum(1 for kind in _DEFAULT_KINDS if kind not in given)
    for kind, setting in given.items():
        if kind == "training_data":
            total += n_train * shape.n_features
        elif kind == "sharing":
            total += shape.n_tasks**2 * (n_arrays // 2 if setting.granularity == "layer" else 1)
        else:
            total += per_granularity[setting.granularity]
    return total


def _n_train(spec: JobSpec, shape: DatasetShape) -> int:
    if shape.layout == "splits":
        return shape.n_train
    return (spec.dataset.train if spec.dataset is not None else None) or 0


def _problems(spec: JobSpec, limits: SpecLimits, shape: DatasetShape | None) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []

    def refuse(loc: tuple, msg: str) -> None:
        errors.append({"loc": list(loc), "msg": msg})

    if spec.training.steps > limits.max_steps:
        refuse(("training", "steps"), f"at most {limits.max_steps} steps, got {spec.training.steps}")
    if spec.meta.iterations > limits.max_meta_iterations:
        refuse(
            ("meta", "iterations"),
            f"at most {limits.max_meta_iterations} meta-iterations, got {spec.meta.iterations}",
        )
    if len(spec.model.hidden) > limits.max_layers:
        refuse(
            ("model", "hidden"), f"at most {limits.max_layers} hidden layers, got {len(spec.model.hidden)}"
        )
    for i, width in enumerate(spec.model.hidden):
        if width > limits.max_hidden_width:
            refuse(
                ("model", "hidden", i),
                f"a hidden layer has at most {limits.max_hidden_width} units, got {width}",
            )
    for kind, setting in spec.hyperparameters.given().items():
        refuse_setting = _setting_problem(kind, setting)
        if refuse_setting:
            refuse(("hyperparameters", kind, refuse_setting[0]), refuse_setting[1])
    learned = [k for k, s in spec.hyperparameters.given().items() if s.learn]
    if not learned:
        refuse(("hyperparameters",), "no hyperparameter has learn: true, so there is nothing to tune")
    if spec.meta.momentum is not None and spec.meta.optimizer != "sgd":
        refuse(("meta", "momentum"), "only the sgd meta-optimiser has a momentum")
    ds = spec.dataset
    if spec.model.kind == "toy2d":
        if ds is not None:
            refuse(("dataset",), "the toy2d model has no data: leave `dataset` out")
        for kind in ("init_scale", "training_data"):
            if getattr(spec.hyperparameters, kind) is not None:
                refuse(("hyperparameters", kind), "the toy2d model starts from a fixed point and has no data")
        shape = _TOY2D_SHAPE
    elif ds is None:
        refuse(("dataset",), f"is required: a built-in `name` ({_BUILTIN_NAMES}) or an uploaded `id`")
        return errors
    else:
        for field in ("train", "valid", "test", "batch_size"):
            value = getattr(ds, field)
            if value is not None and value > limits.max_dataset_rows:
                refuse(("dataset", field), f"at most {limits.max_dataset_rows} rows, got {value}")
        if shape is None:
            return errors
        errors += _dataset_problems(spec, limits, shape)
        errors += _multitask_problems(spec, shape)
    if errors:  # the counts below would only repeat these problems
        return errors
    shapes = parameter_shapes(spec.model, shape.n_features, shape.n_classes, shape.n_tasks)
    n_weights = sum(math.prod(s) for s in shapes.values())
    if n_weights > limits.max_weights:
        refuse(("model",), f"the model has {n_weights} weights; at most {limits.max_weights} are allowed")
    n_hyper = count_hyperparameters(spec, shape)
    if n_hyper > limits.max_hyperparameters:
        refuse(
            ("hyperparameters",),
            f"the spec implies {n_hyper} hyperparameters; at most {limits.max_hyperparameters} are allowed",
        )
    return errors


# What the counts need of the toy2d model's one observation (hypercore.models.toy2d_data).
_TOY2D_SHAPE = DatasetShape(n_features=1, n_classes=2)


def _setting_problem(kind: str, s: HyperSetting) -> tuple[str, str] | None:
    allowed = ALLOWED_GRANULARITIES[kind]
    if s.granularity not in allowed:
        return (
            "granularity",
            f"{kind} cannot have granularity {s.granularity!r}; allowed: {', '.join(allowed)}",
        )
    if s.init == "data":
        if kind != "training_data":
            return "init", "'data' is an init for training_data only; give a number"
        return None
    init = float(s.init)
    if kind == "momentum" and not 0.0 < init < 1.0:
        return "init", f"a momentum lies in (0, 1) exclusive, got {init}"
    if kind in ("learning_rate", "init_scale", "training_data") and init <= 0:
        return "init", f"must be > 0, got {init}"
    if kind == "l2" and init < 0:
        return "init", f"an L2 penalty must be >= 0, got {init}"
    if kind == "l2" and init == 0 and s.learn:
        return "learn", "an l2 with init 0 is off and cannot be learned: give a positive init"
    if kind == "sharing" and not 0.0 <= init <= 1.0:
        return "init", f"the sharing start lies in [0, 1] (0 separate nets, 1 one net), got {init}"
    return None


def _multitask_problems(spec: JobSpec, shape: DatasetShape) -> list[dict[str, Any]]:
    """A multitask_mlp needs a multi-task dataset and full batches; sharing needs a multitask_mlp;
    a multi-task dataset's counts split every task and class alike."""
    errors: list[dict[str, Any]] = []
    multitask = spec.model.kind == "multitask_mlp"
    if multitask and shape.n_tasks < 2:
        errors.append(
            {
                "loc": ["model", "kind"],
                "msg": "multitask_mlp needs a multi-task dataset (mnist5k_tasks, or an upload with task ids)",
            }
        )
    if spec.hyperparameters.sharing is not None and not multitask:
        errors.append(
            {
                "loc": ["hyperparameters", "sharing"],
                "msg": "couples the per-task nets of a multitask_mlp; this model has one net",
            }
        )
    ds = spec.dataset
    if multitask and ds.batch_size is not None:
        errors.append(
            {
                "loc": ["dataset", "batch_size"],
                "msg": "a multitask_mlp trains full-batch (its rows are laid out task by task): leave it out",
            }
        )
    if shape.split_unit > 1:
        for field in ("train", "valid", "test"):
            value = getattr(ds, field)
            if value is not None and value % shape.split_unit:
                errors.append(
                    {
                        "loc": ["dataset", field],
                        "msg": (
                            f"{ds.name} splits every one of its {shape.n_tasks} tasks and "
                            f"{shape.n_classes} classes alike"
                            if ds.name is not None
                            else f"this upload splits its {shape.n_tasks} tasks alike"
                        )
                        + f": must be a multiple of {shape.split_unit}, got {value}",
                    }
                )
    return errors


def _dataset_problems(spec: JobSpec, limits: SpecLimits, shape: DatasetShape) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    ds = spec.dataset

    def refuse(field: str, msg: str) -> None:
        errors.append({"loc": ["dataset", field], "msg": msg})

    source = "id" if ds.id is not None else "name"
    if shape.n_features > limits.max_features:
        refuse(
            source, f"the dataset has {shape.n_features} features; at most {limits.max_features} are allowed"
        )
    if shape.n_classes > limits.max_classes:
        refuse(source, f"the dataset has {shape.n_classes} classes; at most {limits.max_classes} are allowed")
    if shape.layout == "splits":
        for field in ("train", "valid", "test"):
            if getattr(ds, field) is not None:
                refuse(
                    field,
                    "this uploaded dataset is already split into train/valid/test: leave the counts out",
                )
        n_train = shape.n_train
    else:
        if ds.train is None or ds.valid is None:
            refuse("train", "an uploaded X/y dataset is split by the spec: give `train` and `valid` counts")
            return errors
        wanted = ds.train + ds.valid + (ds.test or 0)
        if wanted > shape.n_rows:
            refuse(
                "train",
                f"train + valid + test = {wanted} examples, but the dataset has only {shape.n_rows}",
            )
        elif shape.task_rows and wanted > shape.task_rows * shape.n_tasks:
            refuse(
                "train",
                f"train + valid + test = {wanted} examples take {wanted / shape.n_tasks:g} of each of the "
                f"{shape.n_tasks} tasks, but the smallest task has only {shape.task_rows}",
            )
        n_train = ds.train
    if ds.batch_size is not None and ds.batch_size > n_train:
        refuse("batch_size", f"must be at most the {n_train} training examples, got {ds.batch_size}")
    if ds.resplit and spec.hyperparameters.training_data is not None:
        refuse(
            "resplit",
            "re-draws the training examples every meta-iteration, which hyperparameters.training_data "
            "tunes: use one or the other",
        )
    return errors


def validate_spec(
    data: Any,
    limits: SpecLimits | None = None,
    resolve_dataset: Callable[[str], DatasetShape | None] | None = None,
) -> JobSpec:
    """Parse and check a spec; raise `SpecError` listing every problem, each naming its field.

    ``resolve_dataset(id)`` gives an uploaded dataset's shape, or None when the caller may not use
    it (unknown, or another tenant's): that is reported on ``dataset.id``. Without a resolver a
    spec naming an upload is checked against everything but the dataset.
    """
    limits = limits or SpecLimits()
    if not isinstance(data, Mapping):
        raise SpecError([{"loc": [], "msg": f"a job spec is a JSON object, got {type(data).__name__}"}])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError([{"loc": list(err["loc"]), "msg": err["msg"]} for err in e.errors()]) from None
    shape: DatasetShape | None
    if spec.dataset is None:
        shape = None  # the toy2d model's is known; any other kind is refused for the missing dataset
    elif spec.dataset.name is not None:
        shape = BUILTIN_DATASETS[spec.dataset.name]
    elif resolve_dataset is not None:
        shape = resolve_dataset(spec.dataset.id or "")
        if shape is None:
            raise SpecError([{"loc": ["dataset", "id"], "msg": f"no dataset with id {spec.dataset.id!r}"}])
    else:
        shape = None
    errors = _problems(spec, limits, shape)
    if errors:
        raise SpecError(errors)
    return spec
