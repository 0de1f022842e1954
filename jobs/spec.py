"""The job spec: what a user submits, as one pydantic model, and the limits it must respect.

The fields are DESIGN.md's "Job spec" (the same dict `hypercore.spec.problem_from_spec` reads)::

    name: lr-schedule-digits
    dataset: {name: digits, train: 1000, valid: 400, test: 397, batch_size: 100}   # or {id: <uploaded>}
             # optional: center, stratify, resplit (a new train/valid split every meta-iteration)
    model: {kind: mlp, hidden: [50, 50], activation: tanh}        # or logreg, toy2d, multitask_mlp,
           # cnn, cnn1d: {kind: cnn, channels: [8, 16], kernel: 3, pool: 2, hidden: [32]}
    training: {steps: 100}      # optional: optimizer, sgd_momentum (default) | adam | adamw
    hyperparameters:            # each: init, granularity, learn (a kind left out keeps its default)
      learning_rate: {init: 0.5, granularity: layer_step, learn: true}
      momentum:      {init: 0.9, granularity: layer_step, learn: true}   # optional: min (0.1)
      # with training.optimizer adam or adamw instead of momentum: beta1, beta2 (optional: min,
      # 0.5), and with adamw weight_decay
      init_scale:    {init: 0.1, granularity: layer, learn: true}
      l2:            {init: 0.0, granularity: layer, learn: false}
    objective: valid_loss       # or train_loss
    meta: {iterations: 50, optimizer: adam, learning_rate: 0.04}   # optional: momentum, clip, guard
    seed: 0

``training.optimizer`` trains the model (the engine reverses it exactly); ``meta.optimizer`` optimises
the hyperparameters. The two are independent.

``model: {kind: plugin, name, config}`` is a model plugin the workers offer (`hypercore.plugins`):
`validate_spec` checks ``name`` and ``config`` against their advertisement (``resolve_plugin``) and
leaves its sizes, which need the built model, to the worker (`model_size_problems`).
``model: {kind: toy2d}`` is the paper's two-weight figure-1 problem: it has no data, so ``dataset``
is left out (every other kind needs it), and it starts from a fixed point, so ``init_scale`` and
``training_data`` are refused. ``model: {kind: multitask_mlp, hidden: [...]}`` is one net per task
of the multi-task dataset ``mnist5k_tasks`` (full-batch), coupled by the ``sharing`` hyperparameter.

Validation happens in three layers, all through `validate_spec`, which raises one `SpecError`
holding every problem as ``{"loc": [...], "msg": ...}`` (the shape of FastAPI's 422 body):

1. the schema: types (strict: ``"100"`` is not a number), unknown fields, finite numbers only
   (NaN and Inf are refused), allowed values (read from `hypercore.vocab` and `hypercore.families`);
2. the semantic rules, `hypercore.rules.problems`: the same function the engine and ``revtune run``
   call, so the three refuse the same specs on the same fields;
3. the limits (`SpecLimits`, from `jobs.settings.Settings`): training steps, meta-iterations, model
   depth and width, dataset rows and features, the number of model weights and the number of
   hyperparameters the spec implies (`hypercore.rules.count_hyperparameters`), and the memory the
   job needs in the worker (`hypercore.budget.peak_bytes`: the information buffer for the smallest
   momentum, or betas and weight-decay factor, the job can reach, the engine's state, activations,
   hyperparameters and their copies, the meta-iterations' records, the data), refused past
   ``max_job_memory_bytes`` on the field that drives the largest part. The counts need the dataset's
   shape: a built-in's is known (`BUILTIN_DATASETS`), an uploaded one's comes from the caller as
   `DatasetShape`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from hypercore import budget, families, plugins, rules, vocab
from hypercore.families import BUILTIN_DATASETS, CONV_DEFAULTS, FAMILIES, PLUGIN, PLUGIN_KIND, DatasetShape

__all__ = [
    "BUILTIN_DATASETS",
    "DatasetShape",
    "JobSpec",
    "SpecError",
    "SpecLimits",
    "count_hyperparameters",
    "validate_spec",
]

Granularity = Literal[vocab.GRANULARITIES]  # type: ignore[valid-type]
BuiltinName = Literal[tuple(BUILTIN_DATASETS)]  # type: ignore[valid-type]
ModelKind = Literal[(*FAMILIES, PLUGIN_KIND)]  # type: ignore[valid-type]
TrainingOptimizerName = Literal[tuple(vocab.TRAINING_OPTIMIZERS)]  # type: ignore[valid-type]

_BUILTIN_NAMES = ", ".join(BUILTIN_DATASETS)


@dataclasses.dataclass(frozen=True)
class SpecLimits:
    """The largest job a server accepts. Each is a ``REVTUNE_MAX_*`` setting."""

    max_steps: int = 1000
    max_meta_iterations: int = 500
    max_layers: int = 8
    max_hidden_width: int = 2048
    max_channels: int = 256  # a convolution's output channels (the convolutions count as layers too)
    max_kernel: int = 15
    max_weights: int = 4_000_000  # the paper's multi-task nets (sharing-mnist5k-tasks) hold 3,962,100
    max_hyperparameters: int = 1_000_000
    max_dataset_rows: int = 100_000
    max_features: int = 4096
    max_classes: int = 1000
    # A worker's memory for one job, as `hypercore.budget.peak_bytes` estimates it (its 1.5 GiB runtime
    # included): a job past it would be killed for memory, and re-queued onto the next worker.
    max_job_memory_bytes: int = 4 * 2**30


class SpecError(ValueError):
    """A spec is invalid. ``errors``: ``[{"loc": ["training", "steps"], "msg": "..."}]``."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors))


