"""Normalized LR+GD against the paper's equation, its perceptron limit and Theorem 6.1's bound."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import (inject_hyperparams, logistic_normalizer, normalized_lr_gd,
                            scale_by_normalized_lr_gd)


def _separable(n=40, dim=3, seed=0):
  rng = np.random.default_rng(seed)
  normal = rng.normal(size=dim)
  a = rng.normal(size=(n, dim))
  y = np.sign(a @ normal)
  return a, y


def _numpy_normalized_lr_gd(a, y, gamma, steps):
  """θ_{t+1} = θ_t - γ β_t ∇f(θ_t), β_t = (mean_i 1/(1 + exp(y_i a_i^T θ_t)))^{-1}, float64."""
  theta, thetas = np.zeros(a.shape[1]), []
  for _ in range(steps):
    weights = 1.0 / (1.0 + np.exp(y * (a @ theta)))
    grad = -np.mean((weights * y)[:, None] * a, axis=0)
    theta = theta - gamma / weights.mean() * grad
    thetas.append(theta)
  return np.stack(thetas)


def _ours(a, y, opt, steps):
  a, y = jnp.asarray(a, jnp.float32), jnp.asarray(y, jnp.float32)
  loss = lambda theta: jnp.mean(jax.nn.softplus(-y * (a @ theta)))
  theta = jnp.zeros(a.shape[1])
  state = opt.init(theta)

  @jax.jit
  def step(theta, state):
    updates, state = opt.update(jax.grad(loss)(theta), state, theta, margins=y * (a @ theta))
    return optax.apply_updates(theta, updates), state

  thetas = []
  for _ in range(steps):
    theta, state = step(theta, state)
    thetas.append(np.asarray(theta, np.float64))
  return np.stack(thetas)


def test_normalizer_matches_float64_formula():
  margins = np.concatenate([np.linspace(-30.0, 30.0, 50), np.linspace(80.0, 87.0, 5)])
  expected = 1.0 / np.mean(1.0 / (1.0 + np.exp(margins)))
  np.testing.assert_allclose(logistic_normalizer(jnp.asarray(margins, jnp.float32)), expected,
                             rtol=1e-5)
  # All margins large: β ≈ 1 / mean(exp(-m)), about 1.4e37, still finite and accurate in float32.
  large = np.array([85.0, 86.0, 87.0])
  np.testing.assert_allclose(logistic_normalizer(jnp.asarray(large)),
                             1.0 / np.mean(np.exp(-large)), rtol=1e-4)
  np.testing.assert_allclose(logistic_normalizer(jnp.zeros(7)), 2.0, rtol=1e-6)


def test_trajectory_matches_paper_equation():
  a, y = _separable()
  expected = _numpy_normalized_lr_gd(a, y, gamma=0.5, steps=10)
  got = _ours(a, y, normalized_lr_gd(0.5), steps=10)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_large_step_limit_is_the_normalized_batch_perceptron():
  """θ_t / γ -> θ̂_t with θ̂_{t+1} = θ̂_t + (1/|S_t|) Σ_{S_t} y_i a_i, S_t = {y_i a_i^T θ̂_t <= 0}
  (the paper's derivation of the method: ∇f -> -(1/n)Σ_{S_t} y_i a_i and β_t -> n/|S_t|)."""
  a, y = _separable(n=30, seed=1)
  gamma, steps = 1e4, 6
  got = _ours(a, y, normalized_lr_gd(gamma), steps) / gamma
  theta = np.zeros(a.shape[1])
  for t in range(steps):
    wrong = y * (a @ theta) <= 0
    if not wrong.any():
      break
    theta = theta + np.mean((y[wrong])[:, None] * a[wrong], axis=0)
    np.testing.assert_allclose(got[t], theta, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 100.0])
def test_theorem_6_1_bound_on_the_worst_case_dataset(gamma):
  """Theorem 6.1: at most R^2/μ^2 + 2 log(2n - 1)/(γ μ^2) iterations from θ_0 = 0. On the
  Theorem 5.1 dataset R^2 = 1.25 and μ = 0.5."""
  n = 200
  a = np.tile([-0.5, -1.0], (n, 1))
  a[0] = [0.5, -1.0]
  y = -np.ones(n)
  y[0] = 1.0
  bound = 1.25 / 0.25 + 2.0 * np.log(2 * n - 1) / (gamma * 0.25)
  thetas = _ours(a, y, normalized_lr_gd(gamma), steps=int(np.ceil(bound)))
  solved = [bool(np.all(y * (a @ theta) > 0)) for theta in thetas]
  assert any(solved)


def test_margins_are_required_and_saturation_gives_no_nan():
  opt = scale_by_normalized_lr_gd()
  g = jnp.array([1.0, -1.0])
  with pytest.raises(ValueError, match="margins"):
    opt.update(g, opt.init(g))
  updates, _ = opt.update(jnp.zeros(2), opt.init(g), margins=jnp.full(5, 500.0))
  np.testing.assert_array_equal(updates, jnp.zeros(2))


def test_inject_hyperparams_and_dtype():
  a, y = _separable(n=10)
  theta = jnp.asarray([0.1, -0.2, 0.3])
  margins = jnp.asarray(y, jnp.float32) * (jnp.asarray(a, jnp.float32) @ theta)
  g = jnp.array([0.3, 0.1, -0.2])
  plain = normalized_lr_gd(2.0)
  injected = inject_hyperparams(normalized_lr_gd)(learning_rate=2.0)
  u1, _ = plain.update(g, plain.init(theta), theta, margins=margins)
  u2, _ = jax.jit(injected.update)(g, injected.init(theta), theta, margins=margins)
  np.testing.assert_allclose(u1, u2, rtol=1e-6)
  np.testing.assert_allclose(u1, -2.0 * logistic_normalizer(margins) * g, rtol=1e-6)
  u3, _ = plain.update(g.astype(jnp.bfloat16), plain.init(theta), theta, margins=margins)
  assert u3.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="learning_rate"):
    normalized_lr_gd(-1.0)
