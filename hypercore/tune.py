"""The meta-optimisation loop: train, reverse, update the hyperparameters, report, repeat.

Meta-iteration ``k`` (0-based), as in the paper's experiments (HIPS/hypergrad
``experiments/Feb_3_training_schedules``):

1. fresh initial weights ``w0 = init_scale * N(0, 1)`` from ``(seed, k)``;
2. T steps of the training optimizer (``training.optimizer``: SGD with momentum by default, or Adam,
   or AdamW) on minibatches drawn from ``(seed, k, t)`` by the engine (`hypercore.reversible_sgd` or
   `hypercore.reversible_adam`, or the stored-trajectory `hypercore.unrolled_sgd` or
   `hypercore.unrolled_adam` for comparison);
3. the meta-objective at ``w_T``: ``valid_loss`` (mean NLL on the validation set, the default) or
   ``train_loss`` (mean NLL on the whole training set, the schedule experiment's), and its gradient
   with respect to every learned raw hyperparameter through the training; on a dataset with a real
   target (a regression, ``dataset.target == "real"``) every loss is the mean squared error
   ``(1 / (n k)) sum_j sum_o (f(x_j)_o - y_jo)^2`` over the ``n`` examples and ``k`` outputs
   (`hypercore.models.mse`; the training loss adds the same L2 penalties), and there are no error
   rates (``valid_error`` and ``test_error`` are None);
4. the chaos guard accepts the step (the meta-optimiser updates the raw hyperparameters) or backs off
   (the previous step is undone and the meta step size shrunk; see `hypercore.meta`);
5. the callback receives a `Record`; returning ``True`` from it stops the run.

Everything a meta-iteration depends on is in a `Checkpoint` (raw hyperparameters, optimiser state,
the step before it for the guard, meta_iter, seed): a run resumed from any record's checkpoint ends
bit-identical to the uninterrupted run. One jitted function computes the objective, the metrics
and the hypergradient. It takes the seed, the datasets and the hyperparameters' values as
arguments, so it compiles once per problem structure (model, hyperparameter layout, shapes: jobs
that differ only in seed, data or values share it, in the process and in the persistent
compilation cache). The information buffer's capacity is the one static number that values
decide. What the floors need always suffices (a learned momentum or beta is clamped to its ``min``
and the engine's weight-decay factor is at least 0.5, so ``buffer_capacity(T, floor)`` slots, or
Adam's ``adam_capacity(T, b1 floor, b2 floor, decay floor)``), and that is what the server sized
the job's memory for (`hypercore.budget`). A buffer of at most `EAGER_BUFFER_BYTES` there is
allocated at that capacity from the start, so the program depends on no value; a larger one starts
at twice the need, and compiles again only when falling gammas (or betas, or weight-decay factors)
need more, at least doubling each time, never past the floors' need.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypercore import (
    _x64,  # noqa: F401  (configures JAX for the engine before any array exists)
    vocab,
)
from hypercore import data as _data
from hypercore import meta as _meta
from hypercore import models as _models
from hypercore._reference import unrolled_sgd
from hypercore.adam import reversible_adam, unrolled_adam
from hypercore.budget import adam_capacity, buffer_bytes
from hypercore.hyper import ConfigError, Hyper, HyperSet, HyperValue
from hypercore.reversible import ReversalReport, buffer_capacity, empty_report, reversible_sgd
from hypercore.steps import step_dict

OBJECTIVES = ("valid_loss", "train_loss")
ENGINES = ("reversible", "unrolled")
_CHECKPOINT_VERSION = 1


class ProblemError(ConfigError):
    """The pieces of a tuning problem do not fit together (model and dataset, batch size, ...)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not belong to this problem."""


class ReversalError(RuntimeError):
    """The backward pass did not retrace the forward one bit for bit: the training loss is not a
    deterministic function of ``(w, meta, t)``. The hypergradient would be wrong, so the run stops."""


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """Everything `tune` needs. Build it with `Problem.build` (or `hypercore.problem_from_spec`).

    ``batch_size=None`` (or the training-set size) trains on the full batch every step.
    ``resplit`` draws a new train/valid split of the training and validation examples every
    meta-iteration (`hypercore.data.resplit_indices`; the test split stays as it is), so many
    hyperparameters cannot fit one validation set's noise.
    ``compiled`` caches the problem's inputs on the device (`_inputs`); the jitted programs are
    shared by every problem of the same structure in the process (`_program`), so a second `tune`
    call on this problem (resuming, say), or on one that differs only in its seed, data or
    hyperparameter values, compiles nothing.
    `target` is the dataset's: class labels (NLL, error rates) or a real target (MSE, no error rates).
    """

    model: Any
    dataset: Any
    hypers: HyperSet
    batch_size: int | None
    objective: str
    meta: _meta.MetaConfig
    iterations: int
    seed: int
    resplit: bool = False
    compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    def activation_units(self) -> int:
        """The activations one training example adds to a step, in array elements, counted on the
        built model (`hypercore.models.held_activation_units`): what a worker's memory estimate of a
        plugin model uses (`jobs.spec.built_model_problems`)."""
        X = self.dataset.X_train
        return _models.held_activation_units(self.model, X.shape[1:], X.dtype)

    @property
    def target(self) -> str:
        """``"class"`` (the losses are NLLs, with error rates) or ``"real"`` (mean squared errors)."""
        return getattr(self.dataset, "target", "class")

    @classmethod
    def build(
        cls,
        model,
        dataset,
        hyperparameters: Mapping[str, Hyper],
        *,
        steps: int,
        batch_size: int | None = None,
        objective: str = "valid_loss",
        meta: _meta.MetaConfig | None = None,
        iterations: int = 50,
        seed: int = 0,
        resplit: bool = False,
        training_optimizer: str = vocab.DEFAULT_TRAINING_OPTIMIZER,
    ) -> Problem:
        """Validate the pieces against each other; errors name the job-spec field.

        ``training_optimizer`` (``"sgd_momentum"``, ``"adam"`` or ``"adamw"``,
        `hypercore.vocab.TRAINING_OPTIMIZERS`) trains the model; ``meta`` optimises the
        hyperparameters."""
        meta = meta or _meta.MetaConfig()
        meta.validate()
        if objective not in OBJECTIVES:
            raise ProblemError(
                "objective", f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}"
            )
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ProblemError("meta.iterations", f"must be a positive integer, got {iterations!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ProblemError("seed", f"must be an integer in [0, 2**31), got {seed!r}")
        n_train = dataset.n_train
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ProblemError("dataset.batch_size", f"must be a positive integer, got {batch_size!r}")
            if batch_size > n_train:
                raise ProblemError(
                    "dataset.batch_size", f"{batch_size} exceeds the {n_train} training examples"
                )
            if batch_size == n_train:
                batch_size = None
        if objective == "valid_loss" and dataset.n_valid == 0:
            raise ProblemError("dataset.valid", "the valid_loss objective needs validation examples, got 0")
        if not isinstance(resplit, bool):
            raise ProblemError("dataset.resplit", f"must be true or false, got {resplit!r}")
        if resplit and dataset.n_valid == 0:
            raise ProblemError("dataset.resplit", "re-splits the validation examples, but there are none")
        if resplit and "training_data" in hyperparameters:
            raise ProblemError(
                "dataset.resplit",
                "re-draws the training examples every meta-iteration, which hyperparameters.training_data "
                "tunes: use one or the other",
            )
        if resplit and "example_weight" in hyperparameters:
            raise ProblemError(
                "dataset.resplit",
                "re-draws which examples train every meta-iteration, so a weight per training example "
                "(hyperparameters.example_weight) would not stay with its example: use one or the other",
            )
        _models.check_model(model)
        if getattr(dataset, "target", "class") == "real":
            _check_real_target(hyperparameters)
        multitask = callable(getattr(model, "share", None))  # a multi-task model mixes its nets
        if multitask:
            if model.n_tasks != dataset.n_tasks:
                raise ProblemError(
                    "model",
                    f"the model has nets for {model.n_tasks} tasks but the dataset has {dataset.n_tasks}"
                    + ("" if dataset.n_tasks > 1 else ": use a multi-task dataset such as mnist5k_tasks"),
                )
            if batch_size is not None:
                raise ProblemError(
                    "dataset.batch_size",
                    "a multi-task model trains full-batch (its rows are laid out task by task): leave it out",
                )
            if "example_weight" in hyperparameters:
                raise ProblemError(
                    "hyperparameters.example_weight",
                    "weighs the examples of a single-task model; a multitask_mlp has none to weigh",
                )
        _check_model_fits(model, dataset)
        hypers = HyperSet.build(
            hyperparameters,
            steps=steps,
            shapes=model.shapes,
            train_shape=np.shape(dataset.X_train),
            train_labels=dataset.y_train if getattr(dataset, "target", "class") == "class" else (),
            tasks=dataset.task_names if multitask else (),
            sharing_layers=model.sharing_layers() if multitask else (),
            training_optimizer=training_optimizer,
            n_classes=int(getattr(dataset, "n_classes", 0) or 0),
            train_rows=getattr(dataset, "train_rows", None),
            train_noisy=getattr(dataset, "noisy", None),
        )
        if not hypers.learned_kinds():
            raise ProblemError(
                "hyperparameters", "no hyperparameter has learn: true, so there is nothing to tune"
            )
        return cls(model, dataset, hypers, batch_size, objective, meta, iterations, seed, resplit)


def _check_real_target(hyperparameters: Mapping[str, Hyper]) -> None:
    """What a real target cannot train with: learned training data is labelled by class, and so is
    a weight per class."""
    if "training_data" in hyperparameters:
        raise ProblemError(
            "hyperparameters.training_data",
            "learns training inputs labelled by class; this dataset's target is real (a regression)",
        )
    weights = hyperparameters.get("example_weight")
    if weights is not None and weights.granularity == "class":
        raise ProblemError(
            "hyperparameters.example_weight.granularity",
            "one weight per class needs class labels; this dataset's target is real (a regression): "
            "use granularity example",
        )


def _check_model_fits(model, dataset) -> None:
    """The model must take the dataset's features and give one logit per class (one output per
    column of a real target)."""
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), {a: 1.0 for a in model.shapes}))
    rows = getattr(model, "n_tasks", 1)  # a multi-task model takes one row per task at least
    X = jax.ShapeDtypeStruct((rows, dataset.n_features), jax.tree.leaves(params)[0].dtype)
    try:
        logits = jax.eval_shape(model.apply, params, X)
    except (TypeError, ValueError) as e:
        raise ProblemError(
            "model", f"the model does not take the dataset's {dataset.n_features} features: {e}"
        ) from e
    n_outputs = getattr(dataset, "n_outputs", dataset.n_classes)
    if logits.shape != (rows, n_outputs):
        has = (
            f"a real target of {n_outputs} outputs"
            if getattr(dataset, "target", "class") == "real"
            else f"{dataset.n_classes} classes"
        )
        raise ProblemError("model", f"the model gives {logits.shape[-1]} logits but the dataset has {has}")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The loop's whole state after ``meta_iter`` finished meta-iterations (the next one to run).

    ``learned``: raw learned hyperparameters; ``opt_state``: the meta-optimiser's state as its
    flattened leaves; ``prev_*``: the same before the last accepted step (the guard returns there);
    ``guard``: the guard's memory. Serialised with `to_bytes` as an ``.npz`` (no pickle).
    """

    meta_iter: int
    seed: int
    learned: dict[str, np.ndarray]
    opt_state: tuple[np.ndarray, ...]
    prev_learned: dict[str, np.ndarray]
    prev_opt_state: tuple[np.ndarray, ...]
    guard: _meta.GuardState

    def to_bytes(self) -> bytes:
        header = {
            "version": _CHECKPOINT_VERSION,
            "meta_iter": self.meta_iter,
            "seed": self.seed,
            "learned": list(self.learned),
            "n_opt": len(self.opt_state),
            "guard_scale": self.guard.scale,
            "guard_backoffs": self.guard.backoffs,
        }
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
        for k in self.learned:
            arrays[f"learned/{k}"] = self.learned[k]
            arrays[f"prev_learned/{k}"] = self.prev_learned[k]
        for i, (a, b) in enumerate(zip(self.opt_state, self.prev_opt_state, strict=True)):
            arrays[f"opt/{i}"] = a
            arrays[f"prev_opt/{i}"] = b
        arrays["guard_norms"] = np.asarray(self.guard.norms, np.float64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Checkpoint:
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("version") != _CHECKPOINT_VERSION:
                    raise CheckpointError(
                        f"checkpoint version {header.get('version')!r}, expected {_CHECKPOINT_VERSION}"
                    )
                n = header["n_opt"]
                return cls(
                    meta_iter=int(header["meta_iter"]),
                    seed=int(header["seed"]),
                    learned={k: z[f"learned/{k}"] for k in header["learned"]},
                    opt_state=tuple(z[f"opt/{i}"] for i in range(n)),
                    prev_learned={k: z[f"prev_learned/{k}"] for k in header["learned"]},
                    prev_opt_state=tuple(z[f"prev_opt/{i}"] for i in range(n)),
                    guard=_meta.GuardState(
                        float(header["guard_scale"]),
                        tuple(float(x) for x in z["guard_norms"]),
                        int(header["guard_backoffs"]),
                    ),
                )
        except CheckpointError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"not a hypercore checkpoint: {e}") from e


