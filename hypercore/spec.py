"""Build a tuning `Problem` from a job spec, the dict of DESIGN.md's "Job spec"::

    name: lr-schedule-digits
    dataset: {name: digits, train: 1000, valid: 400, test: 397, batch_size: 100}   # or {id: ...}
             # optional: center, stratify, resplit (a new train/valid split every meta-iteration)
    model: {kind: mlp, hidden: [50, 50], activation: tanh}      # or logreg, toy2d, multitask_mlp
    training: {steps: 100}
    hyperparameters:
      learning_rate: {init: 0.5, granularity: layer_step, learn: true}
      momentum:      {init: 0.9, granularity: layer_step, learn: true}
      init_scale:    {init: 0.1, granularity: layer, learn: true}
      l2:            {init: 0.0, granularity: layer, learn: false}
    objective: valid_loss                                     # or train_loss
    meta: {iterations: 50, optimizer: adam, learning_rate: 0.04}   # optional: momentum, clip, guard
    seed: 0

``model: {kind: toy2d}`` is the paper's two-weight figure-1 problem (`hypercore.models.Toy2D`): it
has no data, so ``dataset`` is left out (the loop trains it on `hypercore.models.toy2d_data`), and it
starts from a fixed point, so ``init_scale`` and ``training_data`` do not apply.

``model: {kind: multitask_mlp, hidden: [...]}`` is one net per task of a multi-task dataset
(``mnist5k_tasks``; `hypercore.models.MultitaskMLP`), trained full-batch, whose nets the
``sharing`` hyperparameter couples (the paper's section 3.4).

A key whose value is None counts as absent (a pydantic dump writes every optional field). Unknown
keys inside the sections read here are refused; top-level keys other than those above (the job's
``name``, fields the service adds) are ignored. The service's schema (``jobs/``) enforces size limits;
this checks that the spec is meaningful, raising `SpecError` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypercore import data as _data
from hypercore import models as _models
from hypercore.hyper import KINDS, ConfigError, Hyper
from hypercore.meta import GuardConfig, MetaConfig
from hypercore.tune import OBJECTIVES, Problem


class SpecError(ConfigError):
    """A job spec is malformed or meaningless."""


_SECTIONS = {
    "dataset": {"name", "id", "train", "valid", "test", "batch_size", "center", "stratify", "resplit"},
    "model": {"kind", "hidden", "activation"},
    "training": {"steps"},
    "meta": {"iterations", "optimizer", "learning_rate", "momentum", "clip", "guard"},
}
_HYPER_KEYS = {"init", "granularity", "learn"}


def _section(spec: Mapping, name: str, required: bool = True) -> dict:
    value = spec.get(name)
    if value is None:
        if required:
            raise SpecError(name, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(name, f"must be a mapping, got {type(value).__name__}")
    present = {k: v for k, v in value.items() if v is not None}
    if name in _SECTIONS:
        unknown = sorted(set(present) - _SECTIONS[name])
        if unknown:
            raise SpecError(
                f"{name}.{unknown[0]}", f"unknown field; known: {', '.join(sorted(_SECTIONS[name]))}"
            )
    return present


def _int(value: Any, field: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(field, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(field, f"must be a number, got {value!r}")
    return float(value)


def _dataset(section: dict, seed: int, dataset):
    if dataset is not None:
        return dataset
    if "id" in section:
        raise SpecError(
            "dataset.id", "an uploaded dataset must be loaded by the caller and passed as `dataset=`"
        )
    if "name" not in section:
        raise SpecError(
            "dataset", f"needs a built-in `name` ({', '.join(_data.builtin_names())}) or an uploaded `id`"
        )
    for key in ("train", "valid"):
        if key not in section:
            raise SpecError(f"dataset.{key}", "is required for a built-in dataset")
    return _data.load(
        section["name"],
        _int(section["train"], "dataset.train"),
        _int(section["valid"], "dataset.valid", 0),
        _int(section.get("test", 0), "dataset.test", 0),
        seed=seed,
        center=_flag(section.get("center", True), "dataset.center"),
        stratify=_flag(section.get("stratify", False), "dataset.stratify"),
    )


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(field, f"must be true or false, got {value!r}")
    return value


def _model(section: dict, ds):
    kind = section.get("kind")
    n_features, n_classes = ds.n_features, ds.n_classes
    if kind == "toy2d":
        if section.get("hidden"):
            raise SpecError("model.hidden", "the toy2d model has no layers")
        return _models.toy2d()
    if kind == "logreg":
        if section.get("hidden"):
            raise SpecError("model.hidden", "logistic regression has no hidden layers")
        return _models.logistic_regression(n_features, n_classes)
    if kind not in ("mlp", "multitask_mlp"):
        raise SpecError("model.kind", f"must be 'mlp', 'logreg', 'toy2d' or 'multitask_mlp', got {kind!r}")
    hidden = section.get("hidden")
    if not isinstance(hidden, (list, tuple)) or not hidden:
        raise SpecError("model.hidden", f"an mlp needs a non-empty list of layer widths, got {hidden!r}")
    widths = [_int(h, f"model.hidden[{i}]") for i, h in enumerate(hidden)]
    activation = section.get("activation", "tanh")
    if activation not in ("tanh", "relu"):
        raise SpecError("model.activation", f"must be 'tanh' or 'relu', got {activation!r}")
    if kind == "multitask_mlp":
        if ds.n_tasks < 2:
            raise SpecError(
                "model.kind",
                f"multitask_mlp needs a multi-task dataset (mnist5k_tasks, or an upload with task ids); "
                f"{ds.name!r} has one task",
            )
        return _models.multitask_mlp(n_features, widths, n_classes, ds.n_tasks, activation=activation)
    return _models.mlp(n_features, widths, n_classes, activation=activation)


def _hypers(section: Mapping) -> dict[str, Hyper]:
    out = {}
    for kind, setting in section.items():
        field = f"hyperparameters.{kind}"
        if kind not in KINDS:
            raise SpecError(field, f"unknown hyperparameter; known: {', '.join(KINDS)}")
        if setting is None:
            continue
        if not isinstance(setting, Mapping):
            raise SpecError(field, f"must be a mapping with init, granularity, learn; got {setting!r}")
        setting = {k: v for k, v in setting.items() if v is not None}
        unknown = sorted(set(setting) - _HYPER_KEYS)
        if unknown:
            raise SpecError(
                f"{field}.{unknown[0]}", f"unknown field; known: {', '.join(sorted(_HYPER_KEYS))}"
            )
        if "init" not in setting:
            raise SpecError(f"{field}.init", "is required")
        out[kind] = Hyper(
            kind, setting["init"], setting.get("granularity", "global"), setting.get("learn", False)
        )
    return out


def _meta(section: dict) -> tuple[MetaConfig, int]:
    iterations = _int(section.get("iterations", 50), "meta.iterations")
    clip = section.get("clip")
    guard = section.get("guard", True)
    if not isinstance(guard, bool):
        raise SpecError("meta.guard", f"must be true or false, got {guard!r}")
    config = MetaConfig(
        optimizer=section.get("optimizer", "adam"),
        learning_rate=_number(section.get("learning_rate", 0.04), "meta.learning_rate"),
        momentum=_number(section.get("momentum", 0.9), "meta.momentum"),
        clip=None if clip is None else _number(clip, "meta.clip"),
        guard=GuardConfig(enabled=guard),
    )
    config.validate()
    return config, iterations


def problem_from_spec(spec: Mapping, dataset=None) -> Problem:
    """The `Problem` a job spec describes. ``dataset``: the already-loaded `Dataset` (required for
    an uploaded ``dataset.id``; for a built-in ``name`` it is loaded here when not given)."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec", f"must be a mapping, got {type(spec).__name__}")
    seed = spec.get("seed")
    seed = 0 if seed is None else _int(seed, "seed", 0)
    model_section = _section(spec, "model")
    toy = model_section.get("kind") == "toy2d"
    if toy:
        if spec.get("dataset") is not None or dataset is not None:
            raise SpecError("dataset", "the toy2d model has no data: leave `dataset` out")
        ds_section, ds = {}, _models.toy2d_data()
    else:
        ds_section = _section(spec, "dataset")
        ds = _dataset(ds_section, seed, dataset)
    model = _model(model_section, ds)
    steps = _int(_section(spec, "training").get("steps"), "training.steps")
    hypers = _hypers(_section(spec, "hyperparameters"))
    if toy:
        for kind in ("init_scale", "training_data"):
            if kind in hypers:
                raise SpecError(
                    f"hyperparameters.{kind}", "the toy2d model starts from a fixed point and has no data"
                )
    objective = spec.get("objective") or "valid_loss"
    if objective not in OBJECTIVES:
        raise SpecError("objective", f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    meta, iterations = _meta(_section(spec, "meta", required=False))
    batch_size = ds_section.get("batch_size")
    if batch_size is not None:
        batch_size = _int(batch_size, "dataset.batch_size")
    return Problem.build(
        model,
        ds,
        hypers,
        steps=steps,
        batch_size=batch_size,
        objective=objective,
        meta=meta,
        iterations=iterations,
        seed=seed,
        resplit=_flag(ds_section.get("resplit", False), "dataset.resplit"),
    )
