"""BTT and Monarch layers against NumPy transcriptions of the official compute-better-spent code.

`btt_mvm_numpy` and `blockdiag_butterfly_numpy` repeat the reshapes and transposes of the official
`mm/btt_mvm.py` (`BlockTeTr.forward`) and `mm/blockdiag_butterfly_multiply.py` (PyTorch batched
matmuls on (batch, features) rows), step by step; the dense matrices are materialized by an
independent einsum of the BTT formula and by pushing the identity through the transcription.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn


def btt_mvm_numpy(x, w1, w2, rank):
  """The official BlockTeTr.forward with shapes ((1, r, 1), (m0, m1), (n0, n1))."""
  m1, m0, _ = w1.shape
  n0, _, n1 = w2.shape
  b = x.shape[0]
  y = x.reshape(b, m1, m0, -1).transpose(1, 0, 2, 3).reshape(m1, b, m0)
  out1 = np.matmul(y, w1)  # (m1, b, n0 r)
  out1 = out1.reshape(m1, b, n0, rank).transpose(2, 1, 0, 3).reshape(n0, b, m1 * rank)
  out2 = np.matmul(out1, w2)  # (n0, b, n1)
  return out2.reshape(n0, b, n1, 1).transpose(1, 0, 2, 3).reshape(b, -1)


def btt_dense_numpy(w1, w2, rank):
  m1, m0, _ = w1.shape
  n0, _, n1 = w2.shape
  a = np.einsum("ikja,jial->ikjl", w1.reshape(m1, m0, n0, rank), w2.reshape(n0, m1, rank, n1))
  return a.reshape(m1 * m0, n0 * n1)


def blockdiag_butterfly_numpy(x, w1, w2, out_features):
  """The official Monarch._rmatmat: pad, blockdiag_butterfly_multiply, truncate."""
  k, q, p = w1.shape
  l, s, r = w2.shape
  b = x.shape[0]
  x = np.pad(x, ((0, 0), (0, k * p - x.shape[1])))
  out1 = np.matmul(x.reshape(b, k, p).transpose(1, 0, 2), w1.transpose(0, 2, 1))  # (k, b, q)
  out1 = out1.transpose(1, 0, 2).reshape(b, r, l).transpose(0, 2, 1).transpose(1, 0, 2)
  out2 = np.matmul(out1, w2.transpose(0, 2, 1))  # (l, b, s)
  return out2.transpose(1, 2, 0).reshape(b, s * l)[:, :out_features]


def _numpy(params):
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


def _drawn(init):
  """Parameters with the shapes `init` gives (`jax.eval_shape`: nothing compiled), drawn in NumPy."""
  rng = np.random.default_rng(0)
  return {k: rng.normal(size=v.shape) for k, v in jax.eval_shape(init).items()}


def test_btt_matches_the_official_matvec_and_its_dense_matrix():
  rank = 2
  p = _drawn(lambda: jnn.init_btt(jax.random.key(0), 12, 10, rank=rank, in_factors=(3, 4),
                                  out_factors=(2, 5)))
  assert p["w1"].shape == (4, 3, 2 * rank) and p["w2"].shape == (2, 4 * rank, 5)
  x = np.random.default_rng(0).normal(size=(2, 3, 12))
  expected = btt_mvm_numpy(x.reshape(6, 12), p["w1"], p["w2"], rank).reshape(2, 3, 10)
  y = jnn.btt_matmul(*(jnp.asarray(a, jnp.float32) for a in (x, p["w1"], p["w2"])))
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  dense = btt_dense_numpy(p["w1"], p["w2"], rank)
  np.testing.assert_allclose(x @ dense, expected, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(jnn.btt_to_dense(jnp.asarray(p["w1"], jnp.float32),
                                              jnp.asarray(p["w2"], jnp.float32)),
                             dense, rtol=1e-5, atol=1e-6)
  # Parameters: m0 m1 n0 r + n0 m1 r n1 (+ bias), against 12 * 10 (+ bias) for Dense.
  assert sum(v.size for v in p.values()) == 3 * 4 * 2 * rank + 2 * 4 * rank * 5 + 10


def test_monarch_matches_the_official_blockdiag_butterfly():
  for in_features, out_features in ((10, 6), (6, 10)):  # build_monarch's two block layouts
    p = _drawn(lambda: jnn.init_monarch(jax.random.key(0), in_features, out_features,
                                        num_blocks=4))
    in_block, out_block = math.ceil(in_features / 4), math.ceil(out_features / 4)
    q = in_block if in_block < out_block else out_block
    assert p["w1"].shape == (4, q, in_block) and p["w2"].shape == (4, out_block, q)
    x = np.random.default_rng(0).normal(size=(3, in_features))
    expected = blockdiag_butterfly_numpy(x, p["w1"], p["w2"], out_features)
    y = jnn.monarch_matmul(*(jnp.asarray(a, jnp.float32) for a in (x, p["w1"], p["w2"])),
                           out_features)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    dense = blockdiag_butterfly_numpy(np.eye(in_features), p["w1"], p["w2"], out_features)
    np.testing.assert_allclose(x @ dense, expected, rtol=1e-9, atol=1e-9)
    assert sum(v.size for v in p.values()) == 4 * (q * in_block + out_block * q) + out_features


def test_init_lr_multipliers_and_normalization_follow_the_official_code():
  layer = jnn.BTTLinear(256, 64, rank=2, normalize=True, rngs=nnx.Rngs(0))
  w = _numpy(nnx.to_pure_dict(nnx.state(layer)))
  # cola_init's std sqrt(1/d_in) min(1, sqrt(d_out/d_in)): cores (16, 16, 8 * 2), 16 -> 16, and
  # (8, 16 * 2, 8), 32 -> 8.
  assert np.std(w["w1"]) == pytest.approx(math.sqrt(1 / 16), rel=0.05)
  assert np.std(w["w2"]) == pytest.approx(math.sqrt(1 / 32) * math.sqrt(8 / 32), rel=0.05)
  assert not np.any(np.asarray(jnn.init_btt(jax.random.key(0), 12, 10, zero_init=True)["w2"]))
  # CoLALayer: d_in_orig / d_in_core / num_matrices; bias and scalars 1.
  assert layer.lr_multipliers() == {"w1": 256 / 16 / 2, "w2": 256 / (16 * 2) / 2, "bias": 1.0,
                                    "gamma1": 1.0, "gamma2": 1.0}
  assert jnn.monarch_lr_multipliers(10, 6, num_blocks=4) == {"w1": 10 / 3 / 2, "w2": 10 / 2 / 2,
                                                             "bias": 1.0}

  w1, w2 = 40.0 * w["w1"], w["w2"]  # w1's rms far above its cap, w2's below
  gamma1, gamma2 = 0.7, 1.3
  bias = np.linspace(-1, 1, 64)
  nnx.update(layer, nnx.State({"w1": nnx.Param(jnp.asarray(w1, jnp.float32)),
                               "bias": nnx.Param(jnp.asarray(bias, jnp.float32)),
                               "gamma1": nnx.Param(jnp.float32(gamma1)),
                               "gamma2": nnx.Param(jnp.float32(gamma2))}))

  def capped(core, gamma, d_in, d_out):  # FasterBTT._rmatmat with normalize=True
    rms = np.sqrt(np.mean(core**2) + 1e-8)
    return gamma * core / max(1.0, rms / np.sqrt(min(d_in, d_out) * d_out / (d_out * d_in**2)))

  x = np.random.default_rng(0).normal(size=(4, 256))
  expected = btt_mvm_numpy(x, capped(w1, gamma1, 16, 2 * 8), capped(w2, gamma2, 2 * 16, 8), 2)
  np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), expected + bias, rtol=1e-4,
                             atol=1e-4)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="in_factors"):
    jnn.BTTLinear(12, 10, in_factors=(5, 3), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="out_factors"):
    jnn.init_btt(jax.random.key(0), 12, 10, out_factors=(2, 5, 1))
  with pytest.raises(ValueError, match="rank"):
    jnn.btt_lr_multipliers(12, 10, rank=0)
  with pytest.raises(ValueError, match="num_blocks"):
    jnn.init_monarch(jax.random.key(0), 12, 10, num_blocks=0)
  # The official greedy split is not always the most even one (14 x 15 would be).
  assert jnn.factorize(2 * 3 * 5 * 7) == (10, 21) and jnn.factorize(13) == (1, 13)
