"""Pure-function models over dict pytrees of named parameter arrays, and their losses.

A `Model` describes its parameters by name and shape; ``init`` draws them and ``apply`` maps
inputs to logits. Parameters are plain ``dict[str, jax.Array]`` so that every hyperparameter
with ``layer`` granularity has one entry per array (Maclaurin et al. 2015 learn one learning
rate, momentum, initial scale and L2 penalty per *weight type*: each ``W`` and each ``b``).

Names are ``"layer{i}.W"`` (shape ``(n_in, n_out)``) and ``"layer{i}.b"`` (shape ``(n_out,)``),
``i = 0`` nearest the input. ``Model.shapes`` and ``Model.layer_names()`` list them in this
natural order; JAX flattens dicts in *sorted key* order, so with 10 or more layers
``"layer10.W"`` comes before ``"layer2.W"`` in ``jax.tree.leaves``. Index by name, never by the
position of a leaf.

Losses follow the paper: mean negative log-likelihood under a log-softmax, plus
``sum_i l2_i * w_i^2`` (no factor 1/2). A dataset with a real target (``target="real"``, a
regression) trains the same models, with one output per target column, on the mean squared error
`mse` instead (`loss_of`), with the same penalty; the builders take ``target="real"`` to allow a
single output.

`Toy2D` (`toy2d`) is the paper's two-weight figure-1 problem, with no data: one array ``"w"``,
shaped as a likelihood whose NLL is the toy's loss so that the same tuning loop trains it.

Your own model
--------------
`Problem.build` and `tune` take any object that follows `TrainableModel`: ``shapes`` (parameter
names and shapes, in order: the labels of a hyperparameter's ``layer`` axis), ``init(key, scales)``
(the initial weights; `normal_init` draws ``scales[name] * N(0, 1)`` as the built-ins do),
``apply(params, X)`` (logits, ``(n, n_classes)``) and optionally ``training_loss(logits, y)`` (the
mean loss it trains on; `nll` when absent). Names are free: nothing assumes a chain of ``layer{i}``.
A small convolutional net on 8x8 digits, tuned with a learning rate per array and step::

    @dataclasses.dataclass(frozen=True)
    class SmallCNN:
        shapes = {"conv.W": (3, 3, 1, 4), "conv.b": (4,), "out.W": (144, 10), "out.b": (10,)}

        def init(self, key, scales):
            return hypercore.models.normal_init(self.shapes, jnp.float32, key, scales)

        def apply(self, params, X):
            images = X.reshape(-1, 8, 8, 1).astype(params["conv.W"].dtype)
            h = jax.lax.conv_general_dilated(images, params["conv.W"], (1, 1), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jnp.tanh(h + params["conv.b"]).reshape(X.shape[0], -1)
            return h @ params["out.W"] + params["out.b"]

    problem = hypercore.Problem.build(
        SmallCNN(), hypercore.data.load("digits", 500, 200),
        {"learning_rate": hypercore.Hyper("learning_rate", 0.1, "layer_step", learn=True)}, steps=50)
    hypercore.tune(problem)

(``tests/hypercore/test_own_model.py`` runs this one.) A model whose ``training_loss`` is not an NLL
still reports ``*_loss`` as that loss; ``*_error`` is the rate of wrong argmax classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from hypercore import _x64  # noqa: F401  (configures JAX for the engine before any array exists)
from hypercore import data as _data
from hypercore.hyper import ConfigError

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


class ModelError(ConfigError):
    """A model's description is invalid; ``field`` (``"model.hidden[1]"``) leads the message."""


