"""A job's peak memory in the worker is estimated at submit (`hypercore.budget`) and a spec past
``REVTUNE_MAX_JOB_MEMORY_BYTES`` is refused, naming the field; the estimate bounds what the engine
really allocates, and a learned momentum cannot fall below the floor its buffer was sized for.

The spec below passed every other limit and needed 11 GB in the worker: a 3.8M-weight mlp at momentum
0.01 over 1000 steps keeps 6.6 bits of every weight each step."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from spec_changes import changed

from hypercore import _fixed, budget, rules, vocab
from hypercore.spec import SpecError as EngineSpecError
from hypercore.spec import problem_from_spec
from hypercore.tune import ReversalReport, tune
from jobs import templates
from jobs.settings import Settings
from jobs.spec import SpecError, SpecLimits, validate_spec

tune_module = importlib.import_module("hypercore.tune")

BIG = {
    "name": "killer",
    "dataset": {"name": "digits", "train": 1000, "valid": 400, "test": 397, "batch_size": 100},
    "model": {"kind": "mlp", "hidden": [2048, 1800]},
    "training": {"steps": 1000},
    "hyperparameters": {
        "learning_rate": {"init": 0.1, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.01, "granularity": "global", "learn": False},
    },
    "meta": {"iterations": 50},
}


def with_momentum(spec: dict, **setting) -> dict:
    spec = json.loads(json.dumps(spec))
    spec["hyperparameters"]["momentum"] = {"granularity": "global", "learn": False, **setting}
    return spec


def refusal(spec: dict, limits: SpecLimits | None = None) -> dict:
    with pytest.raises(SpecError) as caught:
        validate_spec(spec, limits)
    [error] = caught.value.errors
    return error


def estimate_of(spec: dict) -> budget.Estimate:
    data = validate_spec(spec, SpecLimits(max_job_memory_bytes=2**62)).to_dict()
    return budget.peak_bytes(data, rules.dataset_shape(data))


# ---- the limit --------------------------------------------------------------------------------


def test_the_reproduced_spec_is_refused_on_its_momentum_with_the_estimate_and_the_limit():
    error = refusal(BIG)
    assert error["loc"] == ["hyperparameters", "momentum", "init"]
    msg = error["msg"]
    assert msg.startswith("this job needs about 7.8 GiB in the worker (information buffer 5.5 GiB at")
    assert "at momentum 0.01 over 1000 steps" in msg
    assert "past REVTUNE_MAX_JOB_MEMORY_BYTES = 4.0 GiB" in msg
    # 3,839,330 weights, 384 slots of 32 bits: 8 N (1 + 192) bytes
    estimate = estimate_of(BIG)
    assert estimate.n_weights == 3_839_330 and estimate.capacity == 384
    assert estimate["information buffer"].bytes == 8 * 3_839_330 * 193 == estimate.largest.bytes


def test_a_learned_momentum_is_sized_for_its_min_and_refused_on_it():
    learned = with_momentum(BIG, init=0.9, learn=True, min=0.01)
    assert refusal(learned)["loc"] == ["hyperparameters", "momentum", "min"]
    # its default min is 0.1 (3.3 bits a step), or the init when that is lower
    assert estimate_of(with_momentum(BIG, init=0.9, learn=True)).min_momentum == 0.1
    low_start = with_momentum(BIG, init=0.01, learn=True)
    assert refusal(low_start)["loc"] == ["hyperparameters", "momentum", "init"]
    # a floor of 0.5 (one bit a step) fits the same net and steps in the default 4 GiB
    assert validate_spec(with_momentum(BIG, init=0.9, learn=True, min=0.5))


def test_the_largest_part_names_its_field_and_the_setting_carries_the_limit():
    fixed = with_momentum(BIG, init=0.9)
    fixed["training"]["steps"] = 100
    estimate = estimate_of(fixed)
    assert estimate.largest.name == "engine state"  # 24 x 8 bytes per weight
    limits = Settings(max_job_memory_bytes=estimate.total - 1).limits
    assert limits.max_job_memory_bytes == estimate.total - 1
    error = refusal(fixed, limits)
    assert error["loc"] == ["model", "hidden"]
    assert "(engine state 703.0 MiB for 3839330 weights)" in error["msg"]
    assert validate_spec(fixed, Settings(max_job_memory_bytes=estimate.total).limits)
    records = json.loads(json.dumps(fixed))
    records["model"]["hidden"] = [2048]
    records["hyperparameters"]["l2"] = {"init": 0.01, "granularity": "weight", "learn": True}
    records["meta"]["iterations"] = 500
    assert refusal(records)["loc"] == ["meta", "iterations"]  # 500 records of 153,618 learned values


def test_revtune_run_refuses_it_too(tmp_path, capsys):
    from revtune.cli import main

    path = tmp_path / "killer.json"
    path.write_text(json.dumps(BIG))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "hyperparameters.momentum.init: this job needs about 7.8 GiB" in err, err
    assert "REVTUNE_MAX_JOB_MEMORY_BYTES" in err and not (tmp_path / "out").exists()


def test_a_plugin_s_estimate_is_its_shapes_and_the_activations_counted_on_it():
    """A plugin model's estimate (the worker's, once built: `jobs.spec.built_model_problems`) counts
    what its shapes say exactly as a built-in's. Without the units counted on the built model only
    the input and output units of its activations count: on the same arrays it is the built-in
    family's estimate less the hidden units."""
    spec = json.loads(json.dumps(BIG))
    spec["model"]["hidden"] = [32]
    data = validate_spec(spec).to_dict()
    shape = rules.dataset_shape(data)
    builtin = budget.peak_bytes(data, shape)
    plugin = {**data, "model": {"kind": "plugin", "name": "resmlp", "config": {}}}
    with pytest.raises(ValueError, match="has no shapes before a worker builds it"):
        budget.peak_bytes(plugin, shape)
    estimate = budget.peak_bytes(plugin, shape, rules.model_shapes(data, shape))
    assert estimate.n_weights == builtin.n_weights == 64 * 32 + 32 + 32 * 10 + 10
    others = [c for c in builtin.components if c.name != "activations"]
    assert [(c.name, c.bytes) for c in estimate.components if c.name != "activations"] == [
        (c.name, c.bytes) for c in others
    ]
    units, hidden_units = 64 + 10, 64 + 32 + 10
    assert estimate["activations"].bytes * hidden_units == builtin["activations"].bytes * units
    assert estimate["activations"].detail.endswith("; a plugin's hidden units are not counted")
    # once built, a worker counts them on the model (`hypercore.models.held_activation_units`)
    counted = budget.peak_bytes(plugin, shape, rules.model_shapes(data, shape), units=200)
    assert counted["activations"].bytes * units == estimate["activations"].bytes * 200
    assert counted["activations"].detail == (
        "100 rows of 200 units a step, 1797 rows scored; the plugin's counted on its gradient"
    )


