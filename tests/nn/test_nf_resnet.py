"""NF-ResNet pieces against NumPy transcriptions of the official nfnets code.

References (float64 NumPy): `WSConv2D.standardize_weight` and its convolution (SAME padding, bias
always added), `NFResBlock.__call__` (with two layers instead of the official three), the β loop
of `NF_ResNet.__init__` and `signal_metrics`, all from google-deepmind/deepmind-research `nfnets`.
The layer battery covers NNX == Linen, jit, dtypes and bad input.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn.nn.nf_resnet import NF_GAMMAS

EPS = 1e-4
RELU_GAMMA = 1.7139588594436646


def np_standardize(w, gain, eps=EPS):
  """Official standardize_weight: w·scale − mean·scale, scale = gain / sqrt(max(N var, eps))."""
  w = np.asarray(w, np.float64)
  axes = tuple(range(w.ndim - 1))
  mean = w.mean(axis=axes, keepdims=True)
  var = w.var(axis=axes, keepdims=True)
  scale = gain / np.sqrt(np.maximum(var * math.prod(w.shape[:-1]), eps))
  return w * scale - mean * scale


def np_conv_same(x, w, stride):
  """NHWC x HWIO convolution, TF/XLA 'SAME' padding, by explicit sums."""
  n, h, wd, _ = x.shape
  kh, kw, _, out = w.shape
  oh, ow = -(-h // stride), -(-wd // stride)
  ph = max((oh - 1) * stride + kh - h, 0)
  pw = max((ow - 1) * stride + kw - wd, 0)
  xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  y = np.zeros((n, oh, ow, out))
  for i in range(oh):
    for j in range(ow):
      patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
      y[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, w)
  return y


def np_layer(x, kernel, gain, bias, stride=None):
  w = np_standardize(kernel, gain)
  return (x @ w if stride is None else np_conv_same(x, w, stride)) + bias


def np_block(x, params, *, alpha, beta, stride=None):
  """Official NFResBlock.__call__ with layers (layer0, layer1) and ReLU·γ."""
  act = lambda z: np.maximum(z, 0) * RELU_GAMMA
  out = act(x) * beta
  shortcut = x
  if "shortcut" in params:
    shortcut = np_layer(out, *params["shortcut"], stride)
  out = np_layer(out, *params["layer0"], stride)
  out = np_layer(act(out), *params["layer1"], None if stride is None else 1)
  return out * params["skip_gain"] * alpha + shortcut


def _random_layer_params(rng, shape):
  return (rng.normal(size=shape) * 0.7 + 0.1, rng.uniform(0.5, 1.5, shape[-1]),
          rng.normal(size=shape[-1]) * 0.1)


def _build(make, params):
  """`make()` built abstractly (no eager random initialization), then given `params`."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  filled = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  nnx.replace_by_pure_dict(state, filled)
  return nnx.merge(graphdef, state)


def _as_pure(params):
  return {name: value if name == "skip_gain" else dict(zip(("kernel", "gain", "bias"), value))
          for name, value in params.items()}


def test_scaled_weight_standardize_matches_the_official_code_and_floors_eps():
  rng = np.random.default_rng(0)
  kernel, gain, _ = _random_layer_params(rng, (3, 3, 4, 5))
  ours = jnn.scaled_weight_standardize(jnp.asarray(kernel, jnp.float32),
                                       jnp.asarray(gain, jnp.float32))
  np.testing.assert_allclose(ours, np_standardize(kernel, gain), rtol=1e-5, atol=1e-6)
  # ε is a floor of N·var: a kernel with N·var < ε is scaled by 1/sqrt(ε) (an additive ε would
  # give 1/sqrt(N var + ε)).
  tiny = np.linspace(-1, 1, 20).reshape(4, 5) * 1e-4
  ours = jnn.scaled_weight_standardize(jnp.asarray(tiny, jnp.float32))
  np.testing.assert_allclose(ours, np_standardize(tiny, 1.0), rtol=1e-5)
  np.testing.assert_allclose(ours, (tiny - tiny.mean(0)) / np.sqrt(EPS), rtol=1e-5)


def test_conv_and_block_match_the_official_code():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 5, 3))
  # A strided transition block of convolutions, skip gain 1 (the official default is 0).
  params = {"layer0": _random_layer_params(rng, (3, 3, 3, 4)),
            "layer1": _random_layer_params(rng, (3, 3, 4, 4)),
            "shortcut": _random_layer_params(rng, (1, 1, 3, 4)), "skip_gain": 1.0}
  block = _build(lambda: jnn.NFResidualBlock(3, 4, kernel_size=(3, 3), strides=2, beta=0.8,
                                             alpha=0.3, rngs=nnx.Rngs(0)), _as_pure(params))
  y = block(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(y, np_block(x, params, alpha=0.3, beta=0.8, stride=2), rtol=1e-4,
                             atol=1e-4)
  # A SkipInit block (skip_gain 0, the default initial value) is the identity.
  dense_params = {"layer0": _random_layer_params(rng, (6, 6)),
                  "layer1": _random_layer_params(rng, (6, 6)), "skip_gain": 0.0}
  dense = _build(lambda: jnn.NFResidualBlock(6, rngs=nnx.Rngs(0)), _as_pure(dense_params))
  x2 = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  np.testing.assert_array_equal(dense(x2), x2)


def test_nf_betas_follow_the_official_schedule():
  depths, alpha = [3, 4, 6, 3], 0.2
  expected, expected_std = [], 1.0
  for depth in depths:  # NF_ResNet.__init__
    for index in range(depth):
      expected.append(1.0 / expected_std)
      if index == 0:
        expected_std = 1.0
      expected_std = (expected_std**2 + alpha**2) ** 0.5
  np.testing.assert_allclose(jnn.nf_betas(depths, alpha), expected, rtol=1e-15)
  # The second stage's transition block sees three blocks of growth.
  assert jnn.nf_betas(depths, alpha)[3] == pytest.approx(1 / math.sqrt(1 + 3 * alpha**2))


def test_signal_metrics_and_gammas():
  x = np.random.default_rng(2).normal(size=(3, 4, 4, 5)) + np.arange(5)
  sq_mean, var = jnn.signal_metrics(jnp.asarray(x, jnp.float32))
  assert float(sq_mean) == pytest.approx(np.mean(x.mean(axis=(0, 1, 2)) ** 2), rel=1e-5)
  assert float(var) == pytest.approx(np.mean(x.var(axis=(0, 1, 2))), rel=1e-5)
  # γ·relu(z) has unit variance for z ~ N(0, 1): analytically 1/sqrt(1/2 − 1/(2π)) = 1.71285,
  # the official (numerically estimated) constant is within 0.1 % of it.
  assert NF_GAMMAS["relu"] == pytest.approx(1 / math.sqrt(0.5 - 1 / (2 * math.pi)), rel=1e-3)
  z = jnp.asarray(np.random.default_rng(3).normal(size=100_000), jnp.float32)
  names = ("relu", "silu", "tanh", "gelu")
  variances = jax.jit(lambda z: [jnp.var(jnn.scaled_activation(n)(z)) for n in names])(z)
  np.testing.assert_allclose(variances, 1.0, atol=0.02)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="activation"):
    jnn.NFResidualBlock(4, activation="swish", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="alpha"):
    jnn.NFResidualBlock(4, alpha=float("nan"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="strides"):
    jnn.NFResidualBlock(4, strides=2, rngs=nnx.Rngs(0))  # dense layers have no stride
  with pytest.raises(ValueError, match="epsilon"):
    jnn.scaled_weight_standardize(jnp.ones((2, 2)), epsilon=0.0)
