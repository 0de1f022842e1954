"""Experiment H: learning how ten related tasks share the weights of their nets (the paper's
section 3.4, HIPS/hypergrad ``experiments/Feb_4_augmented_omniglot/2_rotated_90``), on mnist5k.

Omniglot cannot be downloaded here, so the ten tasks are built from mnist5k the way the paper built
them from Omniglot: five "alphabets" (disjoint sets of 100 images per digit, each with its own
random permutation of the ten labels) plus each alphabet rotated by 90 degrees, which keeps that
alphabet's labels. Each task has 12 training images per class, re-split into 10 train / 2 valid
every meta-iteration (the paper: 15 images per character, 12 train / 3 test, re-split 10 / 2), and
the task's 88 remaining images per class as its test set.

Model (the paper's): one tanh net per task, 784-H1-H2-10 (paper 784-400-200-55). For each layer l
the ten nets' weights and biases, stacked as rows, are ``W_l = T_l Z_l`` (``T_l`` 10 x 10, ``Z_l``
10 x n_l); SGD trains ``Z`` on

    sum_tasks mean_NLL_task(T Z) + e^-4 ||Z||^2,

a Gaussian prior ``w^T (T T^T)^-1 w`` across tasks for every weight position (``Z0 = e^-2 N(0,1)``).
50 full-batch steps, alpha = 1, gamma = 0.9. Three variants, as the paper's code:

- separate: ``T_l = I`` for every layer (independent nets);
- tied: the input layer shared (``T_0 = 11^T / 10``, so every task uses the mean of the ``Z_0`` rows),
  the others separate; the paper's code calls it "full_sharing" / "Shared bottom layer";
- learned: the 300 entries of ``T_0, T_1, T_2`` are hyperparameters, initialised to
  ``0.5 I + 0.05 11^T``, tuned by plain gradient descent (step 0.2, 20 meta-iterations) on the
  mean per-task validation NLL; the hypergradient comes from ``jax.grad`` through
  `hypercore.reversible_sgd` (exact reversal, checked every meta-iteration).

An extra row, ``all_tied``, shares all three layers (``T_l = 11^T / 10``): one net for all tasks.

Each variant is then trained on all 12 images per class, from 5 draws of ``Z0`` (``--inits``), and
scored (mean per-task NLL, nats) on that training set and on the test set. Every meta-iteration also
records the two fixed baselines' validation loss on the same split and ``Z0``.

    nice -n 19 .venv/bin/python benchmarks/paper/multitask_sharing.py
    # twice the paper's meta-iterations: --meta-iters 40 --out docs/figures/sharing_40iters
    # quick check: --hidden 16 8 --steps 5 --meta-iters 2 --inits 2 --out /tmp/sharing

writes ``docs/figures/sharing_correlations.png`` (learned correlations of the three layers),
``sharing_meta.png`` (validation loss over the meta-iterations) and ``sharing_results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hypercore

N_ALPHABETS = 5
N_TASKS = 2 * N_ALPHABETS
N_CLASSES = 10
PER_CLASS_PER_ALPHABET = 100
LOG_L2 = -4.0
LOG_INIT_SCALE = -2.0
ALPHA, GAMMA = 1.0, 0.9
INIT_CORR = 0.5
TASK_NAMES = [f"A{a + 1}" for a in range(N_ALPHABETS)] + [f"A{a + 1}rot" for a in range(N_ALPHABETS)]
PAPER_TABLE = {"separate": (0.607, 1.343), "tied": (0.897, 1.246), "learned": (0.604, 1.130)}

Params = dict[str, jax.Array]
Transforms = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Tasks:
    """Per task, per class: ``X_pool`` ``(tasks, classes, n_pool, 784)`` float32 with labels
    ``y_pool`` ``(tasks, classes, n_pool)`` int32 (already mapped through the task's label
    permutation), and a test set ``X_test`` ``(tasks, n_test, 784)``, ``y_test``."""

    X_pool: np.ndarray
    y_pool: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    label_maps: np.ndarray


def build_tasks(n_pool: int, n_test: int, seed: int) -> Tasks:
    """Five alphabets from mnist5k (disjoint images, own label permutation) and their 90-degree
    rotations; pixels in [0, 1] minus each task's own pool mean."""
    if n_pool + n_test > PER_CLASS_PER_ALPHABET:
        raise ValueError(f"pool {n_pool} + test {n_test} exceeds {PER_CLASS_PER_ALPHABET} images per class")
    # Both splits of hypercore's mnist5k together: all 5,000 images, shuffled by seed. The mean image
    # it subtracted is a constant shift, which the per-task centring below removes again.
    ds = hypercore.data.load("mnist5k", 4000, 1000, 0, seed=seed)
    X = np.concatenate([ds.X_train, ds.X_valid]).reshape(-1, 28, 28)
    y = np.concatenate([ds.y_train, ds.y_valid])
    rng = np.random.default_rng([seed, 1])
    label_maps = np.stack([rng.permutation(N_CLASSES) for _ in range(N_ALPHABETS)])
    by_class = [np.flatnonzero(y == c) for c in range(N_CLASSES)]
    pools, tests = [], []
    for a in range(N_ALPHABETS):
        images = np.stack(
            [X[idx[a * PER_CLASS_PER_ALPHABET : (a + 1) * PER_CLASS_PER_ALPHABET]] for idx in by_class]
        )
        pools.append(images[:, :n_pool])
        tests.append(images[:, n_pool : n_pool + n_test])
    # Task N_ALPHABETS + a is alphabet a rotated by 90 degrees, with alphabet a's labels.
    pools += [np.rot90(p, k=1, axes=(-2, -1)) for p in pools]
    tests += [np.rot90(p, k=1, axes=(-2, -1)) for p in tests]
    X_pool = np.stack(pools).reshape(N_TASKS, N_CLASSES, n_pool, 784)
    X_test = np.stack(tests).reshape(N_TASKS, N_CLASSES * n_test, 784)
    mean = X_pool.mean(axis=(1, 2))
    X_pool = (X_pool - mean[:, None, None]).astype(np.float32)
    X_test = (X_test - mean[:, None]).astype(np.float32)
    maps = np.concatenate([label_maps, label_maps])
    y_pool = np.broadcast_to(maps[:, :, None], (N_TASKS, N_CLASSES, n_pool)).astype(np.int32)
    y_test = np.repeat(maps, n_test, axis=1).astype(np.int32)
    return Tasks(X_pool, y_pool, X_test, y_test, label_maps)


