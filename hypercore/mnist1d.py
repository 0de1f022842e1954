"""MNIST-1D, generated locally with numpy alone: no download, no scipy, no files written.

Sam Greydanus, "Scaling down deep learning", 2020 (arXiv:2011.14439); the reference generator is
https://github.com/greydanus/mnist1d (``mnist1d/data.py``, ``mnist1d/transform.py``, read at commit
7878d96). Ten hand-made 1-D "digit" templates of length 12 are each passed through a random pipeline:
pad with 36..60 zeros, dilate to ``template_len + padding[1]`` = 72 points, scale by a random factor
in ``1 +/- scale_coeff / 2``, translate (circularly) by 0..47 points, fill the zeros with correlated
noise (white noise smoothed by a Gaussian of sigma 2), add iid noise, shear (subtract a random linear
ramp) and subsample to ``final_seq_length`` = 40 points. Labels are balanced by construction
(``num_samples // 10`` examples of each digit), the examples are shuffled, the whole set is centred
and scaled to unit standard deviation (one mean and one std over every value of every example), and
the first ``train_split`` of it is the training split: 4000 train + 1000 test by default.

What is reproduced: the templates (copied from ``get_templates`` in ``mnist1d/data.py``), every
transformation and its default argument (``get_dataset_args``), the output keys (``x``, ``y``,
``x_test``, ``y_test``, ``t``, ``templates``) and the random number stream: a legacy
``np.random.RandomState(seed)`` consumed in the original's call order (per example: pad ``rand``,
scale ``rand``, translation ``choice``, correlated-noise ``randn(72)``, iid-noise ``randn(72)``, shear
``rand``; then the batch ``permutation``, then the optional sequence ``permutation``). The original
seeds numpy's global generator with ``np.random.seed``; this module uses its own ``RandomState``
and leaves the global one alone. ``scipy.ndimage.gaussian_filter`` (mode "reflect", truncate 4) and
``scipy.interpolate.interp1d(kind="linear")`` are rewritten in numpy with scipy's arithmetic, so with
the default arguments the arrays agree with the published ``mnist1d_data.pkl`` to float64 round-off
(checked when this module was written: identical labels and ``t``, ``x`` and ``x_test`` within
9e-16 in float64 and identical once cast to float32; `tests/hypercore/test_mnist1d.py` pins values
read from the pickle).

What differs: ``x`` and ``x_test`` are returned as float32 (the original keeps float64); ``padding``
is a tuple; there is no ``url`` argument and nothing is cached or downloaded (the original's
``get_dataset``). As in the original, ``template_len`` only sets the dilation length (the templates
always have 12 points), and a ``num_samples`` that is not a multiple of 10 is rounded down to one.

Baselines from the original README (test accuracy on the default 4000 + 1000 split): logistic
regression 32%, MLP 68%, CNN 94%, GRU 91%, human expert 96%; with the sequence dimension shuffled
(``shuffle_seq=True``): 32%, 68%, 56%, 57%, ~30%. (On MNIST every one of these gets 94% to 99+%.)
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["RAW_TEMPLATES", "TEMPLATES", "TEMPLATE_T", "Args", "get_templates", "make_dataset"]

# The ten hand-made digits, verbatim from `get_templates` in mnist1d/data.py (greydanus/mnist1d).
# fmt: off
RAW_TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],          # 0
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],        # 1
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],      # 2
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],            # 3
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],          # 4
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],              # 5
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],          # 6
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],        # 7
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],            # 8
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],            # 9
], dtype=np.float64)
# fmt: on


def _standardise(raw: np.ndarray) -> np.ndarray:
    # as in get_templates: whiten each template, start (and end) it at 0, divide by 6
    x = raw.copy()
    x -= x.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


# The templates the generator transforms, (10, 12): `get_templates()["x"]` of the original.
TEMPLATES = _standardise(RAW_TEMPLATES)
# Their positions, (12,): `get_templates()["t"]`.
TEMPLATE_T = np.linspace(-5, 5, RAW_TEMPLATES.shape[1]) / 6.0
for _a in (RAW_TEMPLATES, TEMPLATES, TEMPLATE_T):
    _a.flags.writeable = False
del _a


@dataclasses.dataclass(frozen=True)
class Args:
    """The generator's arguments; the defaults are the original's `get_dataset_args()` (less ``url``)."""

    num_samples: int = 5000
    train_split: float = 0.8
    template_len: int = 12
    padding: tuple[int, int] = (36, 60)
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 2e-2
    shear_scale: float = 0.75
    shuffle_seq: bool = False
    final_seq_length: int = 40
    seed: int = 42

    def __post_init__(self) -> None:
        object.__setattr__(self, "padding", tuple(int(p) for p in self.padding))
        problems = []
        if not (isinstance(self.num_samples, int) and self.num_samples >= 10):
            problems.append(f"num_samples must be an integer >= 10, got {self.num_samples!r}")
        if not 0.0 < self.train_split < 1.0:
            problems.append(f"train_split must lie in (0, 1), got {self.train_split!r}")
        if len(self.padding) != 2 or not 0 <= self.padding[0] <= self.padding[1]:
            problems.append(f"padding must be (low, high) with 0 <= low <= high, got {self.padding!r}")
        if self.template_len < 1:
            problems.append(f"template_len must be >= 1, got {self.template_len!r}")
        if self.max_translation < 1:
            problems.append(f"max_translation must be >= 1, got {self.max_translation!r}")
        if self.final_seq_length < 2:
            problems.append(f"final_seq_length must be >= 2, got {self.final_seq_length!r}")
        if problems:
            raise ValueError("; ".join(problems))


def get_templates() -> dict:
    """The original's `get_templates()`: ``{"x": (10, 12), "t": (12,), "y": (10,) int64}`` (fresh copies)."""
    return {"x": TEMPLATES.copy(), "t": TEMPLATE_T.copy(), "y": np.arange(10, dtype=np.int64)}