@dataclasses.dataclass(frozen=True)
class Record:
    """What one meta-iteration produced, handed to the callback.

    ``meta_iter`` is 0-based. The losses and errors are at the end of this meta-iteration's
    training, with the hyperparameters it started from; ``hyperparameters`` are those *after* its
    update (what the next meta-iteration uses, and what ``checkpoint`` holds). ``test_*`` are None
    without test examples; ``*_error`` are None for a real target (a regression has no classes).
    ``elapsed_s``: this meta-iteration's wall time (the first includes compilation).
    ``reversal_exact``: the engine's report (None with the unrolled engine, which does not reverse).
    ``events``: the chaos guard's back-offs in this meta-iteration.
    ``trained_with``: the hyperparameters this meta-iteration trained with, before its update (the
    initial values for the first; for a later one, the previous record's ``hyperparameters``, the
    same arrays): what its losses were measured with, and what a best meta-iteration's export holds.
    """

    meta_iter: int
    objective: float
    train_loss: float
    valid_loss: float
    valid_error: float | None
    test_loss: float | None
    test_error: float | None
    hypergrad_norm: float
    elapsed_s: float
    reversal_exact: bool | None
    events: tuple[_meta.GuardEvent, ...]
    hyperparameters: dict[str, HyperValue]
    checkpoint: Checkpoint
    trained_with: dict[str, HyperValue] = dataclasses.field(default_factory=dict)

    def step(self) -> dict:
        """The REST ``step`` fields (`hypercore.steps`); non-finite numbers become None (JSON has
        no NaN)."""
        return step_dict(self)


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """The records of the meta-iterations run by this call, the final checkpoint and hyperparameters,
    and whether the callback stopped the run early."""

    records: list[Record]
    checkpoint: Checkpoint
    hyperparameters: dict[str, HyperValue]
    stopped: bool


