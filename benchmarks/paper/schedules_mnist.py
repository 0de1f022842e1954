"""Experiment B (paper section 3.1, figure 2): learning-rate and momentum schedules per layer and
step, and the initial weight scale per layer, learned by hypergradient descent on MNIST.

The job spec is the served template ``lr-schedule-mnist`` (`jobs.templates.get`): a 784-50-50-50-10
tanh net (8 parameter arrays: ``layer0.W``, ``layer0.b``, ... ``layer3.b``) trained for 100 steps of
SGD with momentum on minibatches of 200 drawn with replacement from ``(seed, meta_iter, t)``, fresh
initial weights every meta-iteration; 1,608 hyperparameters: a learning rate and a momentum per
array and step (2 x 100 x 8; alpha = e^-1, gamma = 0.5 at the start) and an initial scale per array
(8; e^-3 at the start). Meta-objective: the final training loss on the whole training split.
50 meta-iterations of ``adam_paper`` with step 0.04: the Adam of the paper's code (HIPS/hypergrad
``experiments/Feb_3_training_schedules/3_adam_50``; b1 = 0.1, b2 = 0.01, eps = 1e-4, lam = 1e-4 in
its convention: see `hypercore.meta`).

By default the script runs the template unchanged; ``--optimizer adam`` runs optax's standard Adam
(same step) instead. The data are mnist5k (5,000 images: 3,000 train / 1,000 valid / 1,000 test),
not the paper's 10,000 / 10,000 / 10,000 slices of MNIST.

Writes ``docs/figures/schedules_{lr,momentum,init_scales,learning_curves}.png`` and
``docs/figures/schedules.json`` (spec, per-meta-iteration records, final metrics, learned
hyperparameters in natural units). Takes under a minute on an idle 2-core CPU (26 s of tuning),
a few under load::

    .venv/bin/python benchmarks/paper/schedules_mnist.py                  # the full run
    .venv/bin/python benchmarks/paper/schedules_mnist.py --iterations 2 --out-dir /tmp/b   # a quick check
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

import hypercore
from jobs.templates import get

TEMPLATE = "lr-schedule-mnist"
PREFIX = "schedules"


def build_spec(optimizer: str | None, iterations: int | None) -> dict[str, Any]:
    """The template's spec (its meta-optimiser ``adam_paper`` unless ``optimizer`` is given)."""
    spec = get(TEMPLATE)
    if spec is None:
        raise SystemExit(f"no template named {TEMPLATE!r}")
    if optimizer is not None:
        spec["meta"]["optimizer"] = optimizer
    if iterations is not None:
        spec["meta"]["iterations"] = iterations
    return spec


