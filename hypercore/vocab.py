"""The spec's vocabulary, once: hyperparameter kinds, granularities, defaults and domains.

JAX-free (numpy only), so the service (`jobs`, `api`) reads the same table the engine does. A
*kind* is one entry of `KINDS`; everything else (the server's validation, the engine's layout
in `hypercore.hyper`, counting in `hypercore.rules`, the export's axes) reads the entry.

Each kind lives in an unconstrained *raw* space that the meta-optimiser moves in, as in the paper
(HIPS/hypergrad ``log_alphas``, ``invlogit_gammas``, ``log_param_scale``, ``log_L2_reg``):

=================  =============  ==========================================  =======================
kind               raw            natural                                     granularities
=================  =============  ==========================================  =======================
``learning_rate``  log alpha      alpha = exp(raw) > 0                        global layer step layer_step
``momentum``       logit gamma    gamma = 1 / (1 + exp(-raw)) in (0, 1)       global layer step layer_step
``beta1``          logit b1       b1 = 1 / (1 + exp(-raw)) in [0.5, 1)        global layer step layer_step
``beta2``          logit b2       b2 = 1 / (1 + exp(-raw)) in [0.5, 1)        global layer step layer_step
``weight_decay``   log lambda     w <- (1 - alpha lambda) w - alpha u (AdamW)  global layer step layer_step
``init_scale``     log scale      w0 = exp(raw) * N(0, 1)                     global layer weight
``l2``             log lambda     penalty sum_i lambda_i w_i^2                global layer weight
``training_data``  the inputs     X_train itself (distillation)               weight
``sharing``        T itself       task s's weights sum_t T[s, t] Z[t]         global layer
``example_weight`` log omega      the training loss sum_i omega_i l_i / sum_i  example class
                                  omega_i over each minibatch
=================  =============  ==========================================  =======================

Training optimizers
-------------------
A spec's ``training.optimizer`` (`TRAINING_OPTIMIZERS`) is the optimizer that *trains* the model, which
the engine reverses exactly: ``sgd_momentum`` (the paper's, the default), ``adam`` or ``adamw``. It is
not ``meta.optimizer``, the optimizer of the hyperparameters themselves. Some kinds belong to one
training optimizer (``momentum`` to ``sgd_momentum``; ``beta1``, ``beta2`` to ``adam`` and ``adamw``;
``weight_decay`` to ``adamw``) and are refused with another (`optimizer_problem`); the kinds a spec
leaves out take `default_kinds` of its optimizer (Adam's learning rate starts at 1e-3, and AdamW's
weight decay at optax's 1e-4).

Adding a kind
-------------
One `Kind` entry in `KINDS`, then its use in the engine (where its natural value enters the loss or
the optimizer, `hypercore.hyper.HyperSet`) and a field in the schema (`jobs.spec`), which is built
from this table. `check_setting` then refuses a bad init, granularity or ``min`` on
``hyperparameters.<kind>.<field>``, in the server, the CLI and the engine alike.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

GRANULARITIES = ("global", "layer", "step", "layer_step", "weight", "example", "class")
Transform = Literal["log", "logit", "identity"]


class ConfigError(ValueError):
    """A tuning configuration is invalid; ``field`` is its dotted path in a job spec
    (``"hyperparameters.l2.init"``) and leads the message; ``message`` is the rest."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class Domain:
    """Where a kind's natural ``init`` may lie: above ``low`` (strictly unless ``low_open`` is
    False), below ``high`` (likewise); ``zero_is_off``: an init of exactly 0 turns the kind off (it
    then cannot be learned: its log has no gradient to follow). ``text`` words the domain for an
    error message."""

    low: float | None = None
    high: float | None = None
    low_open: bool = True
    high_open: bool = True
    zero_is_off: bool = False
    text: str = ""

    def contains(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open else x > self.high))


