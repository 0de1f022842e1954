"""Hyperparameter kinds: what can be tuned, how it is parametrised, and how it reaches the engine.

The kinds, their raw/natural transforms, granularities, defaults and domains are one table,
`hypercore.vocab.KINDS` (JAX-free, read by the service too); this module lays them out for a model.

Granularity ``layer`` means one value per parameter array (``layer0.W``, ``layer0.b``, ...: the
paper's "weight types"), ``step`` one per training step shared by all arrays, ``layer_step`` one per
array and step (shape ``(T, K)``), ``weight`` one per weight (the weight's own shape). A learning
rate or momentum per weight *and* step would be T times the model; it is refused.

``sharing`` couples the per-task nets of a multi-task model (`hypercore.models.MultitaskMLP`, the
paper's section 3.4): an ``n_tasks x n_tasks`` matrix per layer (granularity ``layer``: one per
network layer, shared by its ``W`` and ``b``, as the paper's) or one for every layer (``global``).
Its ``init`` c in [0, 1] starts every matrix at ``(1 - c) I + c 11^T / n_tasks``: 0 is separate
nets, 1 a single net for all tasks, 0.5 the paper's start. A multi-task model without it trains
separate nets.

An ``l2`` with ``init`` 0 is "off": it contributes no penalty and cannot be learned (log 0 has no
gradient to follow). ``training_data`` starts from the dataset's training inputs (``init="data"``)
or from ``init * N(0, 1)`` with the dataset's training labels, as in the paper's distillation.

Raw values are a flat ``dict[str, array]``: the key is the kind, or ``"<kind>.<array>"`` for a
per-weight ``init_scale`` or ``l2`` (one raw array per parameter array, in its shape), or
``"sharing.<layer>"`` for a per-layer ``sharing`` (``sharing.layer0``, ...). The same keys name the
exported values (`HyperValue`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import (
    _x64,  # noqa: F401  (configures JAX for the engine before any array exists)
    vocab,
)
from hypercore.vocab import ConfigError

KINDS = tuple(vocab.KINDS)
__all__ = [
    "KINDS",
    "ConfigError",
    "DEFAULTS",
    "Hyper",
    "HyperSet",
    "HyperValue",
    "HyperparameterError",
    "defaults",
]


class HyperparameterError(ConfigError):
    """A hyperparameter's setting is invalid."""


class HyperValue(NamedTuple):
    """One hyperparameter array in natural units (a learning rate, not its log), ready to draw.

    ``axes`` names each dimension of ``values`` (``"step"``, ``"layer"``, or the weight's own axes
    ``"in"``/``"out"``, ``"example"``/``"feature"``); ``labels`` gives coordinates for the named
    axes that have them: ``step`` -> ``[0, ..., T-1]``, ``layer`` -> parameter array names,
    ``example`` -> the class label of each training example.
    """

    values: np.ndarray
    axes: list[str]
    labels: dict[str, list]
    learned: bool


@dataclasses.dataclass(frozen=True)
class Hyper:
    """One hyperparameter kind's setting: initial natural value, learn flag and granularity.

    ``init`` is a natural value (``0.5`` for a learning rate of 0.5), or for ``training_data`` the
    scale of its ``N(0, 1)`` start or the string ``"data"`` (start from the dataset's inputs), or
    the values themselves (a warm start: an array of the layout's shape, or a mapping of arrays for a
    kind with several, `hypercore.vocab.init_shape`).
    ``min`` (momentum, beta1, beta2): the smallest value a learned one is given, the floor the
    engine clamps it to and sizes its information buffer for (None: `hypercore.vocab.lowest`'s
    default, the kind's floor (momentum 0.1, a beta 0.5) or the init if lower).
    """

    kind: str
    init: float | str
    granularity: str = "global"
    learn: bool = False
    min: float | None = None

    def validate(self, field: str | None = None) -> None:
        """Raise `HyperparameterError` naming ``field`` (default ``hyperparameters.<kind>``)."""
        field = field or f"hyperparameters.{self.kind}"
        if self.kind not in vocab.KINDS:
            raise HyperparameterError(
                field, f"unknown hyperparameter {self.kind!r}; known: {', '.join(vocab.KINDS)}"
            )
        for where, message in vocab.check_setting(
            self.kind, self.init, self.granularity, self.learn, self.min
        ):
            raise HyperparameterError(f"{field}.{where}", message)

    @property
    def off(self) -> bool:
        """An L2 penalty of exactly 0: no penalty term at all."""
        return vocab.is_off(self.kind, self.init)


