"""Grams against a NumPy transcription of the official code and against pytorch-optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import grams, inject_hyperparams, scale_by_grams

STEPS = 6


def _gradients(seed=0, shape=(3, 4), steps=STEPS, scale=1.0):
  rng = np.random.default_rng(seed)
  # Magnitudes over six decades, so eps and the bias corrections both matter.
  return [scale * rng.normal(size=shape) * 10.0 ** rng.uniform(-6, 0, size=shape)
          for _ in range(steps)]


def _official_numpy(x0, grads, lr, b1, b2, eps, wd, correct_bias=True):
  """grams-pytorch 0.0.2 (`Grams.step`), transcribed to NumPy in float64."""
  x, m, v = x0.copy(), np.zeros_like(x0), np.zeros_like(x0)
  for t, g in enumerate(grads, start=1):
    x = x - lr * wd * x
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = lr * np.sqrt(1 - b2**t) / (1 - b1**t) if correct_bias else lr
    x = x - step * np.sign(g) * np.abs(m) / (np.sqrt(v) + eps)
  return x


def _run(opt, x0, grads):
  params = jnp.asarray(x0, jnp.float32)
  state = opt.init(params)
  step = jax.jit(opt.update)
  for g in grads:
    updates, state = step(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params, np.float64)


@pytest.mark.parametrize("correct_bias", [True, False])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_official_code(correct_bias, wd):
  x0 = np.random.default_rng(1).normal(size=(3, 4))
  grads = _gradients()
  expected = _official_numpy(x0, grads, 0.01, 0.9, 0.999, 1e-6, wd, correct_bias)
  got = _run(grams(0.01, weight_decay=wd, correct_bias=correct_bias), x0, grads)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_update_sign_is_gradient_sign():
  """The defining invariant: each coordinate moves against its current gradient (or not at all)."""
  opt = scale_by_grams()
  state = opt.init(jnp.zeros(50))
  rng = np.random.default_rng(2)
  for _ in range(20):
    # Correlated but sign-flipping gradients: momentum and gradient often disagree.
    g = jnp.asarray(rng.normal(size=50) + 0.5 * np.sin(np.arange(50)), jnp.float32)
    u, state = opt.update(g, state)
    agree = (jnp.sign(u) == jnp.sign(g)) | (u == 0)
    assert bool(jnp.all(agree))
    assert bool(jnp.all((u != 0) | (g == 0) | (state.mu == 0)))


def test_first_step_is_signed_unit_step():
  """t = 1: |m_1| / sqrt(v_1) = 1 - b1 over sqrt(1 - b2), which c_1 cancels exactly (eps = 0)."""
  g = jnp.array([3.0, -0.02, 0.0])
  u, _ = scale_by_grams(eps=0.0).update(g, scale_by_grams(eps=0.0).init(g))
  # rtol: b2 = 0.999 is not exact in float32, which leaves 1 - b2^t off by ~1e-5 relative.
  np.testing.assert_allclose(u[:2], [1.0, -1.0], rtol=3e-5)
  assert float(u[2]) == 0.0  # a zero gradient gives no step, not 0/0


@pytest.mark.parity
def test_matches_pytorch_optimizer_when_eps_is_zero():
  """Same algorithm: pytorch-optimizer 4.1.0's first moment is the usual EMA (weight 1 - b1)."""
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  x0 = np.random.default_rng(3).normal(size=(3, 4))
  grads = _gradients(seed=4, steps=8)
  p = torch.nn.Parameter(torch.tensor(x0))
  ref = pytorch_optimizer.Grams([p], lr=0.01, betas=(0.9, 0.999), eps=0.0, weight_decay=0.05)
  for g in grads:
    p.grad = torch.tensor(g)
    ref.step()
  # The EMA convention itself: after one step exp_avg must be (1 - b1) g, not b1 g.
  q = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
  single = pytorch_optimizer.Grams([q], lr=0.01, eps=0.0)
  q.grad = torch.tensor([1.0, -2.0], dtype=torch.float64)
  single.step()
  np.testing.assert_allclose(single.state[q]["exp_avg"].numpy(), [0.1, -0.2])
  got = _run(grams(0.01, eps=0.0, weight_decay=0.05), x0, grads)
  np.testing.assert_allclose(got, p.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parity
def test_eps_placement_differs_from_pytorch_optimizer():
  """pytorch-optimizer adds eps after the bias correction; the official code (and we) before it.

  With small gradients early in training the two steps differ; ours is the official one.
  """
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  x0 = np.zeros(4)
  grads = [np.full(4, 1e-6) * s for s in (1.0, -2.0, 3.0)]
  p = torch.nn.Parameter(torch.tensor(x0))
  ref = pytorch_optimizer.Grams([p], lr=0.01, eps=1e-6)
  for g in grads:
    p.grad = torch.tensor(g)
    ref.step()
  ours = _run(grams(0.01, eps=1e-6), x0, grads)
  official = _official_numpy(x0, grads, 0.01, 0.9, 0.999, 1e-6, 0.0)
  np.testing.assert_allclose(ours, official, rtol=1e-5)
  assert not np.allclose(ours, p.detach().numpy(), rtol=1e-2)


def test_inject_hyperparams_with_mask_matches_plain():
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  mask = lambda p: {"w": True, "b": False}
  grads = jax.tree.map(lambda p: 0.3 * p, params)
  plain = grams(0.1, weight_decay=0.5, weight_decay_mask=mask)
  injected = inject_hyperparams(grams)(
      learning_rate=0.1, weight_decay=0.5, weight_decay_mask=mask
  )
  u1, _ = plain.update(grads, plain.init(params), params)
  u2, _ = jax.jit(injected.update)(grads, injected.init(params), params)
  # Injected betas are float32 arrays, plain ones Python floats: equal up to float32 rounding.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5), u1, u2)
  # The mask is honoured: the bias gets no decay, so its update is the pure Grams step.
  u3, _ = grams(0.1).update(grads, grams(0.1).init(params), params)
  np.testing.assert_allclose(u2["b"], u3["b"], rtol=2e-5)
  assert not np.allclose(u2["w"], u3["w"])


def test_bfloat16_gradients_keep_dtype_and_float32_state():
  params = jnp.ones(4, jnp.bfloat16)
  opt = grams(0.1)
  state = opt.init(params)
  updates, state = opt.update(jnp.full(4, 0.5, jnp.bfloat16), state, params)
  assert updates.dtype == jnp.bfloat16
  assert state[0].mu.dtype == jnp.float32
