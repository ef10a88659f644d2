"""The spherical Z-loss against float64 NumPy transcriptions (ours and the authors' Theano one).

The loss battery checks targets, weights, reductions, dtypes and invalid inputs; these tests
check the math: the paper's definition with a and b, the authors' own formula (a = 1, b = 0), the
shift/scale invariance, the lower bound, and why the variance is centred.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.losses import spherical_z_loss, z_scores


def _reference(logits, labels, a=1.0, b=0.0, eps=1e-12):
  """(1/a) softplus(a (b - z_y)), z = (o - mean) / sqrt(centred variance + eps), float64."""
  o = np.asarray(logits, np.float64)
  centred = o - o.mean(-1, keepdims=True)
  z = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)
  z_y = z[np.arange(len(labels)), labels]
  return np.logaddexp(0.0, a * (b - z_y)) / a


def _authors(logits, labels, dtype=np.float64):
  """The authors' Theano example (a = 1, b = 0): sigma = sqrt(E[o^2] - mu^2) + 1e-12."""
  o = np.asarray(logits, dtype)
  mu = o.mean(-1, keepdims=True)
  sigma = np.sqrt((o**2).mean(-1, keepdims=True) - mu**2) + dtype(1e-12)
  z_y = ((o - mu) / sigma)[np.arange(len(labels)), labels]
  return np.logaddexp(dtype(0), -z_y)


RNG = np.random.default_rng(0)
LOGITS = (RNG.normal(size=(6, 7)) * 3).astype(np.float32)
LABELS = RNG.integers(0, 7, size=6).astype(np.int32)


def test_matches_the_definition_and_the_authors_formula_and_is_shift_scale_invariant():
  # One program: the loss at (a, b) for the raw logits and for alpha * logits + beta.
  loss = fast_jit(lambda o, y, a, b: spherical_z_loss(o, y, a=a, b=b))
  for a, b in ((1.0, 0.0), (2.5, 0.7), (0.3, -1.0)):
    np.testing.assert_allclose(loss(LOGITS, LABELS, a, b), _reference(LOGITS, LABELS, a, b),
                               rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(loss(7.0 * LOGITS - 40.0, LABELS, a, b),
                               _reference(LOGITS, LABELS, a, b), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss(LOGITS, LABELS, 1.0, 0.0), _authors(LOGITS, LABELS),
                             rtol=2e-6)
  # z is standardized: zero mean and unit population variance per row.
  z = np.asarray(z_scores(LOGITS), np.float64)
  np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-6)
  np.testing.assert_allclose(z.var(-1), 1.0, rtol=1e-5)


def test_bounded_below_by_the_one_hot_configuration():
  """z_y <= sqrt(D - 1), reached when the label's logit is the only one that differs."""
  d, a, b = 7, 2.0, 1.0
  peaked = np.where(np.eye(d, dtype=bool), 5.0, -1.0).astype(np.float32)
  labels = np.arange(d, dtype=np.int32)
  bound = np.logaddexp(0.0, a * (b - np.sqrt(d - 1))) / a
  np.testing.assert_allclose(spherical_z_loss(peaked, labels, a=a, b=b), bound, rtol=1e-5)
  assert np.all(np.asarray(spherical_z_loss(LOGITS, LABELS, a=a, b=b)) > bound)


def test_centred_variance_survives_a_large_mean_where_the_authors_formula_does_not():
  """Logits 1e4 + a spread of order 1: E[o^2] - mu^2 cancels in float32, the centred form not."""
  logits = (1e4 + RNG.normal(size=(6, 7))).astype(np.float32)
  exact = _reference(logits.astype(np.float64), LABELS)
  ours = np.asarray(spherical_z_loss(logits, LABELS))
  # Float32 logits near 1e4 are spaced 1e-3 apart: that much error in the mean is inherent.
  np.testing.assert_allclose(ours, exact, rtol=2e-3)
  with np.errstate(invalid="ignore"):
    theirs = _authors(logits, LABELS, np.float32)
  # sqrt(E[o^2] - mu^2) is rounding noise of E[o^2] ~ 1e8: NaN or wrong by far more than 10%.
  assert np.sum(~(np.abs(theirs - exact) <= 0.1 * exact)) >= 3


def test_constant_logits_give_a_finite_gradient_and_eps_zero_does_not():
  constant = np.zeros((2, 4), np.float32)
  labels = np.array([0, 3], np.int32)
  grad = fast_jit(jax.grad(lambda o, eps: jnp.sum(spherical_z_loss(o, labels, eps=eps))))
  assert np.all(np.isfinite(grad(constant, 1e-12)))
  assert np.all(np.isnan(grad(constant, 0.0)))


def test_hyperparameters_are_traceable_and_checked():
  bs = jnp.array([-1.0, 0.0, 2.0])
  swept = jax.vmap(lambda b: spherical_z_loss(LOGITS, LABELS, b=b, reduction="mean"))(bs)
  expected = [_reference(LOGITS, LABELS, b=float(b)).mean() for b in bs]
  np.testing.assert_allclose(swept, expected, rtol=1e-5)
  for name, value in (("a", 0.0), ("a", -1.0), ("b", np.nan), ("eps", -1e-3)):
    with pytest.raises(ValueError, match=name):
      spherical_z_loss(LOGITS, LABELS, **{name: value})
  with pytest.raises(ValueError, match="at least 2 classes"):
    spherical_z_loss(np.zeros((3, 1), np.float32), np.zeros(3, np.int32))
