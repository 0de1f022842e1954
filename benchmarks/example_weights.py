"""Finding mislabelled training examples with exact hypergradients (``example_weight``), against what
a user would try first, side by side on the same noisy splits (issue 20).

For each dataset and noise level, a fraction of the training labels is flipped to another class
(``dataset.label_noise``: the validation and test labels stay clean) and every method scores each
training example for how suspect it is; the table gives the area under the ROC curve of those
scores for the flipped examples, the test error of retraining on the examples each method keeps,
and the wall time of each method:

- ``revtune``: one weight per training example learned by exact hypergradients of the validation
  loss through the whole training run (``meta`` iterations of Adam on the log weights); score
  ``-log weight``; keeps the examples whose weight did not fall below its start, 1.
- ``first hypergradient``: the hypergradient of the log weights at the start alone (one forward and
  backward pass); score: the hypergradient (a positive one: counting the example more raises the
  validation loss).
- ``training loss``: a plain logistic regression (scikit-learn) trained on the noisy labels; score:
  each example's loss under it.
- ``cleanlab``: confident learning (`cleanlab.filter.find_label_issues` and
  `cleanlab.rank.get_label_quality_scores`) on 5-fold cross-validated probabilities of that
  logistic regression; keeps the examples it does not flag.

Retraining uses the engine's own training run (the same model, schedule and minibatches, no weights)
averaged over five draws of the initial weights and minibatches; ``all (noisy)`` and ``clean
labels`` are the references. ``gap closed`` is (noisy - kept) / (noisy - clean) of the test error.

    .venv/bin/pip install -e '.[bench]'        # cleanlab
    .venv/bin/python benchmarks/example_weights.py                       # digits and mnist5k, 20 and 40 %
    .venv/bin/python benchmarks/example_weights.py --datasets digits --noise 0.4

Writes ``docs/figures/example_weights.json`` (``--out``) and prints the table docs/BENCHMARKS.md shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from hypercore import data, models
from hypercore.hyper import Hyper
from hypercore.meta import MetaConfig
from hypercore.tune import Problem, evaluate, hypergradient, tune

SIZES = {"digits": (1000, 400, 397), "mnist5k": (3000, 1000, 1000)}
STEPS, BATCH, LEARNING_RATE = 100, 100, 0.5
RETRAIN_DRAWS = 5


def problem(ds, *, weights: bool, iterations: int, meta_lr: float) -> Problem:
    hypers = {
        "learning_rate": Hyper("learning_rate", LEARNING_RATE),
        "momentum": Hyper("momentum", 0.9),
        "init_scale": Hyper("init_scale", 0.1, learn=not weights),  # something to tune without weights
    }
    if weights:
        hypers["example_weight"] = Hyper("example_weight", 1.0, "example", learn=True)
    model = models.logistic_regression(ds.n_features, ds.n_classes)
    meta = MetaConfig(optimizer="adam", learning_rate=meta_lr)
    return Problem.build(model, ds, hypers, steps=STEPS, batch_size=BATCH, meta=meta, iterations=iterations)


def retrained_test_error(ds, keep: np.ndarray) -> float:
    """The engine's plain training run on the kept training examples: mean test error of a few draws."""
    kept = dataclasses.replace(
        ds,
        X_train=ds.X_train[keep],
        y_train=ds.y_train[keep],
        train_rows=ds.train_rows[keep],
        noisy=None if ds.noisy is None else ds.noisy[keep],
    )
    p = problem(kept, weights=False, iterations=1, meta_lr=0.1)
    return float(np.mean([evaluate(p, meta_iter=k)["test_error"] for k in range(RETRAIN_DRAWS)]))