class _Strict(BaseModel):
    # strict: a number written as a string is a client bug to report, not to guess at.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class LabelNoise(_Strict):
    """Labels made wrong on purpose, for experiments that must find them again (a learned
    ``example_weight`` should fall on exactly these): a fraction of the training labels, each moved
    to another class. The validation and test labels stay true."""

    fraction: float = Field(
        ge=0,
        lt=1,
        description="the fraction of the training examples whose label is changed, round(fraction * "
        "train) of them, each to a class drawn uniformly among the others",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="draws which examples and which classes (numpy.random.default_rng(seed)), apart "
        "from the spec's seed",
    )


class DatasetSection(_Strict):
    name: BuiltinName | None = Field(None, description="a built-in dataset")
    id: str | None = Field(None, min_length=1, max_length=64, description="an uploaded dataset's id")
    train: int | None = Field(None, ge=1)
    valid: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1, description="minibatch size; full batch when absent")
    center: bool = Field(True, description="subtract the training split's mean example from every split")
    stratify: bool = Field(
        False, description="interleave the classes so every split is class-balanced (built-ins, X/y uploads)"
    )
    shuffle: bool | None = Field(
        None,
        description="X/y uploads: shuffle the rows (by the spec's seed) before splitting them by the "
        "counts; true unless given (stored so), false keeps the file's order; built-ins are always "
        "shuffled, pre-split uploads keep their splits",
    )
    resplit: bool = Field(
        False,
        description="draw a new train/valid split of the training and validation examples every "
        "meta-iteration (each class, and task, keeps its counts; the test split stays fixed), so many "
        "hyperparameters cannot fit one validation set",
    )
    label_noise: LabelNoise | None = Field(
        None,
        description="flip a fraction of the training labels after the split, for finding them again "
        "(class labels of one task; not with resplit); it replaces an upload's own noisy mask",
    )


class ModelSection(_Strict):
    kind: ModelKind = Field(
        description="; ".join(
            f"{name}: {family.doc}" for name, family in {**FAMILIES, PLUGIN_KIND: PLUGIN}.items()
        )
    )
    hidden: list[int] = Field(
        default_factory=list, description="hidden layer widths (mlp, multitask_mlp; cnn, cnn1d: dense layers)"
    )
    # None only for a plugin model that does not set it (`_plugin_has_no_activation`).
    activation: Literal["tanh", "relu"] | None = "tanh"
    channels: list[int] | None = Field(
        None, description="cnn, cnn1d: the output channels of each convolution, input first (required)"
    )
    kernel: int | None = Field(
        None,
        ge=1,
        description="cnn, cnn1d: the kernel width along each spatial axis "
        f"(default {CONV_DEFAULTS['kernel']})",
    )
    pool: int | None = Field(
        None,
        ge=1,
        description="cnn, cnn1d: average pooling window and stride after each convolution, 1 for none "
        f"(default {CONV_DEFAULTS['pool']})",
    )
    name: str | None = Field(
        None,
        pattern=plugins.NAME_PATTERN,
        description="plugin: the model plugin's name (GET /v1/models lists those the workers offer)",
    )
    config: dict[str, Any] | None = Field(
        None, description="plugin: the plugin's settings, checked against its config_schema (GET /v1/models)"
    )

    @model_validator(mode="after")
    def _plugin_has_no_activation(self) -> ModelSection:
        # The built-ins' default activation is not a plugin's: stored specs leave it out.
        if self.kind == PLUGIN_KIND and "activation" not in self.model_fields_set:
            self.activation = None
        return self


