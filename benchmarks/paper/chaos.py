"""Experiment I (the paper's figure 5): the final training loss and its hypergradient as the learning
rate grows into the chaotic regime.

One training run per value of ``log alpha`` on a grid of 1,000 points in ``[0.5, 2.5]``: the
``chaos-sweep`` template (784-200-50-10 tanh net, 1,000 MNIST training examples from ``mnist5k``,
50 steps of batch 250, momentum 0.9, initial scale e^-2, no L2), each point's final training loss
on all 1,000 examples and ``d loss / d log alpha`` through the 50 steps by the reversible engine
(`hypercore.hypergradient`: the same jitted function for every point, one compilation). Every point
uses the same initial weights and minibatches (meta-iteration 0 of seed 0), as the paper's sweep
(HIPS/hypergrad ``experiments/Jan_14_learning_rate_wiggliness/3``).

Two sweeps, one figure (the JSON keys ``paper`` and ``template`` are kept from the first recorded
run, so ``--resume`` and ``--plot-only`` still read ``docs/figures/chaos.json``):

- ``paper`` (1,000 points): the template exactly as served. Its ``dataset.center: false`` keeps
  the pixels the paper used here, x / 255 *without* subtracting the mean image (that experiment
  calls ``load_data()``, whose ``normalize`` defaults to False).
- ``template`` (50 points): the template with ``dataset.center: true``, on centred pixels (the
  same 1,000 images minus their mean image), for comparison.

The minibatches are drawn with replacement from ``(seed, meta_iter, t)`` (the only kind the
tuning loop has); the paper cycled through 4 fixed batches of 250.

The paper's reading: the loss is smooth down to about 0.004, the gradient's sign starts to flip
between neighbours from log alpha ~1.47, the smallest loss is 0.0024 near alpha = 5.3, and beyond
1.8 the loss jumps and the gradient explodes (-55 at 1.9, 521 at 2.2, -2e8 at 2.4). This script
measures the same things on its sweep: where the gradient's sign first flips between neighbours,
where flips become frequent, where it disagrees with the slope of the loss curve itself (central
differences over the grid) and where its magnitude explodes.

The grid is swept coarse to fine (every 32nd point, then every 16th, ...) and saved every 25
points, so ``--resume`` continues an interrupted run and a partial result still spans the range;
``--plot-only`` redraws the figure from the JSON (on the finest evenly spaced grid it holds).

    nice -n 19 .venv/bin/python benchmarks/paper/chaos.py            # 1,050 points: 32 min on 2 busy cores
    nice -n 19 .venv/bin/python benchmarks/paper/chaos.py --points 20 --template-points 5 --out /tmp/c

writes ``docs/figures/chaos.png`` and ``docs/figures/chaos.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import hypercore  # noqa: E402
from jobs import templates  # noqa: E402

TEMPLATE = "chaos-sweep"
PAPER = {
    "smooth_loss_down_to": 0.004,
    "sign_flips_from_log_alpha": 1.47,
    "min_loss": 0.0024,
    "min_loss_alpha": 5.3,
    "loss_jumps_beyond_log_alpha": 1.8,
    "gradient_at": {"1.9": -55.0, "2.2": 521.0, "2.4": -2e8},
}


FIELDS = ("loss", "hypergrad", "exact", "diverged", "seconds")


def problem(variant: str) -> hypercore.Problem:
    """The template as served, uncentred pixels (``paper``), or with ``center: true`` (``template``)."""
    spec = templates.get(TEMPLATE)
    if spec is None:
        raise SystemExit(f"no template named {TEMPLATE!r}")
    if variant == "template":
        spec["dataset"]["center"] = True
    return hypercore.problem_from_spec(spec)


def coarse_to_fine(n: int) -> list[int]:
    """Grid indices, every 32nd first, then the new ones at every 16th, ..., then the rest."""
    order, seen = [], set()
    for stride in (32, 16, 8, 4, 2, 1):
        for i in range(0, n, stride):
            if i not in seen:
                seen.add(i)
                order.append(i)
    if n - 1 not in seen:
        order.append(n - 1)
    return order


def finest_complete_stride(done: list[bool]) -> int:
    """The smallest stride whose grid points are all done (a partial coarse-to-fine sweep still gives
    an evenly spaced grid)."""
    for stride in (1, 2, 4, 8, 16, 32):
        if all(done[::stride]):
            return stride
    raise SystemExit("not even every 32nd point is done: run the sweep (or --resume it) first")


def sweep(variant: str, x: np.ndarray, state: dict, save) -> None:
    """Fill ``state[field][i]`` for every grid point not yet done (``state["done"]``); ``save()``
    every 25 points."""
    todo = [i for i in coarse_to_fine(len(x)) if not state["done"][i]]
    if not todo:
        return
    prob = problem(variant)
    started, total = time.perf_counter(), len(todo)
    for k, i in enumerate(todo):
        t0 = time.perf_counter()
        _, metrics, grads, report = hypercore.hypergradient(
            prob, {"learning_rate": np.asarray(x[i], np.float64)}
        )
        state["loss"][i] = metrics["train_loss"]
        state["hypergrad"][i] = float(grads["learning_rate"])
        state["exact"][i] = bool(report.exact)
        state["diverged"][i] = bool(report.overflow)
        state["seconds"][i] = time.perf_counter() - t0
        state["done"][i] = True
        if (k + 1) % 25 == 0 or k + 1 == total:
            save()
            elapsed = time.perf_counter() - started
            left = elapsed / (k + 1) * (total - k - 1)
            print(
                f"{variant}: {k + 1}/{total}  log alpha {x[i]:.3f}  loss {state['loss'][i]:.5g}  "
                f"grad {state['hypergrad'][i]:+.4g}  {elapsed:.0f} s, ~{left:.0f} s left",
                flush=True,
            )


def _first(mask: np.ndarray, xs: np.ndarray) -> float | None:
    hits = np.flatnonzero(mask)
    return None if hits.size == 0 else float(xs[hits[0]])


def analyse(x: np.ndarray, loss: np.ndarray, grad: np.ndarray) -> dict:
    """Where the hypergradient stops describing the loss curve (``x`` ascending).

    - ``first_sign_flip``: the first grid point whose gradient sign differs from the next one's.
    - ``frequent_flips_from``: the first point from which the sign flips at least 3 times within
      the next 10 points: the gradient no longer has a trend.
    - ``disagrees_with_slope_from``: the first point from which the gradient's sign disagrees with
      the loss curve's central-difference slope at 3 or more of the next 10 points.
    - ``explodes_from``: the first point whose |gradient| exceeds 100 times the median |gradient|
      of the first quarter of the sweep (the smooth regime), or is not finite.
    - ``smooth_loss_down_to``: the smallest loss before the loss first rises by more than 10%
      from one point to the next.
    """
    window = 10
    sign = np.sign(grad)
    flips = sign[:-1] * sign[1:] < 0
    frequent = np.array([flips[i : i + window].sum() >= 3 for i in range(len(flips))], bool)
    slope = np.full_like(loss, np.nan)
    slope[1:-1] = (loss[2:] - loss[:-2]) / (x[2:] - x[:-2])
    disagree = np.sign(slope) * sign < 0
    disagree_often = np.array([disagree[i : i + window].sum() >= 3 for i in range(len(disagree))], bool)
    smooth_scale = float(np.nanmedian(np.abs(grad[: max(1, len(grad) // 4)])))
    with np.errstate(invalid="ignore"):
        explode = ~np.isfinite(grad) | (np.abs(grad) > 100 * smooth_scale)
        jumps = np.flatnonzero(~(loss[1:] <= 1.1 * loss[:-1]))
    smooth_end = int(jumps[0]) + 1 if jumps.size else len(loss)
    finite = np.isfinite(loss)
    i_min = int(np.nanargmin(np.where(finite, loss, np.nan))) if finite.any() else None

    def at(log_alpha: float) -> dict:
        i = int(np.argmin(np.abs(x - log_alpha)))
        return {
            "log_alpha": float(x[i]),
            "loss": _jsonable(float(loss[i])),
            "hypergrad": _jsonable(float(grad[i])),
        }

    def near(centre: float) -> dict:
        """The largest |gradient| and the loss range over the points within 0.05 of ``centre``."""
        m = np.abs(x - centre) < 0.05
        if not m.any():  # a coarse grid (a quick check) may have no point this close
            return {"max_abs_hypergrad": None, "loss_range": [None, None]}
        return {
            "max_abs_hypergrad": _jsonable(float(np.nanmax(np.abs(grad[m])))),
            "loss_range": [_jsonable(float(np.nanmin(loss[m]))), _jsonable(float(np.nanmax(loss[m])))],
        }

    return {
        "min_loss": None if i_min is None else float(loss[i_min]),
        "min_loss_log_alpha": None if i_min is None else float(x[i_min]),
        "min_loss_alpha": None if i_min is None else float(math.exp(x[i_min])),
        "smooth_until_log_alpha": float(x[smooth_end - 1]),
        "smooth_loss_down_to": float(np.nanmin(loss[:smooth_end])),
        "smooth_min_log_alpha": float(x[int(np.nanargmin(loss[:smooth_end]))]),
        "first_sign_flip": _first(flips, x),
        "sign_flips": int(flips.sum()),
        "frequent_flips_from": _first(frequent, x),
        "disagrees_with_slope_from": _first(disagree_often, x),
        "smooth_gradient_scale": smooth_scale,
        "explodes_from": _first(explode, x),
        "max_abs_hypergrad": _jsonable(float(np.nanmax(np.abs(grad)))),
        "at": {key: at(float(key)) for key in ("1.5", "1.8", "1.9", "2.0", "2.2", "2.4")},
        "near": {f"{c:.1f}": near(c) for c in np.arange(1.5, 2.45, 0.1)},
    }


def plot(runs: dict[str, dict], path: Path) -> None:
    """Loss (top), the hypergradient near zero as the paper plots it (middle, linear, +-0.5) and all
    of it (bottom, symlog), against log alpha; the ``paper`` sweep's marks on every panel."""
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(7.5, 8.5), sharex=True, gridspec_kw={"height_ratios": (1.2, 1, 1)}
    )
    main = runs["paper"]
    x, loss, grad, stats = main["x"], main["loss"], main["hypergrad"], main["stats"]
    if "template" in runs:
        t = runs["template"]
        top.plot(t["x"], t["loss"], "o", ms=2.5, color="0.55", label="template with center: true")
        for ax in (middle, bottom):
            ax.plot(t["x"], t["hypergrad"], "o", ms=2.5, color="0.55")
    top.plot(x, loss, lw=0.8, color="C0", label="template as served (uncentred pixels, as the paper)")
    top.set_yscale("log")
    top.set_ylabel("final training loss")
    top.set_title(
        "784-200-50-10 tanh net, 50 steps of SGD with momentum 0.9, 1,000 MNIST images", fontsize=10
    )
    if stats["smooth_min_log_alpha"] is not None:
        top.plot([stats["smooth_min_log_alpha"]], [stats["smooth_loss_down_to"]], "v", color="C3", ms=7)
    for ax in (middle, bottom):
        ax.plot(x, grad, lw=0.6, color="C1")
        ax.axhline(0.0, color="grey", lw=0.5)
    middle.set_ylim(-0.5, 0.5)
    middle.set_ylabel("d loss / d log alpha\n(clipped to +-0.5)")
    bottom.set_yscale("symlog", linthresh=1e-2)
    top_decade = max(2, int(np.ceil(np.log10(max(np.nanmax(np.abs(grad)), 1.0)))))
    step = max(1, int(np.ceil(top_decade / 4)))
    decades = [10.0**k for k in range(step, top_decade + 1, step)]
    bottom.set_yticks([-d for d in decades[::-1]] + [0.0] + decades)
    bottom.set_ylabel("d loss / d log alpha\n(symlog)")
    bottom.set_xlabel("log alpha")
    marks = (
        ("first_sign_flip", "first sign flip between neighbours", "C2", ":"),
        ("frequent_flips_from", "sign flips >= 3 times in 10 points", "C3", "--"),
        ("explodes_from", "|gradient| > 100x its smooth size", "k", "-."),
    )
    for key, label, color, style in marks:
        if stats[key] is not None:
            for ax in (top, middle, bottom):
                ax.axvline(stats[key], color=color, ls=style, lw=1, label=label if ax is top else None)
    top.plot([], [], "v", color="C3", label="smallest loss before the first jump")
    top.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1000, help="grid points of the as-served sweep")
    parser.add_argument("--template-points", type=int, default=50, help="grid points of the centred sweep")
    parser.add_argument("--low", type=float, default=0.5)
    parser.add_argument("--high", type=float, default=2.5)
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--resume", action="store_true", help="continue from OUT/chaos.json")
    parser.add_argument(
        "--plot-only", action="store_true", help="analyse and plot what OUT/chaos.json holds, sweep nothing"
    )
    args = parser.parse_args()
    args.resume = args.resume or args.plot_only
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "chaos.json"
    sizes = {"template": args.template_points, "paper": args.points}
    previous = json.loads(json_path.read_text()) if args.resume and json_path.exists() else {}
    runs: dict[str, dict] = {}
    for variant, n in sizes.items():
        x = np.linspace(args.low, args.high, n)
        old = previous.get("runs", {}).get(variant)
        if old is not None and np.allclose(old["log_alpha"], x):
            state = {f: list(old[f]) for f in FIELDS} | {"done": list(old["done"])}
            state["loss"] = [math.nan if v is None else v for v in state["loss"]]
            state["hypergrad"] = [math.nan if v is None else v for v in state["hypergrad"]]
        else:
            state = {f: [math.nan] * n for f in FIELDS} | {"done": [False] * n}
        runs[variant] = {"grid": x, "state": state}
    spent = float(previous.get("seconds", 0.0))
    started = time.perf_counter()

    def record(complete: bool) -> dict:
        out = {
            "experiment": "I (figure 5): chaos in the learning rate",
            "command": "nice -n 19 .venv/bin/python benchmarks/paper/chaos.py",
            "template": templates.get(TEMPLATE),
            "complete": complete,
            "seconds": spent + time.perf_counter() - started,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
            "paper": PAPER,
            "runs": {},
        }
        for variant, run in runs.items():
            st = run["state"]
            out["runs"][variant] = {
                "log_alpha": run["grid"].tolist(),
                **{f: [_jsonable(v) for v in st[f]] for f in FIELDS},
                "done": st["done"],
                **({"stats": run["stats"]} if "stats" in run else {}),
            }
        return out

    def save() -> None:
        json_path.write_text(json.dumps(record(False)) + "\n")

    if not args.plot_only:
        for variant, run in runs.items():
            sweep(variant, run["grid"], run["state"], save)
    for run in runs.values():
        st = run["state"]
        stride = finest_complete_stride(st["done"])
        done = np.zeros(len(st["done"]), bool)
        done[::stride] = True
        x = run["grid"][done]
        loss, grad = np.asarray(st["loss"])[done], np.asarray(st["hypergrad"])[done]
        stats = analyse(x, loss, grad)
        stats["points"] = int(done.sum())
        stats["grid_stride"] = stride
        stats["inexact_points"] = int(sum(not e for e, d in zip(st["exact"], st["done"], strict=True) if d))
        stats["diverged_points"] = int(
            sum(bool(v) for v, d in zip(st["diverged"], st["done"], strict=True) if d)
        )
        stats["nonfinite_points"] = int(np.sum(~np.isfinite(loss) | ~np.isfinite(grad)))
        stats["seconds_per_point_median"] = float(np.nanmedian(np.asarray(st["seconds"], float)[done]))
        run.update(x=x, loss=loss, hypergrad=grad, stats=stats)
    plot(runs, args.out / "chaos.png")
    final = record(all(all(run["state"]["done"]) for run in runs.values()))
    json_path.write_text(json.dumps(final, indent=1) + "\n")
    for variant, run in runs.items():
        print(variant, json.dumps(run["stats"], indent=1))
    print(f"total {final['seconds']:.0f} s")


if __name__ == "__main__":
    main()
