"""The export's conversion is the engine's rule: its generated ``train_optax.py``, run from the same
initial weights on the same minibatches, ends where the engine's own training ends.

`jobs.export` (the function the API answers with) writes a job's hyperparameters for optax and
PyTorch: SGD with momentum becomes the heavy ball (``lr_t = a_t (1 - g_t)``, ``mu_t = g_t (1 -
g_{t-1}) / (1 - g_t)``), Adam and AdamW keep their values (with a scheduled bias correction where a
beta changes over the steps), ``l2`` goes into the loss and ``init_scale`` into ``init_params``. Each
test builds a small problem from a spec, perturbs its learned hyperparameters so that every array
and step has its own value, exports them, imports the generated module from a temporary folder and
trains with it; the engine trains the same meta-iteration with `reversible_sgd` or
`reversible_adam` (what `hypercore.tune` runs, checked against `evaluate`).

Tolerance: 1e-5 in the weights (max abs), for both rules. The export is computed from the values the
engine ran (the momentum on its 2^-16 lattice, the betas and AdamW's decay factor on 2^-24), so no
quantisation gap remains; the engine keeps weights, velocity and Adam's ``m`` at 2^-48 (3.6e-15) and
``v`` at 2^-94 and updates in float64 (`hypercore.adam`: it follows the rule to 1e-12 of how far the
weights move at gradients near 1), while the snippet keeps float32 weights and optimizer state:
one float32 rounding (6e-8 relative) per step on weights below 1 is at most ~1e-6 over these 20 to
30 steps. Both rules measure ~2e-7.

The PyTorch snippet is compiled, its schedules compared with the optax ones, and run against the
engine (SGD 1.5e-7, AdamW 1.2e-7, scheduled Adam 5.7e-7 with torch on CPU): `make test` installs torch
(the ``torch`` extra); elsewhere, without it, the run is skipped, except under ``CI=true``.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import py_compile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypercore  # noqa: F401  (turns on x64)
from hypercore import data, models
from hypercore._fixed import quantize_gamma
from hypercore.adam import quantize_beta, reversible_adam, weight_decay_factors
from hypercore.reversible import reversible_sgd
from hypercore.spec import problem_from_spec
from hypercore.tune import _keys, buffer_slots, evaluate, initial_hyperparameters
from jobs import export
from jobs.errors import Conflict

META_ITER = 3  # not 0: the draws are folded with the meta-iteration
TOLERANCE = 1e-5


def _spec(optimizer: str, steps: int, hyperparameters: dict) -> dict:
    return {
        "name": f"export-{optimizer}",
        "dataset": {"name": "digits", "train": 200, "valid": 100, "batch_size": 50},
        "model": {"kind": "mlp", "hidden": [16], "activation": "tanh"},
        "training": {"steps": steps, "optimizer": optimizer},
        "hyperparameters": hyperparameters,
        "meta": {"iterations": 5},
        "seed": 5,
    }


def _learn(init, granularity: str) -> dict:
    return {"init": init, "granularity": granularity, "learn": True}


SGD_SPEC = _spec(
    "sgd_momentum",
    30,
    {
        "learning_rate": _learn(0.3, "layer_step"),
        "momentum": _learn(0.9, "layer_step"),
        "init_scale": _learn(0.1, "layer"),
        "l2": _learn(1e-3, "layer"),
    },
)
# Betas constant over the steps: the snippet uses optax's own adamw.
ADAMW_SPEC = _spec(
    "adamw",
    20,
    {
        "learning_rate": _learn(0.01, "layer_step"),
        "beta1": _learn(0.9, "layer"),
        "beta2": _learn(0.99, "global"),
        "weight_decay": _learn(0.01, "layer_step"),
        "init_scale": _learn(0.1, "weight"),
        "l2": _learn(1e-3, "weight"),
    },
)
# A beta that changes every step: the snippet's scheduled Adam with 1 - prod b_s.
ADAM_SPEC = _spec(
    "adam",
    20,
    {
        "learning_rate": _learn(0.01, "step"),
        "beta1": _learn(0.8, "step"),
        "beta2": _learn(0.99, "layer_step"),
        "init_scale": _learn(0.1, "global"),
        "l2": _learn(1e-3, "global"),
    },
)


class Exported:
    """A problem, its perturbed raw hyperparameters, and their optax and PyTorch bundles unpacked."""

    def __init__(self, spec: dict, folder):
        self.spec = spec
        self.problem = problem_from_spec(spec)
        hs = self.problem.hypers
        raw = initial_hyperparameters(self.problem, include_fixed=True)
        rng = np.random.default_rng(0)
        for key in initial_hyperparameters(self.problem):
            raw[key] = raw[key] + rng.normal(0.0, 0.3, np.shape(raw[key]))
        self.raw = raw
        self.natural = hs.to_natural(raw)
        snapshot = export.Snapshot(
            "job0", spec, "best", META_ITER, self.natural, objective=0.25, evaluated=True
        )
        self.folders = {}
        self._engine = None
        for to in ("optax", "pytorch"):
            bundle = export.export(
                snapshot, to, parameter_shapes=self.problem.model.shapes, target=self.problem.target
            )
            assert bundle.filename == f"job0-best-{META_ITER}-{to}.zip" and bundle.meta_iter == META_ITER
            self.folders[to] = folder / to
            zipfile.ZipFile(io.BytesIO(bundle.content)).extractall(self.folders[to])
        path = self.folders["optax"] / "train_optax.py"
        module_spec = importlib.util.spec_from_file_location(f"export_{spec['name']}", path)
        self.snippet = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(self.snippet)

    def engine_run(self):
        """``(w0, w_T, loss)`` of meta-iteration `META_ITER` as `hypercore.tune` trains it: weights from
        ``fold_in(w_root, k)``, minibatches from ``(seed, k, t)``, the L2 penalty in the loss (computed
        once: each compiles the engine)."""
        if self._engine is None:
            self._engine = self._engine_run()
        return self._engine

    def _engine_run(self):
        problem, hs, model, ds = self.problem, self.problem.hypers, self.problem.model, self.problem.dataset
        dtype = jnp.float32
        raw = {k: jnp.asarray(v) for k, v in self.raw.items()}
        scales = {a: jnp.asarray(s, dtype) for a, s in hs.init_scales(raw).items()}
        w0 = model.init(jax.random.fold_in(_keys(problem.seed)[0], META_ITER), scales)
        meta = {"l2": {a: jnp.asarray(v, dtype) for a, v in hs.l2(raw).items()}}
        X, y = jnp.asarray(ds.X_train, dtype), jnp.asarray(ds.y_train)

        def loss(w, meta, t):
            idx = data.batch_indices(problem.seed, META_ITER, t, ds.n_train, problem.batch_size)
            return models.nll(model.apply(w, X[idx]), y[idx]) + models.l2_penalty(w, meta["l2"])

        capacity = buffer_slots(hs, self.raw)
        lr = hs.schedule("learning_rate", raw)
        if hs.training_optimizer == "sgd_momentum":
            gammas = hs.schedule("momentum", raw)
            run = lambda w, m: reversible_sgd(loss, w, m, lr, gammas, capacity=capacity)
        else:
            b1, b2, wd = hs.schedule("beta1", raw), hs.schedule("beta2", raw), hs.weight_decay(raw)
            run = lambda w, m: reversible_adam(loss, w, m, lr, b1, b2, wd, capacity=capacity)
        return w0, jax.jit(run)(w0, meta), lambda w, t: loss(w, meta, t)

    def snippet_run(self):
        """``(w0, w_T)`` of the generated snippet from the keys that repeat meta-iteration `META_ITER`."""
        ds, seed = self.problem.dataset, self.problem.seed
        w0 = self.snippet.init_params(
            jax.random.fold_in(jax.random.split(jax.random.PRNGKey(seed))[0], META_ITER)
        )
        key = jax.random.fold_in(jax.random.key(seed), META_ITER)
        return w0, self.snippet.train(w0, ds.X_train, ds.y_train, key=key)


def _imports(source: str) -> set[str]:
    """The top-level packages a module imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module.split(".")[0])
    return found


