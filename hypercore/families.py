"""Model families and built-in datasets as the spec names them: parameter names and shapes, JAX-free.

The server counts a spec's weights and hyperparameters from these shapes before any worker builds
the model, so they must be the engine's own: `hypercore.models` builds every family from
`parameter_shapes`, and a test checks the two agree for every family.

Adding a model family
---------------------
One `Family` entry in `FAMILIES` (the rules of its ``model`` section and its parameter shapes),
its `hypercore.models.TrainableModel` implementation, and its ``kind`` in the schema (`jobs.spec`),
after which the limits (`jobs.spec`), the counts (`hypercore.rules.count_hyperparameters`), the
memory estimate (`hypercore.budget`) and the export's ``layer`` labels all know it. The
convolutional families (`hypercore.cnn`) are the example: `conv_parameter_shapes` is their one
definition of the arrays, which `hypercore.cnn.CNN` builds from too.
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
    upload (0: not such an upload). ``example_shape``: one example's shape, ``(d,)`` features,
    ``(H, W)`` or ``(H, W, C)`` images, ``(L, C)`` sequences (None: ``(n_features,)``; see `example`).
    ``target``: ``"class"`` (integer labels; ``n_classes`` of them) or ``"real"`` (a regression:
    ``n_classes`` is 0); ``n_outputs``: the model's output width, ``n_classes`` or the real target's
    outputs (0 given for a class target: ``n_classes``).
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
    example_shape: tuple[int, ...] | None = None
    target: Literal["class", "real"] = "class"
    n_outputs: int = 0

    def __post_init__(self):
        if not self.n_outputs and self.target == "class":
            object.__setattr__(self, "n_outputs", self.n_classes)

    @property
    def example(self) -> tuple[int, ...]:
        """One example's shape, ``(n_features,)`` when the dataset gives none."""
        return tuple(self.example_shape) if self.example_shape else (self.n_features,)

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
            example_shape=dataset.example_shape,
            target=getattr(dataset, "target", "class"),
            n_outputs=getattr(dataset, "n_outputs", dataset.n_classes),
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
        example_shape=info["example_shape"],
    )


BUILTIN_DATASETS: dict[str, DatasetShape] = {name: _builtin_shape(name) for name in arrays.builtin_names()}


def _chain_shapes(model: Mapping[str, Any], shape: DatasetShape) -> Shapes:
    """``layer{i}.W`` (in, out) and ``layer{i}.b`` (out) of a chain of dense layers on the flattened
    examples; a multi-task family's with a leading axis of ``n_tasks``."""
    tasks = (shape.n_tasks,) if model["kind"] == "multitask_mlp" else ()
    return _dense_shapes([shape.n_features, *model.get("hidden", ()), shape.n_outputs], tasks)


def _dense_shapes(widths: list[int], tasks: tuple[int, ...] = ()) -> Shapes:
    shapes: Shapes = {}
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        shapes[f"layer{i}.W"] = (*tasks, n_in, n_out)
        shapes[f"layer{i}.b"] = (*tasks, n_out)
    return shapes


# ---- convolutional families (`hypercore.cnn`) ------------------------------------------------------

# The spatial axes of each convolutional family's examples, and what a spec leaves out.
CONV_DIMS = {"cnn": 2, "cnn1d": 1}
CONV_DEFAULTS = {"kernel": 3, "pool": 2}
CONV_EXAMPLES = {"cnn": "(H, W) or (H, W, C) images", "cnn1d": "(L,) or (L, C) sequences"}


def conv_input_shape(kind: str, example: tuple[int, ...]) -> tuple[int, ...] | None:
    """An example of ``example`` shape as conv family ``kind`` reads it, ``(*spatial, channels)``
    (one channel when the shape has none), or None when it cannot (`CONV_EXAMPLES`)."""
    dims = CONV_DIMS[kind]
    if len(example) == dims:
        return (*example, 1)
    if len(example) == dims + 1:
        return tuple(example)
    return None