@dataclasses.dataclass(frozen=True)
class Kind:
    """One hyperparameter kind: its raw/natural ``transform``, the ``granularities`` it allows,
    the ``default`` natural init when a spec leaves it out (None: absent unless asked for), the
    ``domain`` of its init, and whether ``init`` may be the string ``"data"``. ``floor``: a kind
    with one takes a ``min`` in its setting, the smallest natural value the meta-optimiser may give
    it once learned (the engine clamps it there; see `lowest`), and ``floor`` is that ``min``'s
    default."""

    transform: Transform
    granularities: tuple[str, ...]
    default: float | None
    domain: Domain
    data_init: bool = False
    doc: str = ""
    floor: float | None = None


def _beta_kind(name: str, default: float, doc: str) -> Kind:
    """An Adam decay rate: logit-parametrised, in [0.5, 1), learned ones kept >= their ``min``."""
    return Kind(
        "logit",
        ("global", "layer", "step", "layer_step"),
        default,
        Domain(
            low=0.5,
            high=1.0,
            low_open=False,
            text=f"a {name} lies in [0.5, 1): the exact Adam engine multiplies by n / 2**24 with "
            "n >= 2**23, so it cannot run below 0.5",
        ),
        doc=doc,
        floor=0.5,
    )


KINDS: dict[str, Kind] = {
    "learning_rate": Kind(
        "log",
        ("global", "layer", "step", "layer_step"),
        0.1,
        Domain(low=0.0, text="must be > 0 (log-parametrised)"),
        doc="the step size alpha of each training step",
    ),
    "momentum": Kind(
        "logit",
        ("global", "layer", "step", "layer_step"),
        0.9,
        Domain(low=0.0, high=1.0, text="a momentum lies in (0, 1) exclusive"),
        doc="the velocity decay gamma of each training step",
        # Every step keeps log2(1 / gamma) bits of every weight in the engine's information buffer,
        # so a learned momentum is kept >= its `min` (default 0.1, or its init if lower): 3.3 bits
        # a step at most, which the server can size the job's memory for (`hypercore.budget`).
        floor=0.1,
    ),
    # Adam's decay rates: the exact engine multiplies by b = n / 2**24 with n >= 2**23 (a smaller n
    # could not be undone within 64 bits, `hypercore.adam`), so a beta below 0.5 cannot run. Each
    # step keeps log2(1 / b) bits of every weight, so a learned beta is kept >= its `min` (0.5 by
    # default: one bit a step at most), what the server sizes the job's memory for.
    "beta1": _beta_kind("beta1", 0.9, "Adam's first-moment decay b1 of each training step (adam, adamw)"),
    "beta2": _beta_kind("beta2", 0.999, "Adam's second-moment decay b2 of each training step (adam, adamw)"),
    "weight_decay": Kind(
        "log",
        ("global", "layer", "step", "layer_step"),
        None,  # absent unless asked for; adamw's default is in TRAINING_OPTIMIZERS
        Domain(low=0.0, low_open=False, zero_is_off=True, text="a weight decay must be >= 0"),
        doc="AdamW's decoupled weight decay lambda: each step multiplies w by 1 - alpha lambda (adamw)",
    ),
    "init_scale": Kind(
        "log",
        ("global", "layer", "weight"),
        0.1,
        Domain(low=0.0, text="must be > 0 (log-parametrised)"),
        doc="the scale of the initial weights' N(0, 1) draw",
    ),
    "l2": Kind(
        "log",
        ("global", "layer", "weight"),
        0.0,
        Domain(low=0.0, low_open=False, zero_is_off=True, text="an L2 penalty must be >= 0"),
        doc="the L2 penalty lambda of each weight (0: off)",
    ),
    "training_data": Kind(
        "identity",
        ("weight",),
        None,
        Domain(low=0.0, text="must be 'data' or a positive scale for N(0, 1) inputs"),
        data_init=True,
        doc="the training inputs themselves (init 'data', or a scale for an N(0, 1) start)",
    ),
    # Data attribution: the hypergradient of example i's weight says how the validation loss would
    # change if it counted more, through the whole training run (`hypercore.tune`). Log-parametrised:
    # a weight shrinks towards 0 but never crosses it. ``class``: one per class (class imbalance).
    "example_weight": Kind(
        "log",
        ("example", "class"),
        None,
        Domain(low=0.0, text="an example weight must be > 0 (log-parametrised)"),
        doc="a weight per training example (example) or per class (class) on the training loss, the "
        "weighted mean over each minibatch: the learned weights rank the examples to distrust",
    ),
    "sharing": Kind(
        "identity",
        ("global", "layer"),
        None,
        Domain(
            low=0.0,
            high=1.0,
            low_open=False,
            high_open=False,
            text="the sharing start lies in [0, 1] (0 separate nets, 1 one net)",
        ),
        doc="the task-sharing matrices of a multi-task model",
    ),
}


