"""IBN-Net against independent references.

References: PyTorch transcriptions of the official `ibnnet/modules.py` (`IBN`: InstanceNorm2d with
affine on the first int(ratio * C) channels, BatchNorm2d on the rest) and of the official
`BasicBlock_IBN` forward pass (`ibnnet/resnet_ibn.py`), run with PyTorch's own functional ops on
the same weights; the official `_make_layer` placement rule transcribed in Python.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn.nn.ibn_net import IBNBasicBlock

EPS = 1e-5


def torch_ibn(torch, x, half, in_scale, in_bias, bn_scale, bn_bias, running_mean, running_var,
              training, momentum=0.1):
  """Official IBN on NCHW tensors; updates `running_mean` / `running_var` in place."""
  functional = torch.nn.functional
  first = functional.instance_norm(x[:, :half], weight=in_scale, bias=in_bias, eps=EPS)
  rest = functional.batch_norm(x[:, half:], running_mean, running_var, bn_scale, bn_bias,
                               training=training, momentum=momentum, eps=EPS)
  return torch.cat([first, rest], dim=1)


def _t(torch, array):
  return torch.from_numpy(np.asarray(array, np.float32).copy())


def test_ibn_layer_matches_pytorch_in_train_and_eval():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  channels, half = 7, 3  # int(7 * 0.5) = 3 instance-normalized channels
  x = (2.0 * rng.normal(size=(4, 3, 5, channels)) + 1.0).astype(np.float32)
  in_scale, in_bias = rng.uniform(0.5, 1.5, half), rng.normal(size=half)
  bn_scale, bn_bias = rng.uniform(0.5, 1.5, channels - half), rng.normal(size=channels - half)
  layer = jnn.IBN(channels, momentum=0.9)
  assert layer.in_scale.shape == (half,)
  for name, value in (("in_scale", in_scale), ("in_bias", in_bias), ("bn_scale", bn_scale),
                      ("bn_bias", bn_bias)):
    getattr(layer, name)[...] = jnp.asarray(value, jnp.float32)

  running_mean, running_var = torch.zeros(channels - half), torch.ones(channels - half)
  x_nchw = _t(torch, x.transpose(0, 3, 1, 2))
  args = [_t(torch, a) for a in (in_scale, in_bias, bn_scale, bn_bias)]
  y_torch = torch_ibn(torch, x_nchw, half, *args, running_mean, running_var, training=True)
  np.testing.assert_allclose(layer(jnp.asarray(x)), y_torch.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layer.mean[...], running_mean.numpy(), rtol=1e-5, atol=1e-6)
  # torch keeps the unbiased batch variance, flax (and we) the biased one.
  n = x.shape[0] * x.shape[1] * x.shape[2]
  biased_update = (running_var.numpy() - 0.9) * (n - 1) / n + 0.9
  np.testing.assert_allclose(layer.var[...], biased_update, rtol=1e-5, atol=1e-6)

  layer.eval()
  layer.var[...] = jnp.asarray(running_var.numpy())  # the same running statistics in both
  y_eval = torch_ibn(torch, x_nchw, half, *args, running_mean, running_var, training=False)
  np.testing.assert_allclose(layer(jnp.asarray(x)), y_eval.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-5, atol=1e-5)


def test_ibn_split_follows_int_of_ratio_times_channels_and_rejects_bad_ratios():
  assert [jnn.ibn_split(c, r) for c, r in ((64, 0.5), (7, 0.5), (10, 0.25), (3, 0.7))] == [
      32, 3, 2, 2]
  for bad in (0.0, 1.0, -0.5, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="ratio"):
      jnn.IBN(8, ratio=bad)
  with pytest.raises(ValueError, match="at least one channel"):
    jnn.ibn_split(4, 0.1)  # int(0.4) = 0: no IN channel


def _official_block_types(ibn_cfg, layers):
  """The official `_make_layer`: first block `None if ibn == 'b' else ibn`; later blocks
  `None if (ibn == 'b' and i < blocks - 1) else ibn`."""
  types = []
  for ibn, blocks in zip(ibn_cfg, layers):
    types.append(None if ibn == "b" else ibn)
    types += [None if (ibn == "b" and i < blocks - 1) else ibn for i in range(1, blocks)]
  return types


@pytest.mark.parametrize("ibn_cfg", [("a", "a", "a", None), ("b", "b", None, None)])
@pytest.mark.parametrize("layers", [(2, 2, 2, 2), (3, 1, 2, 1)])
def test_resnet_placements_follow_the_official_make_layer(ibn_cfg, layers):
  net = nnx.eval_shape(lambda: jnn.IBNResNet(3, 10, stage_features=(4, 4, 8, 8),
                                             blocks_per_stage=layers, ibn_cfg=ibn_cfg,
                                             rngs=nnx.Rngs(0)))
  blocks = [getattr(net, f"blocks_{i}") for i in range(sum(layers))]
  assert [b.ibn for b in blocks] == _official_block_types(ibn_cfg, layers)
  for block in blocks:
    assert isinstance(block.norm1, jnn.IBN) == (block.ibn == "a")
    assert hasattr(block, "instance_norm") == (block.ibn == "b")
  assert isinstance(net.stem_norm, nnx.InstanceNorm) == (ibn_cfg[0] == "b")


@pytest.mark.parametrize("ibn", ["a", "b"])
def test_basic_block_matches_the_official_forward_pass(ibn):
  """conv-norm1-relu-conv-bn, + shortcut (conv1x1 + BN), IN after the addition for 'b', relu."""
  torch = pytest.importorskip("torch")
  functional = torch.nn.functional
  rng = np.random.default_rng(1)
  abstract = nnx.eval_shape(
      lambda: IBNBasicBlock(3, 4, ibn=ibn, strides=2, momentum=0.9, rngs=nnx.Rngs(0)))
  graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  params = jax.tree.map(
      lambda a: jnp.asarray(rng.uniform(-1.0, 1.0, a.shape) + (a.ndim == 1), jnp.float32), params)
  stats = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), stats)
  p = nnx.to_pure_dict(params)
  x = (2.0 * rng.normal(size=(4, 6, 6, 3)) + 0.5).astype(np.float32)
  y = jax.jit(lambda params, stats, x: nnx.merge(graphdef, params, stats)(x))(
      params, stats, jnp.asarray(x))

  def conv(h, kernel, stride, padding):
    return functional.conv2d(h, _t(torch, np.asarray(kernel).transpose(3, 2, 0, 1)),
                             stride=stride, padding=padding)

  def bn(h, norm):
    c = h.shape[1]
    return functional.batch_norm(h, torch.zeros(c), torch.ones(c), _t(torch, norm["scale"]),
                                 _t(torch, norm["bias"]), training=True, eps=EPS)

  h = _t(torch, x.transpose(0, 3, 1, 2))
  out = conv(h, p["conv1"]["kernel"], 2, 1)
  if ibn == "a":
    n1 = p["norm1"]
    out = torch_ibn(torch, out, 2, *(_t(torch, n1[k]) for k in
                                     ("in_scale", "in_bias", "bn_scale", "bn_bias")),
                    torch.zeros(2), torch.ones(2), training=True)
  else:
    out = bn(out, p["norm1"])
  out = bn(conv(functional.relu(out), p["conv2"]["kernel"], 1, 1), p["norm2"])
  out = out + bn(conv(h, p["shortcut_conv"]["kernel"], 2, 0), p["shortcut_norm"])
  if ibn == "b":
    out = functional.instance_norm(out, weight=_t(torch, p["instance_norm"]["scale"]),
                                   bias=_t(torch, p["instance_norm"]["bias"]), eps=EPS)
  y_torch = functional.relu(out).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(y, y_torch, rtol=1e-4, atol=1e-4)


def test_bad_configurations_raise():
  with pytest.raises(ValueError, match="ibn"):
    IBNBasicBlock(4, 4, ibn="c", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="ibn_cfg"):
    nnx.eval_shape(lambda: jnn.IBNResNet(1, 10, stage_features=(4, 8), blocks_per_stage=(1, 1),
                                         ibn_cfg=("a", "a", None), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="expects"):
    jnn.instance_normalize(jnp.ones((2, 3)))  # no spatial axis
