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
``init_scale``     log scale      w0 = exp(raw) * N(0, 1)                     global layer weight
``l2``             log lambda     penalty sum_i lambda_i w_i^2                global layer weight
``training_data``  the inputs     X_train itself (distillation)               weight
``sharing``        T itself       task s's weights sum_t T[s, t] Z[t]         global layer
=================  =============  ==========================================  =======================

Adding a kind
-------------
One `Kind` entry in `KINDS`, then its use in the engine (where its natural value enters the loss or
the optimizer, `hypercore.hyper.HyperSet`) and a field in the schema (`jobs.spec`). For example a
per-array weight decay for AdamW would be::

    "weight_decay": Kind(
        transform="log",
        granularities=("global", "layer", "step", "layer_step"),
        default=None,               # absent unless asked for
        domain=Domain(low=0.0, low_open=False, zero_is_off=True),
        doc="decoupled weight decay lambda (AdamW)",
    ),

`check_setting` then refuses a negative init, or a learned 0, on
``hyperparameters.weight_decay.init``, in the server, the CLI and the engine alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np

GRANULARITIES = ("global", "layer", "step", "layer_step", "weight")
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

# The kinds a spec gets when it leaves them out (all global, fixed).
DEFAULT_KINDS = tuple(k for k, kind in KINDS.items() if kind.default is not None)


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
        return [("min", f"only a momentum takes a min (the floor of its learned values); {name} has none")]
    if not _is_number(minimum) or not math.isfinite(minimum):
        return [("min", f"must be a finite number, got {minimum!r}")]
    if not kind.domain.contains(float(minimum)):
        return [("min", f"{kind.domain.text}, got {float(minimum)}")]
    if minimum > init:
        return [
            (
                "min",
                f"must be at most init ({float(init)}): a learned {name} starts there, got {float(minimum)}",
            )
        ]
    return []


def lowest(name: str, init: Any, learn: bool, minimum: float | None = None) -> float | None:
    """The smallest natural value a kind with a ``floor`` (momentum) reaches in a job; None for the
    other kinds. A fixed one keeps its init, as the engine computes it from its raw value; a learned
    one is kept at or above its ``min``, by default the kind's ``floor`` or its init if that is
    lower. The engine clamps a learned momentum to it (`hypercore.hyper.HyperSet`) and sizes its
    information buffer for it; the server sizes the job's memory for it (`hypercore.budget`)."""
    kind = KINDS[name]
    if kind.floor is None:
        return None
    start = float(to_natural(name, to_raw(name, float(init))))
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
    if init == "data":
        return [] if kind.data_init else [("init", "'data' is an init for training_data only; give a number")]
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
                f"an {name} with init 0 is off and cannot be learned (it is log-parametrised): "
                "give a positive init such as 1e-4",
            ),
            ("learn", f"cannot be true while init is 0: an {name} of 0 is off"),
        ]
    return []


def is_off(name: str, init: Any) -> bool:
    """A kind whose init turns it off (an ``l2`` of exactly 0: no penalty term at all)."""
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
