"""EnsLoss against a float64 NumPy transcription of the official `ensLoss.forward`, fed the same
normal draws; the calibration and convexity of the drawn derivatives; the weight convention.

The loss battery checks shapes, weights, reductions and dtypes (its reference freezes the
random coefficients, as here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.losses import ensloss, ensloss_derivatives

KEY = jax.random.key(3)


def _official(logits, labels, z, lam=0.0):
  """ensLoss.forward of statmlben/ensLoss (losses.py) per example, given its normal draws z:
  returns (surrogate g * s, g)."""
  s = (2.0 * np.asarray(labels, np.float64) - 1.0) * np.asarray(logits, np.float64)
  z = np.asarray(z, np.float64)
  with np.errstate(divide="ignore"):  # 0 ** (1 / lam) for lam < 0: inf, clipped to -1 below
    bc_inv = np.exp(z) if lam == 0 else np.maximum(1.0 + lam * z, 0.0) ** (1.0 / lam)
  rd_grad = np.maximum(np.sort(-bc_inv), -1.0)
  g = np.zeros_like(s)
  g[np.argsort(s, kind="stable")] = rd_grad
  g[s > 1.0] *= 1.0 / s[s > 1.0]
  g = g - 1e-6
  return g * s, g


def _draws(n, key=KEY):
  return np.asarray(jax.random.normal(key, (n,), jnp.float32))


RNG = np.random.default_rng(0)
LOGITS = (RNG.normal(size=12) * 2).astype(np.float32)
LABELS = RNG.integers(0, 2, size=12).astype(np.int32)


def test_value_and_gradient_match_the_official_forward():
  value_and_grad = fast_jit(jax.vmap(
      jax.value_and_grad(lambda f, lam: jnp.sum(ensloss(f, LABELS, KEY, lam=lam)),
                         argnums=0), in_axes=(None, 0)))
  lams = (0.0, 0.5, -0.7)
  values, grads = value_and_grad(LOGITS, jnp.array(lams))
  for i, lam in enumerate(lams):
    surrogate, g = _official(LOGITS, LABELS, _draws(12), lam)
    np.testing.assert_allclose(values[i], surrogate.sum(), rtol=1e-5)
    # The gradient in the score is (2y - 1) g: the sorted coefficients are stopped.
    np.testing.assert_allclose(grads[i], (2 * LABELS - 1) * g, rtol=1e-5, atol=1e-7)


def test_derivatives_are_calibrated_and_non_decreasing_in_the_margin():
  margins = np.concatenate([RNG.normal(size=40), [0.3, 0.3, 0.3]]).astype(np.float32)  # ties
  g = np.asarray(ensloss_derivatives(margins, KEY), np.float64)
  assert np.all(g < 0) and np.all(g >= -1 - 1e-6)
  # Below margin 1 (no tail division) the derivative does not decrease as the margin grows:
  # the drawn loss is convex there.
  low = margins <= 1
  order = np.argsort(margins[low], kind="stable")
  assert np.all(np.diff(g[low][order]) >= 0)
  # Ties are broken by position (stable): the earlier tied example gets the steeper value.
  tied = g[-3:]
  assert tied[0] <= tied[1] <= tied[2]


def test_weights_scale_the_surrogate_and_every_example_keeps_its_rank():
  weights = np.linspace(0.0, 2.0, 12).astype(np.float32)
  out = np.asarray(ensloss(LOGITS, LABELS, KEY, weights=weights))
  expected, _ = _official(LOGITS, LABELS, _draws(12))  # the whole batch is ranked
  np.testing.assert_allclose(out, weights * expected, rtol=1e-5, atol=1e-7)


def test_a_new_key_gives_new_coefficients_and_arguments_are_checked():
  a = np.asarray(ensloss(LOGITS, LABELS, jax.random.key(0)))
  b = np.asarray(ensloss(LOGITS, LABELS, jax.random.key(1)))
  assert not np.allclose(a, b)
  with pytest.raises(ValueError, match="labels must be in"):
    ensloss(LOGITS, np.full(12, 2, np.int32), KEY)
  with pytest.raises(ValueError, match="logits must be a 1-D"):
    ensloss(LOGITS[:, None], LABELS[:, None], KEY)
  with pytest.raises(ValueError, match="key must be a PRNG key"):
    ensloss(LOGITS, LABELS, 0)
  with pytest.raises(ValueError, match="lam"):
    ensloss(LOGITS, LABELS, KEY, lam=np.nan)