def _metrics(model, w, X, y, target: str) -> dict[str, jax.Array]:
    """``loss`` and, for class labels, ``error`` (the argmax error rate) of the weights ``w``."""
    outputs = model.apply(w, X)
    loss = _models.loss_of(model, target)(outputs, y)
    if target == "real":
        return {"loss": loss}
    return {"loss": loss, "error": _models.error_rate(outputs, y)}


def _inputs(problem: Problem) -> dict[str, jax.Array]:
    """What a job's compiled programs take besides the hyperparameters: the seed and the dataset's
    splits (the training and validation examples pooled, with their strata, for a re-split), on the
    device once per problem. Arguments rather than constants, so that jobs of the same shapes share
    one program (`_program`)."""
    ds = problem.dataset
    key = ("inputs", id(ds), problem.seed, problem.resplit)
    if key not in problem.compiled:
        dtype = _weight_dtype(problem.model)
        inputs = {"seed": jnp.asarray(problem.seed, jnp.int64)}
        if problem.resplit:
            inputs["strata"] = jnp.asarray(_data.split_strata(ds), jnp.int32)
            inputs["X_pool"] = jnp.asarray(np.concatenate([ds.X_train, ds.X_valid]), dtype)
            inputs["y_pool"] = jnp.asarray(np.concatenate([ds.y_train, ds.y_valid]))
        else:
            inputs["X_train"], inputs["y_train"] = jnp.asarray(ds.X_train, dtype), jnp.asarray(ds.y_train)
            inputs["X_valid"], inputs["y_valid"] = jnp.asarray(ds.X_valid, dtype), jnp.asarray(ds.y_valid)
        if ds.n_test > 0:
            inputs["X_test"], inputs["y_test"] = jnp.asarray(ds.X_test, dtype), jnp.asarray(ds.y_test)
        assert inputs["seed"].dtype == jnp.int64, "the engine runs with x64 on (hypercore._x64)"
        problem.compiled[key] = (inputs, ds)  # the dataset kept alive, so its id is not reused
    return problem.compiled[key][0]


