"""SELU networks against independent references.

References: the constants and formulas of the paper (arXiv:1706.02515) and of the official
`dropout_selu` transcribed in NumPy (float64), and eager `torch.nn.functional.alpha_dropout`
(parity tests). The layer battery covers NNX == Linen, jit, modes and dtypes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn.nn import selu

# The paper's constants (Eq. 14 and the text after it), written out in full.
LAMBDA = 1.0507009873554804934193349852946
ALPHA = 1.6732632423543772848170429916717
SATURATION = -LAMBDA * ALPHA


def np_affine(rate):
  """Official dropout_selu with fixedPointMean = 0, fixedPointVar = 1, in float64."""
  q = 1.0 - rate
  a = np.sqrt(1.0 / (q * ((1.0 - q) * SATURATION**2 + 1.0)))  # fixedPointVar = 1, mean 0
  b = -a * (1.0 - q) * SATURATION
  return a, b


def test_selu_constants_and_jax_selu_are_the_papers():
  assert selu.SELU_LAMBDA == pytest.approx(LAMBDA, rel=1e-15)
  assert selu.SELU_ALPHA == pytest.approx(ALPHA, rel=1e-15)
  x = np.array([-20.0, -1.0, -0.1, 0.0, 0.5, 3.0])
  expected = LAMBDA * np.where(x > 0, x, ALPHA * np.expm1(x))
  np.testing.assert_allclose(jax.nn.selu(jnp.asarray(x, jnp.float32)), expected, rtol=1e-6,
                             atol=1e-7)
  # LeCun normal: mean 0, variance 1 / fan-in (the paper's weight condition).
  kernel = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(0), (256, 512)))
  assert abs(kernel.mean()) < 2e-3 and kernel.var() * 256 == pytest.approx(1.0, abs=0.02)


def test_affine_matches_the_official_formula_and_restores_mean_zero_variance_one():
  for rate in (0.05, 0.1, 0.5):
    a, b = jnn.alpha_dropout_affine(rate)
    np.testing.assert_allclose((a, b), np_affine(rate), rtol=1e-12)
    # For x of mean 0 and variance 1 (independent of the mask), y = a (d x + (1 - d) α') + b:
    q = 1.0 - rate
    mean = a * (1 - q) * SATURATION + b
    second_moment = a**2 * (q + (1 - q) * SATURATION**2) + 2 * a * b * (1 - q) * SATURATION + b**2
    assert mean == pytest.approx(0.0, abs=1e-12)
    assert second_moment - mean**2 == pytest.approx(1.0, rel=1e-12)


def test_kept_units_are_a_x_plus_b_and_dropped_units_are_a_alpha_prime_plus_b():
  rate = 0.3
  a, b = np_affine(rate)
  x = np.random.default_rng(0).normal(size=(400, 50)).astype(np.float32)
  y = np.asarray(jnn.alpha_dropout(jnp.asarray(x), rate, jax.random.key(3)), np.float64)
  dropped = np.isclose(y, a * SATURATION + b, rtol=0, atol=1e-5)
  np.testing.assert_allclose(y[~dropped], a * x[~dropped] + b, rtol=1e-5, atol=1e-5)
  assert abs(dropped.mean() - rate) < 0.01  # 20000 Bernoulli draws
  # Evaluation and rate 0: the identity.
  np.testing.assert_array_equal(jnn.alpha_dropout(x, rate, None, deterministic=True), x)
  np.testing.assert_array_equal(jnn.alpha_dropout(x, 0.0, None), x)


def test_nnx_layer_uses_the_given_key_and_eval_is_identity():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 6)), jnp.float32)
  key = jax.random.key(5)
  layer = jnn.AlphaDropout(0.2, rngs=nnx.Rngs(dropout=0))
  np.testing.assert_array_equal(layer(x, rngs=key), jnn.alpha_dropout(x, 0.2, key))
  layer.eval()
  np.testing.assert_array_equal(layer(x), x)
  with pytest.raises(ValueError, match="rngs"):
    jnn.AlphaDropout(0.2)(x)  # training without any key


@pytest.mark.parametrize("rate", [1.0, -0.1, float("nan"), 1.5])
def test_invalid_rate_raises(rate):
  with pytest.raises(ValueError, match="rate"):
    jnn.AlphaDropout(rate)
  with pytest.raises(ValueError, match="rate"):
    jnn.alpha_dropout_affine(rate)


@pytest.mark.parity
def test_eager_torch_alpha_dropout_has_the_same_values_and_moments():
  torch = pytest.importorskip("torch")
  rate, n = 0.1, 200_000
  a, b = np_affine(rate)
  torch.manual_seed(0)
  y_torch = torch.nn.functional.alpha_dropout(torch.zeros(n), rate, True).numpy()
  np.testing.assert_allclose(np.unique(y_torch), [a * SATURATION + b, b], rtol=1e-5)
  ours = np.asarray(jnn.alpha_dropout(jnp.zeros(n), rate, jax.random.key(0)))
  np.testing.assert_allclose(np.unique(ours), np.unique(y_torch), rtol=1e-6)
  # Moments on a standard normal input agree (different random draws: statistical tolerance).
  x = np.random.default_rng(2).normal(size=n).astype(np.float32)
  y_torch = torch.nn.functional.alpha_dropout(torch.from_numpy(x), rate, True).numpy()
  ours = np.asarray(jnn.alpha_dropout(jnp.asarray(x), rate, jax.random.key(1)))
  for y in (y_torch, ours):
    assert abs(y.mean()) < 0.01 and abs(y.var() - 1.0) < 0.01


@pytest.mark.parity
def test_torch_refs_alpha_dropout_flips_the_sign_of_b():
  """`torch._refs.nn.functional.alpha_dropout` (the decomposition `torch.compile` traces) adds
  −b instead of b: on zeros it gives −b (kept) and a·α' − b (dropped), a mean of −2b, not
  0."""
  pytest.importorskip("torch")
  refs = pytest.importorskip("torch._refs.nn.functional")
  if not hasattr(refs, "alpha_dropout"):
    pytest.skip("torch._refs.nn.functional.alpha_dropout is absent")
  import torch

  rate = 0.1
  a, b = np_affine(rate)
  torch.manual_seed(0)
  y = refs.alpha_dropout(torch.zeros(100_000), rate, True).numpy()
  np.testing.assert_allclose(np.unique(y), [a * SATURATION - b, -b], rtol=1e-5)
  assert y.mean() == pytest.approx(-2 * b, abs=0.01)  # the official mean is 0
