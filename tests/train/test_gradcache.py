"""Gradient caching (arXiv:2101.06983): the cached gradient equals the full-batch gradient.

The reference is `jax.value_and_grad` of the unchunked loss (the whole batch encoded at once), and
the loss itself is checked against a float64 NumPy transcription of the official
`SimpleContrastiveLoss` (cross-entropy of q k^T with the diagonal as targets).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.train import cached_value_and_grad, gradcache_contrastive, in_batch_contrastive_loss

RNG = np.random.default_rng(0)
B, D_IN, D_HID, D_OUT = 12, 5, 7, 4
X = RNG.normal(size=(B, D_IN)).astype(np.float32)
X2 = (X + 0.3 * RNG.normal(size=(B, D_IN))).astype(np.float32)
PARAMS = {
    "w1": (RNG.normal(size=(D_IN, D_HID)) / np.sqrt(D_IN)).astype(np.float32),
    "w2": (RNG.normal(size=(D_HID, D_OUT)) / np.sqrt(D_HID)).astype(np.float32),
    "key_w2": (RNG.normal(size=(D_HID, D_OUT)) / np.sqrt(D_HID)).astype(np.float32),
}


def query_encoder(params, x):
  return jnp.tanh(x @ params["w1"]) @ params["w2"]


def key_encoder(params, x):  # a second tower sharing w1
  return jnp.tanh(x @ params["w1"]) @ params["key_w2"]


def test_cached_gradient_equals_the_full_batch_gradient():
  tau = 0.5

  def both(params, x, x2):
    loss = lambda q, k: in_batch_contrastive_loss(q, k, tau)
    full = jax.value_and_grad(lambda p: loss(query_encoder(p, x), query_encoder(p, x2)))(params)
    cached = cached_value_and_grad(query_encoder, loss, params, (x, x2), chunk_size=4)
    towers_full = jax.value_and_grad(lambda p: loss(query_encoder(p, x), key_encoder(p, x2)))(
        params)
    towers = cached_value_and_grad((query_encoder, key_encoder), loss, params, (x, x2),
                                   chunk_size=3)
    return full, cached, towers_full, towers, query_encoder(params, x), query_encoder(params, x2)

  full, cached, towers_full, towers, q, k = fast_jit(both)(PARAMS, X, X2)
  for (v_ref, g_ref), (v, g) in ((full, cached), (towers_full, towers)):
    np.testing.assert_allclose(v, v_ref, rtol=1e-6)
    for name in PARAMS:
      np.testing.assert_allclose(g[name], g_ref[name], rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(cached[1]["w1"])).max() > 1e-3  # a real gradient was compared
  assert np.all(np.asarray(cached[1]["key_w2"]) == 0)  # the shared tower does not use key_w2

  # The official loss in float64: cross-entropy of q k^T / tau with targets arange(B).
  logits = np.asarray(q, np.float64) @ np.asarray(k, np.float64).T / tau
  log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  np.testing.assert_allclose(full[0], np.mean(log_z - np.diag(logits)), rtol=1e-5)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="chunk_size"):
    gradcache_contrastive(query_encoder, optax.sgd(0.1), chunk_size=0)
  with pytest.raises(ValueError, match="temperature"):
    gradcache_contrastive(query_encoder, optax.sgd(0.1), chunk_size=4, temperature=0.0)
  with pytest.raises(ValueError, match="chunk_size=5 must divide"):
    jax.eval_shape(lambda p: cached_value_and_grad(
        query_encoder, in_batch_contrastive_loss, p, (X, X2), chunk_size=5), PARAMS)
  with pytest.raises(ValueError, match="encode_fn"):
    jax.eval_shape(lambda p: cached_value_and_grad(
        (query_encoder,), in_batch_contrastive_loss, p, (X, X2), chunk_size=4), PARAMS)
