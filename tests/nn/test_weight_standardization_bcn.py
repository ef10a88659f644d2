"""Weight Standardization and Batch-Channel Normalization against independent references.

References: NumPy (float64) transcriptions of the paper's equations (arXiv:1903.10520: the WS
reparametrization and the micro-batch BCN algorithm), plain flax layers fed a NumPy-standardized
kernel, finite differences, and PyTorch transcriptions of the official code (parity tests).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn.nn import linen as jnn_linen

EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# NumPy references


def np_weight_standardize(kernel, fan_in_axes, eps=EPS):
  """The paper's Eq.: (W - mean) / sqrt(mean(W^2) - mean^2 + eps), per output channel."""
  w = np.asarray(kernel, np.float64)
  mean = w.mean(axis=fan_in_axes, keepdims=True)
  second_moment = (w * w).mean(axis=fan_in_axes, keepdims=True)
  return (w - mean) / np.sqrt(second_moment - mean**2 + eps)


def np_batch_channel_norm(x, state, params, *, groups, train, estimate, momentum, eps=EPS):
  """BCN on NHWC inputs, written channel by channel and group by group in float64.

  Returns (y, new_state); state = (running_mean, running_var).
  """
  x = np.asarray(x, np.float64)
  n, channels = x.shape[0], x.shape[-1]
  running_mean, running_var = (np.array(s, np.float64) for s in state)
  bn_scale, bn_bias, group_scale, group_bias = (np.asarray(p, np.float64) for p in params)
  rate = 1.0 - momentum  # the paper's r
  mu = np.empty(channels)
  var = np.empty(channels)
  new_mean, new_var = running_mean.copy(), running_var.copy()
  for c in range(channels):
    values = x[..., c].ravel()
    if not train:
      mu[c], var[c] = running_mean[c], running_var[c]
    elif estimate:
      batch_mean = values.mean()
      batch_var = ((values - running_mean[c]) ** 2).mean()  # around the previous estimate
      new_mean[c] = running_mean[c] + rate * (batch_mean - running_mean[c])
      new_var[c] = running_var[c] + rate * (batch_var - running_var[c])
      mu[c], var[c] = new_mean[c], new_var[c]
    else:
      mu[c], var[c] = values.mean(), values.var()
      new_mean[c] = running_mean[c] + rate * (mu[c] - running_mean[c])
      new_var[c] = running_var[c] + rate * (var[c] - running_var[c])
  x_dot = bn_scale * (x - mu) / np.sqrt(var + eps) + bn_bias
  y = np.empty_like(x_dot)
  size = channels // groups
  for i in range(n):
    for g in range(groups):
      block = x_dot[i, ..., g * size : (g + 1) * size]
      normalized = (block - block.mean()) / np.sqrt(block.var() + eps)
      y[i, ..., g * size : (g + 1) * size] = group_scale[g] * normalized + group_bias[g]
  return y, (new_mean, new_var)


def random_bcn_params(key, channels, groups):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return (
      1.0 + 0.3 * jax.random.normal(k1, (channels,)),
      0.2 * jax.random.normal(k2, (channels,)),
      1.0 + 0.3 * jax.random.normal(k3, (groups,)),
      0.2 * jax.random.normal(k4, (groups,)),
  )


def set_bcn_params(layer, params):
  layer.bn_scale[...], layer.bn_bias[...], layer.group_scale[...], layer.group_bias[...] = params


# ----------------------------------------------------------------------------------------------
# Weight Standardization

KERNELS = {
    "conv_hwio": ((3, 3, 4, 6), (0, 1, 2)),
    "dense_io": ((10, 7), (0,)),
    "conv1d_wio": ((5, 3, 2), (0, 1)),
}