@runtime_checkable
class TrainableModel(Protocol):
    """What the tuning loop needs of a model (see the module docstring for a worked example).

    ``shapes``: every parameter array's name and shape, in a fixed order. ``init(key, scales)``:
    the initial weights ``{name: array}``, differentiable in ``scales`` (one scalar or weight-shaped
    array per name: the ``init_scale`` hyperparameter). ``apply(params, X)``: logits of shape
    ``(n, n_classes)`` for ``X`` of shape ``(n, n_features)``; it must be a deterministic function
    of its inputs (the backward pass recomputes every gradient and checks the bits). Optional:
    ``training_loss(logits, y)``, the scalar training loss (default `nll`).

    Multi-task models (`MultitaskMLP`) add ``n_tasks``, ``share`` and ``sharing_layers``.
    """

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    def init(self, key: jax.Array, scales: Mapping[str, Any]) -> dict[str, jax.Array]: ...

    def apply(self, params: Mapping[str, jax.Array], X: jax.Array) -> jax.Array: ...


TARGETS = ("class", "real")


def loss_of(model: Any, target: str = "class"):
    """The loss ``(outputs, y) -> scalar`` a model trains on: its own ``training_loss``, or `nll` for
    class labels and `mse` for a real target."""
    loss = getattr(model, "training_loss", None)
    if callable(loss):
        return loss
    return mse if target == "real" else nll


def check_model(model: Any) -> None:
    """Refuse, on ``model``, what does not follow `TrainableModel`."""
    missing = [a for a in ("init", "apply") if not callable(getattr(model, a, None))]
    shapes = getattr(model, "shapes", None)
    if missing or not isinstance(shapes, Mapping):
        what = ", ".join(missing + ([] if isinstance(shapes, Mapping) else ["shapes"]))
        raise ModelError(
            "model",
            f"{type(model).__name__} lacks {what}: a model needs `shapes`, `init(key, scales)` and "
            "`apply(params, X)` (hypercore.models.TrainableModel)",
        )
    if not shapes:
        raise ModelError("model.shapes", "a model needs at least one parameter array")
    for name, shape in shapes.items():
        if not isinstance(name, str) or not all(isinstance(d, int | np.integer) and d >= 1 for d in shape):
            raise ModelError(
                "model.shapes", f"{name!r}: a name and positive integer dimensions, got {shape!r}"
            )