# The most minibatch indices (steps x batch size, int32) drawn ahead of training: 16 MiB.
_BATCH_TABLE_ENTRIES = 1 << 22


def _make_objective(problem: Problem, engine: str):
    """``(learned, fixed, meta_iter, report, inputs, capacity) -> (objective, metrics)`` of one
    training run, ``inputs`` being `_inputs`: the seed and the datasets are arguments, not constants,
    and the engine does not treat them as differentiable (the loss closes over them). A re-split
    picks rows of the pooled training and validation examples by integer indices drawn from
    ``meta_iter``; the gathers happen inside the loss, so the engine still sees no float input but
    the weights and ``meta``.

    Only the problem's structure is closed over (`_program_key`): the model, the hyperparameters'
    layout, batch size, objective, re-splitting and target."""
    model, hs = problem.model, problem.hypers
    dtype = _weight_dtype(model)
    n_train, batch_size, resplit = problem.dataset.n_train, problem.batch_size, problem.resplit
    target = problem.target
    train_loss_fn = _models.loss_of(model, target)

    def rows(X, y, idx):
        return (X, y) if idx is None else (X[idx], y[idx])

    def objective(learned, fixed, meta_iter, report, inputs, capacity):
        seed = inputs["seed"]
        if resplit:
            X_train = X_valid = inputs["X_pool"]
            y_train = y_valid = inputs["y_pool"]
            train_rows, valid_rows = _data.resplit_indices(seed, meta_iter, inputs["strata"], n_train)
        else:
            X_train, y_train = inputs["X_train"], inputs["y_train"]
            X_valid, y_valid = inputs["X_valid"], inputs["y_valid"]
            train_rows = valid_rows = None
        w_root = _keys(seed)[0]
        raw = {**fixed, **learned}
        scales = {k: jnp.asarray(v, dtype) for k, v in hs.init_scales(raw).items()}
        w0 = model.init(jax.random.fold_in(w_root, meta_iter), scales)
        meta = {}
        l2 = hs.l2(raw)
        if l2 is not None:
            meta["l2"] = {k: jnp.asarray(v, dtype) for k, v in l2.items()}
        X_syn = hs.training_data(raw)
        if X_syn is not None:
            meta["X"] = X_syn.astype(dtype)
        sharing = hs.sharing(raw)
        if sharing is not None:
            meta["sharing"] = {k: jnp.asarray(v, dtype) for k, v in sharing.items()}
        # A per-class weight goes to each training example by its label (the labels of the
        # training rows, before any re-split: Problem.build refuses example weights with one).
        omega = hs.example_weights(raw, labels=y_train)
        if omega is not None:
            meta["omega"] = jnp.asarray(omega, dtype)

        batches = None
        if batch_size is not None and batch_size * hs.steps <= _BATCH_TABLE_ENTRIES:
            # Every step's minibatch drawn at once, before training: the same indices as drawing
            # each at its step (`_data.batch_indices` is a pure function of (seed, meta_iter, t)),
            # without the random generator's small kernels in every forward and reversed step.
            steps = jnp.arange(hs.steps, dtype=jnp.int32)
            batches = jax.vmap(lambda t: _data.batch_indices(seed, meta_iter, t, n_train, batch_size))(steps)

        def net(w, meta):
            """The weights the model runs with: SGD trains a multi-task model's latent weights, which
            ``meta["sharing"]`` mixes across tasks (the L2 penalty stays on the latent ones)."""
            return model.share(w, meta["sharing"]) if "sharing" in meta else w

        def loss(w, meta, t):
            X = meta.get("X", X_train)  # training_data is never re-split (Problem.build)
            idx = train_rows
            if batch_size is not None:
                if batches is not None:
                    idx = batches[t]
                else:
                    idx = _data.batch_indices(seed, meta_iter, t, n_train, batch_size)
                idx = idx if train_rows is None else train_rows[idx]
            xb, yb = rows(X, y_train, idx)
            outputs = model.apply(net(w, meta), xb)
            if "omega" in meta:  # example weights: the weighted mean of the examples' own losses
                omega = meta["omega"] if idx is None else meta["omega"][idx]
                each = jax.vmap(lambda o, y: train_loss_fn(o[None], y[None]))(outputs, yb)
                out = jnp.sum(omega * each) / jnp.sum(omega)
            else:
                out = train_loss_fn(outputs, yb)
            if "l2" in meta:
                out = out + _models.l2_penalty(w, meta["l2"])
            return out

        w_T = net(_train(hs, engine, loss, w0, meta, raw, capacity, report), meta)
        splits = {"train": rows(X_train, y_train, train_rows), "valid": rows(X_valid, y_valid, valid_rows)}
        if "X_test" in inputs:
            splits["test"] = (inputs["X_test"], inputs["y_test"])
        m = {}
        for split, (X, y) in splits.items():
            for name, value in _metrics(model, w_T, X, y, target).items():
                if (split, name) != ("train", "error"):
                    m[f"{split}_{name}"] = value
        return m[problem.objective], m

    return objective


