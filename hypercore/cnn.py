"""Convolutional model families: `CNN` (images, 2-D) and `CNN1D` (sequences, 1-D).

Both follow `hypercore.models.TrainableModel`, so `hypercore.Problem.build` and `hypercore.tune`
train them like the built-in fully connected nets, with exact hypergradients.

Architecture
------------
Channels last throughout. An example is ``(H, W, C)`` (`CNN`) or ``(L, C)`` (`CNN1D`); ``C = 1``
when the shape is given without a channel axis. For each ``c_out`` of ``channels``, in order:

1. a convolution with stride 1 and SAME padding (``jax.lax.conv_general_dilated``, layouts
   NHWC/HWIO/NHWC or NWC/WIO/NWC), kernel ``kernel`` wide along every spatial axis, plus a bias;
2. the activation (``"tanh"`` or ``"relu"``, `hypercore.models.ACTIVATIONS`);
3. average pooling with window and stride ``pool`` along every spatial axis (``pool = 1``: none),
   VALID: each spatial size ``s`` becomes ``s // pool`` and trailing rows that do not fill a window
   are dropped.

The last feature map is flattened (row-major over ``(spatial..., channels)``), then goes through the
dense ``hidden`` layers, each followed by the activation, and the output layer, whose outputs are
the logits (no activation).

Parameter names
---------------
In this order (``shapes`` is a dict in this order, and the labels of a hyperparameter's ``layer``
axis follow it):

- ``conv{i}.W`` of shape ``(k, k, c_in, c_out)`` (`CNN1D`: ``(k, c_in, c_out)``) and ``conv{i}.b``
  of shape ``(c_out,)``, ``i = 0`` nearest the input;
- ``layer{j}.W`` of shape ``(n_in, n_out)`` and ``layer{j}.b`` of shape ``(n_out,)``, ``j`` from 0
  for the first dense layer, the last being the output layer (``n_out = n_classes``).

JAX flattens dicts in sorted key order (``conv*`` before ``layer*``, ``layer10`` before ``layer2``):
index by name, never by the position of a leaf.

Hyperparameters
---------------
The parameters are ordinary named arrays, so every granularity a kind allows (`hypercore.vocab`)
applies to them as to an mlp's: one value (``global``), one per array (``layer``: ``conv0.W``,
``conv0.b``, ...), per step (``step``, ``layer_step``), and per weight (``weight``: an ``l2`` or
``init_scale`` of the kernel's own shape ``(k, k, c_in, c_out)``). ``init`` draws
``scales[name] * N(0, 1)`` by `hypercore.models.normal_init`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import families
from hypercore.models import ACTIVATIONS, ModelError, _size, check_dtype, normal_init, output_width


@dataclasses.dataclass(frozen=True)
class CNN:
    """A 2-D convolutional net on ``(H, W, C)`` images (see the module docstring).

    ``input_shape`` is ``(H, W)`` or ``(H, W, C)`` (stored with the channel axis). ``channels``:
    the output channels of each convolution (at least one); ``hidden``: the widths of the dense
    layers between the flattened features and the output layer (may be empty). ``dtype`` is that of
    the weights ``init`` draws and of the arithmetic in ``apply``. ``target="real"`` (a regression):
    ``n_classes`` counts the outputs, 1 or more. Equal descriptions hash equal.
    """

    input_shape: tuple[int, ...]
    n_classes: int
    channels: tuple[int, ...]
    kernel: int = 3
    pool: int = 2
    hidden: tuple[int, ...] = ()
    activation: str = "tanh"
    dtype: Any = jnp.float32
    target: str = "class"

    dims: ClassVar[int] = 2
    kind: ClassVar[str] = "cnn"
    shape_field: ClassVar[str] = "model.image_shape"

    def __post_init__(self):
        object.__setattr__(self, "input_shape", self._check_shape(self.input_shape))
        object.__setattr__(self, "n_classes", output_width(self.n_classes, self.target))
        object.__setattr__(self, "channels", _widths(self.channels, "model.channels", empty=False))
        object.__setattr__(self, "kernel", _size(self.kernel, "model.kernel"))
        object.__setattr__(self, "pool", _size(self.pool, "model.pool"))
        object.__setattr__(self, "hidden", _widths(self.hidden, "model.hidden", empty=True))
        if self.activation not in ACTIVATIONS:
            raise ModelError(
                "model.activation", f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        spatial = self.spatial_shape
        if min(spatial) < 1:
            n = len(self.channels)
            raise ModelError(
                "model.pool",
                f"pooling by {self.pool} after each of the {n} convolutions leaves no "
                f"{'pixel' if self.dims == 2 else 'position'} of the {self.input_shape[:-1]} input "
                f"(each pool divides the size, rounding down; the input needs at least {self.pool**n})",
            )

    def _check_shape(self, shape: Any) -> tuple[int, ...]:
        what = "(H, W) or (H, W, C)" if self.dims == 2 else "(L,) or (L, C)"
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
            raise ModelError(self.shape_field, f"must be {what}, got {shape!r}")
        if len(shape) not in (self.dims, self.dims + 1):
            raise ModelError(self.shape_field, f"must be {what}, got {tuple(shape)!r}")
        sizes = tuple(_size(d, f"{self.shape_field}[{i}]") for i, d in enumerate(shape))
        return sizes if len(sizes) == self.dims + 1 else (*sizes, 1)

    # ---- shapes and names ----------------------------------------------------------------------

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The spatial size of the last feature map, after every pool."""
        return families.pooled(self.input_shape[:-1], len(self.channels), self.pool)[-1]

    @property
    def n_features(self) -> int:
        """The length of a flattened example: ``prod(input_shape)``."""
        return math.prod(self.input_shape)

    @property
    def n_flat(self) -> int:
        """The width of the flattened last feature map, the first dense layer's input."""
        return math.prod(self.spatial_shape) * self.channels[-1]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The parameter arrays (`hypercore.families.conv_parameter_shapes`, what the server counts)."""
        return families.conv_parameter_shapes(
            self.input_shape, self.n_classes, self.channels, self.kernel, self.pool, self.hidden
        )

    @property
    def name(self) -> str:
        return self.kind

    def layer_names(self) -> list[str]:
        """Parameter array names in natural order: the labels of a hyperparameter's ``layer`` axis."""
        return list(self.shapes)

    def num_params(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(s) for s in self.shapes.values())

    # ---- the model -----------------------------------------------------------------------------

    def init(self, key: jax.Array, scales: Mapping[str, float | jax.Array]) -> dict[str, jax.Array]:
        """Initial weights ``scales[name] * N(0, 1)`` in ``self.dtype`` (`hypercore.models.normal_init`),
        differentiable in the scales."""
        return normal_init(self.shapes, self.dtype, key, scales)

    def apply(self, params: Mapping[str, jax.Array], X: jax.Array) -> jax.Array:
        """Logits ``(n, n_classes)`` for ``X`` of shape ``(n, n_features)`` (flattened row-major) or
        ``(n, *input_shape)`` (also without the channel axis when ``C = 1``). ``X`` is cast to the
        weights' dtype."""
        X = jnp.asarray(X)
        example = self.input_shape
        accepted = (example, example[:-1]) if example[-1] == 1 else (example,)
        if X.ndim < 2 or (X.shape[1:] != (self.n_features,) and X.shape[1:] not in accepted):
            raise ValueError(
                f"X must have shape (n, {self.n_features}) or (n, {', '.join(map(str, example))}), "
                f"got {X.shape}"
            )
        act = ACTIVATIONS[self.activation]
        dtype = params["conv0.W"].dtype
        h = X.reshape(X.shape[0], *example).astype(dtype)
        layout = ("NHWC", "HWIO", "NHWC") if self.dims == 2 else ("NWC", "WIO", "NWC")
        ones = (1,) * self.dims
        for i in range(len(self.channels)):
            h = jax.lax.conv_general_dilated(h, params[f"conv{i}.W"], ones, "SAME", dimension_numbers=layout)
            h = act(h + params[f"conv{i}.b"])
            if self.pool > 1:
                window = (1, *(self.pool,) * self.dims, 1)
                total = jax.lax.reduce_window(h, np.array(0, h.dtype), jax.lax.add, window, window, "VALID")
                h = total / jnp.asarray(self.pool**self.dims, h.dtype)
        h = h.reshape(h.shape[0], -1)
        n_dense = len(self.hidden) + 1
        for j in range(n_dense):
            h = h @ params[f"layer{j}.W"] + params[f"layer{j}.b"]
            if j < n_dense - 1:
                h = act(h)
        return h


