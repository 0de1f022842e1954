"""The fused CPU kernels' loops alone (issue 21, item 1): nanoseconds per weight, one thread.

Times each Numba loop of `hypercore._fused_kernels` (reversible SGD) and `_fused_kernels_adam` (AdamW)
on one array of valid random state, by default the size of the 1e5 cell's first layer (100,352
weights; ``--weights 784000``: the 1e6 cell's, whose state outgrows a 32 MiB last-level cache),
called directly from Python: no XLA, no chunks, no threads. The state is restored from a copy before
each call and only the call is timed; the fastest of --rounds rounds of --calls calls is kept. With
--base, the same loops of an earlier commit (``git archive``, as `engine_ab.py` does) are timed in
turn in the same process, and their outputs compared bit for bit (the float64 sums to rounding).

The XLA-level figures (`engine_ab.py`, `engine_grid.py`) are what users get; this is the quick loop for
kernel work, and it names the CPU's vector features, on which the loops' speed depends most (a 64-bit
integer converts to or from a float in vectors only with AVX-512DQ). Each row also gives the bytes the
head's loop moves per weight (`BYTES`: every array it reads, and every array it writes, counted once
each, at 8 bytes a 64-bit element and 4 a float32 one) and the rate that makes, in GB/s: a loop whose
rate falls as the arrays outgrow the cache is bound by memory, not by its arithmetic.

    .venv/bin/python benchmarks/kernels.py                                  # ~1 min (compiles first)
    .venv/bin/python benchmarks/kernels.py --base 322550d --out docs/figures/kernels_ab.json
    .venv/bin/python benchmarks/kernels.py --weights 784000 --out docs/figures/kernels_1e6.json
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from llvmlite import binding as llvm

import hypercore  # noqa: F401  (configures JAX's x64 before the kernels' modules import it)

N = 100_352  # the 1e5 cell's 784 x 128 layer
ROOT = Path(__file__).resolve().parent.parent

# Bytes per weight each of the head's loops reads, and writes, at a step with no renormalisation and
# no spill (most steps): int64 state, float64 adjoints and float32 model arrays (the gradient ``g``,
# the vector-Jacobian product ``hw``, the cotangent ``ct``, the weights' copy ``wf``). The stack's row,
# read only at an unspill, is not counted.
I64, F32 = 8, 4
BYTES = {
    "sgd forward": 6 * I64 + 2 * F32,  # w v head (r+w), g, wf
    "sgd forward, identity": 4 * I64 + 2 * F32,  # w v (r+w), g, wf
    "sgd undo_weights": 3 * I64 + F32,  # w (r+w), v, wf
    "sgd undo_state": 4 * I64 + F32,  # v head (r+w), g
    "sgd reverse step": 10 * I64 + 4 * F32,  # v w dw dv head (r+w), g hw ct wf
    "sgd reverse, identity": 8 * I64 + 4 * F32,  # v w dw dv (r+w), g hw ct wf
    "adamw forward": 8 * I64 + 2 * F32,  # w m vh vl (r+w), g wf
    "adamw undo_weights": 5 * I64,  # w (r+w), m vh vl
    "adamw reverse step": 14 * I64 + 4 * F32,  # m vh vl w dw dm dv (r+w), g hw ct wf
}
BYTES["sgd forward, halving"] = BYTES["sgd forward"]  # the same arrays, the division a shift
BYTES["sgd reverse, halving"] = BYTES["sgd reverse step"]


def state(seed: int = 0, n: int = N) -> dict:
    """Valid state for both optimizers' loops (the ranges `tests/hypercore/test_fused*.py` use)."""
    rng = np.random.default_rng(seed)
    ints = rng.integers
    n_sgd = 58982  # gamma 0.9 on 2**16
    n1, n2, nf = (np.int64(round(b * 2**24)) for b in (0.9, 0.999, 1 - 1e-4))  # AdamW's defaults
    return {
        "w": ints(-(2**50), 2**50, n).astype(np.int64),
        "v": ints(-(2**50), 2**50, n).astype(np.int64),
        "m": (rng.standard_normal(n) * 2**30).astype(np.int64),
        "vh": ints(0, 2**20, n).astype(np.int64),
        "vl": ints(0, 2**62, n).astype(np.int64),
        "head": ints(2**30, 2**40, n).astype(np.uint64),
        "row": ints(0, 2**63, n).astype(np.uint64),
        "g": (rng.standard_normal(n) * 1e-2).astype(np.float32),
        "dw": rng.standard_normal(n),
        "dm": rng.standard_normal(n),
        "dv": rng.standard_normal(n),
        "ct": np.zeros(n, np.float32),
        "hw": (rng.standard_normal(n) * 1e-3).astype(np.float32),  # AdamW's deferred product (2026-12-07)
        "w_model": np.zeros(n, np.float32),
        "sums": np.zeros(6),
        "n_sgd": np.int64(n_sgd),
        "om_sgd": (2**16 - n_sgd) / 2**16,
        "n1": n1,
        "n2": n2,
        "nf": nf,
    }


