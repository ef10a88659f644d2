"""ELR against the official code (github.com/shengliu66/ELR, `ELR/model/loss.py`, `elr_loss`).

The battery checks one call against a float64 transcription; here: the official training loop's
buffer (zeros, rows indexed by example id, updated before use, mean over the batch) through
`buffered_classifier`, traced hyperparameters, the precision of 1 - <t, p> for confident
examples, and the clamp's gradient against torch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.losses import buffered_classifier, elr_loss


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


class _OfficialELR:
  """The official `elr_loss` module transcribed in float64 NumPy (forward only)."""

  def __init__(self, num_examp, num_classes, beta, lam):
    self.target = np.zeros((num_examp, num_classes))
    self.beta, self.lam = beta, lam

  def forward(self, index, output, label):
    y_pred = np.clip(_softmax(output), 1e-4, 1.0 - 1e-4)
    self.target[index] = self.beta * self.target[index] + (1 - self.beta) * (
        y_pred / y_pred.sum(axis=1, keepdims=True))
    log_probs = np.log(_softmax(output))
    ce_loss = -np.mean(log_probs[np.arange(len(label)), label])
    elr_reg = np.mean(np.log(1 - (self.target[index] * y_pred).sum(axis=1)))
    return ce_loss + self.lam * elr_reg


def test_buffered_training_loop_matches_the_official_module():
  """Three steps over overlapping batches: the loss values and the whole buffer agree."""
  rng = np.random.default_rng(0)
  n, d, classes = 7, 3, 4
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.integers(0, classes, size=n).astype(np.int32)
  weights = [rng.normal(size=(d, classes)).astype(np.float32) for _ in range(3)]
  batches = [np.array([0, 3, 5]), np.array([3, 1, 6]), np.array([5, 0, 2])]

  loss = lambda z, labels, rows, epoch: elr_loss(z, labels, rows, beta=0.6, lam=2.5)
  init, loss_fn, _ = buffered_classifier(
      lambda params, inputs: inputs @ params, lambda key: weights[0],
      loss, jnp.zeros((n, classes)))
  step = fast_jit(loss_fn)
  _, state = init(jax.random.key(0))
  official = _OfficialELR(n, classes, beta=0.6, lam=2.5)
  for w, idx in zip(weights, batches):  # the parameters change between steps
    value, state = step(w, state, x[idx], y[idx], indices=idx, epoch=0)
    expected = official.forward(idx, x[idx].astype(np.float64) @ w, y[idx])
    np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(state["buffer"], official.target, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(state["buffer"])[4] == 0)  # never seen: still zeros


def test_hyperparameters_are_traceable():
  """beta and lam vmapped as traced scalars: one program, the reference's values."""
  rng = np.random.default_rng(1)
  z = rng.normal(size=(3, 5)).astype(np.float32)
  labels = np.array([0, 4, 2], np.int32)
  rows = (rng.dirichlet(np.ones(5), size=3) * 0.5).astype(np.float32)
  betas, lams = np.array([0.0, 0.5, 0.9], np.float32), np.array([0.0, 1.0, 7.0], np.float32)
  losses, new_rows = fast_jit(jax.vmap(
      lambda b, l: elr_loss(z, labels, rows, beta=b, lam=l)))(betas, lams)
  for k, (beta, lam) in enumerate(zip(betas, lams)):
    p = np.clip(_softmax(z), 1e-4, 1 - 1e-4)
    t = beta * rows + (1 - beta) * p / p.sum(-1, keepdims=True)
    expected = -np.log(_softmax(z))[np.arange(3), labels] + lam * np.log(1 - (t * p).sum(-1))
    np.testing.assert_allclose(losses[k], expected, rtol=1e-5)
    np.testing.assert_allclose(new_rows[k], t, rtol=1e-5, atol=1e-7)


def test_confident_prediction_on_its_running_target_keeps_precision():
  """t and p both on class 0 (1 - <t, p> ~ 1e-4): float32 within 1e-5 of float64.

  The official form 1 - sum(t * p) loses about 3 digits here in float32.
  """
  z = np.array([[14.0, 0.0, 0.0, 0.0], [9.0, 0.5, 0.0, -1.0]], np.float32)
  rows = np.array([[1.0, 0, 0, 0], [0.97, 0.01, 0.01, 0.01]], np.float32)
  labels = np.array([0, 0], np.int32)
  losses, _ = elr_loss(z, labels, rows, beta=0.9, lam=3.0)
  p = np.clip(_softmax(z), 1e-4, 1 - 1e-4)
  t = 0.9 * rows.astype(np.float64) + 0.1 * p / p.sum(-1, keepdims=True)
  expected = -np.log(_softmax(z))[:, 0] + 3.0 * np.log(1 - (t * p).sum(-1))
  np.testing.assert_allclose(losses, expected, rtol=2e-6)


@pytest.mark.parity
def test_value_and_gradient_match_torch_with_clamped_probabilities():
  """The official forward in torch, including a confident example whose probabilities are
  clamped (the clamp stops the regularizer's gradient through them)."""
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F

  z = np.array([[12.0, 0.0, -1.0, 0.5], [0.3, -0.2, 1.0, 0.1], [-3.0, 2.0, 1.0, 9.5]], np.float32)
  labels = np.array([0, 2, 1], np.int64)
  rows = np.array([[0.2, 0.1, 0.0, 0.0], [0.5, 0.2, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0]], np.float32)

  output = torch.tensor(z, dtype=torch.float64, requires_grad=True)
  y_pred = torch.clamp(F.softmax(output, dim=1), 1e-4, 1.0 - 1e-4)
  y_pred_ = y_pred.data.detach()
  target = 0.7 * torch.tensor(rows, dtype=torch.float64) + 0.3 * (
      y_pred_ / y_pred_.sum(dim=1, keepdim=True))
  official = F.cross_entropy(output, torch.tensor(labels)) + 3.0 * (
      (1 - (target * y_pred).sum(dim=1)).log()).mean()
  official.backward()

  ours = lambda logits: elr_loss(logits, labels.astype(np.int32), rows, beta=0.7, lam=3.0,
                                 reduction="mean")[0]
  value, grad = fast_jit(jax.value_and_grad(ours))(z)
  np.testing.assert_allclose(value, official.item(), rtol=1e-5)
  np.testing.assert_allclose(grad, output.grad.numpy(), rtol=1e-4, atol=1e-7)