@pytest.mark.parametrize("name", KERNELS)
def test_each_output_channel_has_zero_mean_unit_std_over_its_fan_in(name):
  shape, fan_in = KERNELS[name]
  kernel = 3.0 * jax.random.normal(jax.random.key(0), shape) + 2.0
  standardized = np.asarray(jnn.weight_standardize(kernel), np.float64)
  np.testing.assert_allclose(standardized.mean(axis=fan_in), 0.0, atol=1e-6)
  # std is sqrt(var / (var + eps)) < 1 because eps sits inside the square root.
  var = np.asarray(kernel, np.float64).var(axis=fan_in)
  np.testing.assert_allclose(standardized.std(axis=fan_in), np.sqrt(var / (var + EPS)), rtol=1e-5)
  np.testing.assert_allclose(standardized.std(axis=fan_in), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", KERNELS)
def test_weight_standardize_matches_numpy_transcription(name):
  shape, fan_in = KERNELS[name]
  kernel = 0.05 * jax.random.normal(jax.random.key(1), shape) - 0.01
  expected = np_weight_standardize(kernel, fan_in)
  np.testing.assert_allclose(jnn.weight_standardize(kernel), expected, rtol=2e-5, atol=2e-6)


def test_fan_in_axes_select_the_layout():
  oihw = jax.random.normal(jax.random.key(2), (6, 4, 3, 3))
  got = jnn.weight_standardize(oihw, fan_in_axes=(1, 2, 3), epsilon=1e-3)
  expected = np_weight_standardize(oihw, (1, 2, 3), 1e-3)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)
  hwio = jnp.transpose(oihw, (2, 3, 1, 0))
  np.testing.assert_allclose(
      jnp.transpose(jnn.weight_standardize(hwio, epsilon=1e-3), (3, 2, 0, 1)), got, atol=1e-6
  )


def test_bfloat16_kernel_standardized_in_float32_and_returned_in_bfloat16():
  kernel = (0.02 * jax.random.normal(jax.random.key(3), (3, 3, 8, 4)) + 0.01).astype(jnp.bfloat16)
  got = jnn.weight_standardize(kernel)
  assert got.dtype == jnp.bfloat16
  expected = np_weight_standardize(np.asarray(kernel, np.float32), (0, 1, 2))
  np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=1e-2, atol=1e-2)


def test_weight_standardize_rejects_bad_arguments():
  with pytest.raises(ValueError, match="epsilon"):
    jnn.weight_standardize(jnp.ones((3, 2)), epsilon=0.0)
  with pytest.raises(ValueError, match="rank >= 2"):
    jnn.weight_standardize(jnp.ones((3,)))
  with pytest.raises(ValueError, match="fan_in_axes"):
    jnn.weight_standardize(jnp.ones((3, 2)), fan_in_axes=(2,))
  with pytest.raises(ValueError, match="fan_in_axes"):
    jnn.weight_standardize(jnp.ones((3, 2)), fan_in_axes=(0, -2))
  with pytest.raises(ValueError, match="floating"):
    jnn.weight_standardize(jnp.ones((3, 2), jnp.int32))
  with pytest.raises(ValueError, match="epsilon"):
    jnn.WSConv(2, 3, 3, epsilon=-1.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="mask"):
    jnn.WSConv(2, 3, 3, mask=jnp.ones((3, 2, 3)), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "conv_kwargs",
    [{}, {"strides": 2, "padding": "VALID"}, {"feature_group_count": 2, "kernel_dilation": 2}],
    ids=["same", "strided_valid", "grouped_dilated"],
)
def test_ws_conv_equals_plain_conv_with_numpy_standardized_kernel(conv_kwargs):
  x = jax.random.normal(jax.random.key(4), (2, 9, 9, 4))
  ws = jnn.WSConv(4, 6, (3, 3), epsilon=1e-4, rngs=nnx.Rngs(0), **conv_kwargs)
  ws.bias[...] = 0.1 * jax.random.normal(jax.random.key(5), (6,))
  plain = nnx.Conv(4, 6, (3, 3), rngs=nnx.Rngs(1), **conv_kwargs)
  plain.kernel[...] = np_weight_standardize(ws.kernel[...], (0, 1, 2), 1e-4).astype(np.float32)
  plain.bias[...] = ws.bias[...]
  np.testing.assert_allclose(ws(x), plain(x), rtol=1e-5, atol=1e-5)


