"""lookahead_sync against the Lookahead paper (NumPy) and optax.lookahead's fast/slow weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim

CURVATURE = {"w": np.array([[1.0, 0.3], [2.0, 0.5]], np.float32), "b": np.array([0.7, 1.5], np.float32)}


def _loss(params):
  return sum(0.5 * jnp.sum(CURVATURE[k] * params[k] ** 2) for k in params)


def _start():
  return {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([-1.0, 2.0])}


@pytest.mark.parametrize("k", [1, 3])
def test_trajectory_matches_the_papers_algorithm(k):
  """Algorithm 1 of arXiv:1907.08610 with SGD inside, in NumPy (gradient of the quadratic)."""
  alpha, lr, steps = 0.4, 0.2, 10
  optimizer = optax.chain(optax.sgd(lr), optim.lookahead_sync(k, alpha))
  params = _start()
  state = optimizer.init(params)
  step = jax.jit(lambda p, s: optimizer.update(jax.grad(_loss)(p), s, p))
  fast = {n: np.asarray(v, np.float64) for n, v in _start().items()}
  slow = {n: v.copy() for n, v in fast.items()}
  for t in range(1, steps + 1):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    fast = {n: v - lr * CURVATURE[n] * v for n, v in fast.items()}
    if t % k == 0:
      slow = {n: slow[n] + alpha * (fast[n] - slow[n]) for n in fast}
      fast = {n: v.copy() for n, v in slow.items()}
    for n in fast:
      np.testing.assert_allclose(params[n], fast[n], rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(optim.lookahead_slow_weights(state[1], params)[n], slow[n],
                                 rtol=1e-6, atol=1e-7)


def test_matches_optax_lookahead_fast_and_slow_weights():
  inner = optax.adam(0.1)
  ours = optax.chain(inner, optim.lookahead_sync(4, 0.5))
  theirs = optax.lookahead(inner, sync_period=4, slow_step_size=0.5)
  params = _start()
  la_params = optax.LookaheadParams.init_synced(_start())
  ours_state, theirs_state = ours.init(params), theirs.init(la_params)
  for _ in range(11):
    updates, ours_state = ours.update(jax.grad(_loss)(params), ours_state, params)
    params = optax.apply_updates(params, updates)
    la_updates, theirs_state = theirs.update(jax.grad(_loss)(la_params.fast), theirs_state, la_params)
    la_params = optax.apply_updates(la_params, la_updates)
    for n in params:
      np.testing.assert_allclose(params[n], la_params.fast[n], rtol=1e-6, atol=1e-7)
      ours_slow = optim.lookahead_slow_weights(ours_state[1], params)
      np.testing.assert_allclose(ours_slow[n], la_params.slow[n], rtol=1e-6, atol=1e-7)


def test_step_size_one_is_the_identity_and_dtype_is_kept():
  params = {"w": jnp.ones((2, 2), jnp.bfloat16)}
  transform = optim.lookahead_sync(1, 1.0)
  updates = {"w": jnp.full((2, 2), 0.25, jnp.bfloat16)}
  out, state = transform.update(updates, transform.init(params), params)
  assert out["w"].dtype == jnp.bfloat16 and state.slow["w"].dtype == jnp.float32
  np.testing.assert_array_equal(out["w"], updates["w"])


def test_float32_slow_weights_are_copied_from_the_params_one_step_late():
  """After a synchronising step the params hold φ and the state still the previous φ (flagged);
  the next update copies the params in. On the other steps the state holds φ itself."""
  transform = optim.lookahead_sync(2, 0.5)
  params = {"w": jnp.array([1.0, -2.0])}
  state = transform.init(params)
  history = []
  for u in ([0.5, 0.5], [1.0, -1.0], [0.25, 0.0]):
    updates, state = transform.update({"w": jnp.array(u)}, state, params)
    params = optax.apply_updates(params, updates)
    history.append((np.asarray(params["w"]), np.asarray(state.slow["w"]),
                    bool(state.slow_in_params)))
  # Step 1: fast (1.5, -1.5); step 2 synchronises: fast (2.5, -2.5), φ = (1, -2) + 0.5 (1.5, -0.5).
  np.testing.assert_allclose(history[0][0], [1.5, -1.5])
  np.testing.assert_allclose(history[0][1], [1.0, -2.0])
  assert not history[0][2]
  np.testing.assert_allclose(history[1][0], [1.75, -2.25])
  np.testing.assert_allclose(history[1][1], [1.0, -2.0])  # not copied yet
  assert history[1][2]
  np.testing.assert_allclose(history[2][1], [1.75, -2.25])  # copied at the next update
  assert not history[2][2]
  np.testing.assert_allclose(history[2][0], [2.0, -2.25])


@pytest.mark.parametrize("param_dtype, update_dtype",
                         [(jnp.bfloat16, jnp.bfloat16), (jnp.float32, jnp.bfloat16)])
def test_lower_precision_keeps_float32_slow_weights(param_dtype, update_dtype):
  """With bfloat16 params or updates, φ is computed and stored at the synchronising step in
  float32, not copied from the (rounded) params."""
  transform = optim.lookahead_sync(1, 0.5)
  params = {"w": jnp.array([1.0, 3.0], param_dtype)}
  state = transform.init(params)
  updates, state = transform.update({"w": jnp.array([2.0 ** -9, 1.0], update_dtype)}, state,
                                    params)
  assert not bool(state.slow_in_params) and state.slow["w"].dtype == jnp.float32
  # φ = 1 + 2^-10 (bfloat16 rounds it to 1) and 3.5.
  np.testing.assert_array_equal(state.slow["w"], np.array([1.0 + 2.0 ** -10, 3.5], np.float32))
  np.testing.assert_array_equal(optim.lookahead_slow_weights(state, params)["w"], state.slow["w"])


@pytest.mark.parametrize("kwargs, name", [
    (dict(sync_period=0), "sync_period"), (dict(sync_period=2.5), "sync_period"),
    (dict(slow_step_size=-0.1), "slow_step_size"), (dict(slow_step_size=1.1), "slow_step_size"),
])
def test_bad_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optim.lookahead_sync(**kwargs)
