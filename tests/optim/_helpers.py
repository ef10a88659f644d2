"""Helpers shared by the per-method optimizer tests."""

import jax
import jax.numpy as jnp
import optax


def run_optimizer(optimizer, params, grads):
  """Applies `optimizer` for each gradient in `grads` (NumPy pytrees); returns (params, state)."""
  params = jax.tree.map(jnp.asarray, params)
  state = optimizer.init(params)
  step = jax.jit(optimizer.update)
  for g in grads:
    updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
  return params, state