def test_every_template_fits_the_default_limit():
    for name in templates.names():
        estimate = estimate_of(templates.get(name))
        assert estimate.total < SpecLimits().max_job_memory_bytes / 1.5, (name, estimate.breakdown())


def test_min_is_a_momentum_s_own_and_lies_between_0_and_its_init():
    base = with_momentum(BIG, init=0.5, learn=True)
    base["training"]["steps"] = 10
    base["model"]["hidden"] = [8]
    cases = {
        ("hyperparameters", "learning_rate", "min"): (
            "learning_rate",
            {"min": 0.01},
            "only momentum, beta1 and beta2 take a min",
        ),
        ("hyperparameters", "momentum", "min"): ("momentum", {"min": 0.6}, "at most init (0.5)"),
    }
    for loc, (kind, extra, says) in cases.items():
        spec = json.loads(json.dumps(base))
        spec["hyperparameters"][kind].update(extra)
        error = refusal(spec)
        assert tuple(error["loc"]) == loc and says in error["msg"], error
        with pytest.raises(EngineSpecError) as caught:  # the engine refuses it on the same field
            problem_from_spec(spec)
        assert caught.value.loc == loc
    for bad in (0.0, 1.0, "0.3"):
        spec = json.loads(json.dumps(base))
        spec["hyperparameters"]["momentum"]["min"] = bad
        assert refusal(spec)["loc"] == ["hyperparameters", "momentum", "min"]