def pooled(spatial: tuple[int, ...], n_convs: int, pool: int) -> list[tuple[int, ...]]:
    """The spatial size of the input of each convolution and, last, of the final feature map: SAME
    convolutions keep it, each VALID average pooling by ``pool`` divides it, rounding down."""
    sizes = [tuple(spatial)]
    for _ in range(n_convs):
        sizes.append(tuple(s // pool for s in sizes[-1]))
    return sizes


def conv_parameter_shapes(
    input_shape: tuple[int, ...],
    n_outputs: int,
    channels: tuple[int, ...] | list[int],
    kernel: int,
    pool: int,
    hidden: tuple[int, ...] | list[int] = (),
) -> Shapes:
    """``conv{i}.W`` ``(kernel, [kernel,] c_in, c_out)``, ``conv{i}.b``, then the dense
    ``layer{j}.W``/``.b`` on the flattened last feature map (`hypercore.cnn`'s module docstring), the
    last with ``n_outputs`` (the classes, or a real target's outputs)."""
    dims = len(input_shape) - 1
    shapes: Shapes = {}
    c_in = input_shape[-1]
    for i, c_out in enumerate(channels):
        shapes[f"conv{i}.W"] = (*(kernel,) * dims, c_in, c_out)
        shapes[f"conv{i}.b"] = (c_out,)
        c_in = c_out
    last = pooled(input_shape[:-1], len(channels), pool)[-1]
    return shapes | _dense_shapes([math.prod(last) * channels[-1], *hidden, n_outputs])


def conv_settings(model: Mapping[str, Any]) -> tuple[list[int], int, int]:
    """``(channels, kernel, pool)`` of a conv family's ``model`` section, defaults filled in."""
    return (
        list(model.get("channels") or ()),
        model.get("kernel") or CONV_DEFAULTS["kernel"],
        model.get("pool") or CONV_DEFAULTS["pool"],
    )


def _conv_shapes(model: Mapping[str, Any], shape: DatasetShape) -> Shapes:
    channels, kernel, pool = conv_settings(model)
    input_shape = conv_input_shape(model["kind"], shape.example)
    assert input_shape is not None, "the rules refuse an example shape the family cannot read"
    return conv_parameter_shapes(
        input_shape, shape.n_outputs, channels, kernel, pool, model.get("hidden", ())
    )


def activation_units(model: Mapping[str, Any], shape: DatasetShape) -> int:
    """The float activations one example holds in a forward pass: the input, every feature map (a
    convolution's output and its pooled copy) and every dense layer's output."""
    units = shape.n_features + sum(model.get("hidden") or ()) + shape.n_outputs
    if model["kind"] not in CONV_DIMS:
        return units
    channels, _, pool = conv_settings(model)
    input_shape = conv_input_shape(model["kind"], shape.example)
    if input_shape is None:
        return units
    sizes = pooled(input_shape[:-1], len(channels), pool)
    return units + sum(
        (math.prod(before) + math.prod(after)) * c
        for before, after, c in zip(sizes[:-1], sizes[1:], channels, strict=True)
    )


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family: ``shapes(model_section, dataset_shape)`` gives its parameter arrays in order;
    ``hidden``: whether its ``hidden`` widths are ``"required"``, ``"optional"`` or ``"refused"``;
    ``conv``: the spatial axes of a convolutional family's examples (0: not convolutional);
    ``needs_data``: False for a model that trains on its own fixed observation (toy2d);
    ``multitask``: one net per task of a multi-task dataset; ``full_batch``: refuses ``batch_size``.
    ``sharing_layers(shapes)``: the layers a ``sharing`` matrix couples."""

    shapes: Callable[[Mapping[str, Any], DatasetShape], Shapes]
    hidden: Literal["required", "optional", "refused"]
    needs_data: bool = True
    multitask: bool = False
    full_batch: bool = False
    conv: int = 0
    doc: str = ""


FAMILIES: dict[str, Family] = {
    "mlp": Family(_chain_shapes, "required", doc="a multilayer perceptron"),
    "logreg": Family(_chain_shapes, "refused", doc="logistic regression"),
    "toy2d": Family(
        lambda model, shape: {"w": (2,)},
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
    "cnn": Family(
        _conv_shapes,
        "optional",
        conv=2,
        doc="a 2-D convolutional net on (H, W[, C]) images: channels, kernel (3), pool (2), then hidden",
    ),
    "cnn1d": Family(
        _conv_shapes,
        "optional",
        conv=1,
        doc="a 1-D convolutional net on (L[, C]) sequences: channels, kernel (3), pool (2), then hidden",
    ),
}

# A model from a plugin (`hypercore.plugins`): ``model: {kind: plugin, name, config}``. Its arrays are
# the plugin's to say, on a worker that has it installed; the server, which cannot import it, knows
# no shapes, so no rule or limit here reads them (the worker checks the sizes once it has built it).
PLUGIN_KIND = "plugin"
PLUGIN = Family(
    lambda model, shape: _no_shapes(model),
    "refused",
    doc="a model from a plugin the workers have installed (GET /v1/models): name, config",
)


def _no_shapes(model: Mapping[str, Any]) -> Shapes:
    raise ValueError(
        f"the plugin model {model.get('name')!r} has no shapes before a worker builds it (pass `shapes`)"
    )


def family(kind: str) -> Family:
    """The family of a spec's ``model.kind``: a built-in of `FAMILIES`, or `PLUGIN`."""
    return PLUGIN if kind == PLUGIN_KIND else FAMILIES[kind]


# What the counts need of the toy2d model's one observation (`hypercore.models.toy2d_data`).
TOY2D_SHAPE = DatasetShape(n_features=1, n_classes=2)


def parameter_shapes(model: Mapping[str, Any], shape: DatasetShape) -> Shapes:
    """The parameter arrays of the spec's ``model`` section on a dataset of ``shape``, as the engine
    names them."""
    return family(model["kind"]).shapes(model, shape)


def sharing_layers(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The network layers of a chain (``layer0``, ``layer1``, ...): what a ``sharing`` matrix of
    granularity ``layer`` is one per."""
    return list(dict.fromkeys(name.split(".", 1)[0] for name in shapes))


def n_weights(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())
