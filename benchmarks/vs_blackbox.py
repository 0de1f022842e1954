"""revtune's hypergradient tuner against Optuna's black-box samplers at equal wall-clock.

Five problems, each a job spec built with `jobs.templates.get`:

* ``digits-schedules``: template ``lr-schedule-digits`` (64-50-50-10 tanh MLP on digits,
  100 steps of batch 100); revtune learns a learning rate and a momentum per layer and step and an
  initial scale per layer (1,206 hyperparameters) on the validation loss.
* ``mnist5k-l2-schedules``: template ``lr-schedule-mnist`` (784-50-50-50-10 tanh, 100 steps of batch
  200) with the objective switched to the validation loss and a learned L2 penalty per parameter
  array (start 1e-3) added to the schedules and scales: 1,616 hyperparameters.
* ``logreg-l2-per-weight``: template ``l2-per-weight-logreg`` (logistic regression on mnist5k, 50
  steps of batch 20): one L2 penalty per weight, 7,850 hyperparameters.
* ``mnist5k-adamw-schedules``: template ``adam-schedule-mnist`` (the same net and data as
  ``lr-schedule-mnist``, trained by AdamW through the exact reversible Adam engine) on the validation
  loss: a learning rate per layer and step, beta1, weight decay and initial scale per layer (824).
* ``mnist1d-cnn-schedules``: template ``lr-schedule-cnn-mnist1d`` (a 1-D convolutional net,
  ``model: {kind: cnn1d}``, on the built-in MNIST-1D, trained by SGD with momentum) on the
  validation loss: a learning rate and a momentum per layer and step and an
  initial scale per layer; the black-box samplers search the same three constants as on digits.

Methods, each given the same wall-clock budget per run, after compilation (see below), from the
template's starting point (Optuna's first trial is that point, enqueued):

* ``revtune``: `hypercore.tune` on the template's hyperparameters with the template's meta-optimiser,
  stopped by the callback once the budget is spent.
* ``revtune-resplit``: the same with ``dataset.resplit`` (a new train/valid split of the training and
  validation examples every meta-iteration), revtune's defence against fitting many hyperparameters
  to one validation set. Its chosen configuration is re-evaluated like every other: on the problem's
  first split, which it trained on as often as it validated on.
* ``tpe``, ``cmaes``, ``random``: Optuna's samplers on the constants a user would tune: log
  learning rate, momentum and log initial scale (plus log L2 in mnist5k-l2-schedules); log L2 and log
  learning rate for the logistic regression (CMA-ES needs two dimensions or more).
* ``tpe-full``: Optuna's TPE on the very hyperparameters revtune tunes (every element a parameter).
* on the Adam problem, Optuna's samplers search Adam's constants (log learning rate, beta1, beta2, log
  weight decay), and optax's tuning-free optimizers ``prodigy``, ``schedule-free-adamw`` and ``dog``
  (``optax.contrib``, their defaults) train the same net for the same T steps from the same initial
  weights and minibatches, once per held-out seed: equal training steps, not equal wall-clock, and no
  search (`hypercore.evaluate` with ``optimizer=``).

A trial's objective is what one revtune meta-iteration sees: the validation loss after one training
run of the reversible engine (`hypercore.reversible_sgd`, or `hypercore.reversible_adam` on the Adam
problem; the same model, data and minibatches), with
the initial weights and minibatches of meta-iteration k for trial k. Black-box trials run the engine's
forward pass only, jitted once per problem. A training run that diverges scores 10 (chance is 2.3).

Each method's *chosen* configuration is the one with the lowest validation objective it saw. It is
re-evaluated on three training seeds it never saw (initial weights and minibatches of meta-iterations
10**6 .. 10**6 + 2): mean validation loss, test loss and test error. The gap between the best objective
seen and the re-evaluated validation loss is selection on noise (seed luck); the gap between the
re-evaluated validation and test losses is overfitting of the hyperparameters to the validation set.

Only trials and meta-iterations that finished within the budget count (for the table and for the
choice); the one running when the budget ran out finishes but is ignored. `hypercore.tune` compiles
again when falling momenta need a larger information buffer, and that compilation is part of its
budget (the first compilation of each method is done before the clock starts).

Runs are interleaved: for each seed and problem, the methods run one after another in an order
rotated per seed, so load from other processes falls on all of them alike.

    nice -n 19 .venv/bin/python benchmarks/vs_blackbox.py            # 3 seeds, 20 s per run (~45 min)
    # the Adam problem alone, into its own file (~12 min):
    nice -n 19 .venv/bin/python benchmarks/vs_blackbox.py --problems mnist5k-adamw-schedules \
        --out docs/figures/vs_blackbox_adam.json
    nice -n 19 .venv/bin/python benchmarks/vs_blackbox.py --budget 5 --seeds 1 --problems digits-schedules
    # the convolutional net on MNIST-1D alone, into its own file (~10 min):
    nice -n 19 .venv/bin/python benchmarks/vs_blackbox.py --problems mnist1d-cnn-schedules \
        --out docs/figures/vs_blackbox_cnn.json
    # revtune with and without re-splitting, side by side (~8 min):
    nice -n 19 .venv/bin/python benchmarks/vs_blackbox.py --methods revtune revtune-resplit \
        --out docs/figures/vs_blackbox_resplit.json

Writes docs/figures/vs_blackbox.json and docs/figures/vs_blackbox_*.png (named after ``--out``) and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import EllipsisType

import jax
import numpy as np
import optuna

import hypercore
import hypercore.budget
from hypercore import vocab
from jobs import templates

TUNING_FREE = ("prodigy", "schedule-free-adamw", "dog")
METHODS = ("revtune", "revtune-resplit", "tpe", "cmaes", "random", "tpe-full", *TUNING_FREE)
REVTUNE = ("revtune", "revtune-resplit")
PROBLEMS = (
    "digits-schedules",
    "mnist5k-l2-schedules",
    "logreg-l2-per-weight",
    "mnist5k-adamw-schedules",
    "mnist1d-cnn-schedules",
)
ADAM_PROBLEMS = ("mnist5k-adamw-schedules",)
DIVERGED = 10.0
HELD_OUT_SEEDS = (10**6, 10**6 + 1, 10**6 + 2)
MIN_MOMENTUM = 0.1  # the black-box search range's lower bound; sizes the engine's buffer

# Natural-unit search ranges (low, high, log) of each kind, for the black-box samplers; Adam's
# learning rate has its own (ADAM_RANGES), and lr x wd <= 0.1 keeps AdamW's decay factor >= 0.9.
RANGES = {
    "learning_rate": (1e-2, 10.0, True),
    "momentum": (MIN_MOMENTUM, 0.99, False),
    "init_scale": (1e-3, 1.0, True),
    "l2": (1e-6, 1.0, True),
    "beta1": (0.5, 0.99, False),
    "beta2": (0.9, 0.9999, False),
    "weight_decay": (1e-5, 1.0, True),
}
ADAM_RANGES = {**RANGES, "learning_rate": (1e-4, 0.1, True)}
CONSTANTS = {
    "digits-schedules": ("learning_rate", "momentum", "init_scale"),
    "mnist5k-l2-schedules": ("learning_rate", "momentum", "init_scale", "l2"),
    "logreg-l2-per-weight": ("l2", "learning_rate"),
    "mnist5k-adamw-schedules": ("learning_rate", "beta1", "beta2", "weight_decay"),
    "mnist1d-cnn-schedules": ("learning_rate", "momentum", "init_scale"),
}


# optax's tuning-free optimizers, each one training run of the same T steps (equal training steps,
# not equal wall-clock): their defaults, schedule-free AdamW at its default learning rate.
def _tuning_free():
    import optax

    return {
        "prodigy": optax.contrib.prodigy(),
        "schedule-free-adamw": optax.contrib.schedule_free_adamw(),
        "dog": optax.contrib.dog(),
    }


def methods_for(problem: str, methods) -> list[str]:
    """The methods run on ``problem``: the tuning-free optimizers only on the Adam problem."""
    return [m for m in methods if m not in TUNING_FREE or problem in ADAM_PROBLEMS]


def spec_for(problem: str, seed: int) -> dict:
    if problem == "digits-schedules":
        spec = templates.get("lr-schedule-digits")
    elif problem == "mnist5k-l2-schedules":
        spec = templates.get("lr-schedule-mnist")
        spec["objective"] = "valid_loss"
        spec["hyperparameters"]["l2"] = {"init": 1e-3, "granularity": "layer", "learn": True}
    elif problem == "logreg-l2-per-weight":
        spec = templates.get("l2-per-weight-logreg")
    elif problem == "mnist5k-adamw-schedules":
        spec = templates.get("adam-schedule-mnist")
        spec["objective"] = "valid_loss"
    elif problem == "mnist1d-cnn-schedules":
        spec = templates.get("lr-schedule-cnn-mnist1d")
        spec["objective"] = "valid_loss"  # what the black-box samplers score
    else:
        raise ValueError(problem)
    spec["seed"] = seed
    return spec


class Evaluator:
    """Final train/valid/test metrics of one training run of the reversible engine (forward pass only)
    for a full raw-hyperparameter dict: `hypercore.evaluate`, what a meta-iteration of `hypercore.tune`
    scores, compiled once per problem (the buffer's capacity is fixed for the widest momentum range
    searched, so new values do not recompile)."""

    def __init__(self, problem: hypercore.Problem):
        self.problem = problem
        self.start = hypercore.initial_hyperparameters(problem, include_fixed=True)
        learned = hypercore.initial_hyperparameters(problem)
        self.fixed = {k: v for k, v in self.start.items() if k not in learned}
        hs = problem.hypers
        self.ranges = RANGES if hs.training_optimizer == "sgd_momentum" else ADAM_RANGES
        if hs.training_optimizer == "sgd_momentum":
            self.base_capacity = hypercore.buffer_capacity(hs.steps, MIN_MOMENTUM)
        else:  # the lowest betas searched, and decay factor 1 - lr wd at the highest lr and wd
            r = self.ranges
            decay = 1 - r["learning_rate"][1] * r["weight_decay"][1] if hs.decays() else None
            self.base_capacity = hypercore.budget.adam_capacity(hs.steps, r["beta1"][0], r["beta2"][0], decay)

    def __call__(self, raw: dict[str, np.ndarray], meta_iter: int) -> dict[str, float]:
        needed = hypercore.buffer_slots(self.problem.hypers, raw)
        capacity = max(self.base_capacity, needed)
        return hypercore.evaluate(self.problem, raw, meta_iter=meta_iter, capacity=capacity)

    def held_out(self, raw: dict[str, np.ndarray], optimizer=None) -> dict[str, float]:
        """Mean metrics over the held-out seeds; with an optax ``optimizer``, of its training runs
        (the start's L2 and initial scales, the same weights and minibatches)."""
        if optimizer is None:
            runs = [self(raw, s) for s in HELD_OUT_SEEDS]
        else:
            runs = [
                hypercore.evaluate(self.problem, meta_iter=s, optimizer=optimizer) for s in HELD_OUT_SEEDS
            ]
        return {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}


def score(m: dict[str, float]) -> float:
    v = m["valid_loss"]
    return v if math.isfinite(v) else DIVERGED


def to_raw(kind: str, natural: float) -> float:
    return float(vocab.to_raw(kind, natural))  # log, or logit for momentum and the betas


def to_natural(kind: str, raw: float) -> float:
    return float(vocab.to_natural(kind, raw))


def clipped_start(kind: str, raw_value: float, ranges=RANGES) -> float:
    low, high, _ = ranges[kind]
    return min(max(to_natural(kind, raw_value), low), high)


# ---- methods: each returns (trace [(elapsed, objective)], chosen full raw config, note) -----------


def run_revtune(problem, evaluator, budget):
    current = {k: np.asarray(v) for k, v in hypercore.initial_hyperparameters(problem).items()}
    trace, best, slowest = [], (math.inf, dict(current)), []
    started = time.perf_counter()

    def callback(record: hypercore.Record):
        nonlocal current, best
        elapsed = time.perf_counter() - started
        obj = record.objective if math.isfinite(record.objective) else DIVERGED
        # The objective is that of the configuration this meta-iteration started from.
        if elapsed <= budget and obj < best[0]:
            best = (obj, dict(current))
        current = dict(record.checkpoint.learned)
        trace.append((elapsed, obj))
        slowest.append(record.elapsed_s)
        return elapsed >= budget

    error = None
    try:
        hypercore.tune(problem, callback=callback, iterations=10**6)
    except hypercore.MetaDivergedError as e:  # report what it found before giving up
        error = str(e)
    if slowest:
        error = f"{error or ''} slowest meta-iteration {max(slowest):.1f} s".strip()
    return trace, {**evaluator.fixed, **best[1]}, error


def optuna_search(
    evaluator: Evaluator,
    sampler: optuna.samplers.BaseSampler,
    budget: float,
    space: dict[str, tuple[str, list[tuple[str, tuple[int, ...] | EllipsisType]]]],
    start: dict[str, float],
):
    """``space``: Optuna name -> (kind, the (raw key, element index or ``...`` for the whole key)
    pairs its value is written to)."""
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.enqueue_trial(start)
    trace, best = [], (math.inf, None)
    started = time.perf_counter()
    k = 0
    while time.perf_counter() - started < budget:
        trial = study.ask()
        raw = {key: np.array(v, copy=True) for key, v in evaluator.start.items()}
        for name, (kind, targets) in space.items():
            low, high, log = evaluator.ranges[kind]
            value = to_raw(kind, trial.suggest_float(name, low, high, log=log))
            for key, index in targets:
                raw[key][index] = value
        obj = score(evaluator(raw, k))
        study.tell(trial, obj)
        elapsed = time.perf_counter() - started
        trace.append((elapsed, obj))
        if elapsed <= budget and obj < best[0]:
            best = (obj, raw)
        k += 1
    return trace, best[1] if best[1] is not None else dict(evaluator.start), None


def constant_space(evaluator: Evaluator, kinds) -> tuple[dict, dict]:
    """One Optuna parameter per kind, applied to every raw key of that kind (per-array L2 shares one
    value); its start is the template's starting value, clipped into the search range."""
    hs = evaluator.problem.hypers
    space, start = {}, {}
    for kind in kinds:
        name = kind if vocab.KINDS[kind].transform == "logit" else f"log_{kind}"
        space[name] = (kind, [(key, ...) for key in hs.keys(kind)])
        start[name] = clipped_start(kind, float(np.mean(evaluator.start[hs.keys(kind)[0]])), evaluator.ranges)
    return space, start


def run_full_tpe(evaluator, budget, seed):
    problem = evaluator.problem
    space, start = {}, {}
    for key in hypercore.initial_hyperparameters(problem):
        kind = key.split(".")[0]
        for index in np.ndindex(np.shape(evaluator.start[key])):
            name = f"{key}[{','.join(map(str, index))}]"
            space[name] = (kind, [(key, index)])
            start[name] = clipped_start(kind, float(evaluator.start[key][index]), evaluator.ranges)
    sampler = optuna.samplers.TPESampler(seed=seed)
    return optuna_search(evaluator, sampler, budget, space, start)


def run_method(method, name, problem, evaluator, budget, seed):
    if method == "revtune":
        return run_revtune(problem, evaluator, budget)
    if method == "revtune-resplit":
        return run_revtune(resplit(problem), evaluator, budget)
    if method == "tpe-full":
        return run_full_tpe(evaluator, budget, seed)
    kinds = CONSTANTS[name]
    if method == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    elif method == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif method == "cmaes":
        _, start = constant_space(evaluator, kinds)
        sampler = optuna.samplers.CmaEsSampler(x0=start, seed=seed, warn_independent_sampling=False)
    else:
        raise ValueError(method)
    return optuna_search(evaluator, sampler, budget, *constant_space(evaluator, kinds))


# ---- driver ---------------------------------------------------------------------------------------


def resplit(problem: hypercore.Problem) -> hypercore.Problem:
    return dataclasses.replace(problem, resplit=True)  # compiled apart: resplit is in the cache key


def warm_up(problem, evaluator, methods) -> dict[str, float]:
    """Compile revtune's hypergradients and the black-box evaluator before any timed run."""
    t0 = time.perf_counter()
    hypercore.tune(problem, iterations=1)
    if "revtune-resplit" in methods:
        hypercore.tune(resplit(problem), iterations=1)
    t1 = time.perf_counter()
    evaluator(evaluator.start, 0)
    t2 = time.perf_counter()
    # Time one more of each, compiled.
    hypercore.tune(problem, iterations=1)
    t3 = time.perf_counter()
    evaluator(evaluator.start, 1)
    t4 = time.perf_counter()
    return {
        "compile_revtune_s": t1 - t0,
        "compile_eval_s": t2 - t1,
        "meta_iteration_s": t3 - t2,
        "evaluation_s": t4 - t3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", default="docs/figures/vs_blackbox.json")
    parser.add_argument("--table", metavar="JSON", help="print the table and draw the plots of a saved run")
    args = parser.parse_args()
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print_table(saved["runs"], saved["machine"], saved["timings"])
        plot(saved["runs"], Path(args.table).parent / Path(args.table).stem)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="`x0` has been deprecated", category=FutureWarning)
    started = time.perf_counter()

    runs, timings = [], {}
    for seed in range(args.seeds):
        for pname in args.problems:
            problem = hypercore.problem_from_spec(spec_for(pname, seed))
            evaluator = Evaluator(problem)
            timings[f"{pname}/seed{seed}"] = warm_up(problem, evaluator, methods_for(pname, args.methods))
            start_metrics = evaluator.held_out(evaluator.start)
            n_hyper = sum(int(np.size(v)) for v in hypercore.initial_hyperparameters(problem).values())
            methods = methods_for(pname, args.methods)
            order = methods[seed % len(methods) :] + methods[: seed % len(methods)]
            for method in order:
                if method in TUNING_FREE:  # one training run per held-out seed, nothing to search
                    trace, note = [], "equal training steps (not wall-clock): one run, no search"
                    held = evaluator.held_out(None, optimizer=_tuning_free()[method])
                    count = 0
                else:
                    trace, chosen, note = run_method(method, pname, problem, evaluator, args.budget, seed)
                    held = evaluator.held_out(chosen)
                    count = n_hyper if method in (*REVTUNE, "tpe-full") else len(CONSTANTS[pname])
                within = [o for e, o in trace if e <= args.budget]
                row = {
                    "problem": pname,
                    "method": method,
                    "seed": seed,
                    "n_hyper": count,
                    "completed": len(within),
                    "wall_s": trace[-1][0] if trace else 0.0,
                    "best_objective": min(within, default=math.nan),
                    "held_out": held,
                    "start_held_out": start_metrics,
                    "trace": trace,
                    "note": note,
                }
                runs.append(row)
                print(
                    json.dumps({k: v for k, v in row.items() if k not in ("trace", "start_held_out")}),
                    flush=True,
                )
    total = time.perf_counter() - started
    machine = {
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "optuna": optuna.__version__,
        "budget_s": args.budget,
        "total_s": total,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "timings": timings, "runs": runs}, indent=1))
    print_table(runs, machine, timings)
    plot(runs, out.parent / out.stem)