def test_the_estimate_is_jax_free_and_the_engine_shares_its_capacity():
    assert _fixed.capacity_for is budget.capacity_for and _fixed.D == budget.D
    code = "import sys, hypercore.budget, jobs.spec; assert not [m for m in sys.modules if 'jax' in m]"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the estimate against the engine ----------------------------------------------------------


def small(momentum: dict, **changes) -> dict:
    spec = {
        "name": "small",
        "dataset": {"name": "digits", "train": 100, "valid": 50, "test": 20, "batch_size": 25},
        "model": {"kind": "mlp", "hidden": [32]},
        "training": {"steps": 30},
        "hyperparameters": {
            "learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True},
            "momentum": {"granularity": "global", "learn": False, **momentum},
        },
        "meta": {"iterations": 2, "optimizer": "adam", "learning_rate": 0.04},
        "seed": 0,
    }
    return changed(spec, **changes)


class _Captured(Exception):
    pass


def capacities_of(problem, monkeypatch, *, run: bool, reports: list | None = None) -> list[int]:
    """The capacities `tune` passes to its jitted hypergradient (the engine allocates its buffer from
    them); without ``run`` the first is captured and the loop stopped before anything compiles."""
    seen: list[int] = []
    real = tune_module._jitted

    def spy(problem, engine, make=tune_module._make_hypergrad):
        fn = real(problem, engine, make)
        if make is not tune_module._make_hypergrad:
            return fn

        def hypergrad(learned, fixed, meta_iter, capacity):
            seen.append(capacity)
            if not run:
                raise _Captured
            out = fn(learned, fixed, meta_iter, capacity)
            if reports is not None:
                reports.append(ReversalReport.from_array(out[-1]))
            return out

        return hypergrad

    monkeypatch.setattr(tune_module, "_jitted", spy)
    try:
        tune(problem)
    except _Captured:
        pass
    return seen


@pytest.mark.parametrize(
    "momentum",
    [
        {"init": 0.9},
        {"init": 0.5, "granularity": "layer_step"},
        {"init": 0.05},
        {"init": 0.013, "granularity": "step"},
    ],
)
def test_a_fixed_momentum_s_buffer_is_exactly_what_the_engine_allocates(momentum, monkeypatch):
    spec = small(momentum, training__steps=200)
    estimate = estimate_of(spec)
    problem = problem_from_spec(spec)
    assert capacities_of(problem, monkeypatch, run=False) == [estimate.capacity]
    shapes = list(problem.model.shapes.values())
    allocated = _fixed.empty_buffer(shapes, estimate.capacity)
    assert allocated.nbytes == estimate["information buffer"].bytes
    assert problem.hypers.floor("momentum") == estimate.min_momentum


def test_a_learned_momentum_stays_at_or_above_its_min_and_in_the_buffer_sized_for_it(monkeypatch):
    """Adam with a meta step of 1 pushes most per-step momenta far below the floor in raw (logit)
    space; the engine clamps their natural values to it, reverses exactly, and its buffer grows to
    the estimate's capacity and no further."""
    floor = 0.05
    spec = small(
        {"init": 0.5, "granularity": "step", "learn": True, "min": floor},
        hyperparameters__learning_rate={"init": 0.5, "granularity": "global", "learn": False},
        meta__learning_rate=1.0,
        meta__iterations=4,
        seed=1,
        training__steps=40,
    )
    estimate = estimate_of(spec)
    assert estimate.min_momentum == floor and estimate.capacity == budget.capacity_for(40, floor) == 6
    problem = problem_from_spec(spec)
    reports: list[ReversalReport] = []
    capacities = capacities_of(problem, monkeypatch, run=True, reports=reports)
    assert max(capacities) == capacities[-1] == estimate.capacity
    assert all(r.exact and not r.buffer_overflow for r in reports)
    assert reports[-1].capacity == 2 * math.ceil(estimate.capacity / 2)  # slots packed two per word
    result = tune(problem)
    raw = result.checkpoint.learned["momentum"]
    assert np.sum(raw < vocab.to_raw("momentum", floor)) >= 5, raw  # the meta-optimiser went below
    natural = result.hyperparameters["momentum"].values
    assert natural.min() == floor and np.all(natural >= floor)
    for record in result.records:
        assert np.all(record.hyperparameters["momentum"].values >= floor)