def loops(sgd, adam, s: dict) -> dict:
    """Each loop as a call on the state ``s`` (its arrays updated in place), by name."""
    w, v, m, vh, vl, head, row, g = (s[k] for k in ("w", "v", "m", "vh", "vl", "head", "row", "g"))
    dw, dm, dv, ct, sums = (s[k] for k in ("dw", "dm", "dv", "ct", "sums"))
    n, om, n1, n2, nf = (s[k] for k in ("n_sgd", "om_sgd", "n1", "n2", "nf"))
    off, shift = False, np.uint64(0)
    hw0 = np.zeros(w.size, np.float32)
    lr, c1, c2, eps = 1e-3, 0.5, 0.3, 1e-8

    def has(loop, name):
        return name in inspect.signature(loop.py_func).parameters

    def copy(loop):  # the model-dtype copy of the weights, where the loop writes one (since 2026-12-07)
        return (s["w_model"],) if has(loop, "wf") else ()

    def first(loop):  # the gradient's fingerprint, where the loop takes it (since 2026-12-08)
        return (np.uint64(1),) if has(loop, "first") else ()

    # AdamW's loops are called by their parameters' names, which have changed over the commits
    # --base may name; these are the values of every name any of them had. ``rw = 2**24``, ``r1 =
    # r2 = 2**24``: a step with no renormalisation (most steps, since the scaled state).
    adamw = {
        **{k: s[k] for k in ("w", "m", "vh", "vl", "head", "g", "row", "dw", "hw", "dm", "dv", "ct", "sums")},
        **{"n1": n1, "n2": n2, "nf": nf, "lr": lr, "c1": c1, "c2": c2, "eps": eps, "decay": True},
        **{"first": np.uint64(1), "shift": shift, "do": off},
        **{"r1": np.int64(2**24), "r2": np.int64(2**24), "rw": np.int64(2**24)},
        **{"s1": 0.9, "s2": 0.97, "sw": 0.999},
        # the step before's (lr, c1, c2, s1, s2, sw, copy's scale, rw) for the reverse loop, which undoes
        # its weights too (since 2026-12-08): this step's values, so the undo of the weights is the base's
        "wf": s["w_model"],
        "prev": np.array([lr, c1, c2, 0.9, 0.97, 0.999, 0.999, 2.0**24]),
    }

    def by_name(loop):
        return lambda: loop(*[adamw[p] for p in inspect.signature(loop.py_func).parameters])

    def sgd_reverse_step(n=n, om=om):
        """SGD's reverse step's loops likewise: the undo with the adjoint, then the undo of the weights,
        which the first does itself where it takes ``alpha_p`` (a zero ``hw``, so that ``dw`` comes out
        as the base's, which leaves the subtraction to XLA). Where it takes the rule's own values
        (``s0``: the scaled velocity, since 2026-12-08), those of the unscaled rule, so that the
        adjoint is the base's."""
        loop = sgd._undo_adjoint_loop
        rule = (om, np.float64(n) / 2**16, 1.0, 1.0) if has(loop, "s0") else ()
        if has(loop, "alpha_p"):
            args = (
                v,
                head,
                g,
                row,
                dw,
                dv,
                ct,
                n,
                om,
                0.1,
                shift,
                off,
                np.uint64(1),
                hw0,
                w,
                s["w_model"],
                0.1,
            )
            loop(*args, *rule)
        else:
            loop(v, head, g, row, dw, dv, ct, n, om, 0.1, shift, off, *first(loop))
            sgd._undo_weights_loop(w, v, 0.1, *copy(sgd._undo_weights_loop))

    identity = np.int64(2**16)  # a step that multiplies the velocity by 1: the scaled velocity's most steps
    halving = np.int64(2**15)  # its renormalisation (one step in 6.6 at gamma 0.9)

    def sgd_forward(n=n):
        return sgd._forward_loop(
            w, v, head, g, n, om, 0.1, *copy(sgd._forward_loop), *first(sgd._forward_loop)
        )

    def reverse_step():
        """A reverse step's loops: the undo of the state with the adjoint, then the undo of the
        weights, which the first does itself where it takes ``prev``."""
        by_name(adam._undo_adjoint_loop)()
        if not has(adam._undo_adjoint_loop, "prev"):
            by_name(adam._undo_weights_loop)()

    return {
        "sgd forward": sgd_forward,
        "sgd forward, identity": lambda: sgd_forward(identity),
        "sgd forward, halving": lambda: sgd_forward(halving),
        "sgd undo_weights": lambda: sgd._undo_weights_loop(w, v, 0.1, *copy(sgd._undo_weights_loop)),
        "sgd undo_state": lambda: sgd._undo_state_loop(v, head, g, row, n, om, shift, off),
        "sgd reverse step": sgd_reverse_step,
        "sgd reverse, identity": lambda: sgd_reverse_step(identity),
        "sgd reverse, halving": lambda: sgd_reverse_step(halving),
        "adamw forward": by_name(adam._forward_loop),
        "adamw undo_weights": by_name(adam._undo_weights_loop),
        "adamw reverse step": reverse_step,
    }