@dataclasses.dataclass(frozen=True)
class TrainingOptimizer:
    """One value of a spec's ``training.optimizer``: the optimizer that trains the model (and that the
    engine reverses), not ``meta.optimizer``. ``kinds``: the kinds that are its own, refused with
    another optimizer; ``defaults``: natural inits of kinds a spec leaves out that differ from the
    kind's ``default``; ``doc``: its update rule."""

    kinds: tuple[str, ...]
    defaults: tuple[tuple[str, float], ...] = ()
    doc: str = ""


TRAINING_OPTIMIZERS: dict[str, TrainingOptimizer] = {
    "sgd_momentum": TrainingOptimizer(
        ("momentum",),
        doc="SGD with momentum, the paper's: v <- gamma v - (1 - gamma) g; w <- w + alpha v",
    ),
    "adam": TrainingOptimizer(
        ("beta1", "beta2"),
        (("learning_rate", 1e-3),),
        doc="Adam (optax's adam, per-step values): w <- w - alpha mhat / (sqrt(vhat) + 1e-8)",
    ),
    "adamw": TrainingOptimizer(
        ("beta1", "beta2", "weight_decay"),
        (("learning_rate", 1e-3), ("weight_decay", 1e-4)),
        doc="AdamW (optax's adamw): w <- (1 - alpha lambda) w - alpha mhat / (sqrt(vhat) + 1e-8)",
    ),
}
DEFAULT_TRAINING_OPTIMIZER = "sgd_momentum"
# The kinds that belong to some training optimizers only.
_OWNED = frozenset(k for opt in TRAINING_OPTIMIZERS.values() for k in opt.kinds)
# The engine's smallest weight-decay factor 1 - alpha lambda (n / 2**24 with n >= 2**23, as the betas).
MIN_DECAY_FACTOR = 0.5


def training_optimizer(spec: Any) -> str:
    """The ``training.optimizer`` of a spec's dict (absent or None: `DEFAULT_TRAINING_OPTIMIZER`)."""
    training = spec.get("training") if isinstance(spec, Mapping) else None
    value = training.get("optimizer") if isinstance(training, Mapping) else None
    return DEFAULT_TRAINING_OPTIMIZER if value is None else value


def default_kinds(optimizer: str = DEFAULT_TRAINING_OPTIMIZER) -> dict[str, float]:
    """The natural inits of the kinds a spec with training optimizer ``optimizer`` gets when it
    leaves them out (all global, fixed), in the table's order."""
    opt = TRAINING_OPTIMIZERS[optimizer]
    overrides = dict(opt.defaults)
    out = {}
    for name, kind in KINDS.items():
        if name in _OWNED and name not in opt.kinds:
            continue
        default = overrides.get(name, kind.default)
        if default is not None:
            out[name] = default
    return out


# The kinds a spec gets when it leaves them out, with the default training optimizer.
DEFAULT_KINDS = tuple(default_kinds())


def optimizer_problem(name: str, optimizer: str) -> str | None:
    """Why kind ``name`` cannot be set with training optimizer ``optimizer``, or None if it can."""
    if name not in _OWNED or name in TRAINING_OPTIMIZERS[optimizer].kinds:
        return None
    owners = [o for o, opt in TRAINING_OPTIMIZERS.items() if name in opt.kinds]
    own = TRAINING_OPTIMIZERS[optimizer].kinds
    return (
        f"{name} is a hyperparameter of training.optimizer {' or '.join(owners)}, not {optimizer} "
        f"(whose own {'is' if len(own) == 1 else 'are'} {', '.join(own)}): use {' or '.join(owners)}, "
        f"or leave {name} out"
    )


