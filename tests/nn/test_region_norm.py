"""Region Normalization against a NumPy transcription of the official ``rn.py`` (geekyutao/RN:
``RN_binarylabel.rn``, ``RN_B.forward``, ``SelfAware_Affine``, ``RN_L.forward``), NCHW, float64."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn
from jaxlearn.nn import linen as jnn_linen

EPS = 1e-5
RNG = np.random.default_rng(0)


def rn_numpy(region, mask):
  """`RN_binarylabel.rn`: fill with the region mean, BatchNorm (batch stats), rescale."""
  total = region.sum(axis=(0, 2, 3))
  size = mask.sum(axis=(0, 2, 3))
  size = np.where(size == 0, 1.0, size)
  mu = total / size
  filled = region + (1 - mask) * mu[None, :, None, None]
  bn = (filled - filled.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
      filled.var(axis=(0, 2, 3), keepdims=True) + EPS)
  n = region.shape[0] * region.shape[2] * region.shape[3]
  return bn * np.sqrt(size / n)[None, :, None, None]


def rn_binarylabel_numpy(x, label):
  return rn_numpy(x * label, label) + rn_numpy(x * (1 - label), 1 - label)


def nearest_numpy(mask, size):
  rows = np.floor(np.arange(size[0]) * (mask.shape[2] / size[0])).astype(int)
  cols = np.floor(np.arange(size[1]) * (mask.shape[3] / size[1])).astype(int)
  return mask[:, :, rows][:, :, :, cols]


def rn_b_numpy(x, mask, fg_gamma, fg_beta, bg_gamma, bg_beta):
  mask = nearest_numpy(mask, x.shape[2:])
  rn_x = rn_binarylabel_numpy(x, mask)
  v = lambda p: p[None, :, None, None]
  return ((rn_x * mask) * (1 + v(fg_gamma)) + v(fg_beta)
          + (rn_x * (1 - mask)) * (1 + v(bg_gamma)) + v(bg_beta))


def conv_numpy(x, weight, bias=0.0):
  """Cross-correlation NCHW x OIHW weight, zero padding k // 2 (torch Conv2d)."""
  k = weight.shape[-1]
  padded = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
  windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
  return np.einsum("bihwkl,oikl->bohw", windows, weight) + np.reshape(bias, (1, -1, 1, 1))


def rn_l_numpy(x, w1, wg, bg, wb, bb, threshold):
  pooled = np.concatenate([x.mean(1, keepdims=True), x.max(1, keepdims=True)], axis=1)
  importance = 1 / (1 + np.exp(-conv_numpy(pooled, w1)))
  gamma, beta = conv_numpy(importance, wg, bg), conv_numpy(importance, wb, bb)
  mask = (importance >= threshold).astype(np.float64)
  rn_x = rn_binarylabel_numpy(x, np.broadcast_to(mask, x.shape))
  return rn_x * (1 + gamma) + beta, mask


def nchw(a):
  return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def test_rn_b_matches_the_official_code():
  x = (RNG.normal(size=(3, 4, 4, 5)) * 2 + 1).astype(np.float32)
  params = {k: RNG.normal(size=5).astype(np.float32)
            for k in ("hole_gamma", "hole_beta", "valid_gamma", "valid_beta")}
  holes = np.zeros((3, 8, 8), bool)
  holes[0, 1:4, 2:5] = holes[1, 5:8, 0:3] = True
  no_holes_after_resize = np.zeros((3, 8, 8), np.float32)
  no_holes_after_resize[:, 1, 1] = 1.0  # odd rows/columns vanish when 8x8 -> 4x4
  for mask in (holes, no_holes_after_resize):
    y = jnn.region_norm_b(x, mask, **params, epsilon=EPS)
    expected = rn_b_numpy(nchw(x).astype(np.float64), mask[:, None].astype(np.float64),
                          params["hole_gamma"], params["hole_beta"], params["valid_gamma"],
                          params["valid_beta"])
    np.testing.assert_allclose(nchw(np.asarray(y)), expected, rtol=1e-4, atol=1e-4)

  # NNX and Linen agree with a mask (the battery runs them without one); axis_name sync.
  layer = jnn.RegionNormB(5, rngs=nnx.Rngs(0))
  for name, value in params.items():
    getattr(layer, name)[...] = value
  y = layer(x, holes)
  np.testing.assert_allclose(jnn_linen.RegionNormB().apply({"params": params}, x, holes), y,
                             rtol=1e-6, atol=1e-6)
  synced = jax.vmap(
      lambda xs, ms: jnn.region_norm_b(xs, ms, **params, axis_name="b"), axis_name="b")(
          x.reshape(3, 1, 4, 4, 5), holes.reshape(3, 1, 8, 8))
  np.testing.assert_allclose(synced.reshape(x.shape), y, rtol=1e-5, atol=1e-5)


def test_rn_l_matches_the_official_code():
  x = RNG.normal(size=(2, 6, 6, 4)).astype(np.float32)
  k = 7
  w1 = RNG.uniform(-0.3, 0.3, size=(1, 2, k, k))
  wg, wb = RNG.uniform(-0.2, 0.2, size=(2, 1, 1, k, k))
  bg, bb = RNG.uniform(-0.2, 0.2, size=(2, 1))
  expected, mask = rn_l_numpy(nchw(x).astype(np.float64), w1, wg, bg, wb, bb, threshold=0.55)
  assert 0 < mask.sum() < mask.size  # both regions are used
  hwio = lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0)).astype(np.float32)
  params = {"detector_kernel": hwio(w1), "gamma_kernel": hwio(wg), "gamma_bias": bg,
            "beta_kernel": hwio(wb), "beta_bias": bb}
  params = {name: np.asarray(value, np.float32) for name, value in params.items()}
  # The NNX and Linen layers call this function (the battery checks that they agree).
  y, _ = jnn.region_norm_l(x, **params, threshold=0.55)
  np.testing.assert_allclose(nchw(np.asarray(y)), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      jnn_linen.RegionNormL(4, threshold=0.55).apply({"params": params}, x), y, rtol=1e-6,
      atol=1e-6)


@pytest.mark.parity
def test_mask_resize_matches_torch_nearest():
  torch = pytest.importorskip("torch")
  mask = (RNG.uniform(size=(2, 7, 9)) > 0.5).astype(np.float32)
  for size in ((4, 4), (3, 5), (8, 12)):
    expected = torch.nn.functional.interpolate(torch.from_numpy(mask[:, None]), size=size,
                                               mode="nearest")[:, 0].numpy()
    np.testing.assert_array_equal(jnn.resize_mask(mask, *size), expected)


def test_bad_masks_and_hyperparameters_raise():
  x = np.ones((2, 4, 4, 3), np.float32)
  layer = jnn.RegionNormB(3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="expects `mask` of shape"):
    layer(x, np.zeros((3, 4, 4), bool))
  with pytest.raises(ValueError, match="expects `mask` of shape"):
    layer(x, np.zeros((2, 4, 4, 3), bool))
  with pytest.raises(ValueError, match="boolean or floating"):
    layer(x, np.zeros((2, 4, 4), np.int32))
  with pytest.raises(ValueError, match="only 0 and 1"):
    layer(x, np.full((2, 4, 4), 0.5, np.float32))
  with pytest.raises(ValueError, match="threshold"):
    jnn.RegionNormL(3, threshold=1.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="kernel_size"):
    jnn.RegionNormL(3, kernel_size=5, rngs=nnx.Rngs(0))