def defaults(optimizer: str = vocab.DEFAULT_TRAINING_OPTIMIZER) -> dict[str, Hyper]:
    """The settings of the kinds a run with training optimizer ``optimizer`` gets when it leaves
    them out (`hypercore.vocab.default_kinds`)."""
    return {name: Hyper(name, init) for name, init in vocab.default_kinds(optimizer).items()}


# With the default training optimizer, SGD with momentum.
DEFAULTS = defaults()


def _to_raw(kind: str, natural):
    return vocab.to_raw(kind, natural)


def _to_natural(kind: str, raw, xp=jnp):
    return vocab.to_natural(kind, raw, xp)


def _weight_axes(shape: tuple[int, ...], multitask: bool = False) -> list[str]:
    if multitask:  # a multi-task model's arrays have one slice per task
        return ["task", *_weight_axes(shape[1:])]
    if len(shape) == 1:
        return ["out"]
    if len(shape) == 2:
        return ["in", "out"]
    if len(shape) in (3, 4):  # a convolution's kernel (`hypercore.cnn`): its taps, then in and out channels
        return [*(["tap"] if len(shape) == 3 else ["row", "col"]), "in", "out"]
    return [f"dim{i}" for i in range(len(shape))]


@dataclasses.dataclass(frozen=True)
class HyperSet:
    """All hyperparameters of one training run, laid out for a model with ``T`` steps.

    ``shapes`` maps each parameter array name to its shape, in the model's order; ``train_shape``
    and ``train_labels`` describe the training inputs (needed for ``training_data``). A multi-task
    model's ``tasks`` names its tasks (the leading axis of every array) and ``sharing_layers`` the
    layers a ``sharing`` matrix couples; both are empty for a single-task model.
    ``training_optimizer`` (`hypercore.vocab.TRAINING_OPTIMIZERS`) trains the model: it decides which
    kinds may be set and the defaults of those left out.
    """

    hypers: dict[str, Hyper]
    steps: int
    shapes: dict[str, tuple[int, ...]]
    train_shape: tuple[int, int]
    train_labels: tuple[int, ...]
    tasks: tuple[str, ...] = ()
    sharing_layers: tuple[str, ...] = ()
    training_optimizer: str = vocab.DEFAULT_TRAINING_OPTIMIZER
    n_classes: int = 0
    # Per training example, for ``example_weight``'s labels: its row in the dataset's source (an
    # upload's own row order, `hypercore.arrays.Dataset.train_rows`) and whether it is known to be
    # mislabelled (``Dataset.noisy``; empty when nobody knows).
    train_rows: tuple[int, ...] = ()
    train_noisy: tuple[bool, ...] = ()

    @classmethod
    def build(
        cls,
        hypers: Mapping[str, Hyper],
        *,
        steps: int,
        shapes: Mapping[str, tuple[int, ...]],
        train_shape: tuple[int, int],
        train_labels,
        tasks=(),
        sharing_layers=(),
        training_optimizer: str = vocab.DEFAULT_TRAINING_OPTIMIZER,
        n_classes: int = 0,
        train_rows=None,
        train_noisy=None,
    ) -> HyperSet:
        """Validate and complete ``hypers`` with the `defaults` of ``training_optimizer`` for the
        kinds not given.

        ``training_data`` is present only if asked for: without it the model trains on the dataset.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise HyperparameterError("training.steps", f"must be a positive integer, got {steps!r}")
        if training_optimizer not in vocab.TRAINING_OPTIMIZERS:
            known = ", ".join(vocab.TRAINING_OPTIMIZERS)
            raise HyperparameterError(
                "training.optimizer", f"unknown training optimizer {training_optimizer!r}; known: {known}"
            )
        full = defaults(training_optimizer)
        for key, h in hypers.items():
            if key != h.kind:
                raise HyperparameterError(f"hyperparameters.{key}", f"holds a setting of kind {h.kind!r}")
            h.validate()
            message = vocab.optimizer_problem(key, training_optimizer)
            if message:
                raise HyperparameterError(f"hyperparameters.{key}", message)
            full[key] = h
        if training_optimizer == "adamw" and not full["weight_decay"].off:
            message = vocab.decay_problem(full["learning_rate"].init, full["weight_decay"].init)
            if message:
                field = "weight_decay" if "weight_decay" in hypers else "learning_rate"
                raise HyperparameterError(f"hyperparameters.{field}.init", message)
        for key, h in full.items():
            if not vocab.is_array_init(h.init):
                continue
            want = vocab.init_shape(
                key,
                h.granularity,
                steps=steps,
                shapes={k: tuple(v) for k, v in shapes.items()},
                train_shape=(int(train_shape[0]), int(train_shape[1])),
                n_tasks=len(tasks),
                sharing_layers=tuple(str(layer) for layer in sharing_layers),
                n_classes=int(n_classes),
            )
            problem = vocab.init_shape_problem(h.init, want)
            if problem:
                raise HyperparameterError(f"hyperparameters.{key}.{problem[0]}", problem[1])
        if "sharing" in full and not (tasks and sharing_layers):
            raise HyperparameterError(
                "hyperparameters.sharing",
                "couples the per-task nets of a multi-task model: needs model kind multitask_mlp "
                "on a multi-task dataset (mnist5k_tasks)",
            )
        return cls(
            hypers=full,
            steps=steps,
            shapes={k: tuple(v) for k, v in shapes.items()},
            train_shape=(int(train_shape[0]), int(train_shape[1])),
            train_labels=tuple(int(y) for y in np.asarray(train_labels)),
            tasks=tuple(str(t) for t in tasks),
            sharing_layers=tuple(str(layer) for layer in sharing_layers),
            training_optimizer=training_optimizer,
            n_classes=int(n_classes),
            train_rows=() if train_rows is None else tuple(int(r) for r in np.asarray(train_rows)),
            train_noisy=() if train_noisy is None else tuple(bool(b) for b in np.asarray(train_noisy)),
        )

    @property
    def arrays(self) -> list[str]:
        return list(self.shapes)

    def learned_kinds(self) -> list[str]:
        return [k for k, h in self.hypers.items() if h.learn]

    # ---- raw layout -------------------------------------------------------------------------

    def _shape(self, h: Hyper, array: str | None = None) -> tuple[int, ...]:
        T, K = self.steps, len(self.shapes)
        if h.kind == "training_data":
            return self.train_shape
        if h.kind == "sharing":
            return (len(self.tasks), len(self.tasks))
        return {
            "global": (),
            "layer": (K,),
            "step": (T,),
            "layer_step": (T, K),
            "weight": self.shapes[array] if array else (),
            "example": (self.train_shape[0],),
            "class": (self.n_classes,),
        }[h.granularity]

    def keys(self, kind: str) -> list[str]:
        """The raw keys of one kind (several for a per-weight ``init_scale`` or ``l2``)."""
        h = self.hypers[kind]
        if h.granularity == "weight" and kind != "training_data":
            return [f"{kind}.{a}" for a in self.shapes]
        if kind == "sharing" and h.granularity == "layer":
            return [f"{kind}.{layer}" for layer in self.sharing_layers]
        return [kind]

    def init_raw(
        self, key: jax.Array, X_train: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Initial raw values, split into ``(learned, fixed)``. ``key`` seeds ``training_data``'s
        random start; ``X_train`` is its ``"data"`` start (and fixes its dtype).

        Raw values are float64 except ``training_data``, which keeps the inputs' dtype.
        """
        learned: dict[str, np.ndarray] = {}
        fixed: dict[str, np.ndarray] = {}
        for kind, h in self.hypers.items():
            if h.off:
                continue
            if kind == "training_data":
                if isinstance(h.init, str):  # "data"
                    value = np.array(X_train, copy=True)
                elif vocab.is_array_init(h.init):
                    value = np.array(h.init, dtype=X_train.dtype)
                else:
                    noise = np.asarray(jax.random.normal(key, self.train_shape, jnp.float64))
                    value = (h.init * noise).astype(X_train.dtype)
                (learned if h.learn else fixed)[kind] = value
                continue
            for k in self.keys(kind):
                if vocab.is_array_init(h.init):  # the values themselves (a warm start)
                    natural = h.init[k.split(".", 1)[1]] if isinstance(h.init, Mapping) else h.init
                    raw = np.asarray(_to_raw(kind, np.asarray(natural, np.float64)), np.float64)
                elif kind == "sharing":
                    S, c = len(self.tasks), float(h.init)
                    raw = (1.0 - c) * np.eye(S) + np.full((S, S), c / S)
                else:
                    array = k.split(".", 1)[1] if "." in k else None
                    raw = np.full(self._shape(h, array), _to_raw(kind, float(h.init)), np.float64)
                (learned if h.learn else fixed)[k] = raw
        return learned, fixed

    # ---- raw -> engine (traced) ------------------------------------------------------------

    def floor(self, kind: str) -> float | None:
        """The smallest natural value ``kind`` reaches (`hypercore.vocab.lowest`): a fixed momentum's
        (or beta's) init, a learned one's ``min``; None for a kind without a floor."""
        h = self.hypers[kind]
        return vocab.lowest(kind, h.init, h.learn, h.min)

    def decays(self) -> bool:
        """True iff AdamW's weight decay is on (training optimizer adamw, weight_decay not 0)."""
        return self.training_optimizer == "adamw" and not self.hypers["weight_decay"].off

    def decay_floor(self) -> float | None:
        """The smallest weight-decay factor ``1 - alpha lambda`` the run reaches
        (`hypercore.vocab.lowest_decay`), None without weight decay."""
        if not self.decays():
            return None
        lr, wd = self.hypers["learning_rate"], self.hypers["weight_decay"]
        return vocab.lowest_decay(lr.init, lr.learn, wd.init, wd.learn)

    def _natural(self, kind: str, raw, xp=jnp):
        """Raw -> natural; a learned kind with a floor (momentum, beta1, beta2) is clamped to it, so
        the meta-optimiser cannot take it below the value its information buffer was sized for."""
        x = _to_natural(kind, raw, xp)
        h = self.hypers[kind]
        if h.learn and vocab.KINDS[kind].floor is not None:
            low = self.floor(kind)
            x = xp.where(x >= low, x, low)
        return x

    def _per_array(self, kind: str, raw: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Natural values as a dict over parameter arrays: scalars or weight-shaped arrays."""
        h = self.hypers[kind]
        if h.granularity == "weight":
            return {a: self._natural(kind, raw[f"{kind}.{a}"]) for a in self.shapes}
        x = self._natural(kind, raw[kind])
        if h.granularity == "global":
            return {a: x for a in self.shapes}
        return {a: x[i] for i, a in enumerate(self.shapes)}

    def schedule(self, kind: str, raw: Mapping[str, jax.Array]) -> jax.Array | dict[str, jax.Array]:
        """A ``learning_rate``, ``momentum``, ``beta1``, ``beta2`` or ``weight_decay`` in the engine's
        shape: ``(T,)`` shared by all arrays (granularity global or step), or ``{array: (T,)}``
        (layer or layer_step)."""
        h = self.hypers[kind]
        x = self._natural(kind, raw[kind])
        T = self.steps
        if h.granularity == "global":
            return jnp.broadcast_to(x, (T,))
        if h.granularity == "step":
            return x
        if h.granularity == "layer":
            return {a: jnp.broadcast_to(x[i], (T,)) for i, a in enumerate(self.shapes)}
        return {a: x[:, i] for i, a in enumerate(self.shapes)}

    def init_scales(self, raw: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """``{array: scale}`` for ``Model.init``: a scalar or one per weight."""
        return self._per_array("init_scale", raw)

    def l2(self, raw: Mapping[str, jax.Array]) -> dict[str, jax.Array] | None:
        """``{array: lambda}`` for ``l2_penalty``, or None when the penalty is off."""
        if self.hypers["l2"].off:
            return None
        return self._per_array("l2", raw)

    def sharing(self, raw: Mapping[str, jax.Array]) -> dict[str, jax.Array] | None:
        """``{layer: T}`` for `hypercore.models.MultitaskMLP.share`, or None without sharing."""
        if "sharing" not in self.hypers:
            return None
        if self.hypers["sharing"].granularity == "global":
            return {layer: raw["sharing"] for layer in self.sharing_layers}
        return {layer: raw[f"sharing.{layer}"] for layer in self.sharing_layers}

    def training_data(self, raw: Mapping[str, jax.Array]) -> jax.Array | None:
        """The training inputs to train on, or None to use the dataset's."""
        return raw.get("training_data") if "training_data" in self.hypers else None

    def example_weights(self, raw: Mapping[str, jax.Array], labels=None) -> jax.Array | None:
        """One weight per training example on the training loss (a per-class weight taken by each
        example's label: ``labels``, default ``train_labels``), or None without ``example_weight``."""
        if "example_weight" not in self.hypers:
            return None
        x = self._natural("example_weight", raw["example_weight"])
        if self.hypers["example_weight"].granularity == "class":
            return x[jnp.asarray(self.train_labels if labels is None else labels, jnp.int32)]
        return x

    def program_key(self) -> tuple:
        """What a compiled training program depends on in this set: the layout (steps, arrays,
        training inputs' shape, tasks, training optimizer) and each kind's granularity, learn flag,
        whether it is off, and a learned one's floor (the engine clamps to it). Not the values (the
        programs take them as arguments) nor the training examples' labels and rows (a per-class
        weight takes its labels from the dataset's, also an argument), so jobs that differ only in
        those share their programs (`hypercore.tune`)."""
        kinds = tuple(
            (kind, h.granularity, h.learn, h.off, self.floor(kind) if h.learn else None)
            for kind, h in self.hypers.items()
        )
        return (
            kinds,
            self.steps,
            tuple(self.shapes.items()),
            tuple(self.train_shape),
            self.tasks,
            self.sharing_layers,
            self.training_optimizer,
            self.n_classes,
        )

    def weight_decay(self, raw: Mapping[str, jax.Array]) -> jax.Array | dict[str, jax.Array] | float:
        """AdamW's weight decay as a `schedule`, or a concrete 0.0 without one (then the engine
        runs plain Adam)."""
        return self.schedule("weight_decay", raw) if self.decays() else 0.0

    def minimum(self, kind: str, raw: Mapping[str, np.ndarray]) -> float:
        """The smallest natural value of ``kind`` (global, layer, step or layer_step), from concrete
        raw values; a learned kind with a floor is at least its `floor`."""
        return float(np.min(self._natural(kind, np.asarray(raw[kind]), np)))

    def min_momentum(self, raw: Mapping[str, np.ndarray]) -> float:
        """The smallest gamma, from concrete raw values: sizes the engine's information buffer."""
        return self.minimum("momentum", raw)

    def min_decay(self, raw: Mapping[str, np.ndarray]) -> float | None:
        """A lower bound on AdamW's weight-decay factors ``1 - alpha_t lambda_t``, from concrete raw
        values: ``1 - max(alpha) max(lambda)``, and at least the engine's smallest factor (which it
        clips to); None without weight decay."""
        if not self.decays():
            return None
        lr, wd = (
            float(np.max(self._natural(k, np.asarray(raw[k]), np))) for k in ("learning_rate", "weight_decay")
        )
        return max(vocab.MIN_DECAY_FACTOR, 1.0 - lr * wd)

    # ---- export ------------------------------------------------------------------------------

    def to_natural(self, raw: Mapping[str, np.ndarray]) -> dict[str, HyperValue]:
        """Every hyperparameter in natural units with axes and labels, keyed like the raw values.

        An ``l2`` that is off is exported as the scalar 0.
        """
        out: dict[str, HyperValue] = {}
        for kind, h in self.hypers.items():
            if h.off:
                out[kind] = HyperValue(np.zeros(()), [], {}, learned=False)
                continue
            for k in self.keys(kind):
                array = k.split(".", 1)[1] if "." in k else None
                values = np.asarray(self._natural(kind, np.asarray(raw[k]), np))
                if kind == "sharing":
                    # row s: task s's weights; column t: the latent weights Z[t] they mix
                    axes, labels = ["task", "latent"], {"task": list(self.tasks), "latent": list(self.tasks)}
                elif h.granularity == "weight" and kind != "training_data":
                    multitask = bool(self.tasks)
                    axes = _weight_axes(self.shapes[array], multitask)
                    labels = {"task": list(self.tasks)} if multitask else {}
                else:
                    axes, labels = self._axes(h)
                out[k] = HyperValue(values, axes, labels, learned=h.learn)
        return out

    def _axes(self, h: Hyper) -> tuple[list[str], dict[str, list]]:
        steps = list(range(self.steps))
        arrays = self.arrays
        if h.kind == "training_data":
            return ["example", "feature"], {"example": list(self.train_labels)}
        if h.granularity == "example":
            # Each example by its row in the source (the upload's own order), with its given label
            # and, where known, whether it is mislabelled: what a search for bad examples reports.
            rows = list(self.train_rows) or list(range(self.train_shape[0]))
            labels: dict[str, list] = {"example": rows, "label": list(self.train_labels)}
            if self.train_noisy:
                labels["noisy"] = list(self.train_noisy)
            return ["example"], labels
        if h.granularity == "class":
            return ["class"], {"class": list(range(self.n_classes))}
        return {
            "global": ([], {}),
            "layer": (["layer"], {"layer": arrays}),
            "step": (["step"], {"step": steps}),
            "layer_step": (["step", "layer"], {"step": steps, "layer": arrays}),
        }[h.granularity]
