"""Comp-sum losses: every member against its own closed form (float64 NumPy), CE against optax,
GCE against a transcription of the official LDR repository's `GCELoss`.

The loss battery checks targets, weights, reductions, dtypes and invalid inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.losses import comp_sum_loss, generalized_cross_entropy, mean_absolute_error_loss

RNG = np.random.default_rng(0)
LOGITS = (RNG.normal(size=(6, 5)) * 2).astype(np.float32)
LABELS = RNG.integers(0, 5, size=6).astype(np.int32)


def _p_y(logits, labels):
  h = np.asarray(logits, np.float64)
  p = np.exp(h - h.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return p[np.arange(len(labels)), labels]


def _official_gce(logits, labels, q, k=0.0):
  """ICML2023_LDR `loss.py` GCELoss.forward per example (NumPy, float64, no .cuda()):
  (1 - (1 / sum_k exp(h_k - h_y))^q) / q, truncated at (1 - k^q) / q (k = 0: inactive)."""
  h = np.asarray(logits, np.float64)
  one_hot = np.eye(h.shape[-1])[labels]
  diff = h - (h * one_hot).sum(1, keepdims=True)
  loss = (1 - (1 / np.exp(diff).sum(1)) ** q) / q
  return np.minimum(loss, (1 - k**q) / q)


def test_members_match_their_closed_forms():
  taus = jnp.array([0.0, 0.5, 1.0, 1.05, 1.7, 2.0, 3.0])
  # One program: the whole family vmapped over tau.
  losses = np.asarray(fast_jit(jax.vmap(lambda t: comp_sum_loss(LOGITS, LABELS, t)))(taus))
  p = _p_y(LOGITS, LABELS)
  u = (1 - p) / p
  np.testing.assert_allclose(losses[0], u, rtol=1e-5)  # sum-exponential
  np.testing.assert_allclose(losses[1], ((1 + u) ** 0.5 - 1) / 0.5, rtol=1e-5)
  np.testing.assert_allclose(
      losses[2], optax.losses.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS),
      rtol=1e-6)
  for i, q in ((3, 0.05), (4, 0.7)):  # GCE, q = tau - 1
    np.testing.assert_allclose(losses[i], _official_gce(LOGITS, LABELS, q), rtol=2e-5)
  np.testing.assert_allclose(losses[5], 1 - p, rtol=1e-5, atol=1e-7)  # MAE
  np.testing.assert_allclose(losses[6], (1 - p**2) / 2, rtol=1e-5)
  # The named members are the same functions.
  np.testing.assert_allclose(generalized_cross_entropy(LOGITS, LABELS, 0.7), losses[4],
                             rtol=1e-6)
  np.testing.assert_allclose(mean_absolute_error_loss(LOGITS, LABELS), losses[5], rtol=1e-6)


def test_continuous_across_tau_one_in_value_and_gradient():
  grad = fast_jit(jax.vmap(jax.grad(lambda h, t: jnp.sum(comp_sum_loss(h, LABELS, t))),
                           in_axes=(None, 0)))
  value = fast_jit(jax.vmap(lambda t: comp_sum_loss(LOGITS, LABELS, t)))
  taus = jnp.array([1.0 - 1e-4, 1.0, 1.0 + 1e-4])
  values, grads = np.asarray(value(taus)), np.asarray(grad(LOGITS, taus))
  np.testing.assert_allclose(values[0], values[1], rtol=1e-3)
  np.testing.assert_allclose(values[2], values[1], rtol=1e-3)
  np.testing.assert_allclose(grads[[0, 2]], grads[[1, 1]], rtol=1e-3, atol=1e-6)
  # The CE gradient is softmax - one_hot.
  p = np.asarray(jax.nn.softmax(LOGITS))
  np.testing.assert_allclose(grads[1], p - np.eye(5)[LABELS], rtol=1e-5, atol=1e-6)


def test_soft_targets_are_the_target_weighted_sum_of_label_losses():
  targets = RNG.dirichlet(np.ones(5), size=6).astype(np.float32)
  per_label = np.stack([
      np.asarray(comp_sum_loss(LOGITS, np.full(6, c, np.int32), 1.7)) for c in range(5)], -1)
  np.testing.assert_allclose(comp_sum_loss(LOGITS, targets, 1.7),
                             (targets * per_label).sum(-1), rtol=1e-5)


def test_large_gaps_finite_for_tau_at_least_one_and_overflow_below():
  """A gap of 1e4 against the label: GCE/MAE saturate at 1/q, CE is the gap, sum-exp overflows."""
  logits = np.array([[0.0, 1e4, -1e4]], np.float32)
  labels = np.array([0], np.int32)
  taus = jnp.array([0.0, 1.0, 1.7, 2.0])
  values = np.asarray(jax.vmap(lambda t: comp_sum_loss(logits, labels, t))(taus))[:, 0]
  assert np.isinf(values[0])  # exp(1e4): the true value overflows (battery exemption)
  np.testing.assert_allclose(values[1:], [1e4, 1 / 0.7, 1.0], rtol=1e-6)


def test_arguments_are_checked():
  for name, value in (("tau", -0.1), ("tau", np.inf)):
    with pytest.raises(ValueError, match=name):
      comp_sum_loss(LOGITS, LABELS, value)
  with pytest.raises(ValueError, match="q must be in"):
    generalized_cross_entropy(LOGITS, LABELS, 1.5)
  with pytest.raises(ValueError, match="at least 2 classes"):
    comp_sum_loss(np.zeros((3, 1), np.float32), np.zeros(3, np.int32))
