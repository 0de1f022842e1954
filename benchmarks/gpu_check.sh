#!/usr/bin/env bash
# GPU check for revtune's engine: exact reversal and a short tuning job on the accelerator.
#
# Runs from the repository root (any working directory is fine: it cd's there) with .venv/bin/python
# if present, else python3, which needs the dev and bench extras (`.venv/bin/pip install -e '.[dev,bench]'`:
# equinox and optax for the grid's and AdamW's baselines), installed before, since it needs no network. Steps:
#   1. the device JAX sees (jax.devices()) and XLA_FLAGS (hypercore adds --xla_gpu_deterministic_ops=true);
#   2. the engine grid (benchmarks/engine_grid.py) at GPU sizes, its CNN cells (--models cnn) apart
#      with their own time budget, asserting that every reversible cell that ran reversed exactly and
#      gave finite hypergradients, the paper-net engine benchmark (benchmarks/engine.py) at T = 1000,
#      exact reversible AdamW on the same net (benchmarks/engine_adam.py, T = 1000: exact reversal and
#      finite hypergradients asserted), and the integer against the float division by gamma's numerator
#      (benchmarks/division.py, T = 100: 64-bit integer division is a software routine on a GPU);
#   3. a short tuning job (template lr-schedule-mnist, a few meta-iterations), asserting every
#      meta-iteration reversed exactly, and that the hypergradient is bit-identical when recomputed
#      (deterministic ops);
#   4. a summary table with the device name.
# Exits non-zero if any assertion fails.
#
#   benchmarks/gpu_check.sh            # GPU size: under 10 minutes on one GPU
#   benchmarks/gpu_check.sh --quick    # small size (also GPU_CHECK_QUICK=1), for a CPU: a few minutes
#
# Output: benchmarks/out/gpu_check/{engine.json,engine.png,engine_cnn.json,engine_cnn.png,engine_paper_net.json,
#   engine_adam.json,division.json,tune.json}
# (or $OUT/gpu_check if $OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
QUICK="${GPU_CHECK_QUICK:-0}"
if [ "${1:-}" = "--quick" ]; then QUICK=1; fi
OUT_DIR="${OUT:-benchmarks/out}/gpu_check"
mkdir -p "$OUT_DIR"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true"
# Do not let JAX grab 75% of the GPU up front: the engine benchmark compiles many functions.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"

if [ "$QUICK" = "1" ]; then
  ENGINE_ARGS=(--sizes 1e4 --steps 100 300 --repeats 1 --mem-limit-gb 2 --max-cell-s 20 --time-budget-s 150)
  CNN_ARGS=(--models cnn --steps 100 --repeats 1 --mem-limit-gb 2 --max-cell-s 20 --time-budget-s 120)
  PAPER_ARGS=(--steps 100 --repeats 1)
  ADAM_ARGS=(--steps 100 --repeats 1)
  TUNE_ITERS=3
  TUNE_TRAIN=600
else
  ENGINE_ARGS=(--sizes 1e5 1e6 --steps 1000 10000 --batch 200 --repeats 3 --mem-limit-gb 60
               --max-cell-s 30 --time-budget-s 200)
  CNN_ARGS=(--models cnn --steps 1000 10000 --batch 200 --repeats 3 --mem-limit-gb 60
            --max-cell-s 30 --time-budget-s 120)
  PAPER_ARGS=(--steps 1000 --repeats 5)
  ADAM_ARGS=(--steps 1000 --repeats 3)
  TUNE_ITERS=10
  TUNE_TRAIN=3000
fi

