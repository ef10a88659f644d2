"""AutoSparse against a NumPy transcription of the formulas of the THIRD-PARTY PQuant
implementation (github.com/nroope/PQuant, ``pruning_methods/autosparse.py``; the paper's own
equations could not be read): the annealed ReLU, the sparse weight and its gradients, and the
per-epoch alpha decay.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")  # few-step programs: compile unoptimized


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_autosparse(w, tau, alpha, upstream):
  """sign(W) * ReLU(|W| - sigmoid(tau)), the ReLU's gradient 1 above zero and alpha at or below;
  returns (W_sparse, dL/dW, dL/dtau summed to tau's shape)."""
  u = np.abs(w) - sigmoid(tau)
  slope = np.where(u > 0, 1.0, alpha)
  sparse = np.sign(w) * np.maximum(u, 0.0)
  grad_u = upstream * np.sign(w) * slope
  grad_w = grad_u * np.sign(w)
  grad_tau = -grad_u * sigmoid(tau) * (1 - sigmoid(tau))
  axes = tuple(range(grad_tau.ndim - np.ndim(tau)))  # broadcast axes of tau
  grad_tau = grad_tau.sum(axis=axes)
  keep = tuple(i for i, s in enumerate(np.shape(tau)) if s == 1)
  return sparse, grad_w, grad_tau.sum(axis=keep, keepdims=True) if keep else grad_tau


def test_sparse_weight_and_gradients_match_the_transcription():
  rng = np.random.default_rng(0)
  w = rng.normal(scale=0.5, size=(6, 4)).astype(np.float32)
  w[0, 0] = 0.0
  upstream = rng.normal(size=w.shape).astype(np.float32)
  taus = [np.float32(-0.5), rng.normal(size=(4,)).astype(np.float32),
          rng.normal(size=(6, 4)).astype(np.float32)]  # layer-, channel-, weight-wise

  @jax.jit
  def run(w, taus, upstream, alpha):  # alpha traced: one program for all of them
    out = []
    for tau in taus:
      y, vjp = jax.vjp(lambda w, t: jnn.autosparse_weight(w, t, alpha), w, tau)
      out.append((y, *vjp(upstream)))
    return out

  for alpha in (0.0, 0.3, 1.0):
    for tau, (y, grad_w, grad_tau) in zip(taus, run(w, taus, upstream, alpha)):
      sparse, want_w, want_tau = np_autosparse(w.astype(np.float64), tau.astype(np.float64),
                                               alpha, upstream)
      np.testing.assert_allclose(y, sparse, rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(grad_w, want_w, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(grad_tau, want_tau, rtol=1e-5, atol=1e-6)
    assert np.mean(np.asarray(y) == 0) > 0.2  # something is pruned at these thresholds


def np_alpha_per_epoch(alpha, total, reset_epoch=None):
  """PQuant's post_epoch_function (no autotune epochs): alpha *= cosine_sigmoid(epoch, T) after
  each epoch, alpha *= 0 after the reset epoch; returns the alpha used during every epoch."""
  def decay(i, t):
    return max((1 + math.cos(math.pi * i / t)) / 2, 1 - 1 / (1 + math.exp(-(-6 + 12 * i / t))))
  used = []
  for epoch in range(total):
    used.append(alpha)
    alpha *= decay(epoch, total)
    if epoch == reset_epoch:
      alpha *= 0.0
  return used


def test_gradient_annealing_schedule_matches_the_per_epoch_decay():
  total = 12
  epochs = jnp.arange(total)
  ours, reset = jax.jit(lambda e: (
      jax.vmap(lambda e: jnn.gradient_annealing_alpha(e, total))(e),
      jax.vmap(lambda e: jnn.gradient_annealing_alpha(e, total, alpha=0.8, reset_epoch=8))(e),
  ))(epochs)
  np.testing.assert_allclose(ours, np_alpha_per_epoch(0.5, total), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(reset, np_alpha_per_epoch(0.8, total, reset_epoch=8), rtol=1e-5,
                             atol=1e-8)


def test_layer_options_and_bad_input():
  layer = nnx.eval_shape(lambda: jnn.AutoSparseLinear(5, 3, threshold_type="weightwise",
                                                      rngs=nnx.Rngs(0)))
  assert layer.threshold.shape == (5, 3)
  with pytest.raises(ValueError, match="threshold_type"):
    jnn.AutoSparseLinear(5, 3, threshold_type="rowwise", rngs=None)
  with pytest.raises(ValueError, match="alpha"):
    jnn.annealed_relu(jnp.ones(2), 1.5)