def decay_problem(learning_rate: Any, weight_decay: Any) -> str | None:
    """Why AdamW cannot start from these natural inits, or None: its weight-decay factor
    ``1 - alpha lambda`` must be at least `MIN_DECAY_FACTOR`, the smallest the exact engine runs."""
    if not (_is_numeric(learning_rate) and _is_numeric(weight_decay)):
        return None
    learning_rate, weight_decay = (float(np.max(init_numbers(x))) for x in (learning_rate, weight_decay))
    factor = 1.0 - learning_rate * weight_decay
    if factor >= MIN_DECAY_FACTOR:
        return None
    return (
        f"the weight-decay factor 1 - learning_rate x weight_decay = {factor:.6g} is below "
        f"{MIN_DECAY_FACTOR}, the smallest the exact AdamW engine runs (it multiplies by n / 2**24 with "
        f"n >= 2**23): with learning_rate {float(learning_rate):g} the weight decay is at most "
        f"{(1.0 - MIN_DECAY_FACTOR) / float(learning_rate):.6g}"
    )


def lowest_decay(learning_rate: Any, lr_learn: bool, weight_decay: Any, wd_learn: bool) -> float:
    """The smallest weight-decay factor ``1 - alpha lambda`` an AdamW job reaches, from its natural
    inits: exact when both are fixed (as the engine computes them from their raw values); with either
    learned, the engine's smallest, `MIN_DECAY_FACTOR` (a learned learning rate has no ceiling)."""
    if lr_learn or wd_learn:
        return MIN_DECAY_FACTOR
    alpha = float(np.max(to_natural("learning_rate", to_raw("learning_rate", init_numbers(learning_rate)))))
    lam = float(np.max(to_natural("weight_decay", to_raw("weight_decay", init_numbers(weight_decay)))))
    return max(MIN_DECAY_FACTOR, 1.0 - alpha * lam)


def check_setting(
    name: str, init: Any, granularity: str, learn: Any, minimum: Any = None
) -> list[tuple[str, str]]:
    """The problems with one kind's setting as ``(field, message)``, the field relative to
    ``hyperparameters.<name>`` (``"init"``, ``"granularity"``, ``"learn"``, ``"min"``); empty if
    none. ``minimum`` is the setting's ``min`` (None: not given).

    A learned init that turns the kind off names both fields, ``init`` first: that is the one to
    change."""
    found = _check_init(name, init, granularity, learn)
    if found or minimum is None:
        return found
    kind = KINDS[name]
    if kind.floor is None:
        floored = [k for k, v in KINDS.items() if v.floor is not None]
        return [
            (
                "min",
                f"only {', '.join(floored[:-1])} and {floored[-1]} take a min (the floor of their learned "
                f"values); {name} has none",
            )
        ]
    if not _is_number(minimum) or not math.isfinite(minimum):
        return [("min", f"must be a finite number, got {minimum!r}")]
    if not kind.domain.contains(float(minimum)):
        return [("min", f"{kind.domain.text}, got {float(minimum)}")]
    start = float(np.min(init_numbers(init)))
    if minimum > start:
        where = "init" if _is_number(init) else "init's smallest value"
        return [
            (
                "min",
                f"must be at most {where} ({start}): a learned {name} starts there, got {float(minimum)}",
            )
        ]
    return []


def lowest(name: str, init: Any, learn: bool, minimum: float | None = None) -> float | None:
    """The smallest natural value a kind with a ``floor`` (momentum, beta1, beta2) reaches in a job;
    None for the other kinds. A fixed one keeps its init, as the engine computes it from its raw
    value; a learned one is kept at or above its ``min``, by default the kind's ``floor`` or its init
    if that is lower. The engine clamps a learned one to it (`hypercore.hyper.HyperSet`) and sizes its
    information buffer for it; the server sizes the job's memory for it (`hypercore.budget`)."""
    kind = KINDS[name]
    if kind.floor is None:
        return None
    start = float(np.min(to_natural(name, to_raw(name, init_numbers(init)))))
    if not learn:
        return start
    if minimum is not None:
        return float(minimum)
    return min(kind.floor, start)