def run(name: str, noise: float, iterations: int, meta_lr: float) -> dict:
    n_train, n_valid, n_test = SIZES[name]
    clean = data.load(name, n_train, n_valid, n_test, seed=0)
    ds = data.load(name, n_train, n_valid, n_test, seed=0, label_noise={"fraction": noise, "seed": 1})
    flipped = np.asarray(ds.noisy)
    assert (flipped == (ds.y_train != clean.y_train)).all()
    out: dict = {"dataset": name, "noise": noise, "n_train": n_train, "flipped": int(flipped.sum())}

    started = time.perf_counter()
    p = problem(ds, weights=True, iterations=iterations, meta_lr=meta_lr)
    _, _, grad, _ = hypergradient(p)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    result = tune(p)
    revtune_s = time.perf_counter() - started + first_s  # compiled once, in the first call
    weights = np.asarray(result.hyperparameters["example_weight"].values)
    keep = weights >= 1.0

    started = time.perf_counter()
    X, y = np.asarray(ds.X_train, np.float64), np.asarray(ds.y_train)
    plain = LogisticRegression(max_iter=2000).fit(X, y)
    loss = -np.log(plain.predict_proba(X)[np.arange(len(y)), y] + 1e-12)
    loss_s = time.perf_counter() - started

    started = time.perf_counter()
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = cross_val_predict(LogisticRegression(max_iter=2000), X, y, cv=5, method="predict_proba")
    issues = find_label_issues(y, probs)
    quality = get_label_quality_scores(y, probs)
    cleanlab_s = time.perf_counter() - started

    out["methods"] = {
        "revtune": {
            "auc": roc_auc_score(flipped, -np.log(weights)),
            "kept": int(keep.sum()),
            "kept_flipped": int((keep & flipped).sum()),
            "test_error": retrained_test_error(ds, keep),
            "seconds": revtune_s,
            "meta_iterations": iterations,
        },
        "first hypergradient": {"auc": roc_auc_score(flipped, grad["example_weight"]), "seconds": first_s},
        "training loss": {"auc": roc_auc_score(flipped, loss), "seconds": loss_s},
        "cleanlab": {
            "auc": roc_auc_score(flipped, -quality),
            "kept": int((~issues).sum()),
            "kept_flipped": int((~issues & flipped).sum()),
            "test_error": retrained_test_error(ds, ~issues),
            "seconds": cleanlab_s,
        },
    }
    out["all (noisy)"] = retrained_test_error(ds, np.ones(n_train, bool))
    out["clean labels"] = retrained_test_error(clean, np.ones(n_train, bool))
    gap = out["all (noisy)"] - out["clean labels"]
    for method in ("revtune", "cleanlab"):
        m = out["methods"][method]
        m["gap_closed"] = (out["all (noisy)"] - m["test_error"]) / gap if gap > 0 else None
    return out


def table(results: list[dict]) -> str:
    rows = [
        "| data | flipped | method | AUC | kept (flipped) | retrained test error | gap closed | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        where = f"{r['dataset']} ({r['n_train']} train)"
        share = f"{r['noise']:.0%}"
        for name, m in r["methods"].items():
            kept = f"{m['kept']} ({m['kept_flipped']})" if "kept" in m else ""
            err = f"{m['test_error']:.3f}" if "test_error" in m else ""
            gap = f"{m['gap_closed']:.0%}" if m.get("gap_closed") is not None else ""
            auc, seconds = f"{m['auc']:.3f}", f"{m['seconds']:.1f} s"
            rows.append(f"| {where} | {share} | {name} | {auc} | {kept} | {err} | {gap} | {seconds} |")
        everything = f"{r['n_train']} ({r['flipped']})"
        rows.append(f"| {where} | {share} | all (noisy) | | {everything} | {r['all (noisy)']:.3f} | | |")
        rows.append(f"| {where} | {share} | clean labels | | | {r['clean labels']:.3f} | | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"], choices=sorted(SIZES))
    parser.add_argument("--noise", nargs="+", type=float, default=[0.2, 0.4])
    parser.add_argument("--iterations", type=int, default=20, help="meta-iterations of revtune")
    parser.add_argument("--meta-lr", type=float, default=0.3, help="Adam's step on the log weights")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/example_weights.json"))
    args = parser.parse_args()
    results = [
        run(name, noise, args.iterations, args.meta_lr) for name in args.datasets for noise in args.noise
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": STEPS, "batch": BATCH, "results": results}, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