def _max_abs(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(a[k], jnp.float64) - jnp.asarray(b[k], jnp.float64)))) for k in a
    )


def _assert_repeats_the_engine(exported: Exported) -> None:
    engine_w0, engine_wT, engine_loss = exported.engine_run()
    w0, wT = exported.snippet_run()
    assert list(w0) == list(engine_w0)
    for name in w0:  # the same draw, cut the same way
        np.testing.assert_array_equal(np.asarray(w0[name]), np.asarray(engine_w0[name]), err_msg=name)
    idx = data.batch_indices(exported.problem.seed, META_ITER, 0, exported.problem.dataset.n_train, 50)
    X, y = exported.problem.dataset.X_train, exported.problem.dataset.y_train
    assert float(exported.snippet.loss(w0, X[np.asarray(idx)], y[np.asarray(idx)])) == pytest.approx(
        float(engine_loss(engine_w0, 0)), rel=1e-6
    )
    moved = _max_abs(engine_wT, engine_w0)
    assert moved > 0.05, "the run trains"
    assert _max_abs(wT, engine_wT) <= TOLERANCE, (_max_abs(wT, engine_wT), moved)


@pytest.fixture(scope="module")
def sgd(tmp_path_factory) -> Exported:
    return Exported(SGD_SPEC, tmp_path_factory.mktemp("sgd"))