def _train(hs: HyperSet, engine, loss, w0, meta, raw, capacity, report):
    """``w_T`` after ``hs.steps`` steps of the training optimizer, with the schedules from ``raw``;
    ``engine`` an optax optimizer instead of a name: that one (`evaluate`'s ``optimizer``)."""
    if isinstance(engine, optax.GradientTransformation):
        return _optax_train(engine, loss, w0, meta, hs.steps)
    alphas = hs.schedule("learning_rate", raw)
    if hs.training_optimizer == "sgd_momentum":
        gammas = hs.schedule("momentum", raw)
        if engine == "reversible":
            return reversible_sgd(loss, w0, meta, alphas, gammas, capacity=capacity, report=report)
        # The plain scan keeps the weights' dtype only if the schedules share it.
        dtype = jax.tree.leaves(w0)[0].dtype
        alphas, gammas = jax.tree.map(lambda x: x.astype(dtype), (alphas, gammas))
        return unrolled_sgd(loss, w0, meta, alphas, gammas)
    b1, b2 = hs.schedule("beta1", raw), hs.schedule("beta2", raw)
    decay = hs.weight_decay(raw)
    if engine == "reversible":
        return reversible_adam(loss, w0, meta, alphas, b1, b2, decay, capacity=capacity, report=report)
    return unrolled_adam(loss, w0, meta, alphas, b1, b2, decay)  # on the engine's quantised values


def _optax_train(opt: optax.GradientTransformation, loss, w0, meta, steps: int):
    """``steps`` steps of an optax optimizer on the same loss, minibatches and ``w0`` as the engine's
    run; for a schedule-free one, the weights it evaluates at
    (`optax.contrib.schedule_free_eval_params`)."""
    grad = jax.grad(loss)

    def step(carry, t):
        w, state = carry
        updates, state = opt.update(grad(w, meta, t), state, w)
        return (optax.apply_updates(w, updates), state), None

    (w, state), _ = jax.lax.scan(step, (w0, opt.init(w0)), jnp.arange(steps, dtype=jnp.int32))
    if any(_is_sf(s) for s in jax.tree.leaves(state, is_leaf=_is_sf)):
        return optax.contrib.schedule_free_eval_params(state, w)
    return w


def _is_sf(x) -> bool:
    return isinstance(x, optax.contrib.ScheduleFreeState)


def buffer_slots(hs: HyperSet, raw: Mapping[str, np.ndarray]) -> int:
    """The information buffer's slots for one training run with these concrete raw values: SGD's
    `buffer_capacity` at the smallest momentum, or `hypercore.budget.adam_capacity` at the smallest
    betas and weight-decay factor."""
    if hs.training_optimizer == "sgd_momentum":
        return buffer_capacity(hs.steps, hs.min_momentum(raw))
    return adam_capacity(hs.steps, hs.minimum("beta1", raw), hs.minimum("beta2", raw), hs.min_decay(raw))


def _buffer_ceiling(hs: HyperSet) -> int:
    """The most slots any run of ``hs`` needs: at the floors of the momentum, or of the betas and
    the weight-decay factor (what `hypercore.budget` sizes the job's memory for)."""
    if hs.training_optimizer == "sgd_momentum":
        return buffer_capacity(hs.steps, hs.floor("momentum"))
    return adam_capacity(hs.steps, hs.floor("beta1"), hs.floor("beta2"), hs.decay_floor())


# A buffer that takes at most this much at the floors' capacity is allocated at that capacity from
# the first meta-iteration: the job's programs then depend on no hyperparameter value at all (no
# compilation when a job differs from an earlier one only in its values, nor when a learned momentum
# falls during the run). A larger one starts at twice what the values need (`_grown_capacity`).
EAGER_BUFFER_BYTES = 64 << 20


def _first_capacity(hs: HyperSet, needed: int) -> int:
    """The information buffer's slots for a first run that needs ``needed``: the floors' capacity
    (`_buffer_ceiling`) when its buffer is small (`EAGER_BUFFER_BYTES`), else `_grown_capacity`."""
    ceiling = _buffer_ceiling(hs)
    n_weights = sum(math.prod(shape) for shape in hs.shapes.values())
    if buffer_bytes(n_weights, ceiling) <= EAGER_BUFFER_BYTES:
        return max(needed, ceiling)
    return _grown_capacity(hs, needed, None)


def _grown_capacity(hs: HyperSet, needed: int, capacity: int | None) -> int:
    """The slots for a run that needs ``needed`` after one that had ``capacity`` (None: none yet):
    at least twice the old (or the need), so that a run compiles O(log) times at most, but not past
    the floors' need (which `hypercore.budget` sized the job's memory for) unless ``needed`` is."""
    return max(needed, min(2 * (capacity or needed), _buffer_ceiling(hs)))