def _interpolate(x: np.ndarray, n: int) -> np.ndarray:
    # transform.interpolate: interp1d(linspace(0, 1, len(x)), x, kind="linear") at linspace(0, 1, n);
    # for 1-D real data scipy's interp1d evaluates with np.interp itself (interp1d._call_linear_np)
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    # scipy.ndimage._filters._gaussian_kernel1d (order 0), radius int(truncate * sigma + 0.5)
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * offsets**2)
    return phi / phi.sum()


def _gaussian_filter(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(x, sigma) for 1-D ``x`` (mode "reflect": d c b a | a b c d).

    Summed in scipy's order for a symmetric kernel (centre, then each pair from the outermost in),
    so the result agrees with scipy's to the last bit or so."""
    w = _gaussian_kernel(sigma)
    r = len(w) // 2
    padded = np.pad(x, r, mode="symmetric")  # numpy's "symmetric" is scipy's "reflect"
    n = len(x)
    out = padded[r : r + n] * w[r]
    for j in range(r, 0, -1):
        out = out + (padded[r - j : r - j + n] + padded[r + j : r + j + n]) * w[r - j]
    return out


def _transform(x: np.ndarray, t: np.ndarray, args: Args, rng: np.random.RandomState, eps: float = 1e-8):
    """transform.transform: one template (and its positions) through the random pipeline."""
    dilated = args.template_len + args.padding[1]
    low, high = args.padding
    p = low + int(rng.rand() * (high - low + 1))  # pad
    new_x = np.concatenate([x + eps, np.zeros(p)])
    new_x = _interpolate(new_x, dilated)  # dilate
    new_t = _interpolate(t, dilated)
    new_x *= 1 + args.scale_coeff * (rng.rand() - 0.5)  # scale
    k = rng.choice(args.max_translation)  # translate (k = 0 leaves it as it is)
    new_x = np.concatenate([new_x[-k:], new_x[:-k]])

    mask = new_x != 0  # the padding's zeros (some may have been scaled/translated) get correlated noise
    corr = _gaussian_filter(args.corr_noise_scale * rng.randn(*new_x.shape), 2)
    new_x = mask * new_x + (1 - mask) * corr
    new_x = new_x + args.iid_noise_scale * rng.randn(*new_x.shape)

    coeff = args.shear_scale * (rng.rand() - 0.5)  # shear
    new_x = new_x - coeff * np.linspace(-0.5, 0.5, len(new_x))
    return _interpolate(new_x, args.final_seq_length), _interpolate(new_t, args.final_seq_length)


def make_dataset(args: Args = Args()) -> dict:
    """The original's `make_dataset(args)`: a fresh, deterministic MNIST-1D for ``args.seed``.

    Returns ``{"x": (n_train, L) float32, "y": (n_train,) int64, "x_test": (n_test, L) float32,
    "y_test": (n_test,) int64, "t": (L,) float64, "templates": get_templates()}`` with
    ``L = args.final_seq_length``, ``n = 10 * (num_samples // 10)``, ``n_train = int(n * train_split)``
    and ``n_test = n - n_train``. ``t`` holds the positions the values are plotted against (the
    original's ``new_t``: the templates' positions, resampled, divided by the raw data's std).
    """
    rng = np.random.RandomState(args.seed)
    templates = get_templates()
    per_class = args.num_samples // len(templates["y"])
    xs, ys = [], []
    new_t = None
    for label in templates["y"]:
        for _ in range(per_class):
            x, new_t = _transform(templates["x"][label], templates["t"], args, rng)
            xs.append(x)
            ys.append(label)

    order = rng.permutation(len(ys))  # shuffle the batch dimension
    xs = np.stack(xs)[order]
    ys = np.asarray(ys, dtype=np.int64)[order]
    if args.shuffle_seq:  # maybe shuffle the spatial dimension
        xs = xs[..., rng.permutation(args.final_seq_length)]

    std = xs.std()
    new_t = new_t / std
    xs = (xs - xs.mean()) / std  # centre the dataset, unit standard deviation

    split = int(len(ys) * args.train_split)
    return {
        "x": xs[:split].astype(np.float32),
        "x_test": xs[split:].astype(np.float32),
        "y": ys[:split],
        "y_test": ys[split:],
        "t": new_t,
        "templates": templates,
    }