def adam_small(optimizer: str, **hyperparameters) -> dict:
    """`small` trained by Adam or AdamW: momentum out, the betas and weight decay as given."""
    spec = small({"init": 0.9})
    del spec["hyperparameters"]["momentum"]
    spec["training"]["optimizer"] = optimizer
    spec["hyperparameters"].update(hyperparameters)
    return spec


@pytest.mark.parametrize(
    ("spec", "floors"),
    [
        (adam_small("adam"), (0.9, 0.999, None)),
        (
            adam_small(
                "adamw",
                learning_rate={"init": 0.01, "granularity": "layer", "learn": False},
                beta1={"init": 0.6, "granularity": "step", "learn": False},
                weight_decay={"init": 0.5, "granularity": "layer", "learn": False},
                l2={"init": 0.01, "granularity": "global", "learn": True},
            ),
            (0.6, 0.999, 1 - 0.01 * 0.5),
        ),
        # learned: a beta is kept >= its min, and a learned learning rate has no ceiling, so the
        # decay factor is sized at the engine's smallest, 0.5
        (
            adam_small("adamw", beta2={"init": 0.99, "granularity": "global", "learn": True, "min": 0.9}),
            (0.9, 0.9, 0.5),
        ),
    ],
    ids=["adam-fixed", "adamw-fixed", "adamw-learned"],
)
def test_an_adam_buffer_is_sized_at_the_floors_as_the_engine_sizes_it(spec, floors, monkeypatch):
    spec["training"]["steps"] = 200
    estimate = estimate_of(spec)
    assert estimate.training_optimizer == spec["training"]["optimizer"] and estimate.min_momentum is None
    assert (estimate.min_beta1, estimate.min_beta2, estimate.min_decay) == pytest.approx(floors)
    assert estimate.capacity == budget.adam_capacity(200, *floors)
    problem = problem_from_spec(spec)
    assert tune_module._buffer_ceiling(problem.hypers) == estimate.capacity
    captured = capacities_of(problem, monkeypatch, run=False)
    if estimate.min_decay != 0.5:  # fixed values: the engine starts at exactly the estimate
        assert captured == [estimate.capacity]
    else:  # it starts at twice what the start needs, never past the estimate
        assert len(captured) == 1 and captured[0] <= estimate.capacity
    n = estimate.n_weights
    assert estimate["information buffer"].bytes == budget.buffer_bytes(n, estimate.capacity)
    assert estimate["engine state"].bytes == budget.ADAM_ENGINE_STATE_ARRAYS * 8 * n


def test_low_learned_betas_are_refused_on_their_min():
    """AdamW on 3.8M weights over 1000 steps with both betas and the learning rate learned: at the
    default floors (betas 0.5, and the decay factor 0.5 a learned learning rate implies) each step
    keeps 3 bits of every weight, the buffer is the largest part and past the 4 GiB limit, so the
    refusal names beta1's min; higher mins fit."""
    spec = json.loads(json.dumps(BIG))
    del spec["hyperparameters"]["momentum"]
    spec["training"]["optimizer"] = "adamw"
    spec["hyperparameters"]["beta1"] = {"init": 0.9, "granularity": "global", "learn": True}
    spec["hyperparameters"]["beta2"] = {"init": 0.999, "granularity": "global", "learn": True}
    error = refusal(spec)
    assert error["loc"] == ["hyperparameters", "beta1", "min"], error
    assert "at beta1 0.5, beta2 0.5, weight-decay factor 0.5 over 1000 steps of adamw" in error["msg"]
    assert "hyperparameters.beta1.min and beta2.min" in error["msg"]
    estimate = estimate_of(spec)
    assert estimate["information buffer"].bytes == max(c.bytes for c in estimate.components)
    spec["hyperparameters"]["beta1"]["min"] = 0.8
    spec["hyperparameters"]["beta2"]["min"] = 0.99
    assert validate_spec(spec)
    assert estimate_of(spec).capacity < estimate.capacity


