"""A job's peak memory in the worker, estimated at submit from the spec alone: JAX-free.

The server refuses a spec whose estimate passes ``REVTUNE_MAX_JOB_MEMORY_BYTES``
(`jobs.spec.validate_spec`), so that a job inside every other limit cannot kill worker after worker
(a 3.8M-weight mlp at momentum 0.01 over 1000 steps needs 5.5 GiB of information buffer alone).
`peak_bytes(spec, shape)` is a pure function of the spec's dict and its dataset's `DatasetShape`,
the same inputs as the other limits, and returns an `Estimate` with one `Component` per consumer.

The information buffer's capacity is the engine's own: `capacity_for` lives here (the constants of
the buffer with it) and `hypercore._fixed` imports it, and `hypercore.tune` never allocates more
slots than ``capacity_for(steps, floor)`` for the smallest momentum the job can reach,
`hypercore.vocab.lowest` (a fixed momentum's init; a learned one's ``min``, which the engine clamps
it to). So the buffer's term is exact, not an estimate; the others are upper bounds with their
copies counted as below (N weights, T steps, ``V_L`` learned and ``V_F`` fixed hyperparameter
values, ``U = features + hidden widths + classes`` units a row passes through, float32 data and
weights, float64 hyperparameters):

==========================  ====================================================================
component                   bytes
==========================  ====================================================================
information buffer          ``8 N (1 + ceil(c / 2))``, ``c = capacity_for(T, lowest momentum)``:
                            one uint64 head per weight and 32-bit slots packed two per uint64
engine state                ``24 x 8 N``: fixed-point weights and velocities, their float64
                            cotangents, gradients, Hessian-vector products and the scans' carried
                            copies (XLA's buffer assignment measures about 14 such arrays)
activations                 ``4 U (8 B + 2 R)``: a step's minibatch of ``B`` rows (``batch_size``,
                            or the training set) through the net, its gradient and the
                            reverse-over-reverse VJP; scoring the ``R`` train, valid and test rows
hyperparameters             ``8 (32 V_L + 8 V_F)``: raw values, the previous step's, the
                            meta-optimiser's two moments and their previous ones, the
                            hypergradient, the update, the natural values and their cotangents
                            inside the step (a per-step schedule is T values per array; a
                            per-weight one N), the checkpoint's arrays and its serialised bytes
meta-iteration records      ``iterations x (8 (V_L + V_F + 6 V_L) + 64)``: `hypercore.tune` keeps
                            every meta-iteration's `Record` (every exported value, and the
                            checkpoint's learned values, previous values, two moments and the
                            meta-optimiser's step counts twice) for the run
training data               ``4 F (4 R + P) + 8 F S + 32 R``: the splits on the host, on the device
                            and as constants of the compiled programs, a re-split's pool of ``P``
                            rows, the ``S`` rows of the source (a built-in, or the upload as read),
                            and the labels
worker runtime              1.5 GiB: Python, JAX and XLA compiling the job. Measured (VmHWM, the
                            process's own peak) in tests/jobs/test_memory_budget.py: a 167k-weight
                            job peaks at about 860 MiB on CPU, about 750 MiB of it runtime; the
                            rest is margin for allocator fragmentation and accelerator runtimes
==========================  ====================================================================

Each component names the spec field that drives it (``loc``), so a refusal can say what to change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from hypercore import families, rules, vocab
from hypercore.families import FAMILIES, DatasetShape

__all__ = [
    "D",
    "GAMMA_BITS",
    "HEAD_BITS",
    "RUNTIME_BYTES",
    "SLOT_BITS",
    "Component",
    "Estimate",
    "capacity_for",
    "human_bytes",
    "lowest_momentum",
    "peak_bytes",
]

# The information buffer (`hypercore._fixed`): gamma is the rational n / D, each head a uint64 that
# spills 32-bit slots once it holds HEAD_BITS bits.
GAMMA_BITS = 16
D = 2**GAMMA_BITS
SLOT_BITS = 32
HEAD_BITS = 64 - GAMMA_BITS

ENGINE_STATE_ARRAYS = 24  # float64 / int64 arrays of N values the engine holds at once (XLA: ~14)
ACTIVATION_COPIES = 8  # float32 copies of a training minibatch's activations (XLA: ~3)
EVAL_COPIES = 2  # ... of the rows scored after training
LEARNED_COPIES = 32  # float64 copies of each learned hyperparameter value in flight
FIXED_COPIES = 8  # ... of each fixed one
RECORD_COPIES_LEARNED = 6  # checkpoint: learned, previous learned, two moments, their previous ones
RECORD_SCALARS = 64  # per record: the meta-optimiser's step counts (and any schedule's), twice
DATA_COPIES = 4  # float32 copies of the splits: host, device, the compiled programs' constants
SOURCE_BYTES = 8  # per value of the source rows (a float64 upload as read; a built-in's float32 cache)
LABEL_BYTES = 32  # per row: int32 labels, in as many copies as the features
RUNTIME_BYTES = 3 << 29  # 1.5 GiB


def capacity_for(steps: int, min_gamma: float, *, bucket: bool = True) -> int:
    """Stack slots (32 bits each) enough for ``steps`` steps with every gamma >= ``min_gamma``.

    With ``rho = D / n_min``, a head ``h`` obeys ``h' + 1 <= rho (h + 1) + 1``, so over T steps it
    gains at most ``G = T (log2 rho + 2**-15) + log2(T + 1)`` bits (the last term covers the steps
    while a head is still small). The first spill happens at 48 bits and leaves at least 16, and
    each later one needs ``32 - log2 rho`` more bits, so at most
    ``floor((G - 48) / (32 - log2 rho)) + 1`` spills happen. With ``bucket`` the count is rounded up
    to the next of 2, 3, 4, 6, 8, 12, 16, ..., so that a tuning loop whose gammas drift a little
    does not recompile.

    Memory: the buffer holds ``8 N`` bytes of heads and ``8 N ceil(capacity / 2)`` bytes of stack.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0.0 < min_gamma <= 1.0 or not math.isfinite(min_gamma):
        raise ValueError(f"min_gamma must be in (0, 1], got {min_gamma}")
    n_min = min(max(round(min_gamma * D), 1), D)
    step_bits = math.log2(D / n_min)
    growth = steps * (step_bits + 2.0**-15) + math.log2(steps + 1)
    slots = 0 if growth < HEAD_BITS else math.floor((growth - HEAD_BITS) / (SLOT_BITS - step_bits)) + 1
    slots = max(slots, 1)
    if not bucket:
        return slots
    size = 2
    while size < slots:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def buffer_bytes(n_weights: int, capacity: int) -> int:
    """What `hypercore._fixed.empty_buffer` allocates: a uint64 head per weight, and
    ``max(1, ceil(capacity / 2))`` uint64 words of stack per weight."""
    return 8 * n_weights * (1 + max(1, (capacity + 1) // 2))


@dataclasses.dataclass(frozen=True)
class Component:
    """One consumer of memory: ``name``, ``bytes``, the spec field that drives it (``loc``, empty
    for the worker's own runtime), what it is made of (``detail``) and how to shrink it (``hint``)."""

    name: str
    bytes: int
    loc: rules.Loc
    detail: str
    hint: str = ""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A job's peak memory in the worker, as `Component` s; ``capacity`` is the information buffer's
    slots (what the engine allocates at most) and ``min_momentum`` the smallest momentum it is sized
    for."""

    components: tuple[Component, ...]
    capacity: int
    min_momentum: float
    n_weights: int

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.components)

    @property
    def largest(self) -> Component:
        """The largest component the spec drives (the runtime is the worker's, not the spec's)."""
        return max((c for c in self.components if c.loc), key=lambda c: c.bytes)

    def breakdown(self) -> dict[str, int]:
        return {c.name: c.bytes for c in self.components}

    def __getitem__(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)


def human_bytes(n: float) -> str:
    """``11.3 GiB``, ``250.0 MiB``, ``12.0 KiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _section(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = spec.get(name)
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, Mapping) else {}


def lowest_momentum(spec: Mapping[str, Any]) -> tuple[float, rules.Loc]:
    """The smallest momentum the job can reach (`hypercore.vocab.lowest`: what the engine sizes its
    buffer for and clamps a learned momentum to) and the field that sets it."""
    setting = rules.given_hyperparameters(spec).get("momentum")
    if setting is None:
        return vocab.lowest("momentum", vocab.KINDS["momentum"].default, False), ()
    init, learn, minimum = setting["init"], setting["learn"], setting.get("min")
    value = vocab.lowest("momentum", init, learn, minimum)
    if learn and (minimum is not None or value < vocab.lowest("momentum", init, False)):
        return value, ("hyperparameters", "momentum", "min")  # the default min, below the init
    return value, ("hyperparameters", "momentum", "init")


def _rows(spec: Mapping[str, Any], shape: DatasetShape) -> tuple[int, int, int, int]:
    """``(train, valid, test, source)`` rows; a model without data trains on one observation."""
    model = _section(spec, "model")
    if not FAMILIES[model["kind"]].needs_data:
        return 1, 0, 0, 0
    ds = _section(spec, "dataset")
    if shape.layout in ("splits", "loaded"):
        train, valid, test = shape.n_train, shape.n_valid, shape.n_test
        return train, valid, test, train + valid + test
    train, valid, test = ds.get("train") or 0, ds.get("valid") or 0, ds.get("test") or 0
    return train, valid, test, max(shape.n_rows, train + valid + test)


def _model_loc(spec: Mapping[str, Any]) -> rules.Loc:
    return ("model", "hidden") if _section(spec, "model").get("hidden") else ("model",)


def peak_bytes(spec: Mapping[str, Any], shape: DatasetShape) -> Estimate:
    """The `Estimate` of ``spec`` (the JSON dict of a job spec that passed `hypercore.rules.problems`)
    on a dataset of ``shape`` (`hypercore.rules.dataset_shape`). See the module docstring."""
    model = _section(spec, "model")
    shapes = rules.model_shapes(spec, shape)
    N = families.n_weights(shapes)
    T = int(_section(spec, "training")["steps"])
    iterations = int(_section(spec, "meta").get("iterations", 50))
    ds = _section(spec, "dataset")
    n_train, n_valid, n_test, n_source = _rows(spec, shape)
    F = shape.n_features if FAMILIES[model["kind"]].needs_data else 0
    scored = n_train + n_valid + n_test
    batch = ds.get("batch_size") or n_train
    units = shape.n_features + sum(model.get("hidden") or ()) + shape.n_classes
    model_loc = _model_loc(spec)

    gamma, gamma_loc = lowest_momentum(spec)
    capacity = capacity_for(T, gamma)
    bits = math.log2(D / min(max(round(gamma * D), 1), D))
    buffer_loc = gamma_loc if gamma < 0.5 and gamma_loc else model_loc
    buffer = Component(
        "information buffer",
        buffer_bytes(N, capacity),
        buffer_loc,
        f"at momentum {gamma:.3g} over {T} steps",
        f"each step keeps {bits:.2g} bits of each of the {N} weights ({capacity} slots of 32 bits): "
        "a higher momentum (for a learned one, hyperparameters.momentum.min), fewer training.steps "
        "or a smaller model needs less",
    )
    state = Component(
        "engine state",
        ENGINE_STATE_ARRAYS * 8 * N,
        model_loc,
        f"for {N} weights",
        "a smaller model needs less",
    )
    activations = Component(
        "activations",
        4 * units * (ACTIVATION_COPIES * batch + EVAL_COPIES * scored),
        ("dataset", "batch_size"),
        f"{batch} rows of {units} units a step, {scored} rows scored",
        "a smaller dataset.batch_size (or fewer rows) needs less",
    )

    counts = rules.hyperparameter_counts(spec, shape)
    given = rules.given_hyperparameters(spec)
    learned = {k: n for k, n in counts.items() if given.get(k, {}).get("learn", False)}
    v_learned = sum(learned.values())
    v_fixed = sum(counts.values()) - v_learned
    share = {k: n * (LEARNED_COPIES if k in learned else FIXED_COPIES) for k, n in counts.items()}
    biggest = max(share, key=share.__getitem__)
    hyper = Component(
        "hyperparameters",
        8 * (LEARNED_COPIES * v_learned + FIXED_COPIES * v_fixed),
        ("hyperparameters", biggest) if biggest in given else ("hyperparameters",),
        f"{v_learned} learned and {v_fixed} fixed values",
        "a coarser granularity needs less",
    )
    per_record = 8 * (v_learned + v_fixed + RECORD_COPIES_LEARNED * v_learned) + RECORD_SCALARS
    records = Component(
        "meta-iteration records",
        iterations * per_record,
        ("meta", "iterations"),
        f"{iterations} meta-iterations of {human_bytes(per_record)}",
        "fewer meta.iterations or fewer learned hyperparameters need less",
    )
    pool = n_train + n_valid if ds.get("resplit", False) else 0
    data_loc: rules.Loc = (
        ("dataset", "train")
        if "train" in ds
        else ("dataset", "id")
        if "id" in ds
        else ("dataset", "name")
        if "name" in ds
        else ("dataset",)
    )
    data = Component(
        "training data",
        4 * F * (DATA_COPIES * scored + pool) + SOURCE_BYTES * F * n_source + LABEL_BYTES * scored,
        data_loc,
        f"{scored} rows of {F} features (source {n_source} rows)",
        "fewer rows need less",
    )
    runtime = Component("worker runtime", RUNTIME_BYTES, (), "Python, JAX and XLA compilation")
    return Estimate(
        (buffer, state, activations, hyper, records, data, runtime),
        capacity=capacity,
        min_momentum=gamma,
        n_weights=N,
    )