@dataclasses.dataclass(frozen=True)
class Model:
    """A fully connected network: ``h_0 = X``, ``h_{i+1} = act(h_i W_i + b_i)``, logits ``= h_L``
    (no activation on the last layer). ``activation`` is None for a single layer.

    ``dtype`` is the dtype of the weights ``init`` draws and of the arithmetic in ``apply``
    (float32 unless asked). Equal descriptions hash equal, so a model can key a cache or be a
    static argument of ``jax.jit``.
    """

    name: str
    shapes: dict[str, tuple[int, ...]]
    activation: str | None
    dtype: Any = jnp.float32

    def __post_init__(self):
        dtype = check_dtype(self.dtype)
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ModelError(
                "model.activation", f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        if not self.shapes:
            raise ModelError("model.shapes", "a model needs at least one parameter array")
        shapes = {str(k): tuple(int(d) for d in v) for k, v in self.shapes.items()}
        _check_layers(shapes)
        if len(shapes) > 2 and self.activation is None:
            raise ModelError("model.activation", "a model with hidden layers needs an activation")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shapes", shapes)

    def __hash__(self) -> int:
        return hash((self.name, tuple(self.shapes.items()), self.activation, self.dtype))

    def layer_names(self) -> list[str]:
        """Parameter array names in natural order (input layer first, W before b): the labels of a
        hyperparameter's ``layer`` axis."""
        return list(self.shapes)

    def num_params(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(s) for s in self.shapes.values())

    @property
    def n_features(self) -> int:
        return self.shapes["layer0.W"][0]

    @property
    def n_classes(self) -> int:
        return self.shapes[f"layer{len(self.shapes) // 2 - 1}.W"][1]

    def init(self, key: jax.Array, scales: Mapping[str, float | jax.Array]) -> dict[str, jax.Array]:
        """Initial weights ``w0[name] = scales[name] * N(0, 1)``, in ``self.dtype``.

        ``scales`` needs one entry per array name: a scalar, or an array broadcastable to that
        array's shape; it may be traced (the paper learns ``log scale`` per weight type, so the
        draw must be differentiable in it). The standard normals are one vector of
        ``num_params()`` draws from ``key``, cut into the arrays in natural order.
        """
        return normal_init(self.shapes, self.dtype, key, scales)

    def apply(self, params: Mapping[str, jax.Array], X: jax.Array) -> jax.Array:
        """Logits of shape ``(n, n_classes)`` for inputs ``X`` of shape ``(n, n_features)``.

        ``X`` is cast to the dtype of the weights passed (``self.dtype`` when they come from
        ``init``), so the arithmetic stays in the weights' dtype.
        """
        X = jnp.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {X.shape}")
        n_layers = len(self.shapes) // 2
        h = X.astype(params["layer0.W"].dtype)
        for i in range(n_layers):
            h = h @ params[f"layer{i}.W"] + params[f"layer{i}.b"]
            if i < n_layers - 1:
                h = ACTIVATIONS[self.activation](h)
        return h


def held_activation_units(model: Any, example_shape: Sequence[int], dtype: Any = np.float32) -> int:
    """What one more example adds to a training step's activations, in array elements: the outputs of
    ``model.apply`` and the residuals JAX's VJP of it keeps from the forward pass for the backward
    one (the inputs, pre-activations and layer outputs the gradient reads). Counted on abstract
    arrays (`jax.eval_shape`: nothing is computed or allocated) as half the difference between
    batches of 4 and 2, so what does not grow with the batch (the weights the VJP also keeps) does not
    count. For the memory estimate of a model whose layers revtune does not know, a plugin's
    (`hypercore.budget.peak_bytes`); a built-in's are counted from its spec."""
    params = jax.eval_shape(model.init, jax.random.key(0), dict.fromkeys(model.shapes, 1.0))

    def held(params, X):
        outputs, vjp = jax.vjp(model.apply, params, X)
        return outputs, jax.tree.leaves(vjp)

    def elements(batch: int) -> int:
        arrays = jax.eval_shape(held, params, jax.ShapeDtypeStruct((batch, *example_shape), dtype))
        return sum(math.prod(a.shape) for a in jax.tree.leaves(arrays))

    return max(0, (elements(4) - elements(2)) // 2)


def check_dtype(dtype: Any) -> np.dtype:
    """A model's weight dtype as a numpy dtype; `ModelError` on ``model.dtype`` unless floating."""
    try:
        out = np.dtype(dtype)
    except TypeError as e:
        raise ModelError("model.dtype", f"must be a floating dtype, got {dtype!r}") from e
    if not jnp.issubdtype(out, jnp.floating):
        raise ModelError("model.dtype", f"must be a floating dtype, got {out}")
    return out


def normal_init(
    shapes: Mapping[str, tuple[int, ...]], dtype: Any, key: jax.Array, scales: Mapping[str, float | jax.Array]
) -> dict[str, jax.Array]:
    """``scales[name] * N(0, 1)`` for every array of ``shapes``, in ``dtype`` (see `Model.init`): one
    vector of draws from ``key``, cut into the arrays in order. For `TrainableModel.init`."""
    missing = [k for k in shapes if k not in scales]
    extra = [k for k in scales if k not in shapes]
    if missing or extra:
        raise ModelError(
            "init_scale",
            f"needs exactly one scale per parameter array {list(shapes)}; missing {missing}, unknown {extra}",
        )
    # One draw for all arrays, cut in natural order: a single random-bits kernel to compile
    # instead of one per array, and no dependence on how JAX sorts the names.
    z = jax.random.normal(key, (sum(math.prod(s) for s in shapes.values()),), dtype)
    out, start = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        scale = jnp.asarray(scales[name]).astype(dtype)
        out[name] = scale * z[start : start + size].reshape(shape)
        start += size
    return out


def _check_layers(shapes: dict[str, tuple[int, ...]]) -> None:
    """``shapes`` must be ``layer0.W, layer0.b, layer1.W, ...`` in that order, each ``W`` of shape
    ``(n_in, n_out)`` taking the previous layer's ``n_out``, each ``b`` of shape ``(n_out,)``."""
    n_layers = len(shapes) // 2
    expected = [f"layer{i}.{p}" for i in range(n_layers) for p in ("W", "b")]
    if list(shapes) != expected:
        raise ModelError("model.shapes", f"arrays must be named {expected} in this order, got {list(shapes)}")
    n_in = None
    for i in range(n_layers):
        W, b = shapes[f"layer{i}.W"], shapes[f"layer{i}.b"]
        ok = len(W) == 2 and min(W) >= 1 and b == W[1:] and (n_in is None or W[0] == n_in)
        if not ok:
            raise ModelError(
                f"model.shapes.layer{i}",
                f"W must be (n_in, n_out) with n_in = {n_in or 'n_features'} and b (n_out,), got {W} and {b}",
            )
        n_in = W[1]


def _size(value: Any, field: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ModelError(field, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def output_width(n_outputs: Any, target: str = "class") -> int:
    """The output layer's width: ``n_classes >= 2`` logits for class labels, ``n_outputs >= 1`` values
    for a real target (`ModelError` on ``model.n_classes`` or ``model.n_outputs``)."""
    if target not in TARGETS:
        raise ModelError("target", f"must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "real":
        return _size(n_outputs, "model.n_outputs", 1)
    return _size(n_outputs, "model.n_classes", 2)


def _layers(widths: Sequence[int]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        shapes[f"layer{i}.W"] = (n_in, n_out)
        shapes[f"layer{i}.b"] = (n_out,)
    return shapes


def logistic_regression(
    n_features: int, n_classes: int, dtype: Any = jnp.float32, *, target: str = "class"
) -> Model:
    """Multiclass logistic regression: logits ``= X W + b``; arrays ``layer0.W``, ``layer0.b``. With
    ``target="real"``, ``n_classes`` is the number of outputs (1 or more): linear regression."""
    n_in = _size(n_features, "model.n_features")
    n_out = output_width(n_classes, target)
    return Model("logreg", _layers([n_in, n_out]), None, dtype)


def mlp(
    n_features: int,
    hidden: Sequence[int],
    n_classes: int,
    activation: str = "tanh",
    dtype: Any = jnp.float32,
    *,
    target: str = "class",
) -> Model:
    """A multilayer perceptron ``n_features -> hidden[0] -> ... -> n_classes`` with ``activation``
    (``"tanh"`` as the paper, or ``"relu"``) after every hidden layer; ``2 (len(hidden) + 1)``
    parameter arrays. With ``target="real"``, ``n_classes`` is the number of outputs (1 or more)."""
    n_in = _size(n_features, "model.n_features")
    n_out = output_width(n_classes, target)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden:
        raise ModelError(
            "model.hidden",
            f"an mlp needs a non-empty list of layer widths (logistic_regression has none), got {hidden!r}",
        )
    widths = [_size(h, f"model.hidden[{i}]") for i, h in enumerate(hidden)]
    if activation not in ACTIVATIONS:
        raise ModelError("model.activation", f"must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return Model("mlp", _layers([n_in, *widths, n_out]), activation, dtype)


def _check_labels(logits: jax.Array, y: jax.Array) -> None:
    if logits.ndim != 2 or y.ndim != 1 or y.shape[0] != logits.shape[0]:
        raise ValueError(f"logits must be (n, n_classes) and y (n,), got {logits.shape} and {y.shape}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")


def nll(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean negative log-likelihood ``-(1/n) sum_j log softmax(logits_j)[y_j]``, in the logits' dtype."""
    logits, y = jnp.asarray(logits), jnp.asarray(y)
    _check_labels(logits, y)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def mse(outputs: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of a real target, over examples and outputs, in the outputs' dtype:

        MSE = (1 / (n k)) sum_j sum_o (outputs_jo - y_jo)^2

    for ``outputs`` and ``y`` of shape ``(n, k)`` (no factor 1/2, as the paper's penalty has none)."""
    outputs, y = jnp.asarray(outputs), jnp.asarray(y)
    if outputs.ndim != 2 or outputs.shape != y.shape:
        raise ValueError(f"outputs and y must both be (n, k), got {outputs.shape} and {y.shape}")
    if not jnp.issubdtype(y.dtype, jnp.floating):
        raise TypeError(f"y must hold real targets (a float dtype), got dtype {y.dtype}")
    err = outputs - y.astype(outputs.dtype)
    return jnp.mean(err * err)


def error_rate(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of rows whose largest logit is not at the true label, in the logits' dtype."""
    logits, y = jnp.asarray(logits), jnp.asarray(y)
    _check_labels(logits, y)
    return jnp.mean((jnp.argmax(logits, axis=-1).astype(y.dtype) != y).astype(logits.dtype))


def l2_penalty(params: Mapping[str, jax.Array], l2: Mapping[str, jax.Array]) -> jax.Array:
    """``sum over arrays i in l2 of sum(l2_i * w_i^2)`` (the paper's penalty, no 1/2).

    Each ``l2_i`` is a scalar (one penalty per array) or an array of ``w_i``'s shape (one per
    weight); it is cast to ``w_i``'s dtype so the penalty stays in the weights' dtype. Arrays not
    named in ``l2`` are not penalised.
    """
    unknown = [k for k in l2 if k not in params]
    if unknown:
        raise ValueError(f"l2 names arrays the model does not have: {unknown}; arrays: {list(params)}")
    total = None
    for name, lam in l2.items():
        w = params[name]
        lam = jnp.asarray(lam)
        if lam.shape not in ((), w.shape):
            raise ValueError(f"l2[{name!r}] must be a scalar or of shape {w.shape}, got {lam.shape}")
        term = jnp.sum(lam.astype(w.dtype) * w * w)
        total = term if total is None else total + term
    if total is None:
        return jnp.zeros((), jax.tree.leaves(params)[0].dtype)
    return total


# ---- the paper's two-weight toy (figure 1) ----------------------------------------------------

TOY2D_START = (1.4, 3.9)


@dataclasses.dataclass(frozen=True)
class Toy2D:
    """The two-weight problem of the paper's figure 1 (HIPS/hypergrad ``experiments/Jan_25_Figure_1``):

        L(w) = 800 sigmoid(R(w) / 500),  R(w) = 100 (w_2 - w_1^2)^2 + (1 - w_1)^2 + 200 w_1,

    a Rosenbrock valley tilted by ``200 w_1`` and squashed by a sigmoid, trained from the fixed start
    ``w_0 = (1.4, 3.9)``. One parameter array, ``"w"`` of shape ``(2,)``, holding ``(w_1, w_2)``.

    It has no data, but the tuning loop trains every model on the mean NLL of its logits on a dataset.
    So the toy is a likelihood model for a single observation (class 0 of two): ``p(y = 0 | w) =
    exp(-L(w))``. ``apply`` returns the log-probabilities ``(-L, log(1 - e^{-L}))`` for every input
    row, whatever the row holds, and the NLL of class 0 is then exactly ``L(w)`` (its gradient too),
    on `toy2d_data`'s one-row splits. The error rate is that of this likelihood (1 when ``L > log 2``),
    meaningless for the toy. ``init`` ignores its key and scales: the start is fixed, as in the paper.
    Computed in float64 (as the paper's numpy code).
    """

    start: tuple[float, float] = TOY2D_START
    dtype: Any = jnp.float64
    name: str = "toy2d"

    def __post_init__(self):
        try:
            start = tuple(float(x) for x in self.start)
        except (TypeError, ValueError) as e:
            raise ModelError("model.start", f"must be two finite numbers, got {self.start!r}") from e
        if len(start) != 2 or not all(math.isfinite(x) for x in start):
            raise ModelError("model.start", f"must be two finite numbers, got {self.start!r}")
        dtype = np.dtype(self.dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ModelError("model.dtype", f"must be a floating dtype, got {dtype}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "dtype", dtype)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"w": (2,)}

    @property
    def activation(self) -> None:
        return None

    @property
    def n_features(self) -> int:
        return 1

    @property
    def n_classes(self) -> int:
        return 2

    def layer_names(self) -> list[str]:
        return ["w"]

    def num_params(self) -> int:
        return 2

    def init(self, key: jax.Array, scales: Mapping[str, float | jax.Array]) -> dict[str, jax.Array]:
        """The fixed start ``{"w": start}``; ``key`` and the scales' values are not used."""
        if set(scales) != {"w"}:
            raise ModelError("init_scale", f"needs exactly one scale for the array 'w', got {sorted(scales)}")
        return {"w": jnp.asarray(self.start, self.dtype)}

    def loss(self, params: Mapping[str, jax.Array]) -> jax.Array:
        """``L(w) = 800 sigmoid(R(w) / 500)``, a scalar (also for a ``(..., 2)`` batch of points:
        shape ``(...)``)."""
        w = jnp.asarray(params["w"])
        w1, w2 = w[..., 0], w[..., 1]
        rosenbrock = 100.0 * (w2 - w1**2) ** 2 + (1.0 - w1) ** 2 + 200.0 * w1
        return 800.0 * jax.nn.sigmoid(rosenbrock / 500.0)

    def apply(self, params: Mapping[str, jax.Array], X: jax.Array) -> jax.Array:
        """Log-probabilities ``(-L(w), log(1 - e^{-L(w)}))`` of shape ``(n, 2)`` for ``X`` of shape
        ``(n, 1)`` (``X``'s values are not used)."""
        X = jnp.asarray(X)
        if X.ndim != 2 or X.shape[1] != 1:
            raise ValueError(f"X must have shape (n, 1), got {X.shape}")
        L = self.loss(params)
        # L > 0 everywhere (R >= -9800, so L >= 2.5e-6): log(-expm1(-L)) is finite.
        row = jnp.stack([-L, jnp.log(-jnp.expm1(-L))])
        return jnp.broadcast_to(row, (X.shape[0], 2))


def toy2d(start: Sequence[float] = TOY2D_START) -> Toy2D:
    """The paper's figure-1 toy (`Toy2D`), starting at ``start``."""
    return Toy2D(tuple(start))


def toy2d_data():
    """The one observation the toy's likelihood is evaluated at: class 0, one input row (a zero)
    in each of the train, valid and test splits (a `hypercore.data.Dataset` with 2 classes)."""
    row, label = np.zeros((1, 1), np.float32), np.zeros((1,), np.int32)
    return _data.from_splits(row, label, row, label, row, label, name="toy2d", n_classes=2, center=False)


# ---- one net per task, with learned sharing (the paper's section 3.4) ---------------------------


@dataclasses.dataclass(frozen=True)
class MultitaskMLP:
    """One fully connected net per task of a multi-task dataset (HIPS/hypergrad
    ``experiments/Feb_4_augmented_omniglot``), with the weights of the tasks' nets coupled by
    *sharing* matrices.

    Parameters are the latent weights ``Z``: ``"layer{i}.W"`` of shape ``(n_tasks, n_in, n_out)`` and
    ``"layer{i}.b"`` of shape ``(n_tasks, n_out)``, one slice per task, trained by SGD. Task ``s``'s
    net uses ``W_i[s] = sum_t T_i[s, t] Z_i[t]`` (`share`; the bias likewise with the same
    ``T_i``), where ``T_i`` is layer ``i``'s ``n_tasks x n_tasks`` sharing matrix: the identity
    gives separate nets, ``11^T / n_tasks`` one net for every task, and anything between shares
    partly. An L2 penalty on ``Z`` is then a Gaussian prior ``w^T (T T^T)^-1 w`` across tasks for
    every weight position, so ``T T^T`` is the prior covariance of the tasks' nets.

    ``apply`` takes rows laid out as a multi-task `hypercore.data.Dataset`'s: task-major, the same
    number per task. It trains full-batch (a random minibatch would mix the layout).
    """

    widths: tuple[int, ...]
    n_tasks: int
    activation: str = "tanh"
    dtype: Any = jnp.float32
    name: str = "multitask_mlp"

    def __post_init__(self):
        widths = tuple(_size(w, f"model.widths[{i}]") for i, w in enumerate(self.widths))
        if len(widths) < 2:
            raise ModelError("model.hidden", f"needs input and output widths, got {widths}")
        if widths[-1] < 2:
            raise ModelError("model.n_classes", f"must be an integer >= 2, got {widths[-1]}")
        if self.activation not in ACTIVATIONS:
            raise ModelError(
                "model.activation", f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        dtype = np.dtype(self.dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ModelError("model.dtype", f"must be a floating dtype, got {dtype}")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "n_tasks", _size(self.n_tasks, "model.n_tasks", 2))
        object.__setattr__(self, "dtype", dtype)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        S = self.n_tasks
        return {k: (S, *v) for k, v in _layers(self.widths).items()}

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def n_features(self) -> int:
        return self.widths[0]

    @property
    def n_classes(self) -> int:
        return self.widths[-1]

    def layer_names(self) -> list[str]:
        return list(self.shapes)

    def sharing_layers(self) -> list[str]:
        """The layers a sharing matrix can couple: ``layer0``, ``layer1``, ... (each ``W`` with its ``b``)."""
        return [f"layer{i}" for i in range(self.n_layers)]

    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def init(self, key: jax.Array, scales: Mapping[str, float | jax.Array]) -> dict[str, jax.Array]:
        """``Z0[name] = scales[name] * N(0, 1)``, as `Model.init`."""
        return normal_init(self.shapes, self.dtype, key, scales)

    def share(
        self, params: Mapping[str, jax.Array], sharing: Mapping[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """Every task's weights from the latent ones: ``sharing[layer]`` ``(n_tasks, n_tasks)`` mixes
        the ``n_tasks`` slices of that layer's ``W`` and ``b``; a layer without a matrix is kept."""
        out = {}
        for name, z in params.items():
            T = sharing.get(name.split(".", 1)[0])
            out[name] = z if T is None else jnp.tensordot(T.astype(z.dtype), z, axes=1)
        return out

    def apply(self, params: Mapping[str, jax.Array], X: jax.Array) -> jax.Array:
        """Logits ``(n, n_classes)``: task ``s``'s net on its block of rows of ``X`` ``(n, n_features)``
        (task-major, ``n / n_tasks`` rows each)."""
        X = jnp.asarray(X)
        S = self.n_tasks
        if X.ndim != 2 or X.shape[1] != self.n_features or X.shape[0] % S:
            raise ValueError(
                f"X must have shape (n, {self.n_features}) with n a multiple of the {S} tasks, got {X.shape}"
            )
        h = X.astype(params["layer0.W"].dtype).reshape(S, X.shape[0] // S, self.n_features)
        for i in range(self.n_layers):
            h = jnp.einsum("snd,sdk->snk", h, params[f"layer{i}.W"]) + params[f"layer{i}.b"][:, None, :]
            if i < self.n_layers - 1:
                h = ACTIVATIONS[self.activation](h)
        return h.reshape(X.shape[0], self.n_classes)


def multitask_mlp(
    n_features: int,
    hidden: Sequence[int],
    n_classes: int,
    n_tasks: int,
    activation: str = "tanh",
    dtype: Any = jnp.float32,
) -> MultitaskMLP:
    """One ``n_features -> hidden... -> n_classes`` net per task (`MultitaskMLP`)."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden:
        raise ModelError("model.hidden", f"an mlp needs a non-empty list of layer widths, got {hidden!r}")
    widths = [_size(h, f"model.hidden[{i}]") for i, h in enumerate(hidden)]
    return MultitaskMLP(
        (_size(n_features, "model.n_features"), *widths, _size(n_classes, "model.n_classes", 2)),
        n_tasks,
        activation,
        dtype,
    )