def _xla_bytes(problem, capacity: int) -> int:
    hypergrad = tune_module._program(problem, "reversible")
    learned = tune_module._device(tune_module.initial_hyperparameters(problem))
    fixed = tune_module._device(tune_module._fixed_raw(problem))
    inputs = tune_module._inputs(problem)
    stats = hypergrad.lower(inputs, learned, fixed, jnp.int32(0), capacity).compile().memory_analysis()
    if stats is None:
        pytest.skip(f"no memory analysis on {jax.default_backend()}")
    return stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes


@pytest.mark.parametrize(
    "spec",
    [
        small({"init": 0.05}, model__hidden=[256], training__steps=60),
        small(
            {"init": 0.9, "learn": True},
            dataset={"name": "digits", "train": 300, "valid": 50},
            model={"kind": "logreg"},
            hyperparameters__l2={"init": 0.01, "granularity": "weight", "learn": True},
            hyperparameters__init_scale={"init": 0.1, "granularity": "weight", "learn": True},
        ),
        small(
            {"init": 0.5},
            hyperparameters__training_data={"init": "data", "granularity": "weight", "learn": True},
        ),
        adam_small(
            "adamw",
            beta1={"init": 0.9, "granularity": "step", "learn": True},
            weight_decay={"init": 0.01, "granularity": "layer", "learn": True},
        )
        | {"model": {"kind": "mlp", "hidden": [256]}, "training": {"steps": 60, "optimizer": "adamw"}},
    ],
    ids=["mlp-low-momentum", "logreg-full-batch-per-weight", "training-data", "adamw"],
)
def test_the_estimate_bounds_what_xla_allocates_for_a_meta_iteration(spec):
    """XLA's buffer assignment for the compiled hypergradient (arguments, outputs, temporaries) at
    the engine's capacity: within the estimate's engine parts and the dataset (an argument of the
    program, `hypercore.tune._inputs`), and holding the whole buffer."""
    estimate = estimate_of(spec)
    measured = _xla_bytes(problem_from_spec(spec), estimate.capacity)
    parts = ("information buffer", "engine state", "activations", "hyperparameters", "training data")
    bound = sum(estimate[p].bytes for p in parts)
    assert estimate["information buffer"].bytes < measured <= bound, (measured, estimate.breakdown())


def test_the_estimate_bounds_the_host_arrays_of_a_small_job():
    """The dataset's splits and the records `tune` keeps (every exported value and checkpoint array)."""
    spec = small({"init": 0.5, "learn": True}, meta__iterations=3)
    estimate = estimate_of(spec)
    problem = problem_from_spec(spec)
    ds = problem.dataset
    splits = sum(a.nbytes for a in (ds.X_train, ds.y_train, ds.X_valid, ds.y_valid, ds.X_test, ds.y_test))
    assert splits <= estimate["training data"].bytes
    result = tune(problem)
    kept = 0
    for record in result.records:
        kept += sum(np.asarray(v.values).nbytes for v in record.hyperparameters.values())
        ckpt = record.checkpoint
        kept += sum(a.nbytes for a in (*ckpt.learned.values(), *ckpt.prev_learned.values()))
        kept += sum(np.asarray(a).nbytes for a in (*ckpt.opt_state, *ckpt.prev_opt_state))
    assert kept <= estimate["meta-iteration records"].bytes


def test_the_estimate_bounds_a_worker_process_peak_memory():
    """A fresh process (as a worker) builds and tunes a job: its peak resident memory, runtime and
    compilation included, is within the estimate's total."""
    spec = small({"init": 0.02}, model__hidden=[512, 256], training__steps=60)
    estimate = estimate_of(spec)
    code = textwrap.dedent(
        f"""
        import json
        import hypercore
        from hypercore.spec import problem_from_spec
        result = hypercore.tune(problem_from_spec(json.loads({json.dumps(json.dumps(spec))})))
        assert all(r.reversal_exact for r in result.records)
        # VmHWM, this image's own peak: getrusage's ru_maxrss survives execve, so in a child of a
        # large pytest process it reports the parent's size at the fork, not the job's peak
        status = open("/proc/self/status").read().split("VmHWM:")[1].split()
        assert status[1] == "kB", status[:2]
        print(int(status[0]) * 1024)
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # a CPU worker: the buffer is in host memory
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    peak = int(out.stdout.split()[-1])
    assert peak <= estimate.total, (budget.human_bytes(peak), estimate.breakdown())