def split(tasks: Tasks, n_valid: int, seed: int, meta_iter: int) -> tuple[np.ndarray, ...]:
    """This meta-iteration's train / valid split of every task's pool: ``n_valid`` images of each
    class go to validation, drawn from ``(seed, meta_iter)``."""
    rng = np.random.default_rng([seed, 2, meta_iter])
    n_tasks, n_classes, n_pool, d = tasks.X_pool.shape
    order = np.argsort(rng.random((n_tasks, n_classes, n_pool)), axis=-1)
    X = np.take_along_axis(tasks.X_pool, order[..., None], axis=2)
    y = np.take_along_axis(tasks.y_pool, order, axis=2)
    n_train = n_pool - n_valid
    flat = lambda a, n: a.reshape(n_tasks, n_classes * n, *a.shape[3:])
    return (
        flat(X[:, :, :n_train], n_train),
        flat(y[:, :, :n_train], n_train),
        flat(X[:, :, n_train:], n_valid),
        flat(y[:, :, n_train:], n_valid),
    )


def pool(tasks: Tasks) -> tuple[np.ndarray, np.ndarray]:
    n_tasks, n_classes, n_pool, d = tasks.X_pool.shape
    return tasks.X_pool.reshape(n_tasks, -1, d), tasks.y_pool.reshape(n_tasks, -1)


def layer_sizes(n_in: int, hidden: list[int], n_out: int) -> list[tuple[int, int]]:
    sizes = [n_in, *hidden, n_out]
    return list(zip(sizes[:-1], sizes[1:], strict=True))


def init_latent(key: jax.Array, n_tasks: int, sizes: list[tuple[int, int]]) -> Params:
    """``Z0 = e^-2 N(0, 1)`` for every task's weights and biases, stacked over tasks."""
    z = {}
    for layer, (n_in, n_out) in enumerate(sizes):
        kw, kb, key = jax.random.split(key, 3)
        scale = math.exp(LOG_INIT_SCALE)
        z[f"layer{layer}.W"] = (scale * jax.random.normal(kw, (n_tasks, n_in, n_out))).astype(jnp.float32)
        z[f"layer{layer}.b"] = (scale * jax.random.normal(kb, (n_tasks, n_out))).astype(jnp.float32)
    return z


