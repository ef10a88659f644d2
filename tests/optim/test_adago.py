"""AdaGO against a NumPy transcription of the paper's equations, and against pytorch-optimizer.

The transcription uses the exact polar factor (SVD); AdaGO is run with the classical cubic
Newton-Schulz iteration, which converges to it, so the comparison checks the step-size rule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

from jaxlearn.optim import adago, scale_by_adago
from jaxlearn._compile import fast_jit

STEPS = 5
CUBIC = {"ns_steps": 30, "ns_coefficients": (1.5, -0.5, 0.0)}  # converges to U V^T

def _polar(m):
  u, _, vt = np.linalg.svd(m, full_matrices=False)
  return u @ vt


def _adago_numpy(w, grads, lr, mu, gamma, eps, v0, wd, orth=_polar, square_root=True):
  """The paper's AdaGO on one matrix, in float64 (`lr(t)` a function of the step, from 0).

  `square_root=False` divides by the accumulated sum itself: pytorch-optimizer 4.1.0's rule.
  """
  m, acc = np.zeros_like(w), v0**2
  for t, g in enumerate(grads):
    m = mu * m + (1 - mu) * g
    clipped = min(np.linalg.norm(g), gamma)
    acc = acc + clipped**2
    alpha = max(eps, lr(t) * clipped / (np.sqrt(acc) if square_root else acc))
    w = w - lr(t) * wd * w - alpha * orth(m)
  return w


def _trajectory(opt, params, grads):
  """Final params and state of `opt` on the stacked gradients: one compiled program."""

  def step(carry, g):
    params, state = carry
    updates, state = opt.update(g, state, params)
    return (optax.apply_updates(params, updates), state), None

  def run(params, grads):
    return jax.lax.scan(step, (params, opt.init(params)), grads)[0]

  return fast_jit(run)(params, grads)


def test_matches_the_papers_equations():
  """Clipped norms (tall), the floor eps (wide, whose gradients shrink), one accumulator per
  scan-stacked matrix, a learning-rate schedule, decoupled weight decay; the bias: AdamW."""
  rng = np.random.default_rng(0)
  shapes = {"tall": (6, 4), "wide": (3, 5), "scan": (2, 4, 3), "bias": (3,)}
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  grads = {k: rng.normal(size=(STEPS,) + s) for k, s in shapes.items()}
  grads["tall"] *= 3.0  # norms ~ 15 > gamma
  grads["wide"][2:] *= 1e-4  # lr * min(|g|, gamma) / v < eps: the floor binds
  lr = optax.exponential_decay(0.05, 1, 0.9)
  hyper = dict(mu=0.9, gamma=10.0, eps=5e-4, v0=1e-3, wd=0.1)
  opt = adago(lr, 0.9, 10.0, 5e-4, 1e-3, weight_decay=0.1, **CUBIC)
  as32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  final, state = _trajectory(opt, as32(params), as32(grads))
  lr_of = lambda t: float(lr(t))
  for name in ("tall", "wide"):
    expected = _adago_numpy(params[name], grads[name], lr_of, **hyper)
    np.testing.assert_allclose(final[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)
  for i in range(2):
    expected = _adago_numpy(params["scan"][i], grads["scan"][:, i], lr_of, **hyper)
    np.testing.assert_allclose(final["scan"][i], expected, rtol=1e-5, atol=1e-6)
  accumulator = state.inner_states["matrix"].inner_state[0].accumulator
  assert accumulator["scan"].shape == (2,)  # one scalar per matrix
  norms = np.minimum(np.linalg.norm(grads["tall"], axis=(1, 2)), 10.0)
  np.testing.assert_allclose(accumulator["tall"], [1e-6 + np.sum(norms**2)], rtol=1e-6)
  bias = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1)
  expected, bias_state = jnp.asarray(params["bias"], jnp.float32), None
  bias_state = bias.init(expected)
  for g in as32(grads)["bias"]:
    step, bias_state = bias.update(g, bias_state, expected)
    expected = expected + step
  np.testing.assert_allclose(final["bias"], expected, rtol=1e-5)


@pytest.mark.parity
def test_pytorch_optimizer_divides_by_the_sum_without_the_square_root():
  """pytorch-optimizer 4.1.0's AdaGO is the paper's rule with v_t^2 in place of v_t.

  Its Newton-Schulz runs in bfloat16; the single step (a, b, c) = (1, 0, 0) reduces it to
  m / |m|_F, so that the comparison isolates the step size (bfloat16 tolerance). Its initial
  accumulator v = 1e-6 is our v0^2 for v0 = 1e-3.
  """
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(6, 4))  # flax (in, out); torch sees its transpose
  grads = [rng.normal(size=(6, 4)) * s for s in (0.3, 1.0, 4.0, 0.5)]
  hyper = dict(mu=0.95, gamma=2.0, eps=5e-4, v0=1e-3, wd=0.1)
  normalize = lambda m: m / np.linalg.norm(m)
  p = torch.nn.Parameter(torch.tensor(w0.T, dtype=torch.float32))
  ref = pytorch_optimizer.AdaGO(
      [{"params": [p], "use_muon": True}], lr=0.05, momentum=0.95, weight_decay=0.1, gamma=2.0,
      eps=5e-4, v=1e-6, ns_steps=1, ns_coeffs=(1.0, 0.0, 0.0))
  for g in grads:
    p.grad = torch.tensor(g.T, dtype=torch.float32)
    ref.step()
  theirs = p.detach().numpy().T
  without_root = _adago_numpy(w0, grads, lambda t: 0.05, **hyper, orth=normalize,
                              square_root=False)
  paper = _adago_numpy(w0, grads, lambda t: 0.05, **hyper, orth=normalize)
  np.testing.assert_allclose(theirs, without_root, rtol=2e-2, atol=2e-3)
  opt = adago(0.05, 0.95, 2.0, 5e-4, 1e-3, weight_decay=0.1, ns_steps=1,
              ns_coefficients=(1.0, 0.0, 0.0))
  ours, _ = _trajectory(opt, jnp.asarray(w0, jnp.float32),
                        jnp.asarray(np.stack(grads), jnp.float32))
  np.testing.assert_allclose(ours, paper, rtol=1e-5, atol=1e-6)
  # The difference is not rounding: the steps differ by far more than bfloat16's precision.
  assert np.abs(theirs - ours).max() > 10 * np.abs(theirs - without_root).max()


@pytest.mark.parametrize("kwargs, name", [
    ({"ns_steps": 0}, "ns_steps"),
    ({"gamma": 0.0}, "gamma"),
    ({"v0": 0.0}, "v0"),
    ({"eps": -1e-4}, "eps"),
    ({"momentum": 1.0}, "momentum"),
    ({"fallback": "adamw"}, "fallback"),
])
def test_bad_options_raise_with_their_name(kwargs, name):
  with pytest.raises(ValueError, match=name):
    adago(0.05, **kwargs)


def test_coefficients_must_fit_the_steps_and_vectors_need_the_fallback():
  with pytest.raises(ValueError, match="ns_coefficients"):
    adago(ns_steps=3, ns_coefficients=((1.0, 0.0, 0.0),) * 2)
  params = {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match="dimension_numbers"):
    adago(dimension_numbers=MuonDimensionNumbers(0, 1)).init(params)
  with pytest.raises(ValueError, match=r"scale_by_adago: leaf \['b'\]"):
    scale_by_adago().init(params)


def test_zero_learning_rate_gives_a_zero_finite_update():
  """alpha / lr is computed as max(eps / lr, ...): lr = 0 must not give 0 * inf. (The paper's
  alpha would be eps there; the alias's step lr * (alpha / lr) is 0: documented.)"""
  final, _ = _trajectory(adago(0.0), jnp.ones((3, 2)), jnp.ones((2, 3, 2)))
  np.testing.assert_array_equal(final, 1.0)