def summarise(runs) -> list[dict]:
    rows = []
    for pname in PROBLEMS:
        for method in METHODS:
            rs = [r for r in runs if r["problem"] == pname and r["method"] == method]
            if not rs:
                continue

            def stat(f: Callable[[dict], float], rs=rs, digits=4) -> str:
                xs = [x for x in map(f, rs) if math.isfinite(x)]
                if not xs:  # a tuning-free optimizer has no best objective: it searched nothing
                    return "-"
                m = statistics.fmean(xs)
                sd = f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else ""
                return f"{m:.{digits}f}{sd}"

            rows.append(
                {
                    "problem": pname,
                    "method": method,
                    "n_hyper": rs[0]["n_hyper"],
                    "completed": stat(lambda r: r["completed"], digits=0),
                    "best_objective": stat(lambda r: r["best_objective"]),
                    "valid": stat(lambda r: r["held_out"]["valid_loss"]),
                    "test": stat(lambda r: r["held_out"]["test_loss"]),
                    "test_error": stat(lambda r: 100 * r["held_out"]["test_error"], digits=2),
                    "start_valid": statistics.fmean(r["start_held_out"]["valid_loss"] for r in rs),
                    "start_test": statistics.fmean(r["start_held_out"]["test_loss"] for r in rs),
                    "start_test_error": statistics.fmean(100 * r["start_held_out"]["test_error"] for r in rs),
                }
            )
    return rows