@dataclasses.dataclass(frozen=True)
class CNN1D(CNN):
    """A 1-D convolutional net on ``(L, C)`` sequences; ``input_shape`` is ``(L,)`` or ``(L, C)``.
    Kernels are ``(k, c_in, c_out)``; otherwise as `CNN`."""

    dims: ClassVar[int] = 1
    kind: ClassVar[str] = "cnn1d"
    shape_field: ClassVar[str] = "model.sequence_shape"


def _widths(values: Any, field: str, *, empty: bool) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ModelError(field, f"must be a list of positive integers, got {values!r}")
    if not values and not empty:
        raise ModelError(field, "needs at least one convolution's channel count, got an empty list")
    return tuple(_size(v, f"{field}[{i}]") for i, v in enumerate(values))


def cnn(
    image_shape: Sequence[int],
    n_classes: int,
    channels: Sequence[int],
    kernel: int = 3,
    pool: int = 2,
    hidden: Sequence[int] = (),
    activation: str = "tanh",
    dtype: Any = jnp.float32,
    *,
    target: str = "class",
) -> CNN:
    """A 2-D convolutional net (`CNN`) on images of shape ``(H, W)`` or ``(H, W, C)``; with
    ``target="real"``, ``n_classes`` is a regression's number of outputs (1 or more)."""
    return CNN(image_shape, n_classes, channels, kernel, pool, hidden, activation, dtype, target)


def cnn1d(
    sequence_shape: Sequence[int],
    n_classes: int,
    channels: Sequence[int],
    kernel: int = 3,
    pool: int = 2,
    hidden: Sequence[int] = (),
    activation: str = "tanh",
    dtype: Any = jnp.float32,
    *,
    target: str = "class",
) -> CNN1D:
    """A 1-D convolutional net (`CNN1D`) on sequences of shape ``(L,)`` or ``(L, C)``; ``target`` as
    in `cnn`."""
    return CNN1D(sequence_shape, n_classes, channels, kernel, pool, hidden, activation, dtype, target)
