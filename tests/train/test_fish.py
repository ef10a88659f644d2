"""Fish against a NumPy transcription of DomainBed's Fish.update and the paper's expansion."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.train import fish


def _regression_loss(w, x, y):
  return jnp.mean((x @ w - y) ** 2)


def _numpy_fish_adam(w, xs, ys, steps, lr, meta_lr, b1=0.9, b2=0.999, eps=1e-8):
  """DomainBed's Fish.update with torch.optim.Adam (no weight decay), in float64.

  The inner Adam's moments and step count persist across outer steps (`optimizer_inner_state`).
  """
  m, v, t = np.zeros_like(w), np.zeros_like(w), 0
  for outer in range(steps):
    clone = w.copy()
    for x, y in zip(xs[outer], ys[outer]):
      grad = 2.0 * x.T @ (x @ clone - y) / len(y)
      t += 1
      m = b1 * m + (1 - b1) * grad
      v = b2 * v + (1 - b2) * grad**2
      m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
      clone = clone - lr * m_hat / (np.sqrt(v_hat) + eps)
    w = w + meta_lr * (clone - w)
  return w


def test_matches_domainbed_with_a_persistent_inner_adam():
  rng = np.random.default_rng(0)
  steps, domains, batch, dim = 3, 3, 6, 4
  xs = rng.normal(size=(steps, domains, batch, dim)).astype(np.float32)
  ys = rng.normal(size=(steps, domains, batch)).astype(np.float32)
  w0 = rng.normal(size=dim).astype(np.float32)
  training = fish(_regression_loss, optax.adam(0.05), meta_learning_rate=0.5)

  def run(w, xs, ys):
    state = training.init(w, jax.random.key(0))
    state, metrics = jax.lax.scan(
        lambda s, b: training.step(s, b, jax.random.key(1)), state, (xs, ys))
    return state.params, metrics["loss"]

  params, losses = fast_jit(run)(w0, xs, ys)
  expected = _numpy_fish_adam(w0.astype(np.float64), xs, ys, steps, 0.05, 0.5)
  np.testing.assert_allclose(params, expected, rtol=2e-5, atol=2e-6)
  # 'loss' is the mean domain loss at the incoming parameters of each step.
  first = np.mean([np.mean((x @ w0 - y) ** 2) for x, y in zip(xs[0], ys[0])])
  np.testing.assert_allclose(losses[0], first, rtol=1e-5)


def test_first_order_expansion_is_exact_on_quadratic_domains():
  """Two quadratic domains L_d = 0.5 w^T A_d w - b_d^T w, SGD inner steps of size a, meta_lr 1:
  clone - w = -a (g1 + g2) + a^2 A2 g1; averaged over both orders, -a (g1 + g2) +
  (a^2 / 2) grad(g1 . g2) with grad(g1 . g2) = A1 g2 + A2 g1 (hand-derived)."""
  rng = np.random.default_rng(1)
  dim, a = 3, 0.1
  mats = []
  for _ in range(2):
    q = rng.normal(size=(dim, dim))
    mats.append(q @ q.T / dim + np.eye(dim))
  mats = np.stack(mats).astype(np.float32)
  vecs = rng.normal(size=(2, dim)).astype(np.float32)
  w = rng.normal(size=dim).astype(np.float32)

  def loss_fn(params, mat, vec):
    return 0.5 * params @ mat @ params - vec @ params

  training = fish(loss_fn, optax.sgd(a), meta_learning_rate=1.0)

  def both_orders(w, mats, vecs):
    state = training.init(w, jax.random.key(0))
    forward, _ = training.step(state, (mats, vecs), jax.random.key(0))
    backward, _ = training.step(state, (mats[::-1], vecs[::-1]), jax.random.key(0))
    return forward.params, backward.params

  forward, backward = fast_jit(both_orders)(w, mats, vecs)
  m = mats.astype(np.float64)
  g1, g2 = m[0] @ w - vecs[0], m[1] @ w - vecs[1]
  np.testing.assert_allclose(forward - w, -a * (g1 + g2) + a**2 * m[1] @ g1, rtol=1e-4, atol=1e-6)
  inner_product_grad = m[0] @ g2 + m[1] @ g1
  average = 0.5 * (forward + backward) - w
  np.testing.assert_allclose(average, -a * (g1 + g2) + 0.5 * a**2 * inner_product_grad,
                             rtol=1e-4, atol=1e-6)


def test_shuffled_domains_visit_both_orders():
  """shuffle_domains=True: every step equals one of the two fixed-order steps, and over a few
  keys both orders occur."""
  rng = np.random.default_rng(2)
  xs = rng.normal(size=(2, 5, 3)).astype(np.float32)
  ys = rng.normal(size=(2, 5)).astype(np.float32)
  w = rng.normal(size=3).astype(np.float32)
  fixed = fish(_regression_loss, optax.sgd(0.2))
  shuffled = fish(_regression_loss, optax.sgd(0.2), shuffle_domains=True)

  def compare(w, xs, ys, keys):
    key = jax.random.key(0)
    forward = fixed.step(fixed.init(w, key), (xs, ys), key)[0].params
    backward = fixed.step(fixed.init(w, key), (xs[::-1], ys[::-1]), key)[0].params
    step = lambda k: shuffled.step(shuffled.init(w, k), (xs, ys), k)[0].params
    return forward, backward, jax.vmap(step)(keys)

  forward, backward, results = fast_jit(compare)(w, xs, ys, jax.random.split(jax.random.key(3), 8))
  is_forward = np.all(np.isclose(results, forward, rtol=1e-6), axis=1)
  is_backward = np.all(np.isclose(results, backward, rtol=1e-6), axis=1)
  assert not np.allclose(forward, backward)
  assert np.all(is_forward | is_backward) and is_forward.any() and is_backward.any()


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="meta_learning_rate"):
    fish(_regression_loss, optax.sgd(0.1), meta_learning_rate=0.0)
  with pytest.raises(ValueError, match="shuffle_domains"):
    fish(_regression_loss, optax.sgd(0.1), shuffle_domains=1)
  training = fish(_regression_loss, optax.sgd(0.1))
  state = training.init(np.zeros(2, np.float32), jax.random.key(0))
  with pytest.raises(ValueError, match="leading domain axis"):
    training.step(state, (np.ones((2, 3, 2), np.float32), np.ones((3, 3), np.float32)),
                  jax.random.key(0))