def print_table(runs, machine, timings) -> None:
    print()
    print(json.dumps(machine))
    for k, v in timings.items():
        print(k, {a: round(b, 2) for a, b in v.items()})
    print()
    print(
        "| problem | method | hyperparameters | trials / meta-iterations | best valid objective seen "
        "| valid loss (3 new seeds) | test loss (3 new seeds) | test error % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    last = None
    for r in summarise(runs):
        if r["problem"] != last:
            print(
                f"| {r['problem']} | (starting point) | | | | {r['start_valid']:.4f} | {r['start_test']:.4f} "
                f"| {r['start_test_error']:.2f} |"
            )
            last = r["problem"]
        print(
            f"| {r['problem']} | {r['method']} | {r['n_hyper']} | {r['completed']} | {r['best_objective']} "
            f"| {r['valid']} | {r['test']} | {r['test_error']} |"
        )


def plot(runs, prefix: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = [p for p in PROBLEMS if any(r["problem"] == p for r in runs)]
    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4), squeeze=False)
    colors = dict(zip(METHODS, ("C3", "C4", "C0", "C1", "C7", "C2", "C5", "C6", "C8"), strict=True))
    for ax, pname in zip(axes[0], problems, strict=True):
        for r in runs:
            if r["problem"] != pname or not r["trace"]:
                continue
            t = [e for e, _ in r["trace"]]
            best = np.minimum.accumulate([o for _, o in r["trace"]])
            label = r["method"] if r["seed"] == 0 else None
            ax.step(t, best, where="post", color=colors[r["method"]], alpha=0.8, label=label)
        ax.set_title(pname)
        ax.set_xlabel("wall-clock (s)")
        ax.set_ylabel("best validation objective so far")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{prefix}_traces.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4), squeeze=False)
    for ax, pname in zip(axes[0], problems, strict=True):
        methods = [m for m in METHODS if any(r["problem"] == pname and r["method"] == m for r in runs)]
        for i, m in enumerate(methods):
            rs = [r for r in runs if r["problem"] == pname and r["method"] == m]
            v = [r["held_out"]["valid_loss"] for r in rs]
            te = [r["held_out"]["test_loss"] for r in rs]
            ax.scatter([i - 0.1] * len(v), v, color=colors[m], marker="o", label="valid" if i == 0 else None)
            ax.scatter([i + 0.1] * len(te), te, color=colors[m], marker="x", label="test" if i == 0 else None)
        ax.set_xticks(range(len(methods)), methods, rotation=30)
        ax.set_title(f"{pname}: chosen config, 3 new seeds")
        ax.set_ylabel("loss (o valid, x test)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{prefix}_valid_test.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