def _check_init(name: str, init: Any, granularity: str, learn: Any) -> list[tuple[str, str]]:
    kind = KINDS[name]
    if granularity not in GRANULARITIES:
        return [("granularity", f"unknown granularity {granularity!r}; known: {', '.join(GRANULARITIES)}")]
    if granularity not in kind.granularities:
        allowed = ", ".join(kind.granularities)
        return [("granularity", f"{name} cannot have granularity {granularity!r}; allowed: {allowed}")]
    if not isinstance(learn, bool):
        return [("learn", f"must be true or false, got {learn!r}")]
    if isinstance(init, str) and init == "data":
        return [] if kind.data_init else [("init", "'data' is an init for training_data only; give a number")]
    if is_reference(init):
        return [
            (
                "init",
                "a {from_job, which} init is resolved by the service when the job is submitted "
                "(POST /v1/jobs); outside it, give the values themselves (an array)",
            )
        ]
    if is_array_init(init):
        return _check_array_init(name, init, learn)
    if not _is_number(init) or not math.isfinite(init):
        if kind.data_init:
            return [("init", f"{kind.domain.text}, got {init!r}")]
        return [("init", f"must be a finite number, got {init!r}")]
    if not kind.domain.contains(float(init)):
        return [("init", f"{kind.domain.text}, got {float(init)}")]
    if kind.domain.zero_is_off and init == 0 and learn:
        return [
            (
                "init",
                f"{name} with init 0 is off and cannot be learned (it is log-parametrised): "
                "give a positive init such as 1e-4",
            ),
            ("learn", f"cannot be true while init is 0: {name} 0 is off"),
        ]
    return []


# ---- array inits (warm starts) -------------------------------------------------------------------
#
# Besides a number, ``init`` may be the values themselves in natural units, as the service's
# downloads and exports give them: an array of the hyperparameter's shape (nested lists; shapes in
# `init_shape`), or for a kind stored as several arrays (a per-weight ``init_scale`` or ``l2``: one
# per parameter array; a per-layer ``sharing``) a mapping from each array's suffix (``"layer0.W"``)
# to its values. The service also takes ``{"from_job": ID, "which": "best" | "last" | N}``, which it
# resolves into such values when the job is submitted (`jobs.warmstart`).

REFERENCE_KEYS = frozenset({"from_job", "which"})


def is_reference(init: Any) -> bool:
    """A ``{"from_job": ..., "which": ...}`` init, which the service resolves into values."""
    return isinstance(init, Mapping) and "from_job" in init


def is_array_init(init: Any) -> bool:
    """An init given as values: an array (nested lists) or a mapping of arrays, not a number."""
    return not is_reference(init) and isinstance(init, list | tuple | np.ndarray | Mapping)


def init_numbers(init: Any) -> np.ndarray:
    """Every number of an init as one float64 vector: a number's one, an array's all, a mapping's
    arrays' all (in its key order). Raises ValueError for an init that is not numbers."""
    if isinstance(init, Mapping):
        parts = [init_numbers(v) for v in init.values()]
        return np.concatenate(parts) if parts else np.zeros(0)
    try:
        out = np.asarray(init, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"must be numbers, got {init!r:.80}") from e
    return out.ravel()


def _is_numeric(init: Any) -> bool:
    return _is_number(init) or is_array_init(init)


def _check_array_init(name: str, init: Any, learn: Any) -> list[tuple[str, str]]:
    """An array init's values: numbers (a regular nested list), finite, each in the kind's domain;
    its shape is checked against the job's (`hypercore.rules`, the engine)."""
    kind = KINDS[name]
    arrays = init.items() if isinstance(init, Mapping) else [(None, init)]
    for key, array in arrays:
        field = "init" if key is None else f"init.{key}"
        try:
            values = np.asarray(array, dtype=np.float64)
        except (TypeError, ValueError):
            return [(field, "must be a number, or an array of numbers (nested lists of equal lengths)")]
        if values.size == 0:
            return [(field, "is an empty array")]
        bad = np.flatnonzero(~np.isfinite(values.ravel()))
        if bad.size:
            index = [int(i) for i in np.unravel_index(bad[0], values.shape)]
            return [(field, f"must be finite, got {values.ravel()[bad[0]]} at index {index}")]
        inside = np.asarray(np.vectorize(kind.domain.contains, otypes=[bool])(values))
        if not inside.all():
            first = int(np.flatnonzero(~inside.ravel())[0])
            index = [int(i) for i in np.unravel_index(first, values.shape)]
            return [(field, f"{kind.domain.text}, got {values.ravel()[first]} at index {index}")]
        if kind.domain.zero_is_off and learn is True and (values == 0).any():
            return [
                (
                    field,
                    f"a learned {name} cannot start at 0 anywhere (log-parametrised: 0 has no gradient "
                    "to follow); give positive values such as 1e-4",
                )
            ]
    return []


