"""Meta-optimisers on hyperparameters (optax), hypergradient clipping, and the chaos guard.

The meta-optimiser moves the *raw* hyperparameters (log learning rates, logit momenta, ...) along
minus the hypergradient. Three are offered, all optax transformations:

- ``"adam"``: ``optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8)``.
- ``"adam_paper"``: the Adam of HIPS/hypergrad's experiments (``optimizers.adam`` with
  ``b1=0.1, b2=0.01, eps=1e-4, lam=1e-4``, step 0.04 in the schedule experiment). In that code
  ``b1`` and ``b2`` are the weights of the *new* gradient, so the decays are ``1 - b1 = 0.9`` and
  ``1 - b2 = 0.99``; and its first-moment weight ``b1_t = 1 - 0.9 lam^i`` is 0.1 at ``i = 0`` but
  ``1 - 9e-5`` from ``i = 1``, so ``m_i`` is (to 1e-4) the current gradient while the bias correction
  still divides by ``1 - 0.9^(i+1)``. The preset reproduces exactly that, up to the
  ``0.9 lam^i`` memory it drops (9e-5 at ``i = 1``, 9e-9 at ``i = 2``)::

      v_i = 0.99 v_{i-1} + 0.01 g_i^2
      c_i = 1 at i = 0 (m_0 = 0.1 g_0, corrected by 1 - 0.9), else 1 / (1 - 0.9^(i+1))
      x  -= step * c_i * g_i / (sqrt(v_i / (1 - 0.99^(i+1))) + 1e-4)

  built as ``scale_by_adam(b1=0, b2=0.99, eps=1e-4)`` then ``c_i`` as an optax schedule.
- ``"sgd"``: ``optax.sgd(learning_rate, momentum)`` (heavy ball, momentum 0.9 by default).

``clip`` chains ``optax.clip_by_global_norm(clip)`` in front.

The chaos guard (`guard_check`) watches each meta-iteration: when the objective or the hypergradient
is non-finite, or the hypergradient norm exceeds ``jump_factor`` times the median of the last
``window`` accepted norms, the last meta-step is undone (the caller restores the hyperparameters and
optimiser state from before it), the meta step size is multiplied by ``backoff``, and the event is
recorded. Training at a large learning rate is chaotic (the paper's section 4 and its
learning-rate wiggliness experiment): the hypergradient there is huge and meaningless, and following
it ruins the run.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import NamedTuple

import jax.numpy as jnp
import optax

from hypercore import _x64  # noqa: F401  (configures JAX for the engine before any array exists)
from hypercore.hyper import ConfigError

OPTIMIZERS = ("adam", "adam_paper", "sgd")


class MetaConfigError(ConfigError):
    """A meta-optimiser setting is invalid."""


class MetaDivergedError(RuntimeError):
    """The chaos guard backed off ``max_backoffs`` times in a row without an acceptable step."""


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    """Chaos-guard thresholds. ``enabled=False`` accepts every step (NaN included)."""

    enabled: bool = True
    jump_factor: float = 10.0
    window: int = 5
    backoff: float = 0.5
    max_backoffs: int = 10

    def validate(self) -> None:
        if self.jump_factor <= 1:
            raise MetaConfigError("meta.guard.jump_factor", f"must be > 1, got {self.jump_factor}")
        if self.window < 1:
            raise MetaConfigError("meta.guard.window", f"must be >= 1, got {self.window}")
        if not 0 < self.backoff < 1:
            raise MetaConfigError("meta.guard.backoff", f"must lie in (0, 1), got {self.backoff}")
        if self.max_backoffs < 1:
            raise MetaConfigError("meta.guard.max_backoffs", f"must be >= 1, got {self.max_backoffs}")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Which meta-optimiser, its step size, optional clipping and the guard."""

    optimizer: str = "adam"
    learning_rate: float = 0.04
    momentum: float = 0.9
    clip: float | None = None
    guard: GuardConfig = dataclasses.field(default_factory=GuardConfig)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise MetaConfigError(
                "meta.optimizer", f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}"
            )
        if not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            raise MetaConfigError("meta.learning_rate", f"must be a number > 0, got {self.learning_rate!r}")
        if not 0 <= self.momentum < 1:
            raise MetaConfigError("meta.momentum", f"must lie in [0, 1), got {self.momentum}")
        if self.clip is not None and not self.clip > 0:
            raise MetaConfigError("meta.clip", f"must be > 0 or null, got {self.clip}")
        self.guard.validate()


def build(config: MetaConfig) -> optax.GradientTransformation:
    """The optax transformation for ``config`` (see the module docstring for the maths)."""
    config.validate()
    lr = config.learning_rate
    if config.optimizer == "adam":
        opt = optax.adam(lr)
    elif config.optimizer == "sgd":
        opt = optax.sgd(lr, momentum=config.momentum or None)
    else:
        opt = optax.chain(
            optax.scale_by_adam(b1=0.0, b2=0.99, eps=1e-4),
            optax.scale_by_schedule(lambda i: jnp.where(i == 0, 1.0, 1.0 / (1.0 - 0.9 ** (i + 1.0)))),
            optax.scale(-lr),
        )
    if config.clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(config.clip), opt)
    return opt


class GuardState(NamedTuple):
    """What the guard remembers: the meta step multiplier, recent accepted hypergradient norms
    (oldest first) and the number of back-offs in a row."""

    scale: float = 1.0
    norms: tuple[float, ...] = ()
    backoffs: int = 0


class GuardEvent(NamedTuple):
    """One back-off: ``reason`` is ``"nonfinite"`` or ``"jump"``; ``scale`` the new step multiplier."""

    meta_iter: int
    reason: str
    objective: float
    hypergrad_norm: float
    scale: float


def guard_check(
    config: GuardConfig, state: GuardState, meta_iter: int, objective: float, hypergrad_norm: float
) -> tuple[GuardEvent | None, GuardState]:
    """Accept (``None``) or back off (a `GuardEvent`) this meta-iteration; return the new state.

    Raises `MetaDivergedError` after ``config.max_backoffs`` back-offs in a row.
    """
    if not config.enabled:
        return None, state
    reason = None
    if not (math.isfinite(objective) and math.isfinite(hypergrad_norm)):
        reason = "nonfinite"
    elif state.norms and hypergrad_norm > config.jump_factor * statistics.median(state.norms):
        reason = "jump"
    if reason is None:
        norms = (*state.norms, float(hypergrad_norm))[-config.window :]
        return None, GuardState(state.scale, norms, 0)
    backoffs = state.backoffs + 1
    if backoffs > config.max_backoffs:
        raise MetaDivergedError(
            f"meta-iteration {meta_iter}: the chaos guard backed off {config.max_backoffs} times in a row "
            f"(last: {reason}, objective {objective}, hypergradient norm {hypergrad_norm}); the training "
            "diverges at every hyperparameter tried: start from a smaller learning rate"
        )
    scale = state.scale * config.backoff
    event = GuardEvent(meta_iter, reason, float(objective), float(hypergrad_norm), scale)
    return event, GuardState(scale, state.norms, backoffs)
