"""Build a tuning `Problem` from a job spec, the dict of DESIGN.md's "Job spec"::

    name: lr-schedule-digits
    dataset: {name: digits, train: 1000, valid: 400, test: 397, batch_size: 100}   # or {id: ...}
             # optional: center, stratify, resplit (a new train/valid split every meta-iteration),
             # label_noise: {fraction: 0.4, seed: 1} (flip that fraction of the training labels)
    model: {kind: mlp, hidden: [50, 50], activation: tanh}      # or logreg, toy2d, multitask_mlp,
           # cnn, cnn1d: {kind: cnn, channels: [8, 16], kernel: 3, pool: 2, hidden: [32]}
    training: {steps: 100}                                    # optional: optimizer (below)
    hyperparameters:
      learning_rate: {init: 0.5, granularity: layer_step, learn: true}
      momentum:      {init: 0.9, granularity: layer_step, learn: true}   # optional: min
      init_scale:    {init: 0.1, granularity: layer, learn: true}
      l2:            {init: 0.0, granularity: layer, learn: false}
    objective: valid_loss                                     # or train_loss
    meta: {iterations: 50, optimizer: adam, learning_rate: 0.04}   # optional: momentum, clip, guard
    seed: 0

``training.optimizer`` is the optimizer that trains the model, reversed exactly by the engine:
``sgd_momentum`` (the default, the paper's), ``adam`` or ``adamw``; it is not ``meta.optimizer``, the
optimizer of the hyperparameters. With ``adam`` and ``adamw`` the kinds ``beta1``, ``beta2`` (and, for
``adamw``, ``weight_decay``) take ``momentum``'s place (`hypercore.vocab.TRAINING_OPTIMIZERS`).

``model: {kind: toy2d}`` is the paper's two-weight figure-1 problem (`hypercore.models.Toy2D`): it
has no data, so ``dataset`` is left out (the loop trains it on `hypercore.models.toy2d_data`), and it
starts from a fixed point, so ``init_scale`` and ``training_data`` do not apply.

``model: {kind: cnn, channels: [8, 16], kernel: 3, pool: 2, hidden: [32]}`` is a convolutional net
(`hypercore.cnn`) on the dataset's image-shaped examples (``cnn1d``: sequences), which the dataset's
``example_shape`` gives.

``model: {kind: multitask_mlp, hidden: [...]}`` is one net per task of a multi-task dataset
(``mnist5k_tasks``; `hypercore.models.MultitaskMLP`), trained full-batch, whose nets the
``sharing`` hyperparameter couples (the paper's section 3.4).

``model: {kind: plugin, name: resmlp, config: {...}}`` is a model from a plugin (`hypercore.plugins`):
pass the loaded plugins as ``plugins=`` (the worker passes those ``REVTUNE_MODEL_PLUGINS`` enables).

A key whose value is None counts as absent (a pydantic dump writes every optional field). Unknown
keys inside the sections read here are refused; top-level keys other than those above (the job's
``name``, fields the service adds) are ignored.

This module only builds. It checks the types of what it reads (a notebook's dict has no schema in
front of it), then asks `hypercore.rules.problems`, the same rules the service applies at submit,
whether the spec is meaningful, so the engine and the server refuse the same specs on the same
field. The service's schema (``jobs/``) adds the size limits. Every refusal is a `SpecError` (a
``ValueError``) naming the field; ``.problems`` lists every rule the spec breaks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hypercore import cnn as _cnn
from hypercore import data as _data
from hypercore import families, rules, vocab
from hypercore import models as _models
from hypercore.arrays import label_noise_settings
from hypercore.families import FAMILIES, PLUGIN_KIND, DatasetShape, conv_settings
from hypercore.hyper import Hyper
from hypercore.meta import GuardConfig, MetaConfig
from hypercore.tune import OBJECTIVES, Problem, ProblemError


class SpecError(ProblemError):
    """A job spec is malformed or meaningless: ``field`` (``"model.hidden[1]"``) and ``loc`` (its
    path, ``("model", "hidden", 1)``, as the service's 422 has it) name the first problem;
    ``problems`` holds every ``(loc, msg)`` the rules found."""

    def __init__(self, field: str, message: str, problems: list[rules.Problem] | None = None, loc=None):
        super().__init__(field, message)
        if loc is None:  # "model.hidden[1]" -> ("model", "hidden", 1)
            loc = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", field)]
        self.loc = tuple(loc)
        self.problems = problems or [(self.loc, message)]


def _field(loc: rules.Loc) -> str:
    """``("model", "hidden", 1)`` -> ``"model.hidden[1]"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


_SECTIONS = {
    "dataset": {
        "name",
        "id",
        "train",
        "valid",
        "test",
        "batch_size",
        "center",
        "stratify",
        "resplit",
        "shuffle",
        "label_noise",
    },
    "model": {"kind", "hidden", "activation", "channels", "kernel", "pool", "name", "config"},
    "training": {"steps", "optimizer"},
    "meta": {"iterations", "optimizer", "learning_rate", "momentum", "clip", "guard"},
}
# ``init_from``: where a ``{from_job, which}`` init's values came from (the service writes it; the
# engine reads only the values).
_HYPER_KEYS = {"init", "granularity", "learn", "min", "init_from"}


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


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(field, f"must be true or false, got {value!r}")
    return value


def _check_types(spec: Mapping) -> None:
    """What the service's schema checks before its rules: every value the rules read has its type."""
    model = _section(spec, "model")
    kind = model.get("kind")
    if kind not in FAMILIES and kind != PLUGIN_KIND:
        kinds = ", ".join(map(repr, [*FAMILIES, PLUGIN_KIND]))
        raise SpecError("model.kind", f"must be one of {kinds}, got {kind!r}")
    if "name" in model and not isinstance(model["name"], str):
        raise SpecError("model.name", f"must be a plugin's name, got {model['name']!r}")
    if "config" in model and not isinstance(model["config"], Mapping):
        raise SpecError("model.config", f"must be a mapping, got {model['config']!r}")
    hidden = model.get("hidden", [])
    if not isinstance(hidden, (list, tuple)):
        raise SpecError("model.hidden", f"must be a list of layer widths, got {hidden!r}")
    for i, h in enumerate(hidden):
        _int(h, f"model.hidden[{i}]", 0)
    channels = model.get("channels", [])
    if not isinstance(channels, (list, tuple)):
        raise SpecError("model.channels", f"must be a list of channel counts, got {channels!r}")
    for i, c in enumerate(channels):
        _int(c, f"model.channels[{i}]", 0)
    for key in ("kernel", "pool"):
        if key in model:
            _int(model[key], f"model.{key}", 0)
    if model.get("activation", "tanh") not in ("tanh", "relu"):
        raise SpecError("model.activation", f"must be 'tanh' or 'relu', got {model['activation']!r}")
    if spec.get("dataset") is not None:
        ds = _section(spec, "dataset")
        for key, minimum in (("train", 1), ("valid", 1), ("test", 0), ("batch_size", 1)):
            if key in ds:
                _int(ds[key], f"dataset.{key}", minimum)
        for key in ("center", "stratify", "resplit", "shuffle"):
            if key in ds:
                _flag(ds[key], f"dataset.{key}")
        if "name" in ds and not isinstance(ds["name"], str):
            raise SpecError("dataset.name", f"must be a string, got {ds['name']!r}")
        try:  # the loader's own check, so the two cannot disagree on what a setting means
            label_noise_settings(ds.get("label_noise"))
        except _data.DataError as e:
            raise SpecError(e.field, e.message) from None
    training = _section(spec, "training")
    _int(training.get("steps"), "training.steps")
    optimizer = training.get("optimizer", vocab.DEFAULT_TRAINING_OPTIMIZER)
    if optimizer not in vocab.TRAINING_OPTIMIZERS:
        known = ", ".join(map(repr, vocab.TRAINING_OPTIMIZERS))
        raise SpecError("training.optimizer", f"must be one of {known}, got {optimizer!r}")
    for kind, setting in _section(spec, "hyperparameters", required=False).items():
        field = f"hyperparameters.{kind}"
        if kind not in vocab.KINDS:
            raise SpecError(field, f"unknown hyperparameter; known: {', '.join(vocab.KINDS)}")
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
        if "min" in setting:
            _number(setting["min"], f"{field}.min")
    meta = _section(spec, "meta", required=False)
    if "guard" in meta:
        _flag(meta["guard"], "meta.guard")
    for key in ("learning_rate", "momentum", "clip"):
        if key in meta:
            _number(meta[key], f"meta.{key}")
    objective = spec.get("objective") or "valid_loss"
    if objective not in OBJECTIVES:
        raise SpecError("objective", f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def check(spec: Mapping, dataset=None) -> None:
    """Raise `SpecError` for the first problem of ``spec`` (types, then `hypercore.rules`)."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec", f"must be a mapping, got {type(spec).__name__}")
    _check_types(spec)
    if "seed" in spec and spec["seed"] is not None:
        _int(spec["seed"], "seed", 0)
    family = families.family(spec["model"]["kind"])
    if not family.needs_data and dataset is not None:
        raise SpecError("dataset", "the toy2d model has no data: leave `dataset` out")
    if dataset is not None:
        shape = DatasetShape.of_loaded(dataset)
    else:
        shape = rules.dataset_shape(spec)
        ds = spec.get("dataset")
        if isinstance(ds, Mapping) and ds.get("id") is not None and ds.get("name") is None:
            raise SpecError(
                "dataset.id", "an uploaded dataset must be loaded by the caller and passed as `dataset=`"
            )
    found = rules.problems(spec, shape)
    if found:
        loc, msg = found[0]
        raise SpecError(_field(loc), msg, found, loc)


def _dataset(section: dict, seed: int, dataset):
    """A built-in's `Dataset` as the section asks (``label_noise`` included), or ``dataset`` as given:
    an upload's was built from the same section by its loader (`hypercore.arrays.dataset_from_npz`,
    which applies ``label_noise`` there)."""
    if dataset is not None:
        return dataset
    return _data.load(
        section["name"],
        section["train"],
        section["valid"],
        section.get("test", 0),
        seed=seed,
        center=section.get("center", True),
        stratify=section.get("stratify", False),
        label_noise=section.get("label_noise"),
    )


def _model(section: dict, ds, plugins: Mapping | None = None):
    """The spec's model on ``ds``: its output layer has ``ds.n_outputs`` units (the classes, or a real
    target's outputs). A plugin model is built by its entry of ``plugins`` (`hypercore.plugins.load`)."""
    kind = section["kind"]
    if kind == PLUGIN_KIND:
        return _plugin_model(section, ds, plugins or {})
    if kind == "toy2d":
        return _models.toy2d()
    target = getattr(ds, "target", "class")
    if FAMILIES[kind].conv:
        channels, kernel, pool = conv_settings(section)
        build = _cnn.cnn if kind == "cnn" else _cnn.cnn1d
        return build(
            ds.example_shape,
            ds.n_outputs,
            channels,
            kernel=kernel,
            pool=pool,
            hidden=section.get("hidden", ()),
            activation=section.get("activation", "tanh"),
            target=target,
        )
    if kind == "logreg":
        return _models.logistic_regression(ds.n_features, ds.n_outputs, target=target)
    widths, activation = list(section["hidden"]), section.get("activation", "tanh")
    if kind == "multitask_mlp":
        return _models.multitask_mlp(ds.n_features, widths, ds.n_classes, ds.n_tasks, activation=activation)
    return _models.mlp(ds.n_features, widths, ds.n_outputs, activation=activation, target=target)


def _plugin_model(section: dict, ds, plugins: Mapping):
    name = section["name"]
    plugin = plugins.get(name)
    if plugin is None:
        loaded = ", ".join(sorted(plugins)) or "none"
        raise SpecError(
            "model.name",
            f"the model plugin {name!r} is not loaded here (loaded: {loaded}; REVTUNE_MODEL_PLUGINS)",
        )
    model = plugin.build(section.get("config"), DatasetShape.of_loaded(ds))
    try:
        _models.check_model(model)
    except _models.ModelError as e:
        raise SpecError("model.name", f"the plugin {name!r} built an unusable model: {e}") from e
    return model


def _hypers(section: Mapping) -> dict[str, Hyper]:
    out = {}
    for kind, setting in section.items():
        setting = {k: v for k, v in setting.items() if v is not None}
        out[kind] = Hyper(
            kind,
            setting["init"],
            setting.get("granularity", "global"),
            setting.get("learn", False),
            setting.get("min"),
        )
    return out


def _meta(section: dict) -> tuple[MetaConfig, int]:
    iterations = _int(section.get("iterations", 50), "meta.iterations")
    clip = section.get("clip")
    config = MetaConfig(
        optimizer=section.get("optimizer", "adam"),
        learning_rate=float(section.get("learning_rate", 0.04)),
        momentum=float(section.get("momentum", 0.9)),
        clip=None if clip is None else float(clip),
        guard=GuardConfig(enabled=section.get("guard", True)),
    )
    config.validate()
    return config, iterations


def problem_from_spec(spec: Mapping, dataset=None, plugins: Mapping | None = None) -> Problem:
    """The `Problem` a job spec describes. ``dataset``: the already-loaded `Dataset` (required for
    an uploaded ``dataset.id``; for a built-in ``name`` it is loaded here when not given).
    ``plugins``: the model plugins a ``kind: plugin`` model may name, by name (`hypercore.plugins.load`)."""
    check(spec, dataset)
    seed = spec.get("seed")
    seed = 0 if seed is None else seed
    model_section = _section(spec, "model")
    if families.family(model_section["kind"]).needs_data:
        ds_section = _section(spec, "dataset")
        ds = _dataset(ds_section, seed, dataset)
    else:
        ds_section, ds = {}, _models.toy2d_data()
    meta, iterations = _meta(_section(spec, "meta", required=False))
    return Problem.build(
        _model(model_section, ds, plugins),
        ds,
        _hypers(_section(spec, "hyperparameters", required=False)),
        steps=_section(spec, "training")["steps"],
        batch_size=ds_section.get("batch_size"),
        objective=spec.get("objective") or "valid_loss",
        meta=meta,
        iterations=iterations,
        seed=seed,
        resplit=ds_section.get("resplit", False),
        training_optimizer=vocab.training_optimizer(spec),
    )