def modules(package: str):
    return (
        importlib.import_module(f"{package}._fused_kernels"),
        importlib.import_module(f"{package}._fused_kernels_adam"),
    )


def time_loop(call, s: dict, original: dict, calls: int) -> float:
    """Seconds of the fastest call among ``calls``, each on state restored from ``original``."""
    best = float("inf")
    for _ in range(calls):
        for k, v in original.items():
            if isinstance(v, np.ndarray):
                np.copyto(s[k], v)
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="an earlier commit whose loops to time beside these")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--weights", type=int, default=N, help=f"elements per array (default {N:,})")
    parser.add_argument("--out", default="benchmarks/out/kernels.json")
    args = parser.parse_args()

    engines = {"head": modules("hypercore")}
    if args.base:
        from engine_ab import import_base

        import_base(args.base, Path(tempfile.mkdtemp()))
        engines = {"base": modules("hypercore_base"), **engines}
    n = args.weights
    original = state(n=n)
    states = {label: _copy(original) for label in engines}
    calls = {label: loops(*mods, states[label]) for label, mods in engines.items()}
    names = list(calls["head"])
    best = {label: dict.fromkeys(names, float("inf")) for label in engines}
    for label in engines:  # compile (or load from Numba's cache) before timing
        for name in names:
            time_loop(calls[label][name], states[label], original, 1)
    for _ in range(args.rounds):
        for name in names:
            for label in engines:
                best[label][name] = min(
                    best[label][name], time_loop(calls[label][name], states[label], original, args.calls)
                )

    features = llvm.get_host_cpu_features()
    head_rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "hypercore"], cwd=ROOT, capture_output=True, text=True
    )
    out = {
        "base": args.base,
        "head": head_rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else ""),
        "cpu": llvm.get_host_cpu_name(),
        "processor": platform.processor() or platform.machine(),
        "avx2": bool(features.get("avx2", False)),
        "avx512dq": bool(features.get("avx512dq", False)),
        "native_conversions": bool(engines["head"][0].NATIVE_CONVERSIONS),
        "weights": n,
        "rows": [],
    }
    print(f"CPU {out['cpu']} (AVX2 {out['avx2']}, AVX-512DQ {out['avx512dq']}), {n:,} weights, one thread")
    for name in names:
        ns = {label: 1e9 * best[label][name] / n for label in engines}
        row = {"loop": name, **{f"ns_per_weight_{label}": t for label, t in ns.items()}}
        row["bytes_per_weight"] = BYTES[name]
        row["gb_per_s_head"] = BYTES[name] / ns["head"]
        if args.base:
            row["speedup"] = best["base"][name] / best["head"][name]
            row["same_integers"], row["max_rel_float_difference"] = compare(engines, name, original)
        out["rows"].append(row)
        text = "  ".join(f"{label} {t:6.2f}" for label, t in ns.items())
        extra = (
            f"  speedup {row['speedup']:.2f}, integers identical {row['same_integers']}" if args.base else ""
        )
        rate = f"  ({BYTES[name]} B/weight, {row['gb_per_s_head']:.1f} GB/s)"
        print(f"{name:20s} {text} ns/weight{rate}{extra}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


def _copy(original: dict) -> dict:
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in original.items()}


def compare(engines: dict, name: str, original: dict) -> tuple[bool, float]:
    """One call of loop ``name`` of the base and of the head, each on a fresh copy of the state: are
    the integer arrays the same, and how far apart (relative to their largest) are the floats?"""
    a, b = _copy(original), _copy(original)
    loops(*engines["base"], a)[name]()
    loops(*engines["head"], b)[name]()
    same, rel = True, 0.0
    for k, v in original.items():
        if not isinstance(v, np.ndarray) or (k == "w_model" and not (a[k].any() and b[k].any())):
            continue  # (the weights' copy where one side's loops do not make it)
        if np.issubdtype(v.dtype, np.integer):
            same &= bool(np.array_equal(a[k], b[k]))
        else:
            scale = max(float(np.max(np.abs(a[k]))), 1e-300)
            rel = max(rel, float(np.max(np.abs(a[k] - b[k]))) / scale)
    return same, rel


if __name__ == "__main__":
    main()