def _make_hypergrad(problem: Problem, engine: str):
    """The jitted ``(inputs, learned, fixed, meta_iter, capacity) -> (objective, metrics, hypergrad,
    norm, report)``."""
    grad_fn = jax.value_and_grad(_make_objective(problem, engine), argnums=(0, 3), has_aux=True)

    @partial(jax.jit, static_argnames="capacity")
    def hypergrad(inputs, learned, fixed, meta_iter, capacity):
        (obj, m), (g, rep) = grad_fn(learned, fixed, meta_iter, empty_report(), inputs, capacity)
        return obj, m, g, optax.tree.norm(g), rep

    return hypergrad


def _keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """Two independent streams from the seed: initial weights (folded with meta_iter) and the
    random start of ``training_data``."""
    w_root, data_key = jax.random.split(jax.random.PRNGKey(seed))
    return w_root, data_key


def _weight_dtype(model):
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), {a: 1.0 for a in model.shapes}))
    return jax.tree.leaves(shapes)[0].dtype


def _host(tree: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in tree.items()}


def _initial_checkpoint(problem: Problem, optimizer: optax.GradientTransformation) -> Checkpoint:
    learned, _ = problem.hypers.init_raw(_keys(problem.seed)[1], _train_inputs(problem))
    opt_leaves = tuple(np.asarray(x) for x in jax.tree.leaves(optimizer.init(_device(learned))))
    return Checkpoint(0, problem.seed, learned, opt_leaves, learned, opt_leaves, _meta.GuardState())


def _device(tree: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in tree.items()}


def _check_fits(ckpt: Checkpoint, fresh: Checkpoint) -> None:
    """Refuse a checkpoint from another problem: seed, keys, shapes and dtypes must all match."""
    if ckpt.seed != fresh.seed:
        raise CheckpointError(f"checkpoint seed {ckpt.seed} differs from the problem's seed {fresh.seed}")

    def sig(arrays):
        return [(np.shape(a), np.asarray(a).dtype.str) for a in arrays]

    def named(learned):  # key order is not significant (a JSON or database round trip may change it)
        return {name: (np.shape(a), np.asarray(a).dtype.str) for name, a in sorted(learned.items())}

    if named(ckpt.learned) != named(fresh.learned):
        raise CheckpointError(
            f"checkpoint hyperparameters {named(ckpt.learned)} do not match "
            f"the problem's {named(fresh.learned)}"
        )
    if sig(ckpt.opt_state) != sig(fresh.opt_state):
        raise CheckpointError("checkpoint meta-optimiser state does not match the problem's meta-optimiser")


def _make_evaluate(problem: Problem, engine: str):
    """The jitted ``(inputs, raw, meta_iter, capacity) -> metrics`` of one forward training run."""
    objective = _make_objective(problem, engine)

    @partial(jax.jit, static_argnames="capacity")
    def evaluate(inputs, raw, meta_iter, capacity):
        return objective(raw, {}, meta_iter, empty_report(), inputs, capacity)[1]

    return evaluate


# The jitted programs of the last problems run in this process, by `_program_key`: shared by every
# problem of the same structure, whatever its seed, data and hyperparameter values.
_PROGRAMS: OrderedDict[tuple, Any] = OrderedDict()
_PROGRAM_CACHE_SIZE = 16


def _program_key(problem: Problem, engine, make) -> tuple:
    """What a compiled program depends on: the model (equal descriptions hash equal; another model,
    a plugin's say, by identity), the hyperparameters' layout (`HyperSet.program_key`), the batch
    size, objective, re-splitting and target, and the shapes and dtypes of `_inputs`. Not the seed,
    the dataset's contents nor any hyperparameter's value: those are arguments."""
    model = problem.model
    try:
        hash(model)
    except TypeError:  # an unhashable model shares programs only with itself
        model = ("id", id(problem.model))
    shapes = tuple((k, v.shape, v.dtype.str) for k, v in _inputs(problem).items())
    return (
        make.__name__,
        engine,
        model,
        problem.hypers.program_key(),
        problem.batch_size,
        problem.objective,
        problem.resplit,
        problem.target,
        shapes,
    )


def _program(problem: Problem, engine, make=_make_hypergrad):
    """The jitted program ``make`` builds (the hypergradient by default), built once per
    `_program_key` and shared by every problem with that key in this process: a job that differs
    from an earlier one only in its seed, data or hyperparameter values compiles nothing, and one in
    a fresh process finds the same program in the persistent compilation cache. Its first argument
    is `_inputs`."""
    key = _program_key(problem, engine, make)
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
    else:
        # The value keeps the problem's model alive, so an id in the key cannot be reused.
        _PROGRAMS[key] = (make(problem, engine), problem.model)
        while len(_PROGRAMS) > _PROGRAM_CACHE_SIZE:
            _PROGRAMS.popitem(last=False)
    return _PROGRAMS[key][0]


def _jitted(problem: Problem, engine, make=_make_hypergrad):
    """`_program` with this problem's `_inputs` bound: ``(learned, fixed, meta_iter, capacity)``
    for the hypergradient, ``(raw, meta_iter, capacity)`` for `evaluate`."""
    return partial(_program(problem, engine, make), _inputs(problem))


_META_UPDATES: dict[_meta.MetaConfig, Any] = {}


