"""Experiment A (the paper's figure 1): three meta-iterations on the two-weight toy.

The ``toy-figure1`` template, run by `hypercore.tune` as the service runs it: the loss
``800 sigmoid(R(w) / 500)`` with ``R = 100 (w2 - w1^2)^2 + (1 - w1)^2 + 200 w1`` (`hypercore.models.Toy2D`),
50 steps of SGD with momentum from the fixed start ``w0 = (1.4, 3.9)``, one learning rate and one
momentum per step (log alpha = -4.5 and gamma = 0.99 at the start: 100 hyperparameters), and three
meta-iterations of SGD with momentum on them (HIPS/hypergrad's step 0.01 and mass 0.9, which is
optax's heavy ball with step 0.001; see `jobs.templates`). The paper's final losses (HIPS/hypergrad
``experiments/Jan_25_Figure_1/2``) are 395.3, 356.6 and 356.3.

The run is done twice: with the reversible engine (the service's; it rounds each gamma to a multiple
of 2**-16, so 0.99 trains as 0.9900055) and with the unrolled engine (ordinary reverse mode through
a stored trajectory, gammas as given, as the paper's numbers were made). The figure draws the loss
surface with each meta-iteration's training trajectory (recomputed from the schedules that
meta-iteration used, with the engine's rounded gammas), the loss along the 50 steps, and the
schedules.

    nice -n 19 .venv/bin/python benchmarks/paper/toy_figure1.py

takes seconds and writes ``docs/figures/toy_figure1.png`` and ``docs/figures/toy_figure1.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import hypercore  # noqa: E402
from jobs import templates  # noqa: E402

TEMPLATE = "toy-figure1"
PAPER_LOSSES = (395.3, 356.6, 356.3)


def schedules_used(
    problem: hypercore.Problem, records: list[hypercore.Record]
) -> list[dict[str, np.ndarray]]:
    """The learning rates and momenta each meta-iteration trained with: the starting ones (raw log
    alpha and logit gamma, made natural here), then those each record's update produced."""
    raw = hypercore.initial_hyperparameters(problem)
    initial = {
        "learning_rate": np.exp(raw["learning_rate"]),
        "momentum": 1.0 / (1.0 + np.exp(-raw["momentum"])),
    }
    later = [{k: np.asarray(r.hyperparameters[k].values, np.float64) for k in initial} for r in records[:-1]]
    return [initial, *later]


