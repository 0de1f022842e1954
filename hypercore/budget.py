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
values, ``U = features + hidden widths + classes`` units a row passes through, plus every feature
map of a convolutional net before and after its pooling (`hypercore.families.activation_units`),
float32 data and weights, float64 hyperparameters):

==========================  ====================================================================
component                   bytes
==========================  ====================================================================
information buffer          ``8 N (1 + ceil(c / 2))``, ``c = capacity_for(T, lowest momentum)``
                            (``training.optimizer`` adam, adamw: ``adam_capacity(T, lowest beta1,
                            lowest beta2, lowest weight-decay factor)``, the factor 0.5 once the
                            learning rate or weight decay is learned): one uint64 head per weight
                            and 32-bit slots packed two per uint64
engine state                ``24 x 8 N``: fixed-point weights and velocities, their float64
                            cotangents, gradients, Hessian-vector products and the scans' carried
                            copies (XLA's buffer assignment measures about 14 such arrays); Adam's
                            ``38 x 8 N``, about 1.6 times: w, m, v and their cotangents
                            (`ADAM_ENGINE_STATE_ARRAYS`)
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

A plugin model (``model.kind`` ``plugin``) has no shapes before a worker builds it: the worker
estimates it then (``peak_bytes(spec, shape, shapes, units)``, `jobs.spec.built_model_problems`), with
``U`` counted on the built model: its outputs and the residuals JAX's gradient of it keeps per example
(`hypercore.models.held_activation_units`). Without ``units`` a plugin's ``U`` is its input and output
units alone, a lower bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from hypercore import families, rules, vocab
from hypercore.families import DatasetShape

__all__ = [
    "ADAM_BETA_BITS",
    "D",
    "GAMMA_BITS",
    "HEAD_BITS",
    "RUNTIME_BYTES",
    "SLOT_BITS",
    "Component",
    "adam_capacity",
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
# Reversible Adam (`hypercore.adam`) holds more per weight than SGD's w and v: w, m and v in fixed
# point (products carried as two int64 limbs), their three float64 cotangents, the second moment's
# own scale and the per-weight schedules of the bias corrections and decay factors: about 1.6 times
# SGD's arrays (an estimate, bounded against XLA's buffer assignment in test_memory_budget.py).
ADAM_ENGINE_STATE_ARRAYS = 38
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


def bucket_slots(slots: int) -> int:
    """The next of 2, 3, 4, 6, 8, 12, 16, ... at or above ``slots``: a tuning loop whose decays drift
    a little then does not recompile."""
    size = 2
    while size < slots:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def capacity_for(steps: int, min_gamma: float, *, bucket: bool = True) -> int:
    """Stack slots (32 bits each) enough for ``steps`` steps with every gamma >= ``min_gamma``.

    The velocity is stored scaled (`hypercore.reversible.SGDM`): a step multiplies it by ``2**-k``
    through the buffer, ``k`` the doublings that keep the scale ``S``, gamma's running product times
    a power of two, in ``(1/2, 1]``. With ``rho = D / n_min``, a head ``h`` obeys ``h' + 1 <= 2**k
    (h + 1)`` (and a margin of ``2**-50`` for the bound's rounding). From step ``s`` to ``t`` the
    doublings are ``log2(S_t / S_s)`` (below 1) plus ``log2(1 / gamma)`` summed (at most ``(t - s)
    log2 rho``, and float64's rounding of each product, covered by ``2**-15`` a step), so over T steps
    a head gains at most ``G = T (log2 rho + 2**-15) + log2(T + 1) + 1`` bits (the log covers the
    steps while a head is still small). A step's ``S gamma`` is above ``gamma / 2``, so it doubles at
    most ``ceil(log2 rho)`` times. The first spill happens at 48 bits and leaves at least 16, each
    later one needs ``32 - ceil(log2 rho)`` more bits, so at most ``floor((G - 48) / (32 -
    ceil(log2 rho))) + 1`` spills happen. With ``bucket`` the count is rounded up
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
    growth = steps * (step_bits + 2.0**-15) + math.log2(steps + 1) + 1.0
    per_spill = SLOT_BITS - math.ceil(step_bits)
    slots = 0 if growth < HEAD_BITS else math.floor((growth - HEAD_BITS) / per_spill) + 1
    slots = max(slots, 1)
    if not bucket:
        return slots
    return bucket_slots(slots)


# Reversible Adam (`hypercore.adam`): b1, b2 and the weight-decay factor are rationals n / 2**24 with
# n >= 2**23, and each weight has one head that all of a step's multiplications share.
ADAM_BETA_BITS = 24
ADAM_N_MIN = 2 ** (ADAM_BETA_BITS - 1)
ADAM_N_MAX = 2**ADAM_BETA_BITS - 1


def adam_spill_bits(factors: int) -> int:
    """A head spills (all heads, in lock-step, before a step) once one holds this many bits: with
    ``factors`` pop-then-push multiplications a step (2 for Adam, 3 for AdamW), each at most doubling
    a head and adding ``2**24``, a head below ``2**(63 - factors)`` stays below ``2**63`` before
    each of them and below ``2**64`` after the last."""
    return 63 - factors


def _adam_numerator(value: float, high: int) -> int:
    return min(max(round(value * 2**ADAM_BETA_BITS), ADAM_N_MIN), high)


def _first_spill(step_bits: float, start: float, add: float, limit: int) -> int:
    """The fewest steps ``i >= 1`` after which a worst-case head, from ``start`` (a number), has
    reached ``limit`` bits: ``i step_bits + log2(start + i add)``."""

    def bits(i: int) -> float:
        return i * step_bits + math.log2(start + i * add)

    lo, hi = 1, 1
    while bits(hi) < limit:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if bits(mid) >= limit:
            hi = mid
        else:
            lo = mid + 1
    return lo


def adam_capacity(
    steps: int,
    b1_min: float,
    b2_min: float | None = None,
    decay_min: float | None = None,
    *,
    bucket: bool = True,
) -> int:
    """Stack slots (32 bits each) enough for ``steps`` steps of reversible Adam with every ``b1`` at
    least ``b1_min``, every ``b2`` at least ``b2_min`` (default ``b1_min``) and, for AdamW, every
    weight-decay factor ``1 - lr wd`` at least ``decay_min`` (None: Adam, no decay factor). Values
    are clipped to the engine's ``[0.5, 1]``.

    A step multiplies each weight's one head by ``rho = prod 2**24 / n`` (the factors' numerators)
    and adds at most ``C = (2**k - 1) 2**24`` (``k`` factors, each pop-then-push), so from ``B_0``
    a head is below ``rho**i (B_0 + i C)`` after ``i`` steps. (The engine stores the state scaled,
    `hypercore.adam`'s "Scaled state": it pushes a factor's bits as a halving where its running
    product crosses a power of two, the same bits in fewer pushes, which this recursion bounds.)
    Heads spill 32 bits in lock-step at the start of a step once one reaches ``adam_spill_bits(k)``
    bits; with ``F`` the most steps from an empty head to the first spill and ``S`` from a spilled
    one (below ``2**32``) to the next, at most ``1 + (steps - 1 - F) // S`` spills happen.
    ``bucket`` rounds up to 2, 3, 4, 6, 8, 12, ...
    as `capacity_for` does. The buffer then takes `buffer_bytes` (one head per weight).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    values = {"b1_min": b1_min, "b2_min": b1_min if b2_min is None else b2_min}
    if decay_min is not None:
        values["decay_min"] = decay_min
    for name, v in values.items():
        if not (math.isfinite(v) and 0.0 < v <= 1.0):
            raise ValueError(f"{name} must be in (0, 1], got {v}")
    numerators = [
        _adam_numerator(values["b1_min"], ADAM_N_MAX),
        _adam_numerator(values["b2_min"], ADAM_N_MAX),
    ]
    if decay_min is not None:
        numerators.append(_adam_numerator(decay_min, 2**ADAM_BETA_BITS))
    k = len(numerators)
    step_bits = sum(math.log2(2**ADAM_BETA_BITS / n) for n in numerators) + 2.0**-40
    add = float((2**k - 1) * 2**ADAM_BETA_BITS)
    limit = adam_spill_bits(k)
    first = _first_spill(step_bits, 0.0, add, limit)
    cycle = _first_spill(step_bits, 2.0**SLOT_BITS, add, limit)
    slots = 0 if steps - 1 < first else 1 + (steps - 1 - first) // cycle
    slots = max(slots, 1)
    if not bucket:
        return slots
    return bucket_slots(slots)


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
    slots (what the engine allocates at most), sized for ``min_momentum``, the smallest momentum
    (SGD with momentum; None with Adam), or for ``min_beta1``, ``min_beta2`` and ``min_decay``, the
    smallest betas and weight-decay factor ``1 - alpha lambda`` (Adam and AdamW; ``min_decay`` None
    without weight decay). ``training_optimizer`` is the spec's."""

    components: tuple[Component, ...]
    capacity: int
    min_momentum: float | None
    n_weights: int
    training_optimizer: str = vocab.DEFAULT_TRAINING_OPTIMIZER
    min_beta1: float | None = None
    min_beta2: float | None = None
    min_decay: float | None = None

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
    return _lowest(spec, "momentum")


def _lowest(spec: Mapping[str, Any], kind: str) -> tuple[float, rules.Loc]:
    """`lowest_momentum` for any kind with a floor (momentum, beta1, beta2)."""
    setting = rules.given_hyperparameters(spec).get(kind)
    if setting is None:
        return vocab.lowest(kind, vocab.KINDS[kind].default, False), ()
    init, learn, minimum = setting["init"], setting["learn"], setting.get("min")
    value = vocab.lowest(kind, init, learn, minimum)
    if learn and (minimum is not None or value < vocab.lowest(kind, init, False)):
        return value, ("hyperparameters", kind, "min")  # the default min, below the init
    return value, ("hyperparameters", kind, "init")


def _lowest_decay(spec: Mapping[str, Any]) -> tuple[float | None, rules.Loc]:
    """The smallest weight-decay factor ``1 - alpha lambda`` an AdamW job reaches
    (`hypercore.vocab.lowest_decay`; None without weight decay) and the field that sets it."""
    if vocab.training_optimizer(spec) != "adamw":
        return None, ()
    given = rules.given_hyperparameters(spec)
    defaults = vocab.default_kinds("adamw")
    lr = given.get("learning_rate", {"init": defaults["learning_rate"], "learn": False})
    wd = given.get("weight_decay", {"init": defaults["weight_decay"], "learn": False})
    if vocab.is_off("weight_decay", wd["init"]):
        return None, ()
    value = vocab.lowest_decay(lr["init"], lr["learn"], wd["init"], wd["learn"])
    kind = "learning_rate" if lr["learn"] and not wd["learn"] else "weight_decay"
    field = "learn" if lr["learn"] or wd["learn"] else "init"
    return value, ("hyperparameters", kind, field) if kind in given else ()


def _buffer(
    spec: Mapping[str, Any], T: int, N: int, model_loc: rules.Loc
) -> tuple[Component, dict[str, Any]]:
    """The information buffer's `Component` and the `Estimate` fields it is sized by."""
    optimizer = vocab.training_optimizer(spec)
    if optimizer == "sgd_momentum":
        gamma, gamma_loc = lowest_momentum(spec)
        capacity = capacity_for(T, gamma)
        bits = math.log2(D / min(max(round(gamma * D), 1), D))
        component = Component(
            "information buffer",
            buffer_bytes(N, capacity),
            gamma_loc if gamma < 0.5 and gamma_loc else model_loc,
            f"at momentum {gamma:.3g} over {T} steps",
            f"each step keeps {bits:.2g} bits of each of the {N} weights ({capacity} slots of 32 bits): "
            "a higher momentum (for a learned one, hyperparameters.momentum.min), fewer training.steps "
            "or a smaller model needs less",
        )
        return component, {"capacity": capacity, "min_momentum": gamma}
    factors = {"beta1": _lowest(spec, "beta1"), "beta2": _lowest(spec, "beta2"), "decay": _lowest_decay(spec)}
    present = {k: v for k, v in factors.items() if v[0] is not None}
    capacity = adam_capacity(T, factors["beta1"][0], factors["beta2"][0], factors["decay"][0])
    bits = sum(math.log2(1.0 / value) for value, _ in present.values())
    smallest, loc = min(present.values(), key=lambda v: v[0])
    names = {"beta1": "beta1", "beta2": "beta2", "decay": "weight-decay factor"}
    words = ", ".join(f"{names[k]} {value:.3g}" for k, (value, _) in present.items())
    component = Component(
        "information buffer",
        buffer_bytes(N, capacity),
        loc if smallest < 2**-0.5 and loc else model_loc,  # the field, once it costs half a bit a step
        f"at {words} over {T} steps of {optimizer}",
        f"each step keeps about {bits:.2g} bits of each of the {N} weights ({capacity} slots of 32 bits): "
        "higher betas (for learned ones, hyperparameters.beta1.min and beta2.min), a fixed learning "
        "rate and weight decay (a learned one is sized for the engine's smallest factor, 0.5), fewer "
        "training.steps or a smaller model need less",
    )
    return component, {
        "capacity": capacity,
        "min_momentum": None,
        "training_optimizer": optimizer,
        "min_beta1": factors["beta1"][0],
        "min_beta2": factors["beta2"][0],
        "min_decay": factors["decay"][0],
    }


def _rows(spec: Mapping[str, Any], shape: DatasetShape) -> tuple[int, int, int, int]:
    """``(train, valid, test, source)`` rows; a model without data trains on one observation."""
    model = _section(spec, "model")
    if not families.family(model["kind"]).needs_data:
        return 1, 0, 0, 0
    ds = _section(spec, "dataset")
    if shape.layout in ("splits", "loaded"):
        train, valid, test = shape.n_train, shape.n_valid, shape.n_test
        return train, valid, test, train + valid + test
    train, valid, test = ds.get("train") or 0, ds.get("valid") or 0, ds.get("test") or 0
    return train, valid, test, max(shape.n_rows, train + valid + test)


def _model_loc(spec: Mapping[str, Any]) -> rules.Loc:
    return ("model", "hidden") if _section(spec, "model").get("hidden") else ("model",)


def peak_bytes(
    spec: Mapping[str, Any],
    shape: DatasetShape,
    shapes: families.Shapes | None = None,
    units: int | None = None,
) -> Estimate:
    """The `Estimate` of ``spec`` (the JSON dict of a job spec that passed `hypercore.rules.problems`)
    on a dataset of ``shape`` (`hypercore.rules.dataset_shape`). See the module docstring.

    ``shapes`` and ``units``: a plugin model's parameter arrays and the activations one example adds
    to a step (`hypercore.models.held_activation_units`), which only a built model knows (a worker
    checks the estimate then, `jobs.spec.built_model_problems`). Without ``units`` a plugin's
    activations count its input and output units alone, and the estimate is a lower bound: a job it
    refuses does not fit, one it accepts may still not."""
    model = _section(spec, "model")
    plugin = model["kind"] == families.PLUGIN_KIND
    shapes = rules.model_shapes(spec, shape) if shapes is None else shapes
    N = families.n_weights(shapes)
    T = int(_section(spec, "training")["steps"])
    iterations = int(_section(spec, "meta").get("iterations", 50))
    ds = _section(spec, "dataset")
    n_train, n_valid, n_test, n_source = _rows(spec, shape)
    F = shape.n_features if families.family(model["kind"]).needs_data else 0
    scored = n_train + n_valid + n_test
    batch = ds.get("batch_size") or n_train
    if not plugin:
        units, unit_note = families.activation_units(model, shape), ""
    elif units is None:
        units, unit_note = shape.n_features + shape.n_outputs, "; a plugin's hidden units are not counted"
    else:
        unit_note = "; the plugin's counted on its gradient"
    model_loc = _model_loc(spec)

    buffer, sized_for = _buffer(spec, T, N, model_loc)
    adam = vocab.training_optimizer(spec) != "sgd_momentum"
    state = Component(
        "engine state",
        (ADAM_ENGINE_STATE_ARRAYS if adam else ENGINE_STATE_ARRAYS) * 8 * N,
        model_loc,
        f"for {N} weights",
        "a smaller model needs less",
    )
    activations = Component(
        "activations",
        4 * units * (ACTIVATION_COPIES * batch + EVAL_COPIES * scored),
        ("dataset", "batch_size"),
        f"{batch} rows of {units} units a step, {scored} rows scored{unit_note}",
        "a smaller dataset.batch_size (or fewer rows) needs less",
    )

    counts = rules.hyperparameter_counts(spec, shape, shapes)
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
    return Estimate((buffer, state, activations, hyper, records, data, runtime), n_weights=N, **sized_for)
