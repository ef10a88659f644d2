"""BCD (three-splitting, closed-form blocks) against the official notebook's update functions
re-expressed in torch (features x samples layout, explicit inverses, float64), the ReLU proximal
map against a brute-force minimization, the monotone decrease of the objective, and a sentinel
proving that no derivative is taken."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.local import bcd
from jaxlearn.local import bcd_init, bcd_objective, bcd_step, relu_prox

N, D0, HIDDEN, K = 24, 5, (6, 4), 3


def problem(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(N, D0)).astype(np.float32)
  y = np.eye(K, dtype=np.float32)[rng.integers(0, K, size=N)]
  return jnp.asarray(x), jnp.asarray(y)


def test_relu_prox_is_the_minimizer():
  rng = np.random.default_rng(0)
  a, c = rng.normal(size=(2, 60)) * 2
  g = rng.uniform(0.2, 6.0, size=60)
  ours = np.asarray(fast_jit(relu_prox)(jnp.asarray(a), jnp.asarray(c), jnp.asarray(g)), np.float64)
  grid = np.linspace(-8, 8, 16001)
  f = lambda u, a, c, g: 0.5 * (np.maximum(u, 0) - a) ** 2 + 0.5 * g * (u - c) ** 2
  best = grid[np.argmin(f(grid[None], a[:, None], c[:, None], g[:, None]), axis=1)]
  excess = f(ours, a, c, g) - f(best, a, c, g)
  assert excess.max() < 1e-5, excess.max()
  np.testing.assert_allclose(ours, best, atol=2e-3)


def torch_iteration(weights, biases, pre, post, x, y, gamma, rho, alpha):
  """One iteration of the official notebook's loop, generalized to len(weights) layers, with its
  layout (W: d_out x d_in, activations: d x n) and its explicit inverses, in float64 torch."""
  torch = pytest.importorskip("torch")
  t = lambda a: torch.tensor(np.asarray(a, np.float64))
  W = [t(w).T for w in weights]
  b = [t(v).reshape(-1, 1) for v in biases]
  U = [t(u).T for u in pre]
  V = [t(v).T for v in post]
  X, Y = t(x).T, t(y).T
  n = X.shape[1]
  relu = torch.nn.functional.relu

  def wb(u, v, w, bb):
    eye = torch.eye(v.shape[0], dtype=torch.float64)
    w_new = (alpha * w + rho * (u - bb) @ v.T) @ torch.inverse(alpha * eye + rho * v @ v.T)
    b_new = (alpha * bb + rho * torch.sum(u - w @ v, 1, keepdim=True)) / (rho * n + alpha)
    return w_new, b_new

  def vupdate(u, u_next, w, bb):
    eye = torch.eye(w.shape[1], dtype=torch.float64)
    return torch.inverse(rho * w.T @ w + gamma * eye) @ (rho * w.T @ (u_next - bb) + gamma * relu(u))

  def prox(a, c, g):
    s = a + g * c
    root = g - np.sqrt(g * (g + 1))
    out = torch.where(s < 0, torch.clamp(c, max=0), torch.zeros_like(c))
    out = torch.where(((s >= 0) & (c >= 0)) | ((a * root <= g * c) & (c < 0)), (a + g * c) / (1 + g), out)
    return torch.where((-a <= g * c) & (g * c <= a * root), c, out)

  inp = lambda i: X if i == 0 else V[i - 1]
  last = len(W) - 1
  V[last] = (Y + gamma * U[last] + alpha * V[last]) / (1 + gamma + alpha)
  U[last] = (gamma * V[last] + rho * (W[last] @ inp(last) + b[last])) / (gamma + rho)
  W[last], b[last] = wb(U[last], inp(last), W[last], b[last])
  for i in range(last - 1, -1, -1):
    V[i] = vupdate(U[i], U[i + 1], W[i + 1], b[i + 1])
    U[i] = prox(V[i], (rho * (W[i] @ inp(i) + b[i]) + alpha * U[i]) / (rho + alpha),
                (rho + alpha) / gamma)
    W[i], b[i] = wb(U[i], inp(i), W[i], b[i])
  return ([w.T.numpy() for w in W], [v.ravel().numpy() for v in b],
          [u.T.numpy() for u in U], [v.T.numpy() for v in V])


@pytest.mark.parity
def test_one_iteration_matches_the_official_notebook():
  x, y = problem()
  state = bcd_init(jax.random.key(0), x, HIDDEN, K, weight_scale=0.3)
  gamma, rho, alpha = 1.5, 0.7, 2.0
  ours = fast_jit(bcd_step)(state, x, y, gamma, rho, alpha)
  theirs = torch_iteration(*state, x, y, gamma, rho, alpha)
  for mine, ref in zip(ours, theirs):
    for a, r in zip(mine, ref):
      np.testing.assert_allclose(np.asarray(a), r, rtol=2e-4, atol=2e-5)


def test_objective_decreases_monotonically_without_any_derivative(monkeypatch):
  @jax.custom_jvp
  def sentinel_relu(v):
    return jnp.maximum(v, 0)

  @sentinel_relu.defjvp
  def _(primals, tangents):
    raise AssertionError("BCD differentiated its activation")

  with pytest.raises(AssertionError, match="differentiated"):  # the sentinel is live
    jax.grad(lambda v: jnp.sum(sentinel_relu(v)))(jnp.ones(3))
  monkeypatch.setattr(bcd, "_relu", sentinel_relu)
  x, y = problem(1)
  state = bcd_init(jax.random.key(1), x, HIDDEN, K)

  def run(state):
    def body(s, _):
      s = bcd_step(s, x, y, 1.0, 1.0, 5.0)
      return s, bcd_objective(s, x, y, 1.0, 1.0)
    return jax.lax.scan(body, state, None, length=8)[1]

  values = np.concatenate([[bcd_objective(state, x, y)], np.asarray(fast_jit(run)(state))])
  assert np.all(np.diff(values) <= 1e-5 * values[:-1]), values
  assert values[-1] < 0.5 * values[0]


def test_invalid_hyperparameters_raise():
  x, y = problem()
  state = bcd_init(jax.random.key(0), x, HIDDEN, K)
  for name, kwargs in (("gamma", {"gamma": 0.0}), ("rho", {"rho": -1.0}),
                       ("alpha", {"alpha": float("nan")})):
    with pytest.raises(ValueError, match=name):
      bcd_step(state, x, y, **kwargs)
  with pytest.raises(ValueError, match="hidden"):
    bcd_init(jax.random.key(0), x, (0,), K)