def test_sgd_momentum_exported_for_optax_repeats_the_engines_run(sgd):
    schedule = np.load(sgd.folders["optax"] / "schedule.npz", allow_pickle=False)
    lr, mu = schedule["lr/layer1.W"], schedule["momentum/layer1.W"]
    assert lr.shape == mu.shape == (30,) and np.ptp(lr) > 0 and np.ptp(mu) > 0
    assert not np.array_equal(lr, schedule["lr/layer0.W"])  # one schedule per array and step
    # the conversion, from the momentum the engine ran
    a = sgd.natural["learning_rate"].values[:, 2]
    g = np.asarray(quantize_gamma(sgd.natural["momentum"].values[:, 2]))
    np.testing.assert_allclose(lr, a * (1 - g), rtol=1e-15)
    np.testing.assert_allclose(mu[1:], g[1:] * (1 - g[:-1]) / (1 - g[1:]), rtol=1e-15)
    assert mu[0] == g[0]  # inert, but not 0: PyTorch makes a momentum buffer only for a non-zero one
    assert float(schedule["l2/layer0.b"]) == pytest.approx(float(sgd.natural["l2"].values[1]), rel=1e-15)
    _assert_repeats_the_engine(sgd)


def test_the_momentum_is_exported_as_the_engine_ran_it(sgd, tmp_path, monkeypatch):
    """The engine runs gamma on a 2^-16 lattice; the heavy ball from the unrounded stored values lands
    several times farther from its run (6e-6 here) than the export (2e-7)."""
    _, engine_wT, _ = sgd.engine_run()
    exported = sgd.snippet_run()[1]
    monkeypatch.setattr(export, "quantize_gamma", lambda g: np.asarray(g, np.float64))
    unrounded = Exported(SGD_SPEC, tmp_path).snippet_run()[1]
    assert 5 * _max_abs(exported, engine_wT) < _max_abs(unrounded, engine_wT)


def test_the_reconstructed_engine_run_is_the_one_tune_scores(sgd):
    """`Exported.engine_run` rebuilds the engine's run by hand: it must be what `evaluate` scores."""
    _, wT, _ = sgd.engine_run()
    ds, model = sgd.problem.dataset, sgd.problem.model
    scored = evaluate(sgd.problem, sgd.raw, meta_iter=META_ITER)
    assert float(
        models.nll(model.apply(wT, jnp.asarray(ds.X_train, jnp.float32)), ds.y_train)
    ) == pytest.approx(scored["train_loss"], rel=1e-6)
    assert float(
        models.nll(model.apply(wT, jnp.asarray(ds.X_valid, jnp.float32)), ds.y_valid)
    ) == pytest.approx(scored["valid_loss"], rel=1e-6)


def test_adamw_with_constant_betas_exported_for_optax_repeats_the_engines_run(tmp_path):
    exported = Exported(ADAMW_SPEC, tmp_path)
    schedule = np.load(exported.folders["optax"] / "schedule.npz", allow_pickle=False)
    assert np.ptp(schedule["b1/layer0.W"]) == 0 and schedule["b1/layer0.W"][0] != schedule["b1/layer1.W"][0]
    # the engine's decay factor, as a decoupled weight decay: 1 - lr wd' is exactly what it multiplied by
    lr, wd = exported.natural["learning_rate"].values[:, 0], exported.natural["weight_decay"].values[:, 0]
    factor = np.asarray(weight_decay_factors(jnp.asarray(lr), jnp.asarray(wd)))
    np.testing.assert_allclose(
        1 - schedule["lr/layer0.W"] * schedule["weight_decay/layer0.W"], factor, atol=1e-15
    )
    assert schedule["l2/layer0.W"].shape == (64, 16)  # per weight
    state = exported.snippet._array_optimizer("layer0.W").init(jnp.zeros((64, 16), jnp.float32))
    assert "hyperparams" in state._fields  # optax's own adamw, under inject_hyperparams
    _assert_repeats_the_engine(exported)