class TrainingSection(_Strict):
    steps: int = Field(ge=1)
    # None (left out of the stored spec) is the default, sgd_momentum: stored specs keep their meaning.
    optimizer: TrainingOptimizerName | None = Field(
        None,
        description="the optimizer that trains the model, reversed exactly (not meta.optimizer, which "
        "optimises the hyperparameters): "
        + "; ".join(f"{name}: {opt.doc}" for name, opt in vocab.TRAINING_OPTIMIZERS.items())
        + f" (default {vocab.DEFAULT_TRAINING_OPTIMIZER})",
    )


class HyperSetting(_Strict):
    """One kind: its initial natural value, how finely it varies, and whether it is learned."""

    init: float | str | list | dict = Field(
        description="the initial natural value: a finite number (every value starts there), 'data' "
        "for training_data, the values themselves (a warm start: an array of the hyperparameter's "
        "shape as downloads give it, or for a per-weight init_scale or l2 a mapping of each parameter "
        'array\'s name to its values), or {"from_job": ID, "which": "best" | "last" | N} '
        "to start from another job's values (resolved when the job is submitted)",
        json_schema_extra={
            "anyOf": [
                {"type": "number"},
                {"const": "data"},
                {"type": "array"},
                {
                    "type": "object",
                    "properties": {
                        "from_job": {"type": "string"},
                        "which": {"anyOf": [{"enum": ["best", "last"]}, {"type": "integer", "minimum": 0}]},
                    },
                    "required": ["from_job"],
                },
                {"type": "object", "additionalProperties": {"type": "array"}},
            ]
        },
    )
    granularity: Granularity = "global"
    learn: bool = False
    min: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="momentum, beta1 and beta2 only: the smallest value the meta-optimiser may give a "
        "learned one (default: momentum 0.1, a beta 0.5, or init if lower); each training step keeps "
        "log2(1 / value) bits of every weight in the worker's memory, which is sized for this floor",
    )

    init_from: dict[str, Any] | None = Field(
        None,
        description="written by the service: the job, `which` and meta-iteration a {from_job, which} "
        "init took its values from",
    )

    @field_validator("init", mode="plain")
    @classmethod
    def _number_data_or_values(cls, value: Any) -> float | str | list | dict:
        # A plain validator, so an error is reported on `init` itself, not on a union member. An
        # array's values and shape are checked by the rules (`hypercore.vocab.check_setting`).
        if isinstance(value, str) and value == "data":
            return value
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            if vocab.is_reference(value):
                unknown = sorted(set(value) - vocab.REFERENCE_KEYS)
                if unknown:
                    raise ValueError(f"a from_job init takes from_job and which; unknown {unknown}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(
                f"must be a finite number, an array of values, {{from_job, which}} (or 'data' for "
                f"training_data), got {value!r:.100}"
            )
        return float(value)


class _Hyperparameters(_Strict):
    def given(self) -> dict[str, HyperSetting]:
        return {k: v for k in vocab.KINDS if (v := getattr(self, k)) is not None}


# One optional field per kind of the vocabulary's table (a kind left out keeps its default).
HyperparametersSection = create_model(
    "HyperparametersSection",
    __base__=_Hyperparameters,
    **{
        name: (HyperSetting | None, Field(None, description=kind.doc))  # type: ignore[misc]
        for name, kind in vocab.KINDS.items()
    },
)


