"""Helpers shared by the per-method optimizer tests."""

import jax
import jax.numpy as jnp
import numpy as np
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


def compiled_donated_step(optimizer, params, compiler_options=None):
  """The compiled training step `(params, state, grads) -> (params, state)`, with params and
  state donated, for `params` (arrays or abstract ones) as gradients."""
  state = jax.eval_shape(optimizer.init, params)

  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options).lower(
      params, state, params).compile()


def assert_bfloat16_gradients_give_the_float32_state(transform, fields, params=None):
  """Three bfloat16 gradients leave `transform`'s state `fields` in float32 and equal to the
  state that the same gradients, cast to float32 first, give: the moments round nothing to
  bfloat16 on the way in."""
  rng = np.random.default_rng(5)
  grads = [jnp.asarray(rng.normal(size=(4, 3)), jnp.bfloat16) for _ in range(3)]
  params = jnp.zeros((4, 3)) if params is None else params
  low = high = transform.init(params)
  for g in grads:
    low = transform.update(g, low, params)[1]
    high = transform.update(g.astype(jnp.float32), high, params)[1]
  for name in fields:
    assert getattr(low, name).dtype == jnp.float32, name
    np.testing.assert_array_equal(getattr(low, name), getattr(high, name), err_msg=name)
