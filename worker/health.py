"""A job's health: what its run found worth telling the user, as the job's warnings.

Each warning is ``{"code", "message", "meta_iter"}``, stored once per code on the job
(`jobs.repository.add_warning`: a later occurrence updates the message; ``meta_iter`` stays where it
began, None when found before the first meta-iteration) and served in the job JSON (docs/API.md,
"Warnings"). The run goes on; only a job whose every meta-iteration diverged ends ``failed``
(`worker.runner.JobRun.ended`). The codes:

- ``unscaled_inputs`` (when the job is built): the training inputs, as the model sees them (centred
  unless ``dataset.center: false``), have a feature whose root-mean-square exceeds
  `MAX_INPUT_SCALE`. Pixels in [0, 1] stay below 0.5 and standardised features at 1 (digits 0.41,
  mnist5k 0.45, MNIST-1D 1.14). Measured on digits scaled up (20 training steps, 3 meta-iterations):
  logistic regression's objective is 0.6 at x10 (largest standard deviation 4.1) and 4-5 at x30
  (12.3); a one-hidden-layer MLP's hypergradient norm, 0.4 on plain digits, is 1e3-1e4 at x100 (41)
  and 3e6-3e11 at x1000 (410).
- ``hypergradient_norm``: a meta-iteration whose objective was finite had a hypergradient norm that
  was not finite or above `MAX_HYPERGRAD_NORM` (norms of a healthy run are O(1); a meta-iteration whose
  objective diverged is reported as ``diverged`` instead: its hypergradient means nothing).
- ``diverged``: ``k`` of the ``n`` meta-iterations so far had a non-finite objective (the message is
  updated after every meta-iteration once ``k > 0``).
- ``chaos_guard``: the meta-optimiser's chaos guard (`hypercore.meta.guard_check`) backed off: it
  undid a meta-step and shrank the meta step size.

The functions here are pure: `worker.runner` writes what they return.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from jobs.repository import StepTally

# The largest per-feature root-mean-square of the training inputs before `unscaled_inputs` warns:
# ten times a standardised feature's.
MAX_INPUT_SCALE = 10.0
# The largest hypergradient norm (global 2-norm over every learned hyperparameter) before
# `hypergradient_norm` warns.
MAX_HYPERGRAD_NORM = 1e6

_GUARD_REASONS = {
    "nonfinite": "the objective or the hypergradient was not finite",
    "jump": "the hypergradient norm jumped past the guard's multiple of the recent ones",
}


class JobWarning(NamedTuple):
    """One warning, as `jobs.repository.add_warning` takes it (``warning._asdict()``)."""

    code: str
    message: str
    meta_iter: int | None = None


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def unscaled_inputs(X_train: Any) -> JobWarning | None:
    """The ``unscaled_inputs`` warning for these training inputs (rows are examples, as the model
    sees them), or None when every feature's root-mean-square is within `MAX_INPUT_SCALE`."""
    X = np.asarray(X_train)
    X = X.reshape(X.shape[0], -1)
    if X.size == 0:
        return None
    rms = np.sqrt(np.mean(np.square(X, dtype=np.float64), axis=0))
    worst = int(np.argmax(rms))
    if rms[worst] <= MAX_INPUT_SCALE:
        return None
    std = float(np.std(X[:, worst], dtype=np.float64))
    where = f"feature {worst} of {X.shape[1]}"
    if std > MAX_INPUT_SCALE:
        found = f"{where} has a standard deviation of {std:.3g}"
        advice = (
            "standardise X per feature before uploading (subtract each feature's training mean and "
            "divide by its standard deviation)"
        )
    else:
        found = f"{where} has a root-mean-square of {rms[worst]:.3g} around a standard deviation of {std:.3g}"
        advice = (
            "center the inputs (dataset.center: true subtracts the training mean) or standardise X "
            "per feature before uploading"
        )
    return JobWarning(
        "unscaled_inputs",
        f"the training inputs are not scaled: {found}, beyond {MAX_INPUT_SCALE:g} (pixels in [0, 1] "
        "stay below 0.5, standardised features at 1), which makes the first hypergradients explode "
        f"and the tuning erratic: {advice}",
    )


def meta_iteration_warnings(record: Any, tally: StepTally, guard_backoff: float) -> list[JobWarning]:
    """The warnings after meta-iteration ``record.meta_iter`` (a `hypercore.tune.Record`) has been
    recorded: ``tally`` counts the job's recorded steps, this one included; ``guard_backoff`` is the
    factor each chaos-guard back-off multiplies the meta step size by."""
    k, out = record.meta_iter, []
    if math.isfinite(record.objective) and not record.hypergrad_norm <= MAX_HYPERGRAD_NORM:
        out.append(
            JobWarning(
                "hypergradient_norm",
                f"the hypergradient norm was {record.hypergrad_norm:.3g} at meta-iteration {k}, beyond "
                f"{MAX_HYPERGRAD_NORM:g} ({tally.hypergrad_beyond} meta-iteration"
                f"{'' if tally.hypergrad_beyond == 1 else 's'} so far): the training is chaotic and its "
                "hypergradient a poor guide; standardise the inputs per feature, lower "
                "hyperparameters.learning_rate.init, or bound the meta-steps with meta.clip",
                k,
            )
        )
    if tally.diverged:
        out.append(
            JobWarning(
                "diverged",
                f"training diverged (the objective was not finite) in {tally.diverged} of the "
                f"{tally.recorded} meta-iterations so far: lower hyperparameters.learning_rate.init, or "
                "standardise the inputs per feature if they are large",
                k,
            )
        )
    for event in record.events:
        backoffs = round(math.log(event.scale) / math.log(guard_backoff))
        out.append(
            JobWarning(
                "chaos_guard",
                f"the chaos guard backed off {_times(backoffs)} so far, the latest at meta-iteration "
                f"{event.meta_iter} ({_GUARD_REASONS.get(event.reason, event.reason)}): it undid that "
                f"meta-step and the meta step size is now {event.scale:.3g} x meta.learning_rate; if it "
                "keeps backing off, lower hyperparameters.learning_rate.init or meta.learning_rate",
                event.meta_iter,
            )
        )
    return out