def test_adam_with_a_beta_per_step_exported_for_optax_repeats_the_engines_run(tmp_path):
    exported = Exported(ADAM_SPEC, tmp_path)
    schedule = np.load(exported.folders["optax"] / "schedule.npz", allow_pickle=False)
    assert np.ptp(schedule["b1/layer0.W"]) > 0 and not np.any(schedule["weight_decay/layer0.W"])
    np.testing.assert_array_equal(
        schedule["b1/layer0.b"], np.asarray(quantize_beta(jnp.asarray(exported.natural["beta1"].values)))
    )
    state = exported.snippet._array_optimizer("layer0.W").init(jnp.zeros((64, 16), jnp.float32))
    assert isinstance(state, exported.snippet.ScheduledAdamState)  # optax's 1 - b^(t+1) would be wrong
    _assert_repeats_the_engine(exported)


@pytest.mark.parametrize("spec", [SGD_SPEC, ADAMW_SPEC, ADAM_SPEC], ids=lambda s: s["name"])
def test_the_pytorch_bundle_compiles_and_carries_the_optax_schedules(spec, tmp_path):
    exported = Exported(spec, tmp_path)
    folder = exported.folders["pytorch"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "hyperparameters.npz",
        "schedule.npz",
        "spec.json",
        "train_pytorch.py",
    ]
    py_compile.compile(str(folder / "train_pytorch.py"), doraise=True)
    source = (folder / "train_pytorch.py").read_text()
    assert _imports(source) == {"__future__", "pathlib", "numpy", "torch"}  # no revtune
    assert _imports((exported.folders["optax"] / "train_optax.py").read_text()) == {
        "__future__",
        "math",
        "pathlib",
        "typing",
        "jax",
        "numpy",
        "optax",
    }
    assert "class RevtuneSchedule" in source and "def optimizer(params" in source
    with (
        np.load(folder / "schedule.npz", allow_pickle=False) as torch_arrays,
        np.load(exported.folders["optax"] / "schedule.npz", allow_pickle=False) as optax_arrays,
    ):
        assert sorted(torch_arrays.files) == sorted(optax_arrays.files)
        for key in optax_arrays.files:
            np.testing.assert_array_equal(torch_arrays[key], optax_arrays[key], err_msg=key)
    assert json.loads((folder / "spec.json").read_text()) == spec


@pytest.mark.parametrize("spec", [SGD_SPEC, ADAMW_SPEC, ADAM_SPEC], ids=lambda s: s["name"])
def test_the_pytorch_snippet_repeats_the_engines_run(spec, tmp_path):
    """From the engine's initial weights on the engine's minibatches, `optimizer` with
    `RevtuneSchedule` ends where the engine does."""
    if os.environ.get("CI") == "true":
        import torch  # `make test` installs it: CI never passes by skipping
    else:
        torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
    exported = Exported(spec, tmp_path)
    path = exported.folders["pytorch"] / "train_pytorch.py"
    module_spec = importlib.util.spec_from_file_location(f"export_torch_{spec['name']}", path)
    snippet = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(snippet)
    engine_w0, engine_wT, _ = exported.engine_run()
    params = {k: torch.tensor(np.asarray(v)).requires_grad_() for k, v in engine_w0.items()}
    problem = exported.problem
    X, y = (
        torch.tensor(np.asarray(problem.dataset.X_train, np.float32)),
        torch.tensor(problem.dataset.y_train),
    )
    opt = snippet.optimizer(params)
    schedule = snippet.RevtuneSchedule(opt)
    for t in range(spec["training"]["steps"]):
        idx = data.batch_indices(problem.seed, META_ITER, t, problem.dataset.n_train, problem.batch_size)
        idx = torch.tensor(np.asarray(idx)).long()
        opt.zero_grad()
        snippet.loss(params, X[idx], y[idx]).backward()
        opt.step()
        schedule.step()
    trained = {k: v.detach().numpy() for k, v in params.items()}
    assert _max_abs(trained, engine_wT) <= TOLERANCE


def test_the_hyperparameters_npz_holds_the_stored_values_and_the_spec(sgd):
    with np.load(sgd.folders["optax"] / "hyperparameters.npz", allow_pickle=False) as z:
        assert set(z.files) == {*sgd.natural, "__spec__", "__export__"}
        for name, value in sgd.natural.items():
            np.testing.assert_array_equal(z[name], value.values, err_msg=name)  # as stored, not rounded
        assert json.loads(str(z["__spec__"])) == SGD_SPEC
        described = json.loads(str(z["__export__"]))
    assert described["meta_iter"] == META_ITER and described["which"] == "best"
    assert described["training_optimizer"] == "sgd_momentum" and described["objective"] == 0.25


