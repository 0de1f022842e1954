"""Response bodies: the REST contract's field names (DESIGN.md), built from rows, never rows themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, create_model

from hypercore.steps import STEP_TYPES
from jobs.models import Dataset, HyperSnapshot, Job, Step


class Best(BaseModel):
    objective: float
    meta_iter: int


class JobWarning(BaseModel):
    """What a job's run found worth telling its user (docs/API.md, "Warnings"): one per ``code``;
    ``meta_iter`` is where it began (null: found before the first meta-iteration)."""

    code: str
    message: str
    meta_iter: int | None


class JobOut(BaseModel):
    id: str
    name: str
    status: str
    origin: str = Field(
        description="service (a worker runs it) or external (a library run its client records)"
    )
    spec: dict[str, Any]
    meta_iter: int
    meta_iterations: int
    best: Best | None
    error: str | None
    warnings: list[JobWarning]
    cancel_requested: bool = Field(
        description="cancel was requested: a running job stops after its current meta-iteration, "
        "then reads cancelled"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        best = None
        if job.best_objective is not None and job.best_meta_iter is not None:
            best = Best(objective=job.best_objective, meta_iter=job.best_meta_iter)
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            origin=job.origin,
            spec=job.spec,
            meta_iter=job.meta_iter,
            meta_iterations=job.meta_iterations,
            best=best,
            error=job.error,
            warnings=[JobWarning.model_validate(w) for w in job.warnings or []],
            cancel_requested=bool(job.cancel_requested),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class RecordedOut(BaseModel):
    """A library run's step POST: the job's recorded meta-iterations, whether this one was new, and
    whether cancel was requested (the recorder stops its loop and finishes the job cancelled)."""

    meta_iter: int
    recorded: bool
    cancel_requested: bool


class HeartbeatOut(BaseModel):
    status: str
    cancel_requested: bool


class JobPageOut(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class _StepFields(BaseModel):
    pass


# One field per `hypercore.steps.STEP_TYPES` entry; every one but meta_iter may be null.
_StepBase = create_model(
    "_StepBase",
    __base__=_StepFields,
    **{
        name: (kind, ...) if name == "meta_iter" else (kind | None, ...)  # type: ignore[misc]
        for name, kind in STEP_TYPES.items()
    },
)


class StepOut(_StepBase):  # type: ignore[misc, valid-type]
    @classmethod
    def of(cls, step: Step) -> StepOut:
        return cls.model_validate(step, from_attributes=True)


class StepPageOut(BaseModel):
    items: list[StepOut]
    next_after: int | None


class HyperparameterInfo(BaseModel):
    name: str
    shape: list[int]
    axes: list[str]
    labels: dict[str, Any]
    learned: bool

    @classmethod
    def of(cls, row: HyperSnapshot) -> HyperparameterInfo:
        return cls(name=row.name, shape=row.shape, axes=row.axes, labels=row.labels, learned=row.learned)


class HyperparameterListOut(BaseModel):
    meta_iter: int
    example_shape: list[int] | None = Field(
        description="one input example's shape in the job's dataset ([8, 8, 1] for digits; an upload's"
        " X.shape[1:]): what a `feature` axis, and the `in` axis of a dense first layer, enumerate;"
        " null when the job has no dataset (toy2d) or its upload was deleted"
    )
    parameter_shapes: dict[str, list[int]] | None = Field(
        description="the model's parameter arrays and their shapes, in the engine's order (conv0.W, conv0.b,"
        " ..., layer0.W, ...): what a `layer` axis's labels name; null once the job's upload was deleted"
    )
    items: list[HyperparameterInfo]


class HyperparameterOut(BaseModel):
    name: str
    meta_iter: int
    shape: list[int]
    axes: list[str]
    labels: dict[str, Any]
    learned: bool
    values: Any


class DatasetOut(BaseModel):
    id: str
    name: str
    n_train: int
    n_valid: int
    n_test: int
    n_features: int
    n_classes: int = Field(description="the classes of integer labels; 0 for a real target")
    n_tasks: int
    sha256: str
    created_at: datetime
    layout: str
    n_rows: int
    size_bytes: int
    example_shape: list[int] = Field(
        description="one example's shape: [d] features, [H, W] or [H, W, C] images, [L, C] sequences"
    )
    target: str = Field(description="class (integer labels, softmax) or real (float targets, squared error)")
    n_outputs: int = Field(description="the model's output width: n_classes, or a real target's columns")

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetOut:
        fields = {k: getattr(dataset, k) for k in cls.model_fields}
        # uploads stored before example shapes were kept are (n, d) arrays
        fields["example_shape"] = dataset.example_shape or [dataset.n_features]
        fields["n_outputs"] = dataset.n_outputs or dataset.n_classes  # None: stored before 0005
        return cls.model_validate(fields)


class DatasetListOut(BaseModel):
    items: list[DatasetOut]


class TemplateInfo(BaseModel):
    name: str
    description: str


class TemplateListOut(BaseModel):
    items: list[TemplateInfo]