def _meta_update_fn(problem: Problem, optimizer: optax.GradientTransformation):
    """The jitted meta-update ``(learned, opt_state, hypergrad, scale) -> (learned, opt_state)``: the
    optimiser's update times the guard's step multiplier ``scale``; one per meta-optimiser
    configuration in the process (``optimizer`` is `hypercore.meta.build` of ``problem.meta``)."""
    if problem.meta not in _META_UPDATES:

        @jax.jit
        def meta_update(learned, opt_state, grads, scale):
            updates, opt_state = optimizer.update(grads, opt_state, learned)
            updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
            return optax.apply_updates(learned, updates), opt_state

        if len(_META_UPDATES) >= _PROGRAM_CACHE_SIZE:
            _META_UPDATES.pop(next(iter(_META_UPDATES)))
        _META_UPDATES[problem.meta] = meta_update
    return _META_UPDATES[problem.meta]


def initial_hyperparameters(problem: Problem, *, include_fixed: bool = False) -> dict[str, np.ndarray]:
    """The learned hyperparameters' raw starting values (log learning rates, logit momenta, ...);
    with ``include_fixed``, the fixed ones' values too (what `evaluate` accepts)."""
    learned = _initial_checkpoint(problem, _meta.build(problem.meta)).learned
    return {**_fixed_raw(problem), **learned} if include_fixed else learned


def hyperparameter_values(problem: Problem, checkpoint: Checkpoint | None = None) -> dict[str, HyperValue]:
    """Every hyperparameter in natural units as meta-iteration ``checkpoint.meta_iter`` trains and
    scores them (default: the initial values, meta-iteration 0's): a `Record` holds the values
    *after* its update, so meta-iteration ``k`` evaluated record ``k - 1``'s and the first one
    evaluated these."""
    learned = initial_hyperparameters(problem) if checkpoint is None else checkpoint.learned
    return problem.hypers.to_natural({**_fixed_raw(problem), **learned})