def init_shape(
    name: str,
    granularity: str,
    *,
    steps: int,
    shapes: Mapping[str, tuple[int, ...]],
    train_shape: tuple[int, int] | None = None,
    n_tasks: int = 0,
    sharing_layers: tuple[str, ...] = (),
    n_classes: int = 0,
) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """The shape an array init of kind ``name`` at ``granularity`` must have: the shape of the
    values a download gives (`hypercore.hyper.HyperSet`'s layout), or for a kind stored as several
    arrays a mapping of their suffixes to shapes. ``shapes``: the model's parameter arrays in order."""
    if name == "training_data":
        return tuple(train_shape or ())
    if name == "sharing":
        matrix = (n_tasks, n_tasks)
        return {layer: matrix for layer in sharing_layers} if granularity == "layer" else matrix
    if granularity == "weight":
        return {array: tuple(shape) for array, shape in shapes.items()}
    if granularity == "example":
        return (int((train_shape or (0,))[0]),)
    if granularity == "class":
        return (n_classes,)
    return {
        "global": (),
        "layer": (len(shapes),),
        "step": (steps,),
        "layer_step": (steps, len(shapes)),
    }[granularity]


def init_shape_problem(
    init: Any, want: tuple[int, ...] | Mapping[str, tuple[int, ...]]
) -> tuple[str, str] | None:
    """``(field, message)`` when an array init does not have the shape ``want`` (`init_shape`),
    the field relative to the setting (``"init"`` or ``"init.<array>"``); None when it fits or is
    a number (a number fills every value)."""
    if not is_array_init(init):
        return None
    if isinstance(want, Mapping):
        if not isinstance(init, Mapping):
            return (
                "init",
                f"is stored as one array per parameter array: give a mapping of {', '.join(want)} "
                "to their values (or a number for all)",
            )
        missing, extra = [k for k in want if k not in init], [k for k in init if k not in want]
        if missing or extra:
            return ("init", f"needs exactly the arrays {', '.join(want)}; missing {missing}, unknown {extra}")
        for key, shape in want.items():
            got = np.shape(np.asarray(init[key], dtype=np.float64))
            if tuple(got) != tuple(shape):
                return (f"init.{key}", f"must have shape {list(shape)}, got {list(got)}")
        return None
    if isinstance(init, Mapping):
        return ("init", f"must be one array of shape {list(want)}, not a mapping")
    got = np.shape(np.asarray(init, dtype=np.float64))
    if tuple(got) != tuple(want):
        return ("init", f"must have shape {list(want)}, got {list(got)}")
    return None


def is_off(name: str, init: Any) -> bool:
    """A kind whose init turns it off (an ``l2`` or ``weight_decay`` of exactly 0: no term at all)."""
    return KINDS[name].domain.zero_is_off and _is_number(init) and init == 0


def to_raw(name: str, natural):
    """Natural -> raw, in numpy."""
    t = KINDS[name].transform
    if t == "log":
        return np.log(natural)
    if t == "logit":
        return np.log(natural) - np.log1p(-natural)
    return natural


def to_natural(name: str, raw, xp=np):
    """Raw -> natural with the array module ``xp`` (numpy, or ``jax.numpy`` inside the engine)."""
    t = KINDS[name].transform
    if t == "log":
        return xp.exp(raw)
    if t == "logit":
        return 1.0 / (1.0 + xp.exp(-raw))
    return raw


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