class MetaSection(_Strict):
    iterations: int = Field(50, ge=1)
    optimizer: Literal["adam", "adam_paper", "sgd"] = Field(
        "adam",
        description="the meta-optimiser of the hyperparameters (not training.optimizer, which trains "
        "the model): adam (optax), adam_paper (the paper's Adam settings), or sgd with momentum",
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


def count_hyperparameters(spec: JobSpec | Mapping[str, Any], shape: DatasetShape) -> int:
    """How many hyperparameter values the spec implies (`hypercore.rules.count_hyperparameters`)."""
    return rules.count_hyperparameters(spec.to_dict() if isinstance(spec, JobSpec) else spec, shape)


def _limit_problems(spec: JobSpec, limits: SpecLimits) -> list[rules.Problem]:
    """What the spec asks beyond the server's limits, before its dataset is known."""
    out: list[rules.Problem] = []
    if spec.training.steps > limits.max_steps:
        out.append((("training", "steps"), f"at most {limits.max_steps} steps, got {spec.training.steps}"))
    if spec.meta.iterations > limits.max_meta_iterations:
        out.append(
            (
                ("meta", "iterations"),
                f"at most {limits.max_meta_iterations} meta-iterations, got {spec.meta.iterations}",
            )
        )
    if len(spec.model.hidden) > limits.max_layers:
        out.append(
            (("model", "hidden"), f"at most {limits.max_layers} hidden layers, got {len(spec.model.hidden)}")
        )
    for i, width in enumerate(spec.model.hidden):
        if width > limits.max_hidden_width:
            out.append(
                (
                    ("model", "hidden", i),
                    f"a hidden layer has at most {limits.max_hidden_width} units, got {width}",
                )
            )
    out += _conv_limit_problems(spec.model, limits)
    if spec.dataset is not None:
        for field in ("train", "valid", "test", "batch_size"):
            value = getattr(spec.dataset, field)
            if value is not None and value > limits.max_dataset_rows:
                out.append((("dataset", field), f"at most {limits.max_dataset_rows} rows, got {value}"))
    return out


def _conv_limit_problems(model: ModelSection, limits: SpecLimits) -> list[rules.Problem]:
    out: list[rules.Problem] = []
    channels = model.channels or []
    if len(channels) > limits.max_layers:
        out.append((("model", "channels"), f"at most {limits.max_layers} convolutions, got {len(channels)}"))
    out += [
        (("model", "channels", i), f"a convolution has at most {limits.max_channels} channels, got {c}")
        for i, c in enumerate(channels)
        if c > limits.max_channels
    ]
    if model.kernel is not None and model.kernel > limits.max_kernel:
        out.append((("model", "kernel"), f"at most {limits.max_kernel} wide, got {model.kernel}"))
    return out


def _size_problems(spec: JobSpec, limits: SpecLimits, shape: DatasetShape) -> list[rules.Problem]:
    """The dataset's, the model's and the hyperparameters' sizes against the server's limits."""
    out: list[rules.Problem] = []
    if spec.dataset is not None:
        source = ("dataset", "id" if spec.dataset.id is not None else "name")
        if shape.n_features > limits.max_features:
            out.append(
                (
                    source,
                    f"the dataset has {shape.n_features} features; at most {limits.max_features} are allowed",
                )
            )
        if shape.n_classes > limits.max_classes:
            out.append(
                (
                    source,
                    f"the dataset has {shape.n_classes} classes; at most {limits.max_classes} are allowed",
                )
            )
    if out or spec.model.kind == PLUGIN_KIND:  # a plugin's sizes: `model_size_problems`, in the worker
        return out
    return model_size_problems(spec.to_dict(), limits, shape)


def model_size_problems(
    data: dict[str, Any],
    limits: SpecLimits,
    shape: DatasetShape,
    shapes: families.Shapes | None = None,
    units: int | None = None,
) -> list[rules.Problem]:
    """The model's and the hyperparameters' sizes against the server's limits, then the memory
    estimate. ``shapes`` and ``units``: a plugin model's arrays and the activations one example adds
    to a step, which only the worker that built it knows (`built_model_problems`;
    `hypercore.budget.peak_bytes`)."""
    out: list[rules.Problem] = []
    shapes = rules.model_shapes(data, shape) if shapes is None else shapes
    n_weights = families.n_weights(shapes)
    if n_weights > limits.max_weights:
        out.append(
            (("model",), f"the model has {n_weights} weights; at most {limits.max_weights} are allowed")
        )
    n_hyper = rules.count_hyperparameters(data, shape, shapes)
    if n_hyper > limits.max_hyperparameters:
        out.append(
            (
                ("hyperparameters",),
                f"the spec implies {n_hyper} hyperparameters; "
                f"at most {limits.max_hyperparameters} are allowed",
            )
        )
    if not out:  # past a size limit, the memory would only repeat it
        out += _memory_problems(data, limits, shape, shapes, units)
    return out


def built_model_problems(data: dict[str, Any], limits: SpecLimits, problem: Any) -> list[rules.Problem]:
    """`model_size_problems` counted on a built `hypercore.Problem` (its model's arrays, its dataset,
    its activations per example: `Problem.activation_units`): what a worker checks of a plugin model
    before it runs the job, and `revtune run` before a local run."""
    shapes = {name: tuple(int(d) for d in shape) for name, shape in problem.model.shapes.items()}
    shape = DatasetShape.of_loaded(problem.dataset)
    return model_size_problems(data, limits, shape, shapes, problem.activation_units())


def _memory_problems(
    data: dict[str, Any],
    limits: SpecLimits,
    shape: DatasetShape,
    shapes: families.Shapes,
    units: int | None = None,
) -> list[rules.Problem]:
    """The job's estimated peak memory in the worker (`hypercore.budget`) against the limit, refused
    on the field that drives the largest part of it."""
    estimate = budget.peak_bytes(data, shape, shapes, units)
    if estimate.total <= limits.max_job_memory_bytes:
        return []
    part = estimate.largest
    return [
        (
            part.loc,
            f"this job needs about {budget.human_bytes(estimate.total)} in the worker ({part.name} "
            f"{budget.human_bytes(part.bytes)} {part.detail}), past REVTUNE_MAX_JOB_MEMORY_BYTES = "
            f"{budget.human_bytes(limits.max_job_memory_bytes)}: {part.hint}",
        )
    ]


def _plugin_problems(
    model: ModelSection, resolve_plugin: Callable[[str], Mapping[str, Any] | None]
) -> list[rules.Problem]:
    schema = resolve_plugin(model.name or "")
    if schema is None:
        return [
            (
                ("model", "name"),
                f"no worker offers the model plugin {model.name!r} (GET /v1/models lists those they do)",
            )
        ]
    return plugins.config_problems(schema, model.config or {})


def validate_spec(
    data: Any,
    limits: SpecLimits | None = None,
    resolve_dataset: Callable[[str], DatasetShape | None] | None = None,
    resolve_plugin: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> JobSpec:
    """Parse and check a spec; raise `SpecError` listing every problem, each naming its field.

    ``resolve_dataset(id)`` gives an uploaded dataset's shape, or None when the caller may not use
    it (unknown, or another tenant's): that is reported on ``dataset.id``. Without a resolver a
    spec naming an upload is checked against everything but the dataset. ``resolve_plugin(name)``
    likewise gives the JSON Schema of a model plugin's config (None: no worker offers it, reported on
    ``model.name``); without it a plugin model's ``name`` and ``config`` are not checked.
    """
    limits = limits or SpecLimits()
    if not isinstance(data, Mapping):
        raise SpecError([{"loc": [], "msg": f"a job spec is a JSON object, got {type(data).__name__}"}])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError([{"loc": list(err["loc"]), "msg": err["msg"]} for err in e.errors()]) from None
    found = _limit_problems(spec, limits)
    uploaded: DatasetShape | None = None
    if spec.dataset is not None and spec.dataset.id is not None and resolve_dataset is not None:
        uploaded = resolve_dataset(spec.dataset.id)
        if uploaded is None:
            found.append((("dataset", "id"), f"no dataset with id {spec.dataset.id!r}"))
    if spec.dataset is not None and spec.dataset.id is not None and spec.dataset.shuffle is None:
        if uploaded is None or uploaded.layout != "splits":  # an X/y upload is split by the spec
            spec.dataset.shuffle = True  # stored explicitly: a later default cannot change its split
    if spec.model.kind == PLUGIN_KIND and spec.model.name is not None and resolve_plugin is not None:
        found += _plugin_problems(spec.model, resolve_plugin)
    data = spec.to_dict()
    shape = rules.dataset_shape(data, uploaded)
    found += rules.problems(data, shape)
    if not found and shape is not None:  # the sizes would only repeat other problems
        found = _size_problems(spec, limits, shape)
    if found:
        raise SpecError([{"loc": list(loc), "msg": msg} for loc, msg in found])
    return spec