def make_transforms(corrs: list[float], n_tasks: int) -> Transforms:
    """The paper's ``(1 - c) I + c 11^T / n_tasks`` per layer: c = 0 separate, 1 tied, 0.5 its init."""
    eye, full = jnp.eye(n_tasks, dtype=jnp.float32), jnp.full((n_tasks, n_tasks), 1.0 / n_tasks, jnp.float32)
    return {f"layer{layer}": (1.0 - c) * eye + c * full for layer, c in enumerate(corrs)}


def transform(T: Transforms, z: Params) -> Params:
    """Each task's weights: row s of layer l is ``sum_t T_l[s, t] z_l[t]``."""
    return {name: jnp.tensordot(T[name.split(".")[0]], leaf, axes=1) for name, leaf in z.items()}


def logits(w: Params, X: jax.Array) -> jax.Array:
    """Every task's tanh net on its own inputs: ``X`` ``(tasks, n, d)`` -> ``(tasks, n, classes)``."""
    h = X
    n_layers = len(w) // 2
    for layer in range(n_layers):
        h = jnp.einsum("snd,sdk->snk", h, w[f"layer{layer}.W"]) + w[f"layer{layer}.b"][:, None, :]
        if layer < n_layers - 1:
            h = jnp.tanh(h)
    return h


def task_nll(w: Params, X: jax.Array, y: jax.Array) -> jax.Array:
    """Mean NLL of every task's net on its own data: ``(tasks,)``."""
    logp = jax.nn.log_softmax(logits(w, X))
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0], axis=1)


def task_error(w: Params, X: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits(w, X), axis=-1) != y, axis=1)


def training_loss(z: Params, T: Transforms, X: jax.Array, y: jax.Array) -> jax.Array:
    """The paper's primal loss: summed per-task mean NLL of ``T z`` plus ``e^-4 ||z||^2``."""
    penalty = sum(jnp.sum(leaf**2) for leaf in z.values())
    return jnp.sum(task_nll(transform(T, z), X, y)) + jnp.float32(math.exp(LOG_L2)) * penalty


def train(
    T: Transforms, z0: Params, X: jax.Array, y: jax.Array, steps: int, report: jax.Array, capacity: int
) -> Params:
    """``steps`` full-batch steps of SGD with momentum on ``z``, reversibly; returns the task weights."""
    alphas = jnp.full((steps,), ALPHA)
    gammas = jnp.full((steps,), GAMMA)

    def loss(z: Params, T: Transforms, t: jax.Array) -> jax.Array:
        return training_loss(z, T, X, y)

    z_T = hypercore.reversible_sgd(loss, z0, T, alphas, gammas, capacity=capacity, report=report)
    return transform(T, z_T)


def make_hypergradient(steps: int, capacity: int) -> Callable:
    """jitted ``(T, z0, X_train, y_train, X_valid, y_valid) -> (valid loss, dT, report array)``:
    the meta-objective is the mean per-task validation NLL after training."""

    def objective(T, report, z0, X_tr, y_tr, X_va, y_va):
        w = train(T, z0, X_tr, y_tr, steps, report, capacity)
        return jnp.mean(task_nll(w, X_va, y_va))

    value_and_grad = jax.value_and_grad(objective, argnums=(0, 1))

    @jax.jit
    def hypergradient(T, z0, X_tr, y_tr, X_va, y_va):
        value, (dT, rep) = value_and_grad(T, hypercore.empty_report(), z0, X_tr, y_tr, X_va, y_va)
        return value, dT, rep

    return hypergradient


def correlations(T: Transforms) -> dict[str, np.ndarray]:
    """``T T^T`` normalised to a correlation matrix, per layer: the prior correlation of a weight
    position across tasks."""
    out = {}
    for name, t in T.items():
        cov = np.asarray(t, np.float64) @ np.asarray(t, np.float64).T
        sd = np.sqrt(np.diag(cov))
        out[name] = cov / np.outer(sd, sd)
    return out


