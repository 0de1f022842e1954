"""Experiment E: learning how ten related tasks share the weights of their nets (the paper's section
3.4, HIPS/hypergrad ``experiments/Feb_4_augmented_omniglot/2_rotated_90``), on mnist5k.

The job spec is the served template ``sharing-mnist5k-tasks`` (`jobs.templates.get`), run through
`hypercore.problem_from_spec` and `hypercore.tune`, as the service runs it:

- data ``mnist5k_tasks`` (`hypercore.data.load`): Omniglot cannot be downloaded here, so the ten
  tasks are built from mnist5k the way the paper built them from Omniglot: five "alphabets"
  (disjoint sets of 100 images per digit, each with its own permutation of the ten labels) and each
  alphabet rotated by 90 degrees, keeping its labels. Per task and class 12 images train and
  validate, re-split 10 / 2 every meta-iteration (``dataset.resplit``), and 87 test (the paper: 15
  images per character, 12 re-split 10 / 2 every meta-iteration, 3 test); ``--fixed-split`` keeps
  the first split for every meta-iteration instead;
- model ``multitask_mlp`` (`hypercore.models.MultitaskMLP`): one tanh net 784-400-200-10 per task
  (paper 784-400-200-55). For each layer l the ten nets' weights and biases are ``W_l = T_l Z_l``
  (``T_l`` 10 x 10); SGD trains ``Z`` on the summed per-task mean NLL + ``e^-4 ||Z||^2``, written as
  the mean NLL with alpha = 10 and L2 = e^-4 / 10 (the same steps), from ``Z0 = e^-2 N(0, 1)``,
  50 full-batch steps, gamma = 0.9;
- hyperparameters: the 300 entries of ``T_0, T_1, T_2`` (``sharing``, granularity ``layer``),
  starting at ``0.5 I + 0.05 11^T``, tuned by plain gradient descent (step 0.2, 20 meta-iterations)
  on the mean per-task validation NLL.

Every meta-iteration the script also trains the two fixed baselines from the same ``Z0``
(`hypercore.evaluate` with the same ``meta_iter``), so the learning curve can be read against them:

- separate: ``T_l = I`` for every layer (independent nets);
- tied: the input layer shared (``T_0 = 11^T / 10``, every task uses the mean of the ``Z_0``
  rows), the others separate; the paper's code calls it "full_sharing" / "Shared bottom layer".

Then each variant (and ``all_tied``, one net for all tasks) is trained on all 12 images per class
(the same spec with train 1200 / valid 100: the test images stay the same) from 5 draws of ``Z0``
(``--inits``) and scored, mean per-task NLL in nats, on that training set and on the test set.

    nice -n 19 .venv/bin/python benchmarks/paper/multitask_sharing.py
    # twice the paper's meta-iterations: --meta-iters 40 --out docs/figures/sharing_40iters
    # one validation split throughout: --fixed-split --out docs/figures/sharing_fixed (and with 40)
    # quick check: --hidden 16 8 --steps 5 --meta-iters 2 --inits 2 --out /tmp/sharing

writes ``docs/figures/sharing_correlations.png`` (learned correlations of the three layers),
``sharing_meta.png`` (validation loss over the meta-iterations) and ``sharing_results.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import hypercore
from jobs.templates import get

TEMPLATE = "sharing-mnist5k-tasks"
PAPER_TABLE = {"separate": (0.607, 1.343), "tied": (0.897, 1.246), "learned": (0.604, 1.130)}
# the final training: all 12 images per class and task; one more (the 13th) as a nominal validation
# split the loader needs; the test images are the last 87 of every (task, class), as in the template
FINAL_DATASET = {"train": 1200, "valid": 100}


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec = get(TEMPLATE)
    if spec is None:
        raise SystemExit(f"no template named {TEMPLATE!r}")
    spec["model"]["hidden"] = list(args.hidden)
    spec["training"]["steps"] = args.steps
    spec["meta"]["iterations"] = args.meta_iters
    spec["dataset"]["resplit"] = not args.fixed_split
    return spec


def transforms(corrs: list[float], n_tasks: int) -> dict[str, np.ndarray]:
    """Raw ``sharing.layer{l}`` values ``(1 - c_l) I + c_l 11^T / n_tasks``: 0 separate, 1 tied."""
    eye, full = np.eye(n_tasks), np.full((n_tasks, n_tasks), 1.0 / n_tasks)
    return {f"sharing.layer{layer}": (1.0 - c) * eye + c * full for layer, c in enumerate(corrs)}


def fixed_variants(n_layers: int, n_tasks: int) -> dict[str, dict[str, np.ndarray]]:
    """The paper's baselines: separate nets, and the input layer tied (its "full_sharing")."""
    return {
        "separate": transforms([0.0] * n_layers, n_tasks),
        "tied": transforms([1.0] + [0.0] * (n_layers - 1), n_tasks),
    }


