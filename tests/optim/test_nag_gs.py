"""NAG-GS against NumPy transcriptions of the paper's algorithm and of the official code."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import inject_hyperparams, nag_gs

RNG = np.random.default_rng(0)
Q = RNG.normal(size=(6, 6))
A = Q @ np.diag(np.logspace(-2, 0, 6)) @ Q.T / 6.0  # a small ill-conditioned quadratic
X0 = RNG.normal(size=6)


def grad_f(x):
  return A @ x


def _paper(alpha, mu, gamma, steps):
  """The paper's algorithm, v_0 = x_0: x-step, b_k with γ_k, γ-step, v-step at ∇f(x_{k+1})."""
  x, v, xs = X0.copy(), X0.copy(), []
  a = alpha / (1 + alpha)
  for _ in range(steps + 1):
    x = (1 - a) * x + a * v
    b = alpha * mu / (alpha * mu + gamma)
    gamma = (1 - a) * gamma + a * mu
    v = (1 - b) * v + b * x - b / mu * grad_f(x)
    xs.append(x)
  return xs  # xs[k] = x_{k+1}; x_1 = x_0 because v_0 = x_0


def _official_jax(alpha, mu, gamma, steps):
  """skolai/nag-gs `scale_by_nag_gs`: no v-step at count 0, v-step with the state's γ after the
  previous γ-update, then γ-update, then the x-step."""
  x, v, xs = X0.copy(), X0.copy(), []
  for count in range(steps):
    if count > 0:
      v = (gamma * v + alpha * mu * x - alpha * grad_f(x)) / (alpha * mu + gamma)
    gamma = (alpha * mu + gamma) / (1 + alpha)
    x = x + alpha / (1 + alpha) * (v - x)
    xs.append(x)
  return xs


def _ours(opt, steps):
  x = jnp.asarray(X0, jnp.float32)
  state = opt.init(x)
  step = jax.jit(opt.update)
  xs = []
  for _ in range(steps):
    u, state = step(jnp.asarray(A, jnp.float32) @ x, state, x)
    x = optax.apply_updates(x, u)
    xs.append(np.asarray(x, np.float64))
  return xs, state


@pytest.mark.parametrize("alpha, mu, gamma", [(0.05, 1.0, 1.5), (0.7, 0.3, 2.0), (5.0, 1.0, 1.0)])
def test_matches_paper_algorithm(alpha, mu, gamma):
  steps = 12
  ours, state = _ours(nag_gs(alpha, mu, gamma), steps)
  paper = _paper(alpha, mu, gamma, steps)
  # Our step t produces the paper's x_{t+2} (its first x-step is a no-op with v_0 = x_0).
  np.testing.assert_allclose(np.stack(ours), np.stack(paper[1:]), rtol=1e-5, atol=1e-6)
  assert int(state.count) == steps


def test_official_jax_code_lags_one_step_and_shifts_gamma():
  """With γ_0 = μ, γ never moves and the official JAX code is ours delayed by one step (its first
  update is zero); with γ_0 ≠ μ its v-step uses γ_{k+1} and the iterates differ."""
  steps = 10
  ours, _ = _ours(nag_gs(0.4, 1.0, 1.0), steps)
  official = _official_jax(0.4, 1.0, 1.0, steps + 1)
  np.testing.assert_allclose(official[0], X0, atol=1e-12)
  np.testing.assert_allclose(np.stack(ours), np.stack(official[1:]), rtol=1e-5, atol=1e-6)
  ours, _ = _ours(nag_gs(0.4, 1.0, 3.0), steps)
  official = _official_jax(0.4, 1.0, 3.0, steps + 1)
  assert not np.allclose(np.stack(ours), np.stack(official[1:]), rtol=1e-3)


def test_stable_for_large_steps_when_mu_dominates_curvature():
  """For f = λx²/2 and α → ∞ the iteration tends to x <- (1 - λ/μ) x: stable for λ < 2μ, where
  heavy-ball momentum 0.9 diverges once lr > 2 (1 + 0.9) / λ."""
  for alpha in (10.0, 1e3, 1e6):
    x = jnp.array([1.0])
    opt = nag_gs(alpha, mu=1.0, gamma=1.0)
    state = opt.init(x)
    for _ in range(50):
      u, state = opt.update(1.5 * x, state, x)
      x = x + u
    assert abs(float(x[0])) < 1e-3
  x = jnp.array([1.0])
  sgd = optax.sgd(10.0, momentum=0.9)
  state = sgd.init(x)
  for _ in range(20):
    u, state = sgd.update(1.5 * x, state)
    x = x + u
  assert abs(float(x[0])) > 1e3  # diverged (20 steps: still finite in float32)


def test_schedule_vmap_and_inject_hyperparams():
  x = jnp.asarray(X0, jnp.float32)
  g = jnp.asarray(A, jnp.float32) @ x
  plain = nag_gs(0.3, 0.5, 1.2)
  injected = inject_hyperparams(nag_gs)(learning_rate=0.3, mu=0.5, gamma=1.2)
  u1, _ = plain.update(g, plain.init(x), x)
  u2, _ = jax.jit(injected.update)(g, injected.init(x), x)
  np.testing.assert_allclose(u1, u2, rtol=1e-5, atol=1e-7)
  scheduled = nag_gs(optax.constant_schedule(0.3), 0.5, 1.2)
  u3, _ = jax.jit(scheduled.update)(g, scheduled.init(x), x)
  np.testing.assert_allclose(u1, u3, rtol=1e-6)

  def first_step(alpha):
    opt = nag_gs(alpha)
    return opt.update(g, opt.init(x), x)[0]

  batched = jax.jit(jax.vmap(first_step))(jnp.array([0.05, 0.3]))
  # a (v - x) cancels: compare with an absolute floor at float32 resolution of x.
  np.testing.assert_allclose(batched[1], nag_gs(0.3).update(g, nag_gs(0.3).init(x), x)[0],
                             rtol=1e-5, atol=1e-7)


def test_zero_step_is_no_update_and_dtype_kept():
  x = jnp.ones(3, jnp.bfloat16)
  opt = nag_gs(0.0)
  state = opt.init(x)
  u, state = opt.update(jnp.ones(3, jnp.bfloat16), state, x)
  assert u.dtype == jnp.bfloat16 and state.v.dtype == jnp.float32
  np.testing.assert_array_equal(u, jnp.zeros(3))
