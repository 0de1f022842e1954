"""JAX as the engine needs it; every engine module imports this before its first JAX operation.

- 64-bit integers: weights and velocities live in int64 fixed point (without x64, int64 silently
  becomes int32, so the engine asserts its dtypes too).
- Deterministic GPU reductions: the backward pass recomputes every gradient and must get the same
  bits as the forward pass. XLA reads the flag when the backend starts, so it is set at import.

The description half of hypercore (`vocab`, `families`, `rules`, `arrays`) never imports this.
"""

import os

if "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