def correlations(T: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``T T^T`` normalised to a correlation matrix, per layer: the prior correlation of a weight
    position across tasks."""
    out = {}
    for name, t in T.items():
        cov = np.asarray(t, np.float64) @ np.asarray(t, np.float64).T
        sd = np.sqrt(np.diag(cov))
        out[name.split(".", 1)[1]] = cov / np.outer(sd, sd)
    return out


def summarise_correlations(corr: dict[str, np.ndarray], n_alphabets: int) -> dict[str, dict[str, list]]:
    """Ranges of the off-diagonal correlations: alphabet with its own rotation, upright pairs,
    rotated pairs, and upright against another alphabet's rotation; [min, max, mean] each."""
    n = 2 * n_alphabets
    upright = np.arange(n) < n_alphabets
    own = np.zeros((n, n), bool)
    for a in range(n_alphabets):
        own[a, a + n_alphabets] = own[a + n_alphabets, a] = True
    off = ~np.eye(n, dtype=bool)
    masks = {
        "own_rotation": own,
        "upright_pairs": off & np.outer(upright, upright),
        "rotated_pairs": off & np.outer(~upright, ~upright),
        "across_other": off & ~own & (np.outer(upright, ~upright) | np.outer(~upright, upright)),
        "all_other_pairs": off & ~own,
    }
    stats = lambda c, m: [float(c[m].min()), float(c[m].max()), float(c[m].mean())]
    return {name: {k: stats(c, m) for k, m in masks.items()} for name, c in corr.items()}


def evaluate_variants(
    problem: hypercore.Problem, variants: dict[str, dict[str, np.ndarray]], n_inits: int
) -> list[dict]:
    """Train every variant from ``n_inits`` initial ``Z0`` draws (the same draws for every variant:
    meta_iter 10^6 + i) and score mean per-task NLL (nats) and error; the mean over draws, and the
    standard deviation of the losses."""
    rows = []
    for name, T in variants.items():
        runs = [hypercore.evaluate(problem, T, meta_iter=10**6 + i) for i in range(n_inits)]
        row: dict[str, Any] = {"variant": name, "n_inits": n_inits}
        for metric in ("train_loss", "test_loss", "test_error"):
            values = [r[metric] for r in runs]
            row[metric] = float(np.mean(values))
            if metric.endswith("loss"):
                row[f"{metric}_sd"] = float(np.std(values, ddof=1)) if n_inits > 1 else 0.0
        if name in PAPER_TABLE:
            row["paper_train_loss"], row["paper_test_loss"] = PAPER_TABLE[name]
        print(json.dumps(row), flush=True)
        rows.append({**row, "runs": runs})
    return rows


def plot(corr: dict[str, np.ndarray], records: list[dict], task_names, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(task_names)
    titles = ["input layer", "middle layer", "output layer"]
    fig, axes = plt.subplots(1, len(corr), figsize=(4.2 * len(corr), 4.2))
    for ax, (name, c), title in zip(np.atleast_1d(axes), corr.items(), titles, strict=False):
        im = ax.matshow(c, cmap="binary", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(n), task_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), task_names, fontsize=7)
        off = c[~np.eye(n, dtype=bool)]
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
    ax.set_title("Validation loss; every meta-iteration a fresh Z0, shared by the three", fontsize=10)
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
    parser.add_argument("--inits", type=int, default=5, help="initial Z0 draws for the final training")
    parser.add_argument(
        "--fixed-split", action="store_true", help="validate on one split throughout (no dataset.resplit)"
    )
    parser.add_argument("--out", default="docs/figures/sharing", help="prefix of the .png and .json files")
    args = parser.parse_args()
    started = time.perf_counter()

    spec = build_spec(args)
    problem = hypercore.problem_from_spec(spec)
    ds, model = problem.dataset, problem.model
    n_tasks, n_layers = ds.n_tasks, model.n_layers
    n_hyper = sum(v.size for v in hypercore.initial_hyperparameters(problem).values())
    print(
        f"# {n_tasks} tasks {list(ds.task_names)}, widths {list(model.widths)}, "
        f"{model.num_params()} weights, {n_hyper} hyperparameters learned; "
        f"train {ds.n_train} / valid {ds.n_valid} / test {ds.n_test}",
        flush=True,
    )
    baselines = fixed_variants(n_layers, n_tasks)
    records: list[dict] = []

    def callback(record: hypercore.Record) -> None:
        k = record.meta_iter
        row = {**record.step(), "guard_events": [e._asdict() for e in record.events]}
        # the fixed baselines from the same Z0 (meta_iter k) on the same split (re-split: the same draw)
        row.update(
            {
                f"valid_loss_{name}": hypercore.evaluate(problem, T, meta_iter=k)["valid_loss"]
                for name, T in baselines.items()
            }
        )
        records.append(row)
        print(json.dumps(row), flush=True)

    result = hypercore.tune(problem, callback=callback)
    meta_s = time.perf_counter() - started
    learned = {k: np.asarray(v.values) for k, v in result.hyperparameters.items() if k.startswith("sharing.")}

    final_spec = copy.deepcopy(spec)
    final_spec["dataset"].update(FINAL_DATASET, resplit=False)  # train on all 12, every variant alike
    final = hypercore.problem_from_spec(final_spec)
    assert np.array_equal(final.dataset.y_test, ds.y_test), "the final training must keep the test set"
    variants = {**baselines, "learned": learned, "all_tied": transforms([1.0] * n_layers, n_tasks)}
    rows = evaluate_variants(final, variants, args.inits)

    corr = correlations(learned)
    summary = summarise_correlations(corr, n_tasks // 2)
    print(json.dumps(summary), flush=True)
    total_s = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = plot(corr, records, list(ds.task_names), out)
    payload = {
        "template": TEMPLATE,
        "spec": spec,
        "final_dataset": final_spec["dataset"],
        "settings": {**vars(args), "widths": list(model.widths), "n_weights": model.num_params()},
        "tasks": list(ds.task_names),
        "meta_records": records,
        "table": rows,
        "learned_T": {k: v.tolist() for k, v in learned.items()},
        "learned_correlations": {k: v.tolist() for k, v in corr.items()},
        "correlation_summary": summary,
        "meta_learning_s": meta_s,
        "total_s": total_s,
        "total_cpu_s": time.process_time(),
        "load_average_at_end": list(os.getloadavg()),
    }
    json_path = out.parent / f"{out.name}_results.json"
    json_path.write_text(json.dumps(payload, indent=2))
    wrote = ", ".join(map(str, [json_path, *paths]))
    print(
        f"# total {total_s:.1f} s wall, {time.process_time():.1f} s CPU (meta-learning {meta_s:.1f} s wall)"
    )
    print(f"# wrote {wrote}")


if __name__ == "__main__":
    main()
