"""Shared checks for the engine's tests."""

from __future__ import annotations

import numpy as np
import pytest

from hypercore.tune import hypergradient


def _hypergradients_match(problem, x0, *, eps: float, unrolled_keys=()) -> None:
    """The exact hypergradient of every learned hyperparameter in ``x0`` against plain reverse mode
    through the stored trajectory (to 1e-8 of its scale) and against central differences of the whole
    training along a random direction (to 1e-5). ``unrolled_keys`` take their differences through the
    unrolled engine (the reversible one quantises momentum, so its objective is piecewise constant in
    gamma)."""
    _, _, grad, report = hypergradient(problem, x0)
    assert report.exact
    _, _, grad_unrolled, _ = hypergradient(problem, x0, engine="unrolled")
    rng = np.random.default_rng(0)
    for key in x0:
        scale = np.max(np.abs(grad_unrolled[key]))
        assert scale > 0, key
        np.testing.assert_allclose(grad[key], grad_unrolled[key], rtol=0, atol=1e-8 * scale, err_msg=key)
        u = rng.normal(size=x0[key].shape)
        engine = "unrolled" if key in unrolled_keys else "reversible"

        def central(eps, key=key, u=u, engine=engine):
            f = lambda s: hypergradient(problem, {**x0, key: x0[key] + s * u}, engine=engine)[0]
            return (f(eps) - f(-eps)) / (2 * eps)

        # Richardson: O(eps^4) truncation, so eps can be large next to the fixed point's ~1e-11 noise
        fd = (4 * central(eps / 2) - central(eps)) / 3
        assert fd == pytest.approx(float(np.sum(grad[key] * u)), rel=1e-5), key


@pytest.fixture
def hypergradients_match():
    """`_hypergradients_match`: ``hypergradients_match(problem, x0, eps=..., unrolled_keys=...)``."""
    return _hypergradients_match
