"""Where the reversible SGD engine's time goes: an XLA profile of one hypergradient, part by part.

The meta-gradient ``d valid(w_T) / d (alphas, gammas)`` through `hypercore.reversible_sgd` (the
setting of ``benchmarks/engine.py``: SGD with momentum, shared (T,) schedules, alpha 0.3, gamma 0.9,
MNIST-shaped Gaussian-noise inputs) is compiled ahead of time, run under ``jax.profiler`` and the time
of every XLA CPU kernel (a "thunk": one fusion, dot, copy, ...) is summed and attributed to a part of
the engine. Plain training of the same T steps (``benchmarks/engine.py``'s ``plain_training``: a
``lax.scan`` of ``jax.grad`` and the momentum update in float32) is profiled the same way, for scale.
Cells: the paper's net (784-50-50-50-10 tanh, batch 200) and, by default, the 1e5-parameter cell of
``benchmarks/engine_grid.py`` (784-128-10, batch 50).

**How a kernel is attributed.** XLA on CPU fuses many HLO operations into one kernel, so each
profiled kernel name (the trace event's ``hlo_op``) is looked up in the compiled module's text
(``jit(...).lower(...).compile().as_text()``) and every HLO operation it contains (for a fusion: the
operations of its fused computation) is read: its opcode, its element types, and the Python function
that emitted it (the module's ``StackFrames`` table, e.g. ``to_fixed`` or ``_fingerprint``). The
kernel goes to the first part whose rule matches any of its operations:

0. a fused CPU kernel (a ``custom-call`` to a ``revtune_*`` target, `hypercore._fused`, which does the
   integer work below in one pass per weight array on a CPU): ``fused kernels: step, undo with
   adjoint`` (the forward step, and the reverse step's undo of the velocity with the adjoint, each
   with the gradient's fingerprint since da4981a), ``fused kernels: undo of the weights``, or
   ``gradient fingerprint`` for the hash kernel of its own. (Before this rule, which came after the
   profiles in BENCHMARKS.md's "The engine on an AVX-512 CPU, Zen 4", they fell under rules 9 to 11.)
   A kernel that runs in chunks on XLA's threads is timed by its call, which takes chunks itself until
   none is left: roughly its own time, not its threads' sum;
1. ``matrix products``: a ``dot``/``convolution``, or an XNNPACK/YNNPACK ``ynn_fusion`` that contains
   one (the layers' products of the gradient; in reverse, of its recomputation and of its VJP);
2. ``minibatch (RNG, gather)``: a ``gather``, or an operation of the loss's ``jax.random`` calls
   (``op_name`` mentions ``randint``, ``threefry``, ...; u32 ``xor``/shifts): the same work as in
   plain training, done again in reverse; it comes before rule 4 because ``randint`` divides u64;
3. ``gradient fingerprint``: an operation emitted by ``_fingerprint``, or a ``bitcast-convert`` of a
   float to an unsigned integer (forward: the hash; reverse: the recomputed gradient's hash);
4. ``gamma multiply/divide``: an integer (s64/u64) ``divide`` or ``remainder``, a u64 ``multiply``
   (the head times gamma's numerator), or an operation emitted by ``mul_gamma``, ``div_gamma``,
   ``divmod_unsigned``, ``divmod_signed``;
5. ``information buffer``: a ``dynamic-slice``/``dynamic-update-slice`` of u64, or an operation
   emitted by ``maybe_spill``, ``unspill``, ``_move_slot``, ``_spill_one``, ``_unspill_one``;
6. ``fixed-point conversions``: a ``convert`` between a float and s64, or an operation emitted by
   ``to_fixed``/``from_fixed``/``in_range`` (with the range and finiteness checks they feed);
7. ``flags and reductions``: ``reduce``/``reduce-window`` over ``pred`` (``_all``, ``jnp.any``: the
   divergence and spill flags);
8. ``copies/transposes``: a kernel that is a ``copy`` or ``transpose`` (alone or with only bitcasts,
   broadcasts, slices, tuples around it);
9. ``gradient, elementwise``: float32 work of the loss and its derivatives (``tanh``, ``exp``,
   ``log``, the layers' adds, the bias reductions);
10. ``hypergradient arithmetic (f64)``: float64 adds, multiplies and sums (the backward pass's
    adjoint: ``dv += alpha dw``, ``dw -= H ct``, the per-step ``dalpha``, ``dgamma`` sums);
11. ``rest``: everything else (schedule reads, loop counters, the final checks).

The order puts the expensive 64-bit integer work first: a fusion that both divides by gamma's
numerator and converts the gradient to fixed point counts as division. The source-function tests
only help in the forward pass: the backward pass is traced by the custom VJP, and its operations'
stack frames stop at ``_train``, so there the opcodes decide. Each kernel also gets a phase
from where it sits: inside the forward ``while`` loop, inside the reverse one (the custom VJP's
backward pass), or outside both (setup, the validation loss and its gradient, the final checks).

Times are kernel times divided by the number of training steps (ms per step). A kernel's time is its
number of executions times the median execution (so that the few executions another process
preempted on this shared 2-core machine do not count; the plain sum is printed too). XLA runs
kernels on two worker threads at once, so kernel time can exceed wall time; wall time (the median of
``--repeats`` unprofiled runs, alternating the two functions) also holds what is in no kernel: the
executor's dispatch of each kernel (the table gives kernel executions per step), loop control, idle
waits.

    .venv/bin/python benchmarks/profile_sgd.py                      # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/profile_sgd.py --cells paper --steps 100 --top 25
    .venv/bin/python benchmarks/profile_sgd.py --cells 784-128-10:50 784-1000-200-10:50

Prints a table per cell and writes ``docs/figures/profile_sgd.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import make_problem, plain_training  # noqa: E402
from profile_adam import trace_events  # noqa: E402

import hypercore  # noqa: E402
from hypercore import _fixed  # noqa: E402

PARTS = (
    "fused kernels: step, undo with adjoint",
    "fused kernels: undo of the weights",
    "matrix products",
    "minibatch (RNG, gather)",
    "gradient fingerprint",
    "gamma multiply/divide",
    "information buffer",
    "fixed-point conversions",
    "flags and reductions",
    "copies/transposes",
    "gradient, elementwise",
    "hypergradient arithmetic (f64)",
    "rest",
)
PHASES = ("forward", "reverse", "outside loops")
CONTAINERS = {"while", "call", "conditional"}  # their trace spans contain the kernels of their bodies
ALPHA, GAMMA = 0.3, 0.9
CELLS = {
    "paper": ([784, 50, 50, 50, 10], 200),
    "1e5": ([784, 128, 10], 50),
    "1e6": ([784, 1000, 200, 10], 50),
}

GAMMA_FNS = {"mul_gamma", "div_gamma", "divmod_unsigned", "divmod_signed"}
BUFFER_FNS = {"maybe_spill", "unspill", "_move_slot", "_spill_one", "_unspill_one", "slot_position"}
CONVERSION_FNS = {"to_fixed", "from_fixed", "in_range"}
INTS = ("s64", "u64")
FLOATS = ("f16", "bf16", "f32", "f64")
RNG_MARKS = ("randint", "random_bits", "threefry", "random_split", "random_fold_in")
F64_ARITHMETIC = {"add", "subtract", "multiply", "reduce", "negate"}
PLUMBING = {
    "bitcast",
    "broadcast",
    "slice",
    "tuple",
    "get-tuple-element",
    "parameter",
    "constant",
    "reshape",
}

# ----------------------------------------------------------------------------------------------------
# The compiled module's text: computations, instructions, the Python function behind each operation.

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_COMP = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\(.*\{\s*$")
_TYPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|token)\[")


class Instr:
    """One HLO instruction: opcode, element types (result and operands, once `Module` resolves
    them), the computations it calls, its ``op_name`` and Python stack frame, its fusion kind."""

    __slots__ = ("name", "opcode", "types", "operands", "called", "op_name", "frame", "kind", "target")

    def __init__(self, name: str, rest: str):
        self.name = name
        # "TYPE opcode(operands), attrs": the type may be a tuple "(s64[], f32[2]{0}, ...)".
        depth, i = 0, 0
        while i < len(rest):
            c = rest[i]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == " " and depth == 0:
                break
            i += 1
        result_type, tail = rest[:i], rest[i + 1 :]
        m = re.match(r"([\w\-]+)\((.*)", tail)
        self.opcode = m.group(1) if m else tail.split("(")[0]
        operands = m.group(2) if m else ""
        self.types = set(_TYPE.findall(result_type))  # the operands' are added by `Module`
        self.operands = re.findall(r"%([\w.\-]+)", operands.split(")")[0])
        self.called = []
        for attr in ("calls", "body", "condition", "to_apply", "branch_computations"):
            for mm in re.finditer(attr + r"=\{?(%[\w.\-]+(?:,\s*%[\w.\-]+)*)\}?", tail):
                self.called += [x.strip().lstrip("%") for x in mm.group(1).split(",")]
        mm = re.search(r'op_name="([^"]*)"', tail)
        self.op_name = mm.group(1) if mm else ""
        mm = re.search(r"stack_frame_id=(\d+)", tail)
        self.frame = int(mm.group(1)) if mm else 0
        mm = re.search(r'"kind":"(\w+)"', tail)
        self.kind = mm.group(1) if mm else ""
        mm = re.search(r'custom_call_target="([^"]*)"', tail)
        self.target = mm.group(1) if mm else ""


class Module:
    """The text of a compiled HLO module, parsed just enough to attribute kernels."""

    def __init__(self, text: str):
        self.comps: dict[str, list[Instr]] = {}
        self.instr: dict[str, Instr] = {}
        self.home: dict[str, str] = {}  # instruction -> its computation
        self.entry = ""
        files, functions, locations, frames = {}, {}, {}, {}
        section = None
        comp = None
        for line in text.splitlines():
            if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
                section = line
                continue
            if section and line and line[0].isdigit():
                key, _, val = line.partition(" ")
                if section == "FileNames":
                    files[int(key)] = val.strip('"')
                elif section == "FunctionNames":
                    functions[int(key)] = val.strip('"')
                elif section == "FileLocations":
                    f = re.search(r"file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", val)
                    locations[int(key)] = (int(f.group(1)), int(f.group(2)), int(f.group(3)))
                else:
                    f = re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", val)
                    frames[int(key)] = (int(f.group(1)), int(f.group(2)))
                continue
            section = None
            m = _COMP.match(line)
            if m:
                comp = m.group(2)
                self.comps[comp] = []
                if m.group(1):
                    self.entry = comp
                continue
            m = _INSTR.match(line)
            if m and comp is not None:
                ins = Instr(m.group(1), m.group(2))
                self.comps[comp].append(ins)
                self.instr[ins.name] = ins
                self.home[ins.name] = comp
        result_types = {name: set(ins.types) for name, ins in self.instr.items()}
        for ins in self.instr.values():
            for op in ins.operands:
                ins.types |= result_types.get(op, set())
        self.caller: dict[str, str] = {}  # computation -> an instruction that calls it
        for instrs in self.comps.values():
            for ins in instrs:
                for c in ins.called:
                    self.caller.setdefault(c, ins.name)
        self._files, self._functions, self._locations, self._frames = files, functions, locations, frames

    def functions_of(self, frame: int) -> list[tuple[str, str]]:
        """``(file, function)`` from the innermost frame outwards. In XLA's table a frame's parent is
        ``parent_frame_id - 1`` (0: none)."""
        out, seen = [], set()
        while frame in self._frames and frame not in seen:
            seen.add(frame)
            loc, parent = self._frames[frame]
            file_id, function_id, _ = self._locations[loc]
            out.append((os.path.basename(self._files[file_id]), self._functions[function_id]))
            frame = parent - 1
        return out

    def ops_of(self, name: str) -> list[Instr]:
        """The instruction and, recursively, the instructions of the computations it calls; not
        through loops (a ``while`` kernel is a container, attributed through its body's kernels)."""
        ins = self.instr[name]
        out, todo, seen = [ins], [] if ins.opcode in CONTAINERS else list(ins.called), set()
        while todo:
            c = todo.pop()
            if c in seen or c not in self.comps:
                continue
            seen.add(c)
            for sub in self.comps[c]:
                out.append(sub)
                todo += sub.called
        return out

    def top_level(self, name: str) -> Instr | None:
        """The entry computation's instruction that (through calls, loops, fusions) runs ``name``."""
        comp = self.home.get(name)
        ins = self.instr.get(name)
        while comp is not None and comp != self.entry:
            caller = self.caller.get(comp)
            if caller is None:
                return None
            ins, comp = self.instr[caller], self.home[caller]
        return ins


def phase_of(module: Module, name: str, loops: dict[str, str]) -> str:
    top = module.top_level(name)
    if top is None or top.name not in loops:
        return "outside loops"
    return loops[top.name]


def training_loops(module: Module) -> dict[str, str]:
    """The entry's ``while`` loops by phase: a loop whose operations were traced under
    ``transpose(...)`` (their ``op_name``, or the loop's own) is the custom VJP's backward pass; any
    other is the forward pass (plain training has only that one)."""
    loops = {}
    for ins in module.comps[module.entry]:
        if ins.opcode == "while":
            names = [ins.op_name] + [x.op_name for c in ins.called for x in module.comps.get(c, [])]
            reverse = any(n.split("/while")[0].count("transpose(") for n in names if "/while" in n)
            loops[ins.name] = "reverse" if reverse else "forward"
    return loops


def classify(module: Module, name: str) -> str:
    """The part a kernel's time goes to: the first rule (see the module docstring) that any of its
    operations matches."""
    ops = module.ops_of(name)
    opcodes = {o.opcode for o in ops}
    fns = set()
    for o in ops:
        for file, fn in module.functions_of(o.frame)[:1]:
            fns.add(fn.split(".<locals>")[0] if fn.startswith("_make_engine") else fn.split(".")[-1])
            fns.add(file + ":" + fn)

    def any_op(pred) -> bool:
        return any(pred(o) for o in ops)

    targets = {o.target for o in ops if o.target.startswith("revtune_")}
    if targets:  # a fused CPU kernel (`hypercore._fused`), by what it does
        if any("fingerprint" in t for t in targets):
            return "gradient fingerprint"
        if any("undo_weights" in t for t in targets):
            return "fused kernels: undo of the weights"
        return "fused kernels: step, undo with adjoint"
    if opcodes & {"dot", "convolution"}:  # a dot, or a (ynn_)fusion around one
        return "matrix products"
    if (
        opcodes & {"gather", "rng-bit-generator"}
        or any_op(lambda o: o.opcode not in PLUMBING and any(k in o.op_name for k in RNG_MARKS))
        or any_op(lambda o: o.opcode in ("xor", "shift-left", "shift-right-logical") and o.types == {"u32"})
    ):
        return "minibatch (RNG, gather)"
    if "_fingerprint" in fns or any_op(
        lambda o: o.opcode == "bitcast-convert" and o.types & set(FLOATS) and o.types & {"u16", "u32", "u64"}
    ):
        return "gradient fingerprint"
    if (
        any_op(lambda o: o.opcode in ("divide", "remainder") and o.types & set(INTS))
        or any_op(lambda o: o.opcode == "multiply" and "u64" in o.types)
        or fns & GAMMA_FNS
    ):
        return "gamma multiply/divide"
    if (
        any_op(lambda o: o.opcode in ("dynamic-slice", "dynamic-update-slice") and "u64" in o.types)
        or fns & BUFFER_FNS
    ):
        return "information buffer"
    if (
        any_op(lambda o: o.opcode == "convert" and "s64" in o.types and o.types & set(FLOATS))
        or fns & CONVERSION_FNS
    ):
        return "fixed-point conversions"
    if any_op(lambda o: o.opcode in ("reduce", "reduce-window") and "pred" in o.types):
        return "flags and reductions"
    if opcodes & {"copy", "transpose"} and opcodes <= PLUMBING | {"copy", "transpose", "fusion"}:
        return "copies/transposes"
    if any_op(
        lambda o: o.types & {"f32", "f16", "bf16"} and o.opcode not in PLUMBING | {"fusion", "convert"}
    ):
        return "gradient, elementwise"
    if any_op(lambda o: "f64" in o.types and o.opcode in F64_ARITHMETIC):
        return "hypergradient arithmetic (f64)"
    return "rest"


# ----------------------------------------------------------------------------------------------------
# Profiling.


def kernel_times(compiled, args, runs: int) -> dict[str, list[float]]:
    """Microseconds of every execution of every kernel (HLO instruction name) over ``runs`` calls."""
    times: dict[str, list[float]] = collections.defaultdict(list)
    for e in trace_events(compiled, args, runs):
        op = e.get("args", {}).get("hlo_op") if e.get("ph") == "X" else None
        if op and not e["name"].startswith("end:"):
            times[op].append(e.get("dur", 0.0))
    return times


def robust_sum(durations: list[float]) -> float:
    """``count x median``: a kernel's total time, robust to the few executions that another process
    preempted (this machine's two cores are shared)."""
    return len(durations) * statistics.median(durations)


def wall_time(compiled, args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def attribute(compiled, times: dict[str, list[float]], steps: int, runs: int) -> dict:
    """ms per step by phase and part (kernel time, `robust_sum`), and the kernels behind each part;
    ``raw_kernel_ms_per_step`` is the plain sum of every execution's time."""
    module = Module(compiled.as_text())
    loops = training_loops(module)
    per = steps * runs * 1e3
    table = {phase: dict.fromkeys(PARTS, 0.0) for phase in PHASES}
    kernels = []
    unknown = raw = count = 0.0
    for name, durations in times.items():
        us = robust_sum(durations)
        if name not in module.instr:
            unknown += us
            continue
        if module.instr[name].opcode in CONTAINERS:
            continue
        raw += sum(durations)
        count += len(durations)
        phase, part = phase_of(module, name, loops), classify(module, name)
        table[phase][part] += us / per
        kernels.append(
            {"kernel": name, "phase": phase, "part": part, "ms_per_step": us / per, "calls": len(durations)}
        )
    kernels.sort(key=lambda k: -k["ms_per_step"])
    return {
        "ms_per_step": table,
        "raw_kernel_ms_per_step": raw / per,
        "kernel_executions_per_step": count / (steps * runs),
        "unmatched_ms_per_step": unknown / per,
        "kernels": kernels,
    }


def profile_cell(layers: list[int], batch: int, T: int, runs: int, repeats: int) -> dict:
    loss, valid, w0 = make_problem(layers=layers, batch=batch)
    n_params = sum(x.size for x in jax.tree.leaves(w0))
    capacity = _fixed.capacity_for(T, GAMMA, bucket=False)
    alphas, gammas = jnp.full((T,), ALPHA), jnp.full((T,), GAMMA)

    def meta_objective(alphas, gammas):
        return valid(hypercore.reversible_sgd(loss, w0, {}, alphas, gammas, capacity=capacity))

    compiled = {
        "reversible": jax.jit(jax.grad(meta_objective, argnums=(0, 1))).lower(alphas, gammas).compile(),
        "plain": plain_training(loss, w0, T).lower(alphas, gammas).compile(),
    }
    args = (alphas, gammas)
    row = {"layers": layers, "batch": batch, "n_params": int(n_params), "T": T, "runs": runs}
    for fn in compiled.values():
        jax.block_until_ready(fn(*args))
    # wall times first, alternating, then the profiles
    walls = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, fn in compiled.items():
            walls[name].append(wall_time(fn, args, 1))
    for name, fn in compiled.items():
        res = attribute(fn, kernel_times(fn, args, runs), T, runs)
        res["wall_ms_per_step"] = statistics.median(walls[name]) / T * 1e3
        res["kernel_ms_per_step"] = sum(sum(p.values()) for p in res["ms_per_step"].values())
        row[name] = res
    row["ratio_wall"] = row["reversible"]["wall_ms_per_step"] / row["plain"]["wall_ms_per_step"]
    row["ratio_kernel"] = row["reversible"]["kernel_ms_per_step"] / row["plain"]["kernel_ms_per_step"]
    return row


def print_cell(row: dict, top: int) -> None:
    rev, plain = row["reversible"], row["plain"]
    arch = "-".join(map(str, row["layers"]))
    print(
        f"\n### {arch} tanh MLP ({row['n_params']:,} parameters), batch {row['batch']}, T = {row['T']}: "
        f"ms per training step (kernel time, {row['runs']} profiled runs)\n"
    )
    print("| part | reversible: forward | reverse | outside loops | total | share | plain training |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    total = rev["kernel_ms_per_step"]
    for part in PARTS:
        f, r, o = (rev["ms_per_step"][ph][part] for ph in PHASES)
        p = sum(plain["ms_per_step"][ph][part] for ph in PHASES)
        if f + r + o + p == 0:
            continue
        t = f + r + o
        print(f"| {part} | {f:.3f} | {r:.3f} | {o:.3f} | {t:.3f} | {t / total:.0%} | {p:.3f} |")
    sums = [sum(rev["ms_per_step"][ph].values()) for ph in PHASES]
    print(
        f"| **kernel time** | {sums[0]:.3f} | {sums[1]:.3f} | {sums[2]:.3f} | **{total:.3f}** | 100% | "
        f"**{plain['kernel_ms_per_step']:.3f}** |"
    )
    print(
        f"| **wall time** (median) | | | | **{rev['wall_ms_per_step']:.3f}** | | "
        f"**{plain['wall_ms_per_step']:.3f}** |"
    )
    print(
        f"| kernel executions per step | | | | {rev['kernel_executions_per_step']:.0f} | | "
        f"{plain['kernel_executions_per_step']:.0f} |"
    )
    print(
        f"\nreversible / plain: {row['ratio_wall']:.2f}x wall time, {row['ratio_kernel']:.2f}x kernel time. "
        f"Plain sums of every kernel execution (not count x median): reversible "
        f"{rev['raw_kernel_ms_per_step']:.3f}, plain {plain['raw_kernel_ms_per_step']:.3f} ms per step; "
        f"unmatched kernel names: {rev['unmatched_ms_per_step']:.3f} ms per step"
    )
    for name in ("reversible", "plain"):
        print(f"\n{name}: the {top} slowest kernels (ms per step, executions):")
        for k in row[name]["kernels"][:top]:
            print(
                f"  {k['ms_per_step']:7.3f} {k['calls']:6d}  {k['phase']:13s} {k['part']:30s} {k['kernel']}"
            )


def parse_cell(spec: str) -> tuple[list[int], int]:
    if spec in CELLS:
        return CELLS[spec]
    arch, _, batch = spec.partition(":")
    return [int(x) for x in arch.split("-")], int(batch or 200)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        default=["paper", "1e5"],
        help="'paper' (784-50-50-50-10, batch 200), '1e5' (784-128-10, batch 50), '1e6', or LAYERS:BATCH "
        "such as 784-128-10:50",
    )
    parser.add_argument("--steps", type=int, default=100, help="T, training steps")
    parser.add_argument("--batch", type=int, default=None, help="override every cell's batch size")
    parser.add_argument("--runs", type=int, default=3, help="profiled runs per function")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per function (wall time)")
    parser.add_argument("--top", type=int, default=15, help="list the engine's slowest kernels")
    parser.add_argument("--out", default="docs/figures/profile_sgd.json")
    args = parser.parse_args()
    machine = (
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}"
    )
    print(f"device: {machine}; load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    for spec in args.cells:
        layers, batch = parse_cell(spec)
        row = profile_cell(layers, args.batch or batch, args.steps, args.runs, args.repeats)
        row["load_average_after"] = os.getloadavg()[0]
        rows.append(row)
        print_cell(row, args.top)
    out = {"machine": machine, "alpha": ALPHA, "gamma": GAMMA, "rows": rows}
    for row in rows:
        for name in ("reversible", "plain"):
            row[name]["kernels"] = row[name]["kernels"][:60]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