def test_a_regression_snippet_trains_on_the_engines_mean_squared_error(sgd, tmp_path):
    snapshot = export.Snapshot("job1", SGD_SPEC, "last", 5, sgd.natural)
    bundle = export.export(snapshot, "optax", parameter_shapes={**sgd.problem.model.shapes}, target="real")
    zipfile.ZipFile(io.BytesIO(bundle.content)).extractall(tmp_path)
    module_spec = importlib.util.spec_from_file_location("export_regression", tmp_path / "train_optax.py")
    snippet = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(snippet)
    w = snippet.init_params(jax.random.PRNGKey(0))
    X = np.asarray(sgd.problem.dataset.X_train[:20], np.float32)
    y = np.random.default_rng(1).normal(size=(20, 10))
    hs, raw = sgd.problem.hypers, {k: jnp.asarray(v) for k, v in sgd.raw.items()}
    l2 = {a: jnp.asarray(v, jnp.float32) for a, v in hs.l2(raw).items()}
    expected = models.mse(sgd.problem.model.apply(w, X), jnp.asarray(y)) + models.l2_penalty(w, l2)
    assert float(snippet.loss(w, X, y)) == pytest.approx(float(expected), rel=1e-6)
    assert "mean squared error" in " ".join((tmp_path / "README.md").read_text().split())


def test_the_lattices_are_the_engines():
    """`jobs.export` rounds as the engine does, in numpy (the API has no JAX)."""
    rng = np.random.default_rng(2)
    g = np.concatenate([rng.uniform(0, 1, 1000), [1 - 2**-18, 2**-20, 0.5 + 2**-17]])
    np.testing.assert_array_equal(export.quantize_gamma(g), np.asarray(quantize_gamma(jnp.asarray(g))))
    b = np.concatenate([rng.uniform(0.4, 1, 1000), [1 - 2**-26, 0.5 - 2**-30]])
    np.testing.assert_array_equal(export.quantize_beta(b), np.asarray(quantize_beta(jnp.asarray(b))))
    lr, wd = np.exp(rng.uniform(-8, 0, 1000)), np.exp(rng.uniform(-12, 0, 1000))
    np.testing.assert_array_equal(
        export.decay_factor(lr, wd), np.asarray(weight_decay_factors(jnp.asarray(lr), jnp.asarray(wd)))
    )


def test_a_momentum_the_engine_ran_as_one_cannot_be_a_heavy_ball(sgd):
    natural = dict(sgd.natural)
    values = np.array(natural["momentum"].values)
    values[7, 1] = 1 - 2**-18
    natural["momentum"] = natural["momentum"]._replace(values=values)
    snapshot = export.Snapshot("job2", SGD_SPEC, "7", 7, natural)
    with pytest.raises(Conflict, match="layer0.b at step 7 ran as exactly 1"):
        export.export(snapshot, "optax", parameter_shapes=sgd.problem.model.shapes, target="class")
    assert export.export(snapshot, "npz").filename == "job2-7-7.npz"  # the values themselves still export


def test_a_model_the_snippet_cannot_write_still_gets_its_optimizer(tmp_path):
    """A cnn's forward pass is not written out: `optimizer`, `init_params` and `l2_penalty` are, for the
    user's own model with these parameter arrays."""
    spec = {
        **SGD_SPEC,
        "name": "export-cnn",
        "model": {"kind": "cnn", "channels": [2], "kernel": 3, "pool": 2, "hidden": []},
        "training": {"steps": 4},
        "hyperparameters": {"learning_rate": _learn(0.1, "layer"), "momentum": _learn(0.5, "step")},
    }
    problem = problem_from_spec(spec)
    raw = initial_hyperparameters(problem, include_fixed=True)
    snapshot = export.Snapshot("job3", spec, "last", 1, problem.hypers.to_natural(raw))
    bundle = export.export(snapshot, "optax", parameter_shapes=problem.model.shapes, target="class")
    zipfile.ZipFile(io.BytesIO(bundle.content)).extractall(tmp_path)
    module_spec = importlib.util.spec_from_file_location("export_cnn", tmp_path / "train_optax.py")
    snippet = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(snippet)
    assert snippet.ARRAYS == list(problem.model.shapes) and snippet.ARRAYS[0] == "conv0.W"
    params = snippet.init_params(jax.random.PRNGKey(0))
    assert {k: v.shape for k, v in params.items()} == dict(problem.model.shapes)
    opt = snippet.optimizer()
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    lr = np.load(tmp_path / "schedule.npz")["lr/conv0.W"][0]
    np.testing.assert_allclose(np.asarray(updates["conv0.W"]), -lr, rtol=1e-6)  # the heavy ball's first step
    with pytest.raises(NotImplementedError, match="bring your own"):
        snippet.apply(params, np.zeros((1, 64)))
    assert "bring your own" in " ".join((tmp_path / "README.md").read_text().split())
