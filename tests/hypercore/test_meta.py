"""Meta-optimisers (optax), clipping, and the chaos guard."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypercore  # noqa: F401  (turns on x64)
from hypercore import meta


def repo_adam(grads, step_size=0.04, b1=0.1, b2=0.01, eps=1e-4, lam=1e-4):
    """HIPS/hypergrad ``optimizers.adam``, transcribed: the trajectory of updates it applies."""
    m = np.zeros_like(grads[0])
    v = np.zeros_like(grads[0])
    out = []
    for i, g in enumerate(grads):
        b1t = 1 - (1 - b1) * lam**i
        m = b1t * g + (1 - b1t) * m
        v = b2 * g**2 + (1 - b2) * v
        mhat = m / (1 - (1 - b1) ** (i + 1))
        vhat = v / (1 - (1 - b2) ** (i + 1))
        out.append(-step_size * mhat / (np.sqrt(vhat) + eps))
    return out


def run(opt, grads):
    x = jnp.zeros_like(grads[0])
    state = opt.init(x)
    out = []
    for g in grads:
        u, state = opt.update(jnp.asarray(g), state, x)
        out.append(np.asarray(u))
    return out


def test_adam_paper_preset_matches_the_repos_adam():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=7) * (1 + i) for i in range(12)]
    ours = run(meta.build(meta.MetaConfig("adam_paper", 0.04)), grads)
    theirs = repo_adam(grads)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        # the preset drops the 0.9 * lam^i memory of m, which is 9e-5 at i = 1 and 1e-8 after
        np.testing.assert_allclose(a, b, rtol=1e-3 if i == 1 else 1e-6, err_msg=f"step {i}")


def test_adam_and_sgd_are_the_optax_ones():
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=3) for _ in range(4)]
    np.testing.assert_allclose(
        run(meta.build(meta.MetaConfig("adam", 0.1)), grads), run(optax.adam(0.1), grads)
    )
    np.testing.assert_allclose(
        run(meta.build(meta.MetaConfig("sgd", 0.1, momentum=0.5)), grads), run(optax.sgd(0.1, 0.5), grads)
    )


def test_clipping_bounds_the_hypergradient_norm():
    opt = meta.build(meta.MetaConfig("sgd", 1.0, momentum=0.0, clip=2.0))
    (u,) = run(opt, [np.array([30.0, 40.0])])
    np.testing.assert_allclose(u, [-1.2, -1.6])


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (meta.MetaConfig("lbfgs"), "meta.optimizer"),
        (meta.MetaConfig(learning_rate=0.0), "meta.learning_rate"),
        (meta.MetaConfig("sgd", momentum=1.0), "meta.momentum"),
        (meta.MetaConfig(clip=-1.0), "meta.clip"),
        (meta.MetaConfig(guard=meta.GuardConfig(jump_factor=0.5)), "meta.guard.jump_factor"),
        (meta.MetaConfig(guard=meta.GuardConfig(backoff=1.0)), "meta.guard.backoff"),
    ],
)
def test_bad_configs_name_the_field(config, field):
    with pytest.raises(meta.MetaConfigError) as err:
        meta.build(config)
    assert err.value.field == field and str(err.value).startswith(field)


def test_guard_accepts_ordinary_steps_and_remembers_their_norms():
    cfg = meta.GuardConfig(window=3)
    state = meta.GuardState()
    for k, norm in enumerate([1.0, 2.0, 1.5, 3.0]):
        event, state = meta.guard_check(cfg, state, k, 0.5, norm)
        assert event is None
    assert state.norms == (2.0, 1.5, 3.0) and state.scale == 1.0 and state.backoffs == 0


def test_guard_backs_off_on_nonfinite_and_on_jumps():
    cfg = meta.GuardConfig(jump_factor=10.0, backoff=0.5)
    state = meta.GuardState(norms=(1.0, 2.0, 3.0))
    event, state = meta.guard_check(cfg, state, 7, math.nan, 1.0)
    assert event.reason == "nonfinite" and event.meta_iter == 7 and event.scale == 0.5
    event, state = meta.guard_check(cfg, state, 8, 0.3, 21.0)
    assert event.reason == "jump" and event.scale == 0.25 and state.backoffs == 2
    assert state.norms == (1.0, 2.0, 3.0)
    event, state = meta.guard_check(cfg, state, 9, 0.3, 19.0)
    assert event is None and state.backoffs == 0 and state.scale == 0.25


def test_guard_gives_up_after_max_backoffs_and_can_be_disabled():
    cfg = meta.GuardConfig(max_backoffs=2)
    state = meta.GuardState()
    for k in range(2):
        event, state = meta.guard_check(cfg, state, k, math.inf, 1.0)
        assert event is not None
    with pytest.raises(meta.MetaDivergedError, match="backed off 2 times"):
        meta.guard_check(cfg, state, 2, math.inf, 1.0)
    event, _ = meta.guard_check(meta.GuardConfig(enabled=False), meta.GuardState(), 0, math.nan, math.nan)
    assert event is None
