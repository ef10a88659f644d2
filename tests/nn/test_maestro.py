"""Maestro against NumPy transcriptions of the official masking, group lasso and importance, and
the paper's linear-regression recovery check (ordered dropout recovers the SVD)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn


def _official_lasso(u, v, hierarchical):
  """`MaestroLinear._compute_lasso` with in_network.weight = uᵀ, out_network.weight = vᵀ."""
  w_in, w_out = u.T, v.T
  if not hierarchical:
    return np.linalg.norm(w_in, axis=1), np.linalg.norm(w_out, axis=0)
  tail_in = np.sqrt(np.flip(np.cumsum(np.flip(w_in**2, 0), 0), 0).sum(1))
  tail_out = np.sqrt(np.flip(np.cumsum(np.flip(w_out**2, 1), 1), 1).sum(0))
  return tail_in, tail_out


@pytest.mark.parametrize("hierarchical", [False, True])
def test_group_lasso_and_importance_match_the_official_transcription(hierarchical):
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(7, 5)), rng.normal(size=(5, 4))
  lasso_in, lasso_out = _official_lasso(u, v, hierarchical)
  args = jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)
  np.testing.assert_allclose(jnn.maestro_group_lasso(*args, hierarchical=hierarchical),
                             lasso_in + lasso_out, rtol=1e-5)
  np.testing.assert_allclose(jnn.maestro_importance(*args, hierarchical=hierarchical),
                             lasso_in * lasso_out, rtol=1e-5)


def test_truncation_keeps_the_official_components():
  """`weight_in[low_rank][:b]`: the first b of the components shrinking kept."""
  rng = np.random.default_rng(1)
  layer = nnx.eval_shape(lambda: jnn.MaestroLinear(6, 5, rngs=nnx.Rngs(0)))
  u, v, bias = rng.normal(size=(6, 5)), rng.normal(size=(5, 5)), rng.normal(size=5)
  for name, value in (("u", u), ("v", v), ("bias", bias)):
    setattr(layer, name, nnx.Param(jnp.asarray(value, jnp.float32)))
  keep = np.array([1, 0, 1, 1, 0])
  x = rng.normal(size=(3, 6))
  for b in (1, 2, 3):
    kept = np.flatnonzero(keep)[:b]
    expected = x @ u[:, kept] @ v[kept] + bias
    got = layer(jnp.asarray(x, jnp.float32), keep=jnp.asarray(keep), rank=b)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Ordered dropout: b uniform over {1, 2, 3}, always a prefix of the kept components.
  sample = jax.jit(lambda key: jax.vmap(jnn.ordered_dropout_mask, (0, None))(
      jax.random.split(key, 600), jnp.asarray(keep)))
  masks = np.asarray(sample(jax.random.key(0, impl="rbg")))
  ranks = masks.sum(1).astype(int)
  assert set(ranks) == {1, 2, 3} and np.all(np.abs(np.bincount(ranks)[1:] / 600 - 1 / 3) < 0.07)
  for mask, b in zip(masks[:20], ranks[:20]):
    np.testing.assert_array_equal(mask, np.isin(np.arange(5), np.flatnonzero(keep)[:b]))


def test_ordered_dropout_recovers_the_svd_of_a_low_rank_map():
  """The paper's check: W = A of rank 3 (20 x 20) learned from uniformly spread inputs (x = I)
  with ordered dropout; the importances are A's singular values, in order."""
  rng = np.random.default_rng(0)
  left, _ = np.linalg.qr(rng.normal(size=(20, 20)))
  right, _ = np.linalg.qr(rng.normal(size=(20, 20)))
  sigma = np.array([3.0, 2.0, 1.0])
  target = jnp.asarray((left[:, :3] * sigma) @ right[:, :3].T, jnp.float32)
  keep = jnp.ones(20)

  def step(params, key):
    def loss(p):
      mask = jnn.ordered_dropout_mask(key, keep)
      return 0.5 * jnp.sum((jnn.maestro_linear(jnp.eye(20), p["u"], p["v"], mask=mask)
                            - target)**2)
    grads = jax.grad(loss)(params)
    return jax.tree.map(lambda p, g: p - 0.2 * g, params, grads), None

  # The order of components j and j + 1 is only learned when b = j (probability 1/20): slow.
  keys = jax.random.split(jax.random.key(1, impl="rbg"), 3000)
  init = lambda: jnn.init_maestro(jax.random.key(0, impl="rbg"), 20, 20, use_bias=False)
  params, _ = jax.jit(lambda k: jax.lax.scan(step, init(), k))(keys)
  importance = np.asarray(jnn.maestro_importance(params["u"], params["v"]))
  np.testing.assert_allclose(importance[:3], sigma, atol=0.05)
  assert np.all(importance[3:] < 0.05)
  # Each rank-k prefix is the best rank-k approximation (Eckart-Young).
  u, v = np.asarray(params["u"]), np.asarray(params["v"])
  for k in (1, 2):
    np.testing.assert_allclose(np.linalg.norm(u[:, :k] @ v[:k] - target),
                               np.sqrt(np.sum(sigma[k:]**2)), atol=0.01)


def test_from_dense_and_prune():
  rng = np.random.default_rng(2)
  kernel = rng.normal(size=(6, 4)).astype(np.float32)
  x = rng.normal(size=(3, 6)).astype(np.float32)

  @jax.jit
  def decompose(kernel):  # one program, no eager op
    params = jnn.maestro_from_dense(kernel)
    importance = jnn.maestro_importance(params["u"], params["v"])
    keep = jnn.maestro_shrink_mask(params["u"], params["v"], importance[1])
    return params, importance, keep, jnn.maestro_linear(x, params["u"], params["v"], mask=keep)

  params, importance, keep, y = jax.tree.map(np.asarray, decompose(kernel))
  np.testing.assert_allclose(params["u"] @ params["v"], kernel, atol=1e-5)
  np.testing.assert_allclose(importance, np.linalg.svd(kernel)[1], rtol=1e-5)
  np.testing.assert_array_equal(keep, [1, 1, 0, 0])
  pruned = jnn.maestro_prune(params, keep)
  np.testing.assert_allclose(x @ pruned["u"] @ pruned["v"], y, atol=1e-5)
