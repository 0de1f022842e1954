"""The step record: what one meta-iteration reports, once, JAX-free.

The engine's `hypercore.tune.Record.step`, the repository's step rows, the REST schema
(`api.schemas.StepOut`) and the CLI's ``steps.csv`` read their fields from `STEP_TYPES`.
(`revtune.client` keeps its own typed copy: it may import only httpx.)

``meta_iter`` counts from 0; the losses are the model's training loss on each split after
training, the errors its argmax error rates (None for a real target: a regression has none);
``hypergrad_norm`` is the global norm of the hypergradient; ``elapsed_s`` the meta-iteration's wall
time; ``reversal_exact`` whether the backward pass retraced the forward one bit for bit (None with
the unrolled engine).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Every field a step has, in the order of the REST object and the CSV columns, with its JSON type.
STEP_TYPES: dict[str, type] = {
    "meta_iter": int,
    "objective": float,
    "train_loss": float,
    "valid_loss": float,
    "valid_error": float,
    "test_loss": float,
    "test_error": float,
    "hypergrad_norm": float,
    "elapsed_s": float,
    "reversal_exact": bool,
}
STEP_FIELDS = tuple(STEP_TYPES)


def step_dict(source: Any) -> dict[str, Any]:
    """The step fields of ``source`` (attributes, or keys of a mapping); non-finite numbers become
    None (JSON has no NaN)."""
    get = source.get if isinstance(source, Mapping) else lambda f: getattr(source, f)
    out = {}
    for field in STEP_FIELDS:
        value = get(field)
        out[field] = None if isinstance(value, float) and not math.isfinite(value) else value
    return out
