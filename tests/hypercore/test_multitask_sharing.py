"""The learned-sharing experiment's structure (benchmarks/paper/multitask_sharing.py) on a tiny problem:
the ``e^-4 ||z||^2`` penalty on ``W = T Z`` is the prior ``w^T (T T^T)^-1 w`` across tasks, the tied
transform gives every task the same weights, and the exact hypergradient with respect to the
sharing matrices matches reverse mode through the stored trajectory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import hypercore

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "paper" / "multitask_sharing.py"
_spec = importlib.util.spec_from_file_location("multitask_sharing", _PATH)
sharing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sharing)

N_TASKS, N_IN, N_HID, N_CLASSES, N_EX, STEPS = 3, 6, 4, 3, 5, 6


def tiny_problem():
    key_x, key_y, key_z, key_t = jax.random.split(jax.random.key(0), 4)
    X = jax.random.normal(key_x, (N_TASKS, N_EX, N_IN), jnp.float64)
    y = jax.random.randint(key_y, (N_TASKS, N_EX), 0, N_CLASSES)
    sizes = sharing.layer_sizes(N_IN, [N_HID], N_CLASSES)
    z0 = jax.tree.map(lambda x: x.astype(jnp.float64), sharing.init_latent(key_z, N_TASKS, sizes))
    T = sharing.make_transforms([0.5, 0.5], N_TASKS)
    T = {
        k: (v + 0.1 * jax.random.normal(jax.random.fold_in(key_t, i), v.shape)).astype(jnp.float64)
        for i, (k, v) in enumerate(T.items())
    }
    return X, y, z0, T


def test_penalty_on_latent_weights_is_the_cross_task_prior():
    _, _, z, T = tiny_problem()
    w = sharing.transform(T, z)
    for name, leaf in w.items():
        t = T[name.split(".")[0]]
        w_cols = leaf.reshape(N_TASKS, -1)
        prior = jnp.sum(w_cols * jnp.linalg.solve(t @ t.T, w_cols))
        np.testing.assert_allclose(prior, jnp.sum(z[name] ** 2), rtol=1e-9)


def test_tied_input_layer_gives_every_task_the_same_weights():
    _, _, z, _ = tiny_problem()
    T = sharing.make_transforms([1.0, 0.0], N_TASKS)
    w = sharing.transform(T, z)
    for name in ("layer0.W", "layer0.b"):
        np.testing.assert_allclose(w[name], jnp.broadcast_to(jnp.mean(z[name], 0), w[name].shape), rtol=1e-6)
    np.testing.assert_array_equal(w["layer1.W"], z["layer1.W"].astype(w["layer1.W"].dtype))


def test_sharing_hypergradient_is_exact_and_matches_unrolled():
    X, y, z0, T = tiny_problem()
    capacity = hypercore.buffer_capacity(STEPS, sharing.GAMMA)
    alphas = jnp.full((STEPS,), sharing.ALPHA)
    # the engine runs gamma on its 2**-16 lattice; the reference must use the same value
    gammas = hypercore.quantize_gamma(jnp.full((STEPS,), sharing.GAMMA))

    def objective(T, report):
        w = sharing.train(T, z0, X, y, STEPS, report, capacity)
        return jnp.mean(sharing.task_nll(w, X, y))

    def reference(T):
        loss = lambda z, T, t: sharing.training_loss(z, T, X, y)
        z_T = hypercore.unrolled_sgd(loss, z0, T, alphas, gammas)
        return jnp.mean(sharing.task_nll(sharing.transform(T, z_T), X, y))

    dT, rep = jax.jit(jax.grad(objective, (0, 1)))(T, hypercore.empty_report())
    report = hypercore.ReversalReport.from_array(rep)
    assert report.exact and not report.overflow and not report.buffer_overflow
    dT_ref = jax.grad(reference)(T)
    for name in T:
        assert dT[name].shape == (N_TASKS, N_TASKS)
        err = float(jnp.linalg.norm(dT[name] - dT_ref[name]) / jnp.linalg.norm(dT_ref[name]))
        assert err < 1e-6, (name, err)