echo "== gpu_check: python $PY, quick=$QUICK, started $(date -u +%H:%M:%S) UTC"
"$PY" - <<'EOF'
import importlib.util
import os
import sys
missing = [m for m in ("equinox", "optax") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: {', '.join(missing)} not installed: .venv/bin/pip install -e '.[dev,bench]' first")
import hypercore  # noqa: F401  (sets the deterministic-ops flag, turns on x64)
import jax
print("devices:", jax.devices(), "| backend:", jax.default_backend(), "| jax", jax.__version__)
print("XLA_FLAGS:", os.environ.get("XLA_FLAGS"))
EOF

echo "== engine grid: ${ENGINE_ARGS[*]}"
"$PY" benchmarks/engine_grid.py "${ENGINE_ARGS[@]}" --out "$OUT_DIR/engine.json"

echo "== engine grid, CNN cells: ${CNN_ARGS[*]}"
"$PY" benchmarks/engine_grid.py "${CNN_ARGS[@]}" --out "$OUT_DIR/engine_cnn.json"

echo "== engine on the paper's MNIST net: ${PAPER_ARGS[*]}"
"$PY" benchmarks/engine.py "${PAPER_ARGS[@]}" --out "$OUT_DIR/engine_paper_net.json"

echo "== exact reversible AdamW on the paper's MNIST net: ${ADAM_ARGS[*]}"
"$PY" benchmarks/engine_adam.py "${ADAM_ARGS[@]}" --out "$OUT_DIR/engine_adam.json"

echo "== the division by gamma's numerator: integer against float (T = 100)"
"$PY" benchmarks/division.py --steps 100 --repeats 5 --out "$OUT_DIR/division.json"

echo "== short tuning job: lr-schedule-mnist, $TUNE_ITERS meta-iterations, $TUNE_TRAIN training images"
"$PY" - "$OUT_DIR" "$TUNE_ITERS" "$TUNE_TRAIN" <<'EOF'
import json
import sys
import time

import numpy as np

import hypercore
import jax
from jobs import templates

out_dir, iters, n_train = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device = jax.devices()[0]
device_name = f"{device.device_kind} ({jax.default_backend()})"

engine = json.load(open(f"{out_dir}/engine.json"))
engine_cnn = json.load(open(f"{out_dir}/engine_cnn.json"))
ran = [r for r in engine["rows"] if isinstance(r.get("time_reversible"), float)]
ran_cnn = [r for r in engine_cnn["rows"] if isinstance(r.get("time_reversible"), float)]
assert ran, "no reversible engine cell ran"
assert ran_cnn, "no reversible CNN engine cell ran"
for r in ran + ran_cnn:
    what = f"{r.get('model', 'mlp')}, {r['n_params']} params, T={r['T']}"
    assert r["reversal_exact"] is True, f"reversal not exact: {what}"
    assert r["grad_finite"] is True, f"non-finite hypergradient: {what}"
paper = json.load(open(f"{out_dir}/engine_paper_net.json"))
assert all(r["reversal_exact"] is True for r in paper), "paper-net reversal not exact"
adam = json.load(open(f"{out_dir}/engine_adam.json"))
assert adam, "no reversible AdamW cell ran"
for r in adam:
    assert r["reversal_exact"] is True, f"AdamW reversal not exact at T={r['T']}"
    assert r["hypergradients_finite"] is True, f"non-finite AdamW hypergradient at T={r['T']}"

spec = templates.get("lr-schedule-mnist")
spec["dataset"]["train"] = n_train
spec["meta"]["iterations"] = iters
problem = hypercore.problem_from_spec(spec)
records = []
started = time.perf_counter()
result = hypercore.tune(problem, callback=records.append)
tune_s = time.perf_counter() - started
assert len(records) == iters, f"ran {len(records)} of {iters} meta-iterations"
assert all(r.reversal_exact is True for r in records), "a meta-iteration did not reverse exactly"
assert all(np.isfinite(r.objective) for r in records), "non-finite objective"

# Deterministic ops: the same hypergradient twice, bit for bit.
_, _, g1, rep1 = hypercore.hypergradient(problem, result.checkpoint.learned, meta_iter=iters)
_, _, g2, rep2 = hypercore.hypergradient(problem, result.checkpoint.learned, meta_iter=iters)
identical = all(np.array_equal(g1[k], g2[k]) for k in g1)
assert rep1.exact and rep2.exact, "hypergradient recomputation did not reverse exactly"
assert identical, "hypergradient not bit-identical when recomputed (non-deterministic ops?)"

json.dump(
    {"device": device_name, "tune_s": tune_s, "records": [r.step() for r in records], "repeat_identical": identical},
    open(f"{out_dir}/tune.json", "w"),
    indent=1,
)

print()
print(f"device: {device_name}  ({device})")
print()
print("| meta-iteration | objective (train loss) | valid loss | reversal exact | seconds |")
print("|---|---|---|---|---|")
for r in records:
    print(f"| {r.meta_iter} | {r.objective:.4f} | {r.valid_loss:.4f} | {r.reversal_exact} | {r.elapsed_s:.2f} |")
print()
print("| check | result |")
print("|---|---|")
print(f"| device | {device_name} |")
print(f"| engine cells with exact reversal | {len(ran)} of {len(ran)} run ({len(engine['rows'])} cells) |")
print(f"| CNN engine cells with exact reversal | {len(ran_cnn)} of {len(ran_cnn)} run ({len(engine_cnn['rows'])} cells) |")
for r in ran_cnn:
    plain = r.get("time_plain")
    ratio = f"{r['time_reversible'] / plain:.2f}x" if isinstance(plain, float) else "-"
    stored = f"{r['mem_stored'] / r['mem_reversible']:.0f}x" if "mem_stored" in r else "-"
    print(f"| CNN T={r['T']}: memory stored/reversible, (fwd+bwd)/plain | {stored}, {ratio} |")
for r in paper:
    print(
        f"| paper net T={r['T']}: memory stored/reversible, (fwd+bwd)/plain | "
        f"{r['mem_stored'] / r['mem_reversible']:.0f}x, {r['time_ratio']:.2f}x |"
    )
for r in adam:
    ratio = f"{r['time_ratio']:.2f}x" if "time_ratio" in r else "-"
    print(
        f"| AdamW, paper net T={r['T']}: memory stored/reversible, (fwd+bwd)/plain optax.adamw | "
        f"{r['mem_stored'] / r['mem_reversible']:.0f}x, {ratio} |"
    )
print(f"| tuning meta-iterations exact | {len(records)} of {len(records)} ({tune_s:.1f} s in all) |")
print(f"| hypergradient bit-identical on recompute | {identical} |")
print("GPU CHECK PASSED")
EOF
echo "== gpu_check done $(date -u +%H:%M:%S) UTC"
