"""Optimistic AMSGrad against a NumPy transcription that keeps the half-iterates explicitly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import (inject_hyperparams, optimistic_amsgrad, rmpe_extrapolate,
                            scale_by_optimistic_amsgrad)
from tests.optim._helpers import run_optimizer


def _rmpe_numpy(sequence, ridge):
  x = sequence.reshape(len(sequence), -1)
  u = np.diff(x, axis=0)
  z = np.linalg.solve(u @ u.T + ridge * np.eye(len(u)), np.ones(len(u)))
  return ((z / z.sum()) @ x[1:]).reshape(sequence.shape[1:])


def _official_numpy(x0, grads, lr, b1, b2, eps, ridge, span):
  """Optadam_torch.step's equations in float64, with the auxiliary iterate w_{t+1/2} kept as in
  the official code (`aux_w`) and the prediction made by RMPE on the last span + 1 gradients."""
  half, theta, v, v_max, history = x0.copy(), 0.0, 0.0, 0.0, []
  for t, g in enumerate(grads, start=1):
    history.append(g)
    m = _rmpe_numpy(np.stack(history[-(span + 1):]), ridge) if t >= span + 1 else 0.0
    h = b1 * theta + (1 - b1) * m
    theta = b1 * theta + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g - m) ** 2
    v_max = np.maximum(v_max, v)
    step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    half = half - step * theta / (np.sqrt(v_max) + eps)
    w = half - step * h / (np.sqrt(v_max) + eps)
  return w


def test_rmpe_matches_numpy():
  seq = np.random.default_rng(0).normal(size=(5, 3, 2))
  np.testing.assert_allclose(rmpe_extrapolate(jnp.asarray(seq, jnp.float32), 0.1),
                             _rmpe_numpy(seq, 0.1), rtol=1e-4, atol=1e-5)


def test_rmpe_recovers_the_limit_of_a_geometric_sequence():
  """Minimal polynomial extrapolation is exact for x_k = x* + ρ^k d (one eigenvalue, r = 2)."""
  limit, direction = np.array([1.0, -2.0, 0.5]), np.array([3.0, 1.0, -2.0])
  seq = np.stack([limit + 0.7**k * direction for k in range(3)])
  got = rmpe_extrapolate(jnp.asarray(seq, jnp.float32), 1e-9)
  np.testing.assert_allclose(got, limit, atol=1e-3)
  assert np.linalg.norm(seq[-1] - limit) > 1.0  # the last point itself is far off


@pytest.mark.parametrize("span", [1, 3, 5])  # 9 steps: the history's ring wraps for each
def test_matches_official_equations(span):
  rng = np.random.default_rng(1)
  x0 = rng.normal(size=(4, 3))
  # Smoothly drifting gradients, so the extrapolation is well posed and actually used.
  grads = [np.sin(0.3 * t + np.arange(12).reshape(4, 3)) + 0.1 * rng.normal(size=(4, 3))
           for t in range(9)]
  expected = _official_numpy(x0, grads, 0.01, 0.9, 0.99, 1e-8, 1e-3, span)
  got, state = run_optimizer(optimistic_amsgrad(0.01, span=span), x0, grads)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  assert state[0].history.shape == (span + 1, 4, 3)


def test_large_leaf_matches_official_equations():
  """A leaf above `CACHED_SIZE` elements takes the other ring update (a scatter-add) and the
  variadic reduction: the same numbers, beside a small leaf, with the ring wrapped."""
  rng = np.random.default_rng(2)
  shapes = {"large": (257, 256), "small": (5,)}  # 65,792 > CACHED_SIZE = 65,536
  x0 = {k: rng.normal(size=s) for k, s in shapes.items()}
  grads = [{k: np.sin(0.3 * t + np.arange(np.prod(s)).reshape(s) / 7.0)
            + 0.1 * rng.normal(size=s) for k, s in shapes.items()} for t in range(6)]
  got, _ = run_optimizer(optimistic_amsgrad(0.01, span=2), x0, grads)
  for k in shapes:
    expected = _official_numpy(x0[k], [g[k] for g in grads], 0.01, 0.9, 0.99, 1e-8, 1e-3, 2)
    np.testing.assert_allclose(got[k], expected, rtol=1e-4, atol=1e-6)


def test_first_steps_without_history_use_zero_prediction():
  """Before span + 1 gradients the prediction is 0: v is AMSGrad's EMA of g^2."""
  opt = scale_by_optimistic_amsgrad(span=4)
  g = jnp.array([0.5, -1.0])
  _, state = opt.update(g, opt.init(g))
  np.testing.assert_allclose(state.nu, 0.01 * g**2, rtol=1e-6)


def test_state_keeps_the_root_of_the_running_maximum_of_v():
  """root_nu_max is sqrt(max_s v_s), bit for bit: v falls at the second step, the root stays."""
  opt = scale_by_optimistic_amsgrad(span=4)
  state = opt.init(jnp.zeros(2))
  nus = []
  for g in (jnp.array([2.0, -1.0]), jnp.array([0.1, -3.0])):
    _, state = opt.update(g, state)
    nus.append(state.nu)
  np.testing.assert_array_equal(state.root_nu_max, jnp.sqrt(jnp.maximum(*nus)))
  assert state.nu[0] < nus[0][0]  # the first entry's v fell; its root is the old one


def test_inject_hyperparams_keeps_the_keyword_only_span_static_under_jit():
  params = jnp.ones(3)
  grads = jnp.array([0.2, -0.4, 1.0])
  plain = optimistic_amsgrad(0.01, span=2)
  injected = inject_hyperparams(optimistic_amsgrad, static_args=("span",))(
      learning_rate=0.01, span=2)
  u1, _ = plain.update(grads, plain.init(params), params)
  u2, _ = jax.jit(injected.update)(grads, jax.jit(injected.init)(params), params)
  np.testing.assert_allclose(u1, u2, rtol=1e-5)
  # jaxlearn's inject_hyperparams keeps keyword-only options static without being told...
  loose = inject_hyperparams(optimistic_amsgrad)(learning_rate=0.01, span=2)
  u3, _ = jax.jit(loose.update)(grads, jax.jit(loose.init)(params), params)
  np.testing.assert_allclose(u1, u3, rtol=1e-5)
  # ...while optax's turns the integer span into a traced array, which cannot size the history.
  raw = optax.inject_hyperparams(optimistic_amsgrad)(learning_rate=0.01, span=2)
  with pytest.raises(ValueError, match="span"):
    jax.jit(raw.init)(params)


def test_dtypes():
  params = jnp.ones(3, jnp.bfloat16)
  opt = optimistic_amsgrad(0.01)
  updates, state = opt.update(jnp.ones(3, jnp.bfloat16), opt.init(params), params)
  assert updates.dtype == jnp.bfloat16
  assert state[0].history.dtype == jnp.float32