def summarise_correlations(corr: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """Ranges of the off-diagonal correlations, split into alphabet-vs-own-rotation pairs and the rest."""
    n = N_TASKS
    own = np.zeros((n, n), bool)
    for a in range(N_ALPHABETS):
        own[a, a + N_ALPHABETS] = own[a + N_ALPHABETS, a] = True
    other = ~own & ~np.eye(n, dtype=bool)
    rng = lambda c, m: [float(c[m].min()), float(c[m].max()), float(c[m].mean())]
    return {name: {"other_pairs": rng(c, other), "own_rotation": rng(c, own)} for name, c in corr.items()}


def fixed_variants(n_layers: int) -> dict[str, Transforms]:
    """The paper's baselines: separate nets, and the input layer tied (its "full_sharing")."""
    return {
        "separate": make_transforms([0.0] * n_layers, N_TASKS),
        "tied": make_transforms([1.0] + [0.0] * (n_layers - 1), N_TASKS),
    }


def evaluate(
    variants: dict[str, Transforms], tasks: Tasks, sizes, steps: int, seed: int, n_inits: int, capacity: int
) -> list[dict]:
    """Train every variant on every task's full pool from ``n_inits`` initial ``Z0`` draws (the
    same draws for every variant) and score mean per-task NLL (nats) and error on that training set
    and on the test set: the mean over draws, and the standard deviation of the losses."""
    X_tr, y_tr = (jnp.asarray(a) for a in pool(tasks))
    X_te, y_te = jnp.asarray(tasks.X_test), jnp.asarray(tasks.y_test)
    final_train = jax.jit(train, static_argnames=("steps", "capacity"))
    key = jax.random.key(seed)
    z0s = [init_latent(jax.random.fold_in(key, 10**6 + i), N_TASKS, sizes) for i in range(n_inits)]
    rows = []
    for name, T in variants.items():
        runs = []
        for z0 in z0s:
            w = final_train(T, z0, X_tr, y_tr, steps, hypercore.empty_report(), capacity)
            runs.append(
                {
                    "train_loss": float(jnp.mean(task_nll(w, X_tr, y_tr))),
                    "test_loss": float(jnp.mean(task_nll(w, X_te, y_te))),
                    "train_error": float(jnp.mean(task_error(w, X_tr, y_tr))),
                    "test_error": float(jnp.mean(task_error(w, X_te, y_te))),
                    "test_loss_per_task": [float(x) for x in task_nll(w, X_te, y_te)],
                }
            )
        row = {"variant": name, "n_inits": n_inits}
        for metric in ("train_loss", "test_loss", "train_error", "test_error"):
            values = [r[metric] for r in runs]
            row[metric] = float(np.mean(values))
            if metric.endswith("loss"):
                row[f"{metric}_sd"] = float(np.std(values, ddof=1)) if n_inits > 1 else 0.0
        if name in PAPER_TABLE:
            row["paper_train_loss"], row["paper_test_loss"] = PAPER_TABLE[name]
        print(json.dumps(row), flush=True)
        rows.append({**row, "runs": runs})
    return rows


def learn_sharing(
    tasks: Tasks, sizes, steps: int, meta_iters: int, meta_lr: float, n_valid: int, seed: int, capacity: int
) -> tuple[Transforms, list[dict]]:
    """Plain gradient descent (optax.sgd) on the three T matrices; a fresh split and Z0 every
    meta-iteration. Each record also holds the fixed baselines' validation loss on the same split
    from the same Z0, so the learning curve can be read against them despite the split's noise."""
    hypergradient = make_hypergradient(steps, capacity)

    @jax.jit
    def valid_loss(T, z0, X_tr, y_tr, X_va, y_va):
        w = train(T, z0, X_tr, y_tr, steps, hypercore.empty_report(), capacity)
        return jnp.mean(task_nll(w, X_va, y_va))

    baselines = fixed_variants(len(sizes))
    T = make_transforms([INIT_CORR] * len(sizes), N_TASKS)
    optimiser = optax.sgd(meta_lr)
    opt_state = optimiser.init(T)
    records = []
    for meta_iter in range(meta_iters):
        started, cpu_started = time.perf_counter(), time.process_time()
        data = [jnp.asarray(a) for a in split(tasks, n_valid, seed, meta_iter)]
        z0 = init_latent(jax.random.fold_in(jax.random.key(seed), meta_iter), N_TASKS, sizes)
        value, dT, rep = hypergradient(T, z0, *data)
        report = hypercore.ReversalReport.from_array(rep)
        if not report.exact or report.overflow or report.buffer_overflow:
            raise RuntimeError(f"meta-iteration {meta_iter}: reversal not exact: {report}")
        updates, opt_state = optimiser.update(dT, opt_state)
        T = optax.apply_updates(T, updates)
        hyper_s, hyper_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        record = {
            "meta_iter": meta_iter,
            "valid_loss": float(value),
            **{f"valid_loss_{name}": float(valid_loss(B, z0, *data)) for name, B in baselines.items()},
            "hypergrad_norm": float(optax.global_norm(dT)),
            "reversal_exact": report.exact,
            "buffer_slots_used": report.slots_used,
            "buffer_capacity": report.capacity,
            "hypergradient_s": hyper_s,
            "hypergradient_cpu_s": hyper_cpu_s,
        }
        records.append(record)
        print(json.dumps(record), flush=True)
    return T, records


def plot(corr: dict[str, np.ndarray], records: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["input layer", "middle layer", "output layer"]
    fig, axes = plt.subplots(1, len(corr), figsize=(4.2 * len(corr), 4.2))
    for ax, (name, c), title in zip(np.atleast_1d(axes), corr.items(), titles, strict=False):
        im = ax.matshow(c, cmap="binary", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(N_TASKS), TASK_NAMES, rotation=90, fontsize=7)
        ax.set_yticks(range(N_TASKS), TASK_NAMES, fontsize=7)
        off = c[~np.eye(N_TASKS, dtype=bool)]
        ax.set_title(f"{title} ({name})\noff-diagonal {off.min():.2f}..{off.max():.2f}", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="correlation of T T^T")
    fig.suptitle("Learned sharing across 10 mnist5k tasks (5 alphabets + 90-degree rotations)", fontsize=10)
    corr_path = out.parent / f"{out.name}_correlations.png"
    fig.savefig(corr_path, dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    iters = [r["meta_iter"] for r in records]
    ax.plot(iters, [r["valid_loss"] for r in records], "o-", label="learned sharing (T before the step)")
    ax.plot(iters, [r["valid_loss_separate"] for r in records], "s--", color="gray", label="separate")
    ax.plot(iters, [r["valid_loss_tied"] for r in records], "^:", color="black", label="tied input layer")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean per-task validation NLL (nats)")
    ax.set_title("Validation loss; every meta-iteration a fresh 10/2 split and Z0", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    meta_path = out.parent / f"{out.name}_meta.png"
    fig.savefig(meta_path, dpi=120)
    plt.close(fig)
    return [corr_path, meta_path]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=[400, 200])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--meta-iters", type=int, default=20)
    parser.add_argument("--meta-lr", type=float, default=0.2)
    parser.add_argument("--pool", type=int, default=12, help="training images per class per task")
    parser.add_argument("--valid", type=int, default=2, help="of those, validation images per meta-iteration")
    parser.add_argument("--test", type=int, default=88, help="test images per class per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inits", type=int, default=5, help="initial Z0 draws for the final training")
    parser.add_argument("--out", default="docs/figures/sharing", help="prefix of the .png and .json files")
    args = parser.parse_args()
    started = time.perf_counter()

    tasks = build_tasks(args.pool, args.test, args.seed)
    sizes = layer_sizes(784, args.hidden, N_CLASSES)
    n_weights = N_TASKS * sum(n_in * n_out + n_out for n_in, n_out in sizes)
    capacity = hypercore.buffer_capacity(args.steps, GAMMA)
    print(
        f"# {N_TASKS} tasks, layers {sizes}, {n_weights} weights, {3 * N_TASKS**2} hyperparameters",
        flush=True,
    )

    learned, records = learn_sharing(
        tasks, sizes, args.steps, args.meta_iters, args.meta_lr, args.valid, args.seed, capacity
    )
    meta_s = time.perf_counter() - started
    variants = {
        **fixed_variants(len(sizes)),
        "learned": learned,
        "all_tied": make_transforms([1.0] * len(sizes), N_TASKS),
    }
    rows = evaluate(variants, tasks, sizes, args.steps, args.seed, args.inits, capacity)

    corr = correlations(learned)
    summary = summarise_correlations(corr)
    print(json.dumps(summary), flush=True)
    total_s = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = plot(corr, records, out)
    result = {
        "settings": {**vars(args), "layers": sizes, "n_weights": n_weights, "capacity": capacity},
        "tasks": TASK_NAMES,
        "label_maps": tasks.label_maps.tolist(),
        "meta_records": records,
        "table": rows,
        "learned_T": {k: np.asarray(v).tolist() for k, v in learned.items()},
        "learned_correlations": {k: v.tolist() for k, v in corr.items()},
        "correlation_summary": summary,
        "meta_learning_s": meta_s,
        "total_s": total_s,
        "total_cpu_s": time.process_time(),
        "load_average_at_end": list(os.getloadavg()),
    }
    json_path = out.parent / f"{out.name}_results.json"
    json_path.write_text(json.dumps(result, indent=2))
    wrote = ", ".join(map(str, [json_path, *paths]))
    print(
        f"# total {total_s:.1f} s wall, {time.process_time():.1f} s CPU (meta-learning {meta_s:.1f} s wall)"
    )
    print(f"# wrote {wrote}")


if __name__ == "__main__":
    main()
