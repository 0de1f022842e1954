"""A library run the service records (origin ``external``): what its recorder sends, checked.

A researcher runs `hypercore.tune` (or their own meta-loop) on their own machine and a recorder
(`revtune.Client.record`) writes each meta-iteration into the service, which stores it as a job no
worker runs. Two inputs come from that recorder:

- the *description*, a spec-like dict stored as the job's ``spec`` (`validate_description`). A run on
  a built-in model family (``model.kind`` one of `hypercore.families.FAMILIES`) is checked like a
  submitted job: the schema and the semantic rules, with its uploaded dataset resolved; a run of the
  user's own model names it in ``model.kind`` (any other name, free-form fields beside it) and its
  other sections, where given, are checked by the same section schemas. The worker's size limits
  (steps, layers, weights, memory) do not apply, since the run uses the user's machine, except
  ``meta.iterations`` (``REVTUNE_MAX_META_ITERATIONS``), which bounds what the job stores.
- one *step* per meta-iteration (`RecordedStep`): the REST step fields plus the hyperparameters after
  it, in natural units, each ``{"values", "axes", "labels", "learned"}`` (``shape`` optional, checked)
  as `hypercore.tune.Record.hyperparameters` gives them; ``values`` are nested lists of numbers, null
  for a non-finite value. Optionally ``scored``, the same for the values it trained with
  (`hypercore.tune.Record.trained_with`): the initial values at meta-iteration 0, and a new best's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from hypercore.families import FAMILIES, DatasetShape
from hypercore.steps import STEP_TYPES
from jobs.spec import JobSpec, SpecError, SpecLimits, TrainingSection, validate_spec

__all__ = ["ExternalSpec", "HyperparameterIn", "RecordedStep", "validate_description"]

_LOOSE = 2**62  # "no limit": what the worker's limits become for a run on the user's machine


class OwnModel(BaseModel):
    """The user's own model: its name in ``kind``, anything else beside it."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    kind: str = Field(min_length=1, max_length=100, description="the model's name")


class ExternalSpec(JobSpec):
    """The description of a library run of the user's own model (`validate_description`)."""

    model: OwnModel  # type: ignore[assignment]
    training: TrainingSection | None = None  # type: ignore[assignment]


def _run_limits(limits: SpecLimits) -> SpecLimits:
    """The limits a library run meets: only ``max_meta_iterations`` (what it stores)."""
    loose = {f.name: _LOOSE for f in dataclasses.fields(SpecLimits) if f.name != "max_meta_iterations"}
    return dataclasses.replace(limits, **loose)


def validate_description(
    data: Any,
    limits: SpecLimits | None = None,
    resolve_dataset: Callable[[str], DatasetShape | None] | None = None,
) -> JobSpec:
    """Check a library run's description (see the module docstring); raise `SpecError` naming each
    field, as `jobs.spec.validate_spec` does."""
    limits = limits or SpecLimits()
    if not isinstance(data, Mapping):
        raise SpecError(
            [{"loc": [], "msg": f"a run's description is a JSON object, got {type(data).__name__}"}]
        )
    model = data.get("model")
    if isinstance(model, Mapping) and model.get("kind") in FAMILIES:
        return validate_spec(data, _run_limits(limits), resolve_dataset)
    try:
        spec = ExternalSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError([{"loc": list(err["loc"]), "msg": err["msg"]} for err in e.errors()]) from None
    if spec.meta.iterations > limits.max_meta_iterations:
        limit, got = limits.max_meta_iterations, spec.meta.iterations
        msg = f"at most {limit} meta-iterations, got {got}"
        raise SpecError([{"loc": ["meta", "iterations"], "msg": msg}])
    return spec


_NAME = r"^[A-Za-z_][A-Za-z0-9_.]*$"  # learning_rate, sharing.layer0, a user's own kind


class HyperparameterIn(BaseModel):
    """One hyperparameter after a meta-iteration, in natural units (`hypercore.hyper.HyperValue`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    values: Any = Field(description="nested lists of numbers (null: not finite), one level per axis")
    shape: list[int] | None = Field(None, description="optional: checked against the values")
    axes: list[str] = Field(max_length=32)
    labels: dict[str, list[Any]] = Field(default_factory=dict)
    learned: bool

    def array(self) -> np.ndarray:
        """The values as float64, NaN where null (checked by the validator)."""
        return np.asarray(np.asarray(self.values, dtype=object).astype(np.float64), dtype="<f8")

    @model_validator(mode="after")
    def _consistent(self) -> HyperparameterIn:
        try:
            raw = np.asarray(self.values, dtype=object)
        except ValueError:
            raise ValueError("values: nested lists of numbers, all rows of equal length") from None
        for v in raw.flat:
            if isinstance(v, bool) or not (v is None or isinstance(v, int | float)):
                raise ValueError(
                    f"values: nested lists of numbers (null for a non-finite one), all rows of equal "
                    f"length; found {type(v).__name__} {str(v)[:40]!r}"
                )
        if self.shape is not None and list(raw.shape) != self.shape:
            raise ValueError(f"shape {self.shape} differs from the values' shape {list(raw.shape)}")
        if len(self.axes) != raw.ndim:
            raise ValueError(f"axes names {len(self.axes)} axes but the values have {raw.ndim}")
        for axis, labels in self.labels.items():
            if axis not in self.axes:
                raise ValueError(f"labels: {axis!r} is not one of the axes {self.axes}")
            size = raw.shape[self.axes.index(axis)]
            if len(labels) != size:
                raise ValueError(f"labels.{axis}: {len(labels)} labels for an axis of {size}")
            if any(not isinstance(x, str | int | float | bool) for x in labels):
                raise ValueError(f"labels.{axis}: strings or numbers only")
        return self


class _StepFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    hyperparameters: dict[str, HyperparameterIn] = Field(
        default_factory=dict,
        description="by name; fixed ones (learned false) are stored from meta_iter 0 only",
    )
    scored: dict[str, HyperparameterIn] | None = Field(
        None,
        description="optional, by name: the values this meta-iteration trained with (hypercore's "
        "Record.trained_with), kept as snapshot meta_iter (the initial values at 0, fixed ones "
        "included; a new best's where the snapshot grid does not keep them), so that export "
        "which=best and which=0 find them",
    )

    @model_validator(mode="after")
    def _names(self) -> _StepFields:
        for field, named in (("hyperparameters", self.hyperparameters), ("scored", self.scored or {})):
            for name in named:
                if len(name) > 100 or not re.match(_NAME, name):
                    raise ValueError(f"{field}: {name[:100]!r} is not a name ({_NAME}, at most 100)")
        return self


# The REST step fields (`hypercore.steps.STEP_TYPES`): meta_iter required, the rest optional.
RecordedStep = create_model(
    "RecordedStep",
    __base__=_StepFields,
    **{
        name: (int, Field(ge=0, le=2**31 - 2)) if name == "meta_iter" else (kind | None, None)  # type: ignore[misc]
        for name, kind in STEP_TYPES.items()
    },
)
RecordedStep.__doc__ = (
    "One meta-iteration of a library run: the step fields and the hyperparameters after it."
)
