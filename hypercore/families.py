"""Model families and built-in datasets as the spec names them: parameter names and shapes, JAX-free.

The server counts a spec's weights and hyperparameters from these shapes before any worker builds
the model, so they must be the engine's own: `hypercore.models` builds every family from
`parameter_shapes`, and a test checks the two agree for every family.

Adding a model family
---------------------
One `Family` entry in `FAMILIES` (the rules of its ``model`` section and its parameter shapes),
its `hypercore.models.Model` implementation, and its ``kind`` in the schema (`jobs.spec`). For
example a 1-D convolutional net would be::

    def _cnn1d_shapes(model, n_features, n_classes, n_tasks):
        ...  # {"conv0.W": (k, 1, c), "conv0.b": (c,), ..., "dense.W": (..., n_classes), ...}

    FAMILIES["cnn1d"] = Family(shapes=_cnn1d_shapes, hidden="required", doc="1-D conv net")

after which the limits (`jobs.spec`), the counts (`hypercore.rules.count_hyperparameters`) and the
export's ``layer`` labels all know it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from hypercore import arrays

Shapes = dict[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class DatasetShape:
    """What the rules and limits need to know of a dataset.

    ``n_rows``: examples available to split by the spec's counts (``layout="xy"``); for a pre-split
    upload (``layout="splits"``) the split sizes are fixed by the file and ``n_train`` etc. hold them;
    ``layout="loaded"``: a dataset already built with the spec's counts (the engine's ``dataset=``),
    whose ``n_train`` etc. are what it holds. A multi-task dataset has ``n_tasks`` tasks, and every
    count must be a multiple of ``split_unit``; ``task_rows``: the fewest rows of any task of an X/y
    upload (0: not such an upload).
    """

    n_features: int
    n_classes: int
    n_rows: int = 0
    layout: Literal["xy", "splits", "loaded"] = "xy"
    n_train: int = 0
    n_valid: int = 0
    n_test: int = 0
    n_tasks: int = 1
    split_unit: int = 1
    task_rows: int = 0

    @classmethod
    def of_loaded(cls, dataset) -> DatasetShape:
        """The shape of a dataset already built with the spec's counts (an `arrays.Dataset`, or
        anything with its ``n_*`` attributes): what `hypercore.spec` checks a ``dataset=`` against
        and what ``revtune run --dataset`` validates in place of the upload."""
        return cls(
            n_features=dataset.n_features,
            n_classes=dataset.n_classes,
            layout="loaded",
            n_train=dataset.n_train,
            n_valid=dataset.n_valid,
            n_test=dataset.n_test,
            n_tasks=dataset.n_tasks,
        )


def _builtin_shape(name: str) -> DatasetShape:
    info = arrays.builtin_info(name)
    n_tasks = info.get("n_tasks", 1)
    return DatasetShape(
        n_features=info["n_features"],
        n_classes=info["n_classes"],
        n_rows=info["n_examples"],
        n_tasks=n_tasks,
        # a multi-task built-in splits every task and class alike (`hypercore.arrays.load`)
        split_unit=n_tasks * info["n_classes"] if n_tasks > 1 else 1,
    )


BUILTIN_DATASETS: dict[str, DatasetShape] = {name: _builtin_shape(name) for name in arrays.builtin_names()}


def _chain_shapes(model: Mapping[str, Any], n_features: int, n_classes: int, n_tasks: int) -> Shapes:
    """``layer{i}.W`` (in, out) and ``layer{i}.b`` (out) of a chain of dense layers; a multi-task
    family's with a leading axis of ``n_tasks``."""
    widths = [n_features, *model.get("hidden", ()), n_classes]
    tasks = (n_tasks,) if model["kind"] == "multitask_mlp" else ()
    shapes: Shapes = {}
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        shapes[f"layer{i}.W"] = (*tasks, n_in, n_out)
        shapes[f"layer{i}.b"] = (*tasks, n_out)
    return shapes


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family: ``shapes(model_section, n_features, n_classes, n_tasks)`` gives its parameter
    arrays in order; ``hidden``: whether its ``hidden`` widths are ``"required"`` or ``"refused"``;
    ``needs_data``: False for a model that trains on its own fixed observation (toy2d);
    ``multitask``: one net per task of a multi-task dataset; ``full_batch``: refuses ``batch_size``.
    ``sharing_layers(shapes)``: the layers a ``sharing`` matrix couples."""

    shapes: Callable[[Mapping[str, Any], int, int, int], Shapes]
    hidden: Literal["required", "refused"]
    needs_data: bool = True
    multitask: bool = False
    full_batch: bool = False
    doc: str = ""


FAMILIES: dict[str, Family] = {
    "mlp": Family(_chain_shapes, "required", doc="a multilayer perceptron"),
    "logreg": Family(_chain_shapes, "refused", doc="logistic regression"),
    "toy2d": Family(
        lambda model, n_features, n_classes, n_tasks: {"w": (2,)},
        "refused",
        needs_data=False,
        doc="the paper's two-weight figure-1 problem (no dataset)",
    ),
    "multitask_mlp": Family(
        _chain_shapes,
        "required",
        multitask=True,
        full_batch=True,
        doc="one mlp per task of a multi-task dataset, coupled by `sharing`",
    ),
}

# What the counts need of the toy2d model's one observation (`hypercore.models.toy2d_data`).
TOY2D_SHAPE = DatasetShape(n_features=1, n_classes=2)


def parameter_shapes(model: Mapping[str, Any], n_features: int, n_classes: int, n_tasks: int = 1) -> Shapes:
    """The parameter arrays of the spec's ``model`` section, as the engine names them."""
    return FAMILIES[model["kind"]].shapes(model, n_features, n_classes, n_tasks)


def sharing_layers(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The network layers of a chain (``layer0``, ``layer1``, ...): what a ``sharing`` matrix of
    granularity ``layer`` is one per."""
    return list(dict.fromkeys(name.split(".", 1)[0] for name in shapes))


def n_weights(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())