def hypergradient(
    problem: Problem,
    learned: Mapping[str, np.ndarray] | None = None,
    *,
    meta_iter: int = 0,
    engine: str = "reversible",
) -> tuple[float, dict[str, float], dict[str, np.ndarray], ReversalReport | None]:
    """One meta-iteration's objective, metrics and hypergradient, without updating anything.

    ``learned``: raw values of the learned hyperparameters (default: their initial values);
    the hypergradient is with respect to them. Returns ``(objective, metrics, hypergrad, report)``;
    ``report`` is None for the unrolled engine. For notebooks and tests (finite differences, the
    paper's hypergradient-smoothness plots).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    hs = problem.hypers
    learned = _device(initial_hyperparameters(problem) if learned is None else learned)
    fixed_np = _fixed_raw(problem)
    capacity = None
    if engine == "reversible":
        capacity = _first_capacity(hs, buffer_slots(hs, {**fixed_np, **_host(learned)}))
    obj, metrics, grads, _, rep = _jitted(problem, engine)(
        learned, _device(fixed_np), jnp.int32(meta_iter), capacity
    )
    report = ReversalReport.from_array(rep) if engine == "reversible" else None
    return float(obj), {k: float(v) for k, v in metrics.items()}, _host(grads), report


def evaluate(
    problem: Problem,
    hyperparameters: Mapping[str, np.ndarray] | None = None,
    *,
    meta_iter: int = 0,
    capacity: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
) -> dict[str, float]:
    """The metrics of one training run (forward only, exact engine): what a meta-iteration scores.

    ``hyperparameters``: raw values (log learning rates, logit momenta, ...) of any learned or fixed
    hyperparameter, keyed as in `initial_hyperparameters`; the rest keep their starting values.
    ``meta_iter`` picks the initial weights and minibatches, as in `tune`. ``capacity``: the
    information buffer's slots (default: enough for the floors when that buffer is small, so any
    values share one program, else for these momenta; pass a fixed, larger one to evaluate many
    configurations without recompiling). Returns ``train_loss``, ``valid_loss``,
    ``valid_error`` and, with a test split, ``test_loss`` and ``test_error`` (no ``*_error`` for a
    real target); NaN if training diverged.
    For black-box searches and notebooks.

    ``optimizer``: an optax optimizer to train with instead of the training optimizer (plain
    floating point, no reversal), from the same initial weights on the same minibatches, with the
    same L2 penalties: to compare with tuning-free optimizers such as ``optax.contrib.prodigy``.
    The learning rate, momentum and betas are then not used.
    """
    hs = problem.hypers
    raw = initial_hyperparameters(problem, include_fixed=True)
    unknown = sorted(set(hyperparameters or {}) - set(raw))
    if unknown:
        raise KeyError(f"unknown hyperparameters {unknown}; known: {sorted(raw)}")
    raw.update({k: np.asarray(v, np.asarray(raw[k]).dtype) for k, v in (hyperparameters or {}).items()})
    if optimizer is not None:
        capacity = 1  # unused
    elif capacity is None:
        capacity = _first_capacity(hs, buffer_slots(hs, raw))
    metrics = _jitted(problem, optimizer or "reversible", make=_make_evaluate)(
        _device(raw), jnp.int32(meta_iter), capacity
    )
    return {k: float(v) for k, v in metrics.items()}


def _fixed_raw(problem: Problem) -> dict[str, np.ndarray]:
    return problem.hypers.init_raw(_keys(problem.seed)[1], _train_inputs(problem))[1]


def _train_inputs(problem: Problem) -> np.ndarray:
    """The dataset's training inputs in the model's dtype: the ``"data"`` start of ``training_data``."""
    return np.asarray(problem.dataset.X_train, _weight_dtype(problem.model))


def tune(
    problem: Problem,
    *,
    callback: Callable[[Record], bool | None] | None = None,
    checkpoint: Checkpoint | None = None,
    iterations: int | None = None,
    engine: str = "reversible",
) -> TuneResult:
    """Run meta-iterations ``checkpoint.meta_iter .. iterations - 1`` (default: all of
    ``problem.iterations``, from the start) and return the result.

    ``callback(record)`` runs after every meta-iteration; returning ``True`` stops the run there
    (``TuneResult.stopped``). ``engine``: ``"reversible"`` (exact reversal, no stored trajectory) or
    ``"unrolled"`` (ordinary reverse mode through a stored trajectory, for comparison).

    Raises `ReversalError` if the engine's reversal is not exact and `hypercore.meta.MetaDivergedError`
    if the chaos guard gives up.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    iterations = problem.iterations if iterations is None else iterations
    hs, T = problem.hypers, problem.hypers.steps
    optimizer = _meta.build(problem.meta)
    fresh = _initial_checkpoint(problem, optimizer)
    state = fresh if checkpoint is None else checkpoint
    _check_fits(state, fresh)
    fixed_np = _fixed_raw(problem)
    fixed = _device(fixed_np)
    opt_def = jax.tree.structure(optimizer.init(_device(fresh.learned)))

    def opt_tree(leaves):
        return jax.tree.unflatten(opt_def, [jnp.asarray(x) for x in leaves])

    hypergrad = _jitted(problem, engine)
    meta_update = _meta_update_fn(problem, optimizer)
    learned, opt_state = _device(state.learned), opt_tree(state.opt_state)
    prev_learned, prev_opt_state = _device(state.prev_learned), opt_tree(state.prev_opt_state)
    guard = state.guard
    extra_capacity, capacity = 1, None
    records: list[Record] = []
    stopped = False
    for k in range(state.meta_iter, iterations):
        started = time.perf_counter()
        # the previous record's values after its update (no copy), or the values this call starts from
        trained_with = (
            records[-1].hyperparameters if records else hs.to_natural({**fixed_np, **_host(learned)})
        )
        while True:
            if engine == "reversible":
                # Capacity is static, so each new value compiles again: start at the floors' need
                # for a small buffer, else at twice what the smallest gamma (betas, decay factor)
                # needs, so that they can drift down for a while; never shrink it, and at least
                # double it when it must grow, so that a run compiles O(log) times at most; but
                # never past the ceiling (the floors' need, what hypercore.budget counts) unless an
                # overflow asks for more. The results do not depend on it.
                needed = buffer_slots(hs, {**fixed_np, **_host(learned)}) * extra_capacity
                if capacity is None:
                    capacity = _first_capacity(hs, needed)
                elif needed > capacity:
                    capacity = _grown_capacity(hs, needed, capacity)
            obj, metrics, grads, norm, rep = hypergrad(learned, fixed, jnp.int32(k), capacity)
            report = ReversalReport.from_array(rep) if engine == "reversible" else None
            if report is None or not report.buffer_overflow:
                break
            # The bucketed capacity is an upper bound from the smallest gamma; should it ever fall
            # short, a larger buffer (one recompilation) beats a NaN hypergradient.
            if extra_capacity >= 16:
                raise ReversalError(
                    f"meta-iteration {k}: the information buffer overflowed at {capacity} slots "
                    f"({report.slots_used} used) for {T} steps of {hs.training_optimizer}"
                )
            extra_capacity *= 2
        if report is not None and report.mismatch_step is not None and not report.overflow:
            raise ReversalError(
                f"meta-iteration {k}: the gradient recomputed at step {report.mismatch_step} differed "
                "from the forward pass; the training loss is not deterministic"
            )
        obj, norm = float(obj), float(norm)
        event, guard = _meta.guard_check(problem.meta.guard, guard, k, obj, norm)
        if event is None:
            new_learned, new_opt_state = meta_update(learned, opt_state, grads, jnp.float64(guard.scale))
            prev_learned, prev_opt_state = learned, opt_state
            learned, opt_state = new_learned, new_opt_state
        else:
            learned, opt_state = prev_learned, prev_opt_state
        ckpt = Checkpoint(
            meta_iter=k + 1,
            seed=problem.seed,
            learned=_host(learned),
            opt_state=tuple(np.asarray(x) for x in jax.tree.leaves(opt_state)),
            prev_learned=_host(prev_learned),
            prev_opt_state=tuple(np.asarray(x) for x in jax.tree.leaves(prev_opt_state)),
            guard=guard,
        )
        m = {key: float(v) for key, v in metrics.items()}
        record = Record(
            meta_iter=k,
            objective=obj,
            train_loss=m["train_loss"],
            valid_loss=m["valid_loss"],
            valid_error=m.get("valid_error"),
            test_loss=m.get("test_loss"),
            test_error=m.get("test_error"),
            hypergrad_norm=norm,
            elapsed_s=time.perf_counter() - started,
            reversal_exact=None if report is None else report.exact,
            events=() if event is None else (event,),
            hyperparameters=hs.to_natural({**fixed_np, **ckpt.learned}),
            checkpoint=ckpt,
            trained_with=trained_with,
        )
        records.append(record)
        state = ckpt
        if callback is not None and callback(record) is True:
            stopped = True
            break
    return TuneResult(records, state, hs.to_natural({**fixed_np, **state.learned}), stopped)
