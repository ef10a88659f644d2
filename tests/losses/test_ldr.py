"""LDR-KL and ALDR-KL against the official code (github.com/Optimization-AI/ICML2023_LDR).

The battery compares single calls with float64 transcriptions; here: the cross-entropy identity,
hand-computed values, the official `LDRLoss_V1` in torch (value and gradient), and the official
`ALDRLoss_V1` training loop (per-example lambdas indexed by example id) through
`buffered_classifier`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.losses import aldr_kl_loss, buffered_classifier, ldr_kl_loss, ldr_scores


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_without_margin_preprocessing_and_temperature_it_is_cross_entropy_minus_log_k():
  rng = np.random.default_rng(0)
  logits = (3 * rng.normal(size=(6, 5))).astype(np.float32)
  labels = rng.integers(0, 5, size=6).astype(np.int32)
  ours = ldr_kl_loss(logits, labels, margin=0.0, lam=1.0, softplus=False, normalize=False)
  cross_entropy = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(ours, cross_entropy - math.log(5), rtol=1e-5, atol=1e-6)


def test_equal_logits_by_hand():
  """Equal scores: d_k = c 1[k != y], and ALDR's prediction is uniform, so lambda = lam0."""
  logits = np.full((1, 3), 0.7, np.float32)
  labels = np.array([1], np.int32)
  expected = 10.0 * math.log((1 + 2 * math.exp(0.1 / 10.0)) / 3)
  np.testing.assert_allclose(ldr_kl_loss(logits, labels), [expected], rtol=1e-5)
  losses, lambdas = aldr_kl_loss(logits, labels, np.array([4.0], np.float32))
  np.testing.assert_allclose(lambdas, [10.0], rtol=1e-6)  # KL(uniform || uniform) = 0
  np.testing.assert_allclose(losses, [expected], rtol=1e-5)  # and no extra term


def test_softplus_normalisation_is_finite_where_the_official_form_is_zero_over_zero():
  """Every softplus(f) of the row underflows: the scores are the limit K softmax(f)."""
  logits = np.array([[-1e4, -1e4 - 1.0, -1e4 - 2.0]], np.float32)
  expected = 3 * _softmax(logits.astype(np.float64))
  np.testing.assert_allclose(ldr_scores(logits), expected, rtol=1e-5)


@pytest.mark.parity
def test_value_and_gradient_match_the_official_ldr_loss_v1_in_torch():
  """`LDRLoss_V1.forward` (official, batch mean over one-hot rows), run in torch."""
  torch = pytest.importorskip("torch")

  def official(y_pred, y_true, threshold, lam):  # the body of LDRLoss_V1.forward
    y_pred = torch.nn.functional.softplus(y_pred)
    y_denorm = torch.mean(y_pred, dim=1, keepdim=True)
    y_pred = y_pred / y_denorm
    diff_logits = threshold * (1 - y_true) + (
        y_pred - torch.sum(y_pred * y_true, dim=1, keepdim=True))
    diff_logits = diff_logits / lam
    max_diff = torch.max(diff_logits, dim=1, keepdim=True).values.detach()
    diff_logits = torch.exp(diff_logits - max_diff)
    loss = lam * (torch.log(torch.mean(diff_logits, dim=1, keepdim=True)) + max_diff)
    return loss.mean()

  rng = np.random.default_rng(1)
  logits = (2 * rng.normal(size=(5, 4))).astype(np.float32)
  labels = rng.integers(0, 4, size=5).astype(np.int32)
  for margin, lam in ((0.1, 10.0), (2.0, 1.0)):  # experiment.py's and the class defaults
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    value = official(z, torch.eye(4, dtype=torch.float64)[labels], margin, lam)
    value.backward()
    ours = lambda f: ldr_kl_loss(f, labels, margin=margin, lam=lam, reduction="mean")
    got, grad = fast_jit(jax.value_and_grad(ours))(logits)
    np.testing.assert_allclose(got, value.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=1e-4, atol=1e-7)


class _OfficialALDR:
  """`ALDRLoss_V1` (official, softplus=False) in float64 NumPy: the per-example lambda table."""

  def __init__(self, n, threshold, lam, alpha):
    self.lambda_ref, self.alpha, self.threshold = lam, alpha, threshold
    self.Lambda = np.full((n, 1), lam)

  def forward(self, y_pred, y_true, ids):
    num_class = y_pred.shape[1]
    y_pred = y_pred / (np.abs(y_pred).sum(1, keepdims=True) / num_class)
    pred_prob = _softmax(y_pred / self.Lambda[ids]) + 1e-5
    pred_prob = pred_prob / pred_prob.sum(1, keepdims=True)
    kl_reg = np.sum(pred_prob * np.log(num_class * pred_prob), axis=1, keepdims=True)
    log_k = np.log(num_class)
    self.Lambda[ids] = self.lambda_ref - self.lambda_ref * kl_reg / (self.alpha * log_k)
    lam = self.Lambda[ids]
    extra = -0.5 * self.alpha * log_k / self.lambda_ref * (lam - self.lambda_ref) ** 2
    diff = self.threshold * (1 - y_true) + y_pred - np.sum(y_pred * y_true, 1, keepdims=True)
    diff = diff / lam
    top = diff.max(1, keepdims=True)
    loss = lam * (np.log(np.exp(diff - top).mean(1, keepdims=True)) + top) + extra
    return loss.mean()


def test_aldr_training_loop_matches_the_official_lambda_table():
  """Three steps over overlapping batches: the batch losses and every lambda agree."""
  rng = np.random.default_rng(2)
  n, d, classes = 7, 3, 4
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.integers(0, classes, size=n).astype(np.int32)
  weights = [(3 * rng.normal(size=(d, classes))).astype(np.float32) for _ in range(3)]
  batches = [np.array([0, 3, 5]), np.array([3, 1, 6]), np.array([5, 0, 3])]

  loss = lambda z, labels, lambdas, epoch: aldr_kl_loss(
      z, labels, lambdas, margin=0.1, lam0=10.0, alpha=2.0)
  init, loss_fn, _ = buffered_classifier(
      lambda params, inputs: inputs @ params, lambda key: weights[0], loss,
      jnp.full((n,), 10.0))
  step = fast_jit(loss_fn)
  _, state = init(jax.random.key(0))
  official = _OfficialALDR(n, threshold=0.1, lam=10.0, alpha=2.0)
  for w, idx in zip(weights, batches):
    value, state = step(w, state, x[idx], y[idx], indices=idx, epoch=0)
    expected = official.forward(x[idx].astype(np.float64) @ w, np.eye(classes)[y[idx]], idx)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(state["buffer"], official.Lambda[:, 0], rtol=1e-5)
  assert np.all(np.asarray(state["buffer"])[[2, 4]] == 10.0)  # never seen
  assert np.all(np.asarray(state["buffer"]) > 5.0)  # lam0 (1 - 1 / alpha)