def test_ws_linear_equals_plain_linear_with_numpy_standardized_kernel():
  x = jax.random.normal(jax.random.key(6), (5, 12))
  ws = jnn.WSLinear(12, 7, rngs=nnx.Rngs(0))
  plain = nnx.Linear(12, 7, rngs=nnx.Rngs(1))
  plain.kernel[...] = np_weight_standardize(ws.kernel[...], (0,)).astype(np.float32)
  plain.bias[...] = ws.bias[...] + 0.0
  np.testing.assert_allclose(ws(x), plain(x), rtol=1e-5, atol=1e-5)
  # The raw kernel is what is stored and trained.
  assert not np.allclose(ws.kernel[...], plain.kernel[...])


def test_gradient_flows_through_the_standardization():
  """Central finite differences (float64) of a WS conv's loss w.r.t. the raw kernel."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(7), (2, 5, 5, 2), jnp.float64)
    probe = jax.random.normal(jax.random.key(8), (2, 5, 5, 3), jnp.float64)
    kernel = jax.random.normal(jax.random.key(9), (3, 3, 2, 3), jnp.float64) + 0.3

    def loss(w):
      y = jax.lax.conv_general_dilated(
          x, jnn.weight_standardize(w), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
      return jnp.sum(jnp.tanh(y) * probe)

    grad = np.asarray(jax.jit(jax.grad(loss))(kernel))
    h = 1e-6
    steps = h * jnp.eye(kernel.size, dtype=jnp.float64).reshape(-1, *kernel.shape)
    batched_loss = jax.jit(jax.vmap(loss))
    numeric = np.asarray(batched_loss(kernel + steps) - batched_loss(kernel - steps)) / (2 * h)
    np.testing.assert_allclose(grad.ravel(), numeric, rtol=1e-5, atol=1e-7)
    # WS makes the loss invariant to shifting each output channel's kernel, so the gradient has
    # zero mean over every fan-in (the paper's Eq. for dL/dW subtracts that mean).
    np.testing.assert_allclose(grad.mean(axis=(0, 1, 2)), 0.0, atol=1e-10)


@pytest.mark.parity
def test_epsilon_placement_against_the_official_pytorch_snippet():
  """Documents a difference: the official README's PyTorch layer divides by (unbiased std + eps).

  We follow the paper (population variance, eps inside the square root). The two differ by the
  Bessel factor sqrt((I - 1) / I) for a fan-in of I; with the population std they agree to eps.
  """
  torch = pytest.importorskip("torch")
  oihw = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
  fan_in = 3 * 3 * 3
  weight = torch.from_numpy(oihw)
  std, mean = torch.std_mean(weight, dim=(1, 2, 3), keepdim=True)  # unbiased, as in the README
  official = ((weight - mean) / (std + 1e-5)).numpy()
  ours = np.asarray(jnn.weight_standardize(jnp.asarray(oihw), fan_in_axes=(1, 2, 3)))
  ratio = ours / official
  np.testing.assert_allclose(ratio, np.sqrt(fan_in / (fan_in - 1)), rtol=1e-4)
  population_std = torch.std(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
  np.testing.assert_allclose(ours, ((weight - mean) / population_std).numpy(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Batch-Channel Normalization


@pytest.mark.parametrize("estimate", [False, True], ids=["batch_stats", "estimated"])
def test_bcn_train_then_eval_matches_numpy_transcription(estimate):
  channels, groups, momentum = 8, 4, 0.8
  layer = jnn.BatchChannelNorm(
      channels, num_groups=groups, use_estimated_stats=estimate, momentum=momentum
  )
  params = random_bcn_params(jax.random.key(10), channels, groups)
  set_bcn_params(layer, params)
  state = (np.zeros(channels), np.ones(channels))
  apply = nnx.jit(lambda layer, x, frozen: layer(x, use_running_average=frozen), static_argnums=2)
  keys = jax.random.split(jax.random.key(11), 4)
  for step, key in enumerate(keys):
    x = 2.0 * jax.random.normal(key, (3, 4, 4, channels)) + jnp.arange(channels) * 0.5
    train = step < 3
    got = apply(layer, x, not train)
    expected, state = np_batch_channel_norm(
        x, state, params, groups=groups, train=train, estimate=estimate, momentum=momentum
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.mean[...], state[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.var[...], state[1], rtol=1e-5, atol=1e-6)
  assert layer.mean[...].dtype == jnp.float32 and layer.var[...].dtype == jnp.float32


def test_bcn_dense_inputs_match_numpy_transcription():
  x = jax.random.normal(jax.random.key(12), (5, 6)) * 3.0
  params = random_bcn_params(jax.random.key(13), 6, 2)
  y, mean, var = jnn.batch_channel_normalize(
      x,
      running_mean=jnp.zeros(6),
      running_var=jnp.ones(6),
      bn_scale=params[0],
      bn_bias=params[1],
      group_scale=params[2],
      group_bias=params[3],
      use_running_average=False,
      momentum=0.9,
  )
  expected, (exp_mean, exp_var) = np_batch_channel_norm(
      x, (np.zeros(6), np.ones(6)), params, groups=2, train=True, estimate=False, momentum=0.9
  )
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(mean, exp_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, exp_var, rtol=1e-5, atol=1e-6)


def test_estimated_bcn_has_no_gradient_through_its_statistics():
  """Micro-batch BCN in training equals an evaluation-mode BCN holding the updated estimates."""
  x = jax.random.normal(jax.random.key(14), (2, 3, 3, 4)) + 1.0
  probe = jax.random.normal(jax.random.key(15), x.shape)
  names = ("bn_scale", "bn_bias", "group_scale", "group_bias")
  params = dict(zip(names, random_bcn_params(jax.random.key(16), 4, 2)))
  stats = dict(running_mean=jnp.full(4, 0.5), running_var=jnp.full(4, 2.0))

  def train_loss(x):
    y, _, _ = jnn.batch_channel_normalize(
        x, **stats, **params, use_running_average=False, use_estimated_stats=True, momentum=0.7
    )
    return jnp.sum(y * probe)

  _, new_mean, new_var = jnn.batch_channel_normalize(
      x, **stats, **params, use_running_average=False, use_estimated_stats=True, momentum=0.7
  )

  def eval_loss(x):
    y, _, _ = jnn.batch_channel_normalize(
        x, running_mean=new_mean, running_var=new_var, **params, use_running_average=True
    )
    return jnp.sum(y * probe)

  train_value, train_grad = jax.jit(jax.value_and_grad(train_loss))(x)
  eval_value, eval_grad = jax.jit(jax.value_and_grad(eval_loss))(x)
  np.testing.assert_allclose(train_value, eval_value, rtol=1e-6)
  np.testing.assert_allclose(train_grad, eval_grad, rtol=1e-5, atol=1e-6)


def test_bcn_modes_follow_train_and_eval():
  layer = jnn.BatchChannelNorm(4, num_groups=2, momentum=0.5)
  x = jax.random.normal(jax.random.key(17), (4, 4)) + 3.0
  layer.eval()
  layer(x)
  np.testing.assert_array_equal(layer.mean[...], 0.0)
  layer.train()
  layer(x)
  assert np.all(np.asarray(layer.mean[...]) > 1.0)
  frozen = nnx.view(layer, use_running_average=True)
  before = np.asarray(layer.mean[...])
  frozen(x)
  np.testing.assert_array_equal(layer.mean[...], before)
  with pytest.raises(ValueError, match="use_running_average"):
    jnn.BatchChannelNorm(4, num_groups=2, use_running_average=None)(x)


def test_bcn_rejects_bad_arguments():
  with pytest.raises(ValueError, match="num_groups"):
    jnn.BatchChannelNorm(6, num_groups=4)
  with pytest.raises(ValueError, match="num_groups"):
    jnn.BatchChannelNorm(6, num_groups=0)
  with pytest.raises(ValueError, match="momentum"):
    jnn.BatchChannelNorm(8, num_groups=4, momentum=1.5)
  with pytest.raises(ValueError, match="epsilon"):
    jnn.BatchChannelNorm(8, num_groups=4, epsilon=0.0)
  with pytest.raises(ValueError, match="num_groups"):
    jnn_linen.BatchChannelNorm(num_groups=3).init(jax.random.key(0), jnp.ones((2, 8)), True)


@pytest.mark.parity
@pytest.mark.parametrize("estimate", [False, True], ids=["batch_stats", "estimated"])
def test_bcn_against_pytorch_transcription_of_the_official_code(estimate):
  """Official BCNorm: BN (BatchNorm2d or EstBN), batch_norm over (1, N*G, -1), per-group affine.

  Documented difference: with batch statistics, PyTorch's BatchNorm2d updates its running variance
  with the UNBIASED batch variance; we (like flax) use the biased one. EstBN has no such factor.
  """
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F

  channels, groups, momentum = 8, 4, 0.9
  rng = np.random.default_rng(3)
  x_nhwc = (rng.normal(size=(2, 5, 5, channels)) * 1.5 + 0.7).astype(np.float32)
  params = [np.asarray(p) for p in random_bcn_params(jax.random.key(18), channels, groups)]
  layer = jnn.BatchChannelNorm(
      channels, num_groups=groups, use_estimated_stats=estimate, momentum=momentum
  )
  set_bcn_params(layer, [jnp.asarray(p) for p in params])
  ours = np.asarray(layer(jnp.asarray(x_nhwc)))

  x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)  # NCHW
  bn_w, bn_b, g_w, g_b = (torch.from_numpy(p.astype(np.float32)) for p in params)
  running_mean, running_var = torch.zeros(channels), torch.ones(channels)
  rate = 1.0 - momentum
  if estimate:  # EstBN: update the estimates under no_grad, then normalize with them
    flat = x.transpose(0, 1).reshape(channels, -1)
    batch_mean = flat.mean(dim=1)
    batch_var = ((flat - running_mean[:, None]) ** 2).mean(dim=1)
    running_mean = (1 - rate) * running_mean + rate * batch_mean
    running_var = (1 - rate) * running_var + rate * batch_var
    out = (x - running_mean.view(1, -1, 1, 1)) / torch.sqrt(running_var + 1e-5).view(1, -1, 1, 1)
    out = bn_w.view(1, -1, 1, 1) * out + bn_b.view(1, -1, 1, 1)
  else:
    out = F.batch_norm(x, running_mean, running_var, bn_w, bn_b, True, rate, 1e-5)
  n = x.shape[0]
  out = F.batch_norm(out.reshape(1, n * groups, -1), None, None, None, None, True, 0.0, 1e-5)
  out = g_w.view(1, groups, 1) * out.reshape(n, groups, -1) + g_b.view(1, groups, 1)
  reference = out.reshape(x.shape).permute(0, 2, 3, 1).numpy()

  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(layer.mean[...], running_mean.numpy(), rtol=1e-5, atol=1e-6)
  if estimate:
    np.testing.assert_allclose(layer.var[...], running_var.numpy(), rtol=1e-5, atol=1e-6)
  else:
    count = x.numel() // channels
    bessel = count / (count - 1)
    our_batch_var = (np.asarray(layer.var[...]) - momentum) / (1 - momentum)  # started at 1
    np.testing.assert_allclose(
        momentum + (1 - momentum) * our_batch_var * bessel, running_var.numpy(), rtol=1e-5
    )
    assert not np.allclose(layer.var[...], running_var.numpy(), rtol=1e-5, atol=0)