def trajectory(model, alphas: np.ndarray, gammas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w_0 .. w_T`` (shape ``(T + 1, 2)``) and their losses, by the engine's forward rule:
    ``v <- gamma v - (1 - gamma) grad L(w)``, ``w <- w + alpha v``, in float64."""
    grad = jax.grad(lambda w: model.loss({"w": w}))

    def step(carry, ag):
        w, v = carry
        alpha, gamma = ag
        v = gamma * v - (1.0 - gamma) * grad(w)
        w = w + alpha * v
        return (w, v), w

    w0 = jnp.asarray(model.start, jnp.float64)
    _, ws = jax.lax.scan(step, (w0, jnp.zeros(2, jnp.float64)), (jnp.asarray(alphas), jnp.asarray(gammas)))
    ws = jnp.concatenate([w0[None], ws])
    return np.asarray(ws), np.asarray(model.loss({"w": ws}))


def run(engine: str) -> tuple[hypercore.Problem, list[hypercore.Record], float]:
    problem = hypercore.problem_from_spec(templates.get(TEMPLATE))
    started = time.perf_counter()
    records = hypercore.tune(problem, engine=engine).records
    return problem, records, time.perf_counter() - started


def plot(model, paths: list[np.ndarray], curves: list[np.ndarray], used, objectives, out: Path) -> None:
    fig, (ax_surface, ax_curve, ax_schedule) = plt.subplots(1, 3, figsize=(15, 4.6))
    w1, w2 = np.meshgrid(np.linspace(-1.3, 2.5, 300), np.linspace(-0.2, 4.5, 300))
    surface = np.asarray(model.loss({"w": jnp.stack([w1, w2], axis=-1)}))
    filled = ax_surface.contourf(w1, w2, surface, 25, cmap="RdYlGn_r", alpha=0.75)
    ax_surface.contour(w1, w2, surface, 25, colors="black", linewidths=0.3, alpha=0.6)
    fig.colorbar(filled, ax=ax_surface, label="loss")
    colors = ("C3", "C2", "C0")
    ax_surface.plot(*model.start, "^", color="black", ms=9, label="initial weights")
    for k, (ws, color) in enumerate(zip(paths, colors, strict=True)):
        label = f"meta-iteration {k + 1}: final loss {objectives[k]:.1f}"
        ax_surface.plot(ws[:, 0], ws[:, 1], "-o", color=color, ms=2, lw=1.5, label=label)
        ax_surface.plot(ws[-1, 0], ws[-1, 1], "o", color=color, ms=8)
    ax_surface.set(xlabel="weight 1", ylabel="weight 2", title="training trajectories on the loss surface")
    ax_surface.legend(fontsize=7, loc="upper left")
    for k, (curve, color) in enumerate(zip(curves, colors, strict=True)):
        ax_curve.plot(curve, color=color, label=f"meta-iteration {k + 1}")
    ax_curve.axhline(PAPER_LOSSES[0], color="0.5", ls=":", lw=1, label="paper's final losses")
    for value in PAPER_LOSSES[1:]:
        ax_curve.axhline(value, color="0.5", ls=":", lw=1)
    ax_curve.set(xlabel="training step", ylabel="loss", title="loss along the 50 steps")
    ax_curve.legend(fontsize=7)
    twin = ax_schedule.twinx()
    for k, (sched, color) in enumerate(zip(used, colors, strict=True)):
        ax_schedule.plot(sched["learning_rate"], color=color, label=f"alpha, meta-iteration {k + 1}")
        twin.plot(sched["momentum"], color=color, ls="--", lw=1)
    ax_schedule.set(xlabel="training step", ylabel="learning rate alpha_t (solid)", title="schedules used")
    twin.set_ylabel("momentum gamma_t (dashed)")
    ax_schedule.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    problem, records, seconds = run("reversible")
    _, unrolled, unrolled_seconds = run("unrolled")
    model = problem.model
    used = schedules_used(problem, records)
    paths, curves = [], []
    for sched in used:
        gammas = np.asarray(hypercore.quantize_gamma(jnp.asarray(sched["momentum"])))  # as the engine
        ws, losses = trajectory(model, sched["learning_rate"], gammas)
        paths.append(ws)
        curves.append(losses)
    objectives = [r.objective for r in records]
    # The recomputed trajectories end where the engine's training ended.
    replay_gap = max(abs(c[-1] - o) for c, o in zip(curves, objectives, strict=True))
    plot(model, paths, curves, used, objectives, args.out / "toy_figure1.png")

    result = {
        "experiment": "A (figure 1): the two-weight toy",
        "command": "nice -n 19 .venv/bin/python benchmarks/paper/toy_figure1.py",
        "template": templates.get(TEMPLATE),
        "paper_final_losses": list(PAPER_LOSSES),
        "reversible": {
            "final_losses": objectives,
            "hypergrad_norms": [r.hypergrad_norm for r in records],
            "reversal_exact": [r.reversal_exact for r in records],
            "guard_events": sum(len(r.events) for r in records),
            "seconds": seconds,
        },
        "unrolled": {
            "final_losses": [r.objective for r in unrolled],
            "hypergrad_norms": [r.hypergrad_norm for r in unrolled],
            "seconds": unrolled_seconds,
        },
        "replay_gap": replay_gap,
        "trajectories": [ws.tolist() for ws in paths],
        "schedules": [{k: v.tolist() for k, v in s.items()} for s in used],
    }
    (args.out / "toy_figure1.json").write_text(json.dumps(result, indent=1) + "\n")
    print("meta-iteration  paper   reversible  unrolled")
    for k in range(3):
        print(f"{k + 1:14d}  {PAPER_LOSSES[k]:5.1f}  {objectives[k]:10.3f}  {unrolled[k].objective:8.3f}")
    print(f"reversal exact: {result['reversible']['reversal_exact']}; replay gap {replay_gap:.2e}")
    print(f"tune: {seconds:.1f} s reversible, {unrolled_seconds:.1f} s unrolled (compilation included)")


if __name__ == "__main__":
    main()