def schedule_summary(values: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    """Per array: the step of the largest value, the mean over all steps, over the first 10, the
    middle and the last 10 steps (the numbers the paper's qualitative claims are about)."""
    T = values.shape[0]
    out = {}
    for j, name in enumerate(labels):
        col = values[:, j]
        out[name] = {
            "peak_step": int(np.argmax(col)),
            "peak": float(col.max()),
            "mean": float(col.mean()),
            "mean_first10": float(col[:10].mean()),
            "mean_middle": float(col[10 : T - 10].mean()),
            "mean_last10": float(col[-10:].mean()),
        }
    return out


def initial_scale_hypergradient(problem: hypercore.Problem, engine: str, draws: int) -> dict[str, float]:
    """The hypergradient of the objective with respect to each log initial scale at the starting
    hyperparameters, averaged over ``draws`` draws of initial weights and minibatches (meta-iterations
    0 .. draws-1): the paper's section 3 averages it over seeds (its weights: -0.10, -0.21, -0.22, -0.19)."""
    labels = problem.model.layer_names()
    total = np.zeros(len(labels))
    for k in range(draws):
        _, _, grads, _ = hypercore.hypergradient(problem, meta_iter=k, engine=engine)
        total += np.asarray(grads["init_scale"])
    return dict(zip(labels, (total / draws).tolist(), strict=True))


def plot(out_dir: Path, records: list[dict], hypers: dict[str, Any], init: dict[str, float]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    labels = hypers["learning_rate"]["labels"]["layer"]
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(labels) // 2))
    for kind, ylabel, fname in (
        ("learning_rate", r"learning rate $\alpha_t$", "lr"),
        ("momentum", r"momentum $\gamma_t$", "momentum"),
    ):
        values = np.asarray(hypers[kind]["values"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, part in zip(axes, ("W", "b"), strict=True):
            for j, name in enumerate(labels):
                if name.endswith(f".{part}"):
                    layer = int(name[len("layer") : name.index(".")])
                    ax.plot(values[:, j], color=colors[layer], label=f"layer {layer + 1} ({name})")
            ax.axhline(init[kind], color="gray", ls=":", lw=1, label=f"initial {init[kind]:.3g}")
            ax.set_title("weights" if part == "W" else "biases (own scale)")
            ax.set_xlabel("training step t")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
        fig.suptitle(f"Learned {kind.replace('_', ' ')} schedule per layer (mnist5k, 784-50-50-50-10)")
        fig.tight_layout()
        path = out_dir / f"{PREFIX}_{fname}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)

    # The paper's figure: the initial scale of each array over the meta-iterations.
    trajectory = np.asarray([[init["init_scale"]] * len(labels)] + [r["init_scale"] for r in records])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, part in zip(axes, ("W", "b"), strict=True):
        for j, name in enumerate(labels):
            if name.endswith(f".{part}"):
                layer = int(name[len("layer") : name.index(".")])
                ax.semilogy(trajectory[:, j], color=colors[layer], label=f"layer {layer + 1} ({name})")
        for value, style, text in (
            (1 / math.sqrt(784), ("C1", "--"), "1/sqrt(784)"),
            (1 / math.sqrt(50), ("C2", "--"), "1/sqrt(50)"),
            (init["init_scale"], ("gray", ":"), "initial e^-3"),
        ):
            ax.axhline(value, color=style[0], ls=style[1], lw=1, label=f"{text} = {value:.3f}")
        ax.set_title("weights" if part == "W" else "biases")
        ax.set_xlabel("meta-updates applied")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("initial scale")
    fig.suptitle("Learned initial scale per parameter array")
    fig.tight_layout()
    path = out_dir / f"{PREFIX}_init_scales.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)

    k = [r["meta_iter"] for r in records]
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, style in (("train_loss", "-"), ("valid_loss", "--"), ("test_loss", ":")):
        ax.plot(k, [r[key] for r in records], style, label=key.replace("_", " "))
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss after 100 steps (objective = train loss)")
    ax.set_yscale("log")
    ax.legend()
    for key, style in (("valid_error", "--"), ("test_error", ":")):
        ax_err.plot(k, [100 * r[key] for r in records], style, label=key.replace("_", " "))
    ax_err.set_xlabel("meta-iteration")
    ax_err.set_ylabel("error (%)")
    ax_err.legend()
    fig.suptitle("Meta-learning curve")
    fig.tight_layout()
    path = out_dir / f"{PREFIX}_learning_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, help="meta-iterations (default: the template's 50)")
    parser.add_argument(
        "--optimizer",
        help="meta-optimiser instead of the template's adam_paper (the paper's Adam); "
        "adam: optax's standard Adam",
    )
    parser.add_argument(
        "--gradient-draws", type=int, default=10, help="draws averaged for the initial scale hypergradient"
    )
    parser.add_argument("--engine", choices=["reversible", "unrolled"], default="reversible")
    parser.add_argument("--out-dir", default="docs/figures")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    spec = build_spec(args.optimizer, args.iterations)
    problem = hypercore.problem_from_spec(spec)
    n_hyper = sum(int(np.size(v)) for v in hypercore.initial_hyperparameters(problem).values())
    print(
        f"# {TEMPLATE}: {n_hyper} hyperparameters, {problem.model.num_params()} weights, "
        f"meta {spec['meta']}, engine {args.engine}",
        flush=True,
    )

    records: list[dict] = []
    started = time.perf_counter()

    def report(record: hypercore.Record) -> None:
        step = record.step()
        step["events"] = [e._asdict() for e in record.events]
        step["init_scale"] = record.hyperparameters["init_scale"].values.tolist()
        records.append(step)
        print(
            f"meta {record.meta_iter:3d}  objective {record.objective:.4f}  train {record.train_loss:.4f}  "
            f"valid {record.valid_loss:.4f} ({100 * record.valid_error:.1f}%)  "
            f"test {record.test_loss:.4f} ({100 * record.test_error:.1f}%)  "
            f"|hypergrad| {record.hypergrad_norm:.3g}  {record.elapsed_s:.1f} s"
            + (f"  guard: {[e.reason for e in record.events]}" if record.events else ""),
            flush=True,
        )

    result = hypercore.tune(problem, callback=report, engine=args.engine)
    tune_s = time.perf_counter() - started
    iterations = len(result.records)
    # The records hold the metrics *before* each update; evaluate the final hyperparameters once,
    # on the next meta-iteration's fresh initial weights and minibatches.
    _, final, _, _ = hypercore.hypergradient(
        problem, result.checkpoint.learned, meta_iter=iterations, engine=args.engine
    )
    total_s = time.perf_counter() - started
    initial_grad = initial_scale_hypergradient(problem, args.engine, args.gradient_draws)
    print(
        f"# initial d objective / d log init_scale, mean of {args.gradient_draws} draws: "
        + ", ".join(f"{k} {v:+.3f}" for k, v in initial_grad.items()),
        flush=True,
    )
    print(f"# final hyperparameters (meta-iteration {iterations}): {json.dumps(final)}", flush=True)
    print(f"# tune {tune_s:.1f} s, total {total_s:.1f} s for {iterations} meta-iterations", flush=True)

    hypers = {
        name: {"values": v.values.tolist(), "axes": v.axes, "labels": v.labels, "learned": v.learned}
        for name, v in result.hyperparameters.items()
    }
    labels = hypers["learning_rate"]["labels"]["layer"]
    init = {k: spec["hyperparameters"][k]["init"] for k in ("learning_rate", "momentum", "init_scale")}
    summary = {
        "learning_rate": schedule_summary(np.asarray(hypers["learning_rate"]["values"]), labels),
        "momentum": schedule_summary(np.asarray(hypers["momentum"]["values"]), labels),
        "init_scale": dict(zip(labels, hypers["init_scale"]["values"], strict=True)),
        "reference_scales": {"1/sqrt(784)": 1 / math.sqrt(784), "1/sqrt(50)": 1 / math.sqrt(50)},
    }
    for name, s in summary["learning_rate"].items():
        print(
            f"# lr {name:9s} peak {s['peak']:.3f} at step {s['peak_step']:3d}; mean first10 "
            f"{s['mean_first10']:.3f} middle {s['mean_middle']:.3f} last10 {s['mean_last10']:.3f}; "
            f"init scale {summary['init_scale'][name]:.4f}",
            flush=True,
        )
    payload = {
        "template": TEMPLATE,
        "spec": spec,
        "engine": args.engine,
        "n_hyperparameters": n_hyper,
        "tune_s": tune_s,
        "total_s": total_s,
        "records": records,
        "initial": {
            k: records[0][k] for k in ("train_loss", "valid_loss", "valid_error", "test_loss", "test_error")
        },
        "final": final,
        "summary": summary,
        "initial_hypergradient_log_init_scale": initial_grad,
        "hyperparameters": hypers,
    }
    json_path = out_dir / f"{PREFIX}.json"
    json_path.write_text(json.dumps(payload, indent=1))
    for path in [json_path, *plot(out_dir, records, hypers, init)]:
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
