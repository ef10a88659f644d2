r"""IBN-Net: Instance-Batch Normalization, and the IBN-a / IBN-b residual networks.

Paper: Pan, Luo, Shi and Tang, "Two at Once: Enhancing Learning and Generalization Capacities via
IBN-Net", arXiv:1807.09441. Official code: XingangPan/IBN-Net (`ibnnet/modules.py`,
`ibnnet/resnet_ibn.py`).

**The IBN layer.** For C channels (channels last) and a ratio ρ ∈ (0, 1), the first
h = ⌊ρ C⌋ channels are instance-normalized (per sample and channel over the spatial axes, with a
per-channel affine) and the other C − h channels batch-normalized, then concatenated:

.. math::

  \mathrm{IBN}(x) = \big[\, \gamma^{IN} \frac{x_{:h} - \mu_{n,c}}{\sqrt{\sigma^2_{n,c} + \epsilon}}
  + \beta^{IN} \;\big|\; \mathrm{BN}(x_{h:}) \,\big],

with μ_{n,c}, σ²_{n,c} the mean and biased variance of sample n, channel c over the spatial
positions (PyTorch's `InstanceNorm2d(affine=True)`: ε = 1e-5, no running statistics). The BN half
follows flax's BatchNorm conventions (momentum 0.99 on the old value, biased running variance,
ε = 1e-5; PyTorch's BatchNorm2d stores the unbiased variance, tested) and takes `axis_name`
(`lax.pmean` of its batch statistics). h = ⌊ρ C⌋ as the official `int(planes * ratio)`; both
halves must be non-empty.

**IBN-a and IBN-b** (official `resnet_ibn.py`; the paper's figure 3). A basic residual block is
conv3x3 → norm1 → ReLU → conv3x3 → BN → (+ shortcut) → [IN] → ReLU.

* IBN-a: norm1 is IBN (ratio 0.5) in every block of the first three stages (not the fourth).
* IBN-b: no IBN layer; an InstanceNorm (affine) follows the residual addition of the LAST block of
  the first two stages, and the stem's BN is replaced by an InstanceNorm (affine).

`IBNResNet` builds a small ResNet with these placements from a per-stage configuration
`ibn_cfg` (official defaults: ('a', 'a', 'a', None) for IBN-a, ('b', 'b', None, None) for IBN-b):
a stage marked 'a' uses IBN in every block; a stage marked 'b' puts the IN after the addition of
its last block (official `_make_layer`: never in a stage's first block, so a one-block stage gets
none); a first stage marked 'b' also makes the stem norm an IN. Deviation for small
images: the stem is a 3x3 convolution with stride 1 and no max-pooling (official: 7x7 stride 2
and a 3x3 max-pool), and the head is global average pooling and a dense layer. Shortcuts are a
1x1 convolution + BN where the shape changes, as in the official code. Kernels use flax's
default initializers (official: normal with std sqrt(2 / (k² · out)) for convolutions).

Statistics are float32 (>= float32), outputs in `dtype` (default: the input's dtype).

Public API: the pure functions `instance_normalize`, `ibn_normalize` and `ibn_split`, the NNX
layers `IBN` and `IBNResNet`, and their Linen twins `LinenIBN`, `LinenIBNResNet` (exported from
`jaxlearn.nn.linen` without the prefix). The residual block `IBNBasicBlock` / `LinenIBNBasicBlock`
is importable from this module (tested through `IBNResNet`, which is built from it).

References:
  Pan, X., Luo, P., Shi, J. and Tang, X. "Two at Once: Enhancing Learning and Generalization
  Capacities via IBN-Net" (https://arxiv.org/abs/1807.09441), ECCV 2018. Official code:
  https://github.com/XingangPan/IBN-Net
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_choice, check_positive, check_positive_int, check_range
from jaxlearn.nn.batch_channel_norm import batch_statistics
from jaxlearn.nn._modes import RunningAverageMode

__all__ = [
    "IBN",
    "IBNResNet",
    "LinenIBN",
    "LinenIBNResNet",
    "ibn_normalize",
    "ibn_split",
    "instance_normalize",
]

DEFAULT_RATIO = 0.5
DEFAULT_MOMENTUM = 0.99
DEFAULT_EPSILON = 1e-5
IBN_A = ("a", "a", "a", None)
IBN_B = ("b", "b", None, None)


def _stats_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _check_input(name: str, x: jax.Array, num_features: int | None = None) -> None:
  if x.ndim < 3:
    raise ValueError(
        f"{name} expects inputs of rank >= 3 (batch, spatial..., features), got shape {x.shape}"
    )
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(f"{name} expects {num_features} features on the last axis, got {x.shape}")


def _check_hyperparameters(momentum: Any, epsilon: Any) -> None:
  check_range("momentum", momentum, 0.0, 1.0)
  check_positive("epsilon", epsilon)


def ibn_split(num_features: int, ratio: float = DEFAULT_RATIO) -> int:
  """The number of instance-normalized channels, ⌊ratio · C⌋ (official `int(planes * ratio)`).

  Args:
    num_features: the number of channels C.
    ratio: the fraction of channels that are instance-normalized, in (0, 1).

  Returns:
    h, the instance-normalized channels being the first h; raises a ValueError unless
    1 <= h < C.

  Example:
    >>> from jaxlearn.nn import ibn_split
    >>> ibn_split(64), ibn_split(7, 0.5)
    (32, 3)
  """
  check_positive_int("num_features", num_features)
  check_range("ratio", ratio, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
  half = int(num_features * ratio)
  if not 1 <= half < num_features:
    raise ValueError(
        f"ratio must leave at least one channel to each of IN and BN: int({num_features} * "
        f"{ratio}) = {half} instance-normalized channels of {num_features}"
    )
  return half


def instance_normalize(
    x: jax.Array, scale: jax.Array | None = None, bias: jax.Array | None = None, *,
    epsilon: float = DEFAULT_EPSILON,
) -> jax.Array:
  r"""Instance normalization: each sample and channel standardized over its spatial positions.

  .. math:: y_{n,\cdot,c} = \gamma_c \frac{x_{n,\cdot,c} - \mu_{n,c}}{\sqrt{\sigma^2_{n,c}
     + \epsilon}} + \beta_c

  Args:
    x: input of shape (N, spatial..., C), at least one spatial axis.
    scale: per-channel γ, shape (C,), or None.
    bias: per-channel β, shape (C,), or None.
    epsilon: added to the variance (PyTorch's default 1e-5).

  Returns:
    The normalized input, shape of `x`, dtype >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import instance_normalize
    >>> x = jnp.array([[[1.0], [3.0]], [[10.0], [30.0]]])  # two samples, two positions
    >>> print(instance_normalize(x)[..., 0].round(3))
    [[-1.  1.]
     [-1.  1.]]
  """
  _check_input("instance_normalize", x)
  x32 = x.astype(_stats_dtype(x.dtype))
  axes = tuple(range(1, x.ndim - 1))
  mean = jnp.mean(x32, axis=axes, keepdims=True)
  centered = x32 - mean
  var = jnp.mean(jnp.square(centered), axis=axes, keepdims=True)
  y = centered * jax.lax.rsqrt(var + epsilon)
  if scale is not None:
    y = y * scale
  if bias is not None:
    y = y + bias
  return y


def ibn_normalize(
    x: jax.Array,
    *,
    in_scale: jax.Array,
    in_bias: jax.Array,
    running_mean: jax.Array,
    running_var: jax.Array,
    bn_scale: jax.Array,
    bn_bias: jax.Array,
    use_running_average: bool,
    momentum: float = DEFAULT_MOMENTUM,
    epsilon: float = DEFAULT_EPSILON,
    axis_name: str | None = None,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""The IBN layer as a pure function: IN on the first h channels, BN on the rest.

  Args:
    x: input of shape (N, spatial..., C), channels last.
    in_scale: γ of the instance-normalized channels, shape (h,).
    in_bias: β of the instance-normalized channels, shape (h,).
    running_mean: running means of the batch-normalized channels, shape (C − h,).
    running_var: running (biased) variances of the batch-normalized channels, shape (C − h,).
    bn_scale: γ of the batch-normalized channels, shape (C − h,).
    bn_bias: β of the batch-normalized channels, shape (C − h,).
    use_running_average: evaluation mode of the BN half (the IN half has no running statistics).
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to the variances of both halves.
    axis_name: a named axis to average the BN half's batch statistics over.
    dtype: the output dtype (default: the dtype of `x`).

  Returns:
    `(y, new_running_mean, new_running_var)` (statistics float32, stop-gradient).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import ibn_normalize
    >>> x = jnp.arange(2 * 3 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 3, 4)
    >>> y, mean, var = ibn_normalize(
    ...     x, in_scale=jnp.ones(2), in_bias=jnp.zeros(2), running_mean=jnp.zeros(2),
    ...     running_var=jnp.ones(2), bn_scale=jnp.ones(2), bn_bias=jnp.zeros(2),
    ...     use_running_average=False)
    >>> y.shape, mean.shape
    ((2, 3, 3, 4), (2,))
  """
  half = in_scale.shape[-1]
  _check_input("IBN", x, half + running_mean.shape[-1])
  _check_hyperparameters(momentum, epsilon)
  return _ibn(
      x, in_scale, in_bias, running_mean, running_var, bn_scale, bn_bias, momentum, epsilon,
      use_running_average=bool(use_running_average), axis_name=axis_name,
      dtype=x.dtype if dtype is None else jnp.dtype(dtype),
  )


@functools.partial(jax.jit, static_argnames=("use_running_average", "axis_name", "dtype"))
def _ibn(
    x, in_scale, in_bias, running_mean, running_var, bn_scale, bn_bias, momentum, epsilon, *,
    use_running_average, axis_name, dtype,
):
  compute_dtype = _stats_dtype(x.dtype)
  half = in_scale.shape[-1]
  x32 = x.astype(compute_dtype)
  running_mean = jnp.asarray(running_mean, compute_dtype)
  running_var = jnp.asarray(running_var, compute_dtype)
  instance = instance_normalize(x32[..., :half], in_scale.astype(compute_dtype),
                                in_bias.astype(compute_dtype), epsilon=epsilon)
  rest = x32[..., half:]
  if use_running_average:
    mean, var = running_mean, running_var
    new_mean, new_var = running_mean, running_var
  else:
    mean, var = batch_statistics(rest, axis_name=axis_name)
    new_mean = jax.lax.stop_gradient(momentum * running_mean + (1.0 - momentum) * mean)
    new_var = jax.lax.stop_gradient(momentum * running_var + (1.0 - momentum) * var)
  batch = (rest - mean) * jax.lax.rsqrt(var + epsilon) * bn_scale + bn_bias
  y = jnp.concatenate([instance, batch], axis=-1)
  return y.astype(dtype), new_mean, new_var


class IBN(RunningAverageMode):
  r"""The IBN layer (arXiv:1807.09441) as an NNX layer: IN on the first ⌊ratio·C⌋ channels.

  Parameters (`nnx.Param`): `in_scale`, `in_bias` (h,) and `bn_scale`, `bn_bias` (C − h,);
  running statistics (`nnx.BatchStat`, float32) of the BN half: `mean`, `var`. Modes as flax's
  `BatchNorm` (`use_running_average`, `model.train()` / `model.eval()`).

  Args:
    num_features: number of channels C (the last axis).
    ratio: fraction of instance-normalized channels, in (0, 1) (official default 0.5).
    use_running_average: evaluation mode of the BN half.
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to the variances (> 0), 1e-5 as PyTorch's IN and BN.
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the affine parameters.
    axis_name: named axis over which the BN half's batch statistics are averaged.
    rngs: accepted for signature parity with flax layers; the initialization is deterministic.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.IBN(8, rngs=nnx.Rngs(0))
    >>> y = norm(jnp.ones((2, 4, 4, 8)))
    >>> norm.in_scale.shape, norm.bn_scale.shape
    ((4,), (4,))
  """

  def __init__(
      self,
      num_features: int,
      *,
      ratio: float = DEFAULT_RATIO,
      use_running_average: bool | None = False,
      momentum: float = DEFAULT_MOMENTUM,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs | None = None,
  ):
    del rngs
    half = ibn_split(num_features, ratio)
    _check_hyperparameters(momentum, epsilon)
    rest = num_features - half
    self.in_scale = nnx.Param(jnp.ones((half,), param_dtype))
    self.in_bias = nnx.Param(jnp.zeros((half,), param_dtype))
    self.bn_scale = nnx.Param(jnp.ones((rest,), param_dtype))
    self.bn_bias = nnx.Param(jnp.zeros((rest,), param_dtype))
    self.mean = nnx.BatchStat(jnp.zeros((rest,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((rest,), jnp.float32))
    self.num_features = num_features
    self.ratio = ratio
    self.use_running_average = use_running_average
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.axis_name = axis_name

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalizes `x` (N, spatial..., C); in training mode updates the BN half's statistics."""
    use_running_average = self.running_average_mode(use_running_average)
    y, mean, var = ibn_normalize(
        x, in_scale=self.in_scale[...], in_bias=self.in_bias[...], running_mean=self.mean[...],
        running_var=self.var[...], bn_scale=self.bn_scale[...], bn_bias=self.bn_bias[...],
        use_running_average=use_running_average, momentum=self.momentum, epsilon=self.epsilon,
        axis_name=self.axis_name, dtype=self.dtype,
    )
    if not use_running_average:
      self.mean[...] = mean.astype(jnp.float32)
      self.var[...] = var.astype(jnp.float32)
    return y


class LinenIBN(linen.Module):
  r"""The IBN layer as a Linen layer; exported as `jaxlearn.nn.linen.IBN`.

  Same math and numbers as the NNX `IBN`. Variables: `params` {in_scale, in_bias, bn_scale,
  bn_bias}; `batch_stats` {mean, var} (float32, the BN half). The number of features is read from
  the input; `use_running_average` as in flax's Linen `BatchNorm`.

  Attributes:
    ratio: fraction of instance-normalized channels, in (0, 1).
    use_running_average: evaluation mode of the BN half.
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to the variances (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the affine parameters.
    axis_name: named axis over which the BN half's batch statistics are averaged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> x = jnp.ones((2, 4, 4, 8))
    >>> variables = jnn_linen.IBN().init(jax.random.key(0), x, use_running_average=True)
    >>> variables["params"]["in_scale"].shape
    (4,)
  """

  ratio: float = DEFAULT_RATIO
  use_running_average: bool | None = None
  momentum: float = DEFAULT_MOMENTUM
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalizes `x` (N, spatial..., C); in training mode also updates `batch_stats`."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average
    )
    _check_input("IBN", x)
    if self.has_variable("batch_stats", "mean"):
      expected = self.get_variable("params", "in_scale").shape[-1]
      _check_input("IBN", x, expected + self.get_variable("batch_stats", "mean").shape[-1])
    features = x.shape[-1]
    half = ibn_split(features, self.ratio)
    rest = features - half
    ones, zeros = linen.initializers.ones, linen.initializers.zeros
    initializing = self.is_initializing()
    mean = self.variable("batch_stats", "mean", jnp.zeros, (rest,), jnp.float32)
    var = self.variable("batch_stats", "var", jnp.ones, (rest,), jnp.float32)
    y, new_mean, new_var = ibn_normalize(
        x,
        in_scale=self.param("in_scale", ones, (half,), self.param_dtype),
        in_bias=self.param("in_bias", zeros, (half,), self.param_dtype),
        running_mean=mean.value, running_var=var.value,
        bn_scale=self.param("bn_scale", ones, (rest,), self.param_dtype),
        bn_bias=self.param("bn_bias", zeros, (rest,), self.param_dtype),
        use_running_average=use_running_average, momentum=self.momentum, epsilon=self.epsilon,
        axis_name=None if initializing else self.axis_name, dtype=self.dtype,
    )
    if not use_running_average and not initializing:
      mean.value = new_mean.astype(jnp.float32)
      var.value = new_var.astype(jnp.float32)
    return y


def _check_ibn(ibn: str | None) -> None:
  check_choice("ibn", ibn, (None, "a", "b"))


def _check_cfg(ibn_cfg: Sequence[str | None], num_stages: int) -> None:
  if len(ibn_cfg) != num_stages:
    raise ValueError(
        f"ibn_cfg must give one entry per stage ({num_stages}), got {tuple(ibn_cfg)!r}"
    )
  for entry in ibn_cfg:
    _check_ibn(entry)


def _block_ibn(stage_ibn: str | None, index: int, num_blocks: int) -> str | None:
  """Official `_make_layer`: 'a' in every block; 'b' in the last block of the stage only, and never
  in its first block (so a stage of one block gets no IN)."""
  if stage_ibn == "b":
    return "b" if index == num_blocks - 1 and index > 0 else None
  return stage_ibn


def _common_kwargs(module) -> dict[str, Any]:
  return {"momentum": module.momentum, "epsilon": module.epsilon, "dtype": module.dtype,
          "param_dtype": module.param_dtype}


def _norm_kwargs(module) -> dict[str, Any]:
  """flax BatchNorm settings; the two-pass variance as PyTorch (flax's default E[x²] − E[x]²
  cancels badly when the mean is large)."""
  return {**_common_kwargs(module), "use_fast_variance": False}


def _without_fast_variance(kwargs: dict[str, Any]) -> dict[str, Any]:
  return {key: value for key, value in kwargs.items() if key != "use_fast_variance"}


def _in_kwargs(module) -> dict[str, Any]:
  return {"epsilon": module.epsilon, "dtype": module.dtype, "param_dtype": module.param_dtype,
          "use_fast_variance": False}


class IBNBasicBlock(nnx.Module):
  r"""The basic residual block of IBN-Net (official `BasicBlock_IBN`) as an NNX module.

  conv3x3(stride) → norm1 → ReLU → conv3x3 → BN → (+ shortcut) → [IN] → ReLU, with norm1 = IBN
  (ratio 0.5) if `ibn == 'a'` else BN, the IN (affine, ε 1e-5) only if `ibn == 'b'`, and a
  shortcut conv1x1(stride) + BN where the stride or the channel count changes. Convolutions have no
  bias. Submodules: `conv1`, `norm1`, `conv2`, `norm2`, [`shortcut_conv`, `shortcut_norm`],
  [`instance_norm`].

  Args:
    in_features: input channels.
    features: output channels.
    ibn: None, 'a' or 'b'.
    strides: stride of the first convolution and of the shortcut.
    use_running_average: evaluation mode of the batch norms.
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to every variance (1e-5).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    axis_name: named axis over which the batch statistics are averaged.
    rngs: random streams for the convolution kernels.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn.nn.ibn_net import IBNBasicBlock
    >>> def build_and_call(x):  # under jax.eval_shape: traced for the shapes, nothing runs
    ...   block = IBNBasicBlock(4, 8, ibn="a", strides=2, rngs=nnx.Rngs(0))
    ...   return block(x)
    >>> jax.eval_shape(build_and_call, jnp.ones((2, 6, 6, 4))).shape
    (2, 3, 3, 8)
  """

  def __init__(
      self,
      in_features: int,
      features: int,
      *,
      ibn: str | None = None,
      strides: int = 1,
      use_running_average: bool | None = False,
      momentum: float = DEFAULT_MOMENTUM,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs,
  ):
    check_positive_int("in_features", in_features)
    check_positive_int("features", features)
    check_positive_int("strides", strides)
    _check_ibn(ibn)
    _check_hyperparameters(momentum, epsilon)
    self.in_features, self.features, self.ibn = in_features, features, ibn
    self.momentum, self.epsilon = momentum, epsilon
    self.dtype, self.param_dtype = dtype, param_dtype
    norm = dict(_norm_kwargs(self), use_running_average=use_running_average, axis_name=axis_name)
    conv = dict(use_bias=False, padding=1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = nnx.Conv(in_features, features, (3, 3), strides=strides, **conv)
    if ibn == "a":
      self.norm1 = IBN(features, **_without_fast_variance(norm))  # always two-pass
    else:
      self.norm1 = nnx.BatchNorm(features, **norm, rngs=rngs)
    self.conv2 = nnx.Conv(features, features, (3, 3), **conv)
    self.norm2 = nnx.BatchNorm(features, **norm, rngs=rngs)
    self.has_shortcut = strides != 1 or in_features != features
    if self.has_shortcut:
      self.shortcut_conv = nnx.Conv(in_features, features, (1, 1), strides=strides,
                                    **{**conv, "padding": 0})
      self.shortcut_norm = nnx.BatchNorm(features, **norm, rngs=rngs)
    if ibn == "b":
      self.instance_norm = nnx.InstanceNorm(features, **_in_kwargs(self), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block to `x` (N, H, W, in_features)."""
    if x.ndim != 4 or x.shape[-1] != self.in_features:
      raise ValueError(
          f"IBNBasicBlock expects inputs (batch, height, width, {self.in_features}), got {x.shape}"
      )
    out = jax.nn.relu(self.norm1(self.conv1(x)))
    out = self.norm2(self.conv2(out))
    residual = self.shortcut_norm(self.shortcut_conv(x)) if self.has_shortcut else x
    out = out + residual
    if self.ibn == "b":
      out = self.instance_norm(out)
    return jax.nn.relu(out)


class LinenIBNBasicBlock(linen.Module):
  r"""The IBN-Net basic block as a Linen module (the building block of `LinenIBNResNet`).

  Same structure, variable names and numbers as the NNX `IBNBasicBlock`; the input channel
  count is read from the input. `use_running_average` as in flax's Linen `BatchNorm`.

  Attributes:
    features: output channels.
    ibn: None, 'a' or 'b'.
    strides: stride of the first convolution and of the shortcut.
    use_running_average: evaluation mode of the batch norms.
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to every variance.
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    axis_name: named axis over which the batch statistics are averaged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn.ibn_net import LinenIBNBasicBlock
    >>> block = LinenIBNBasicBlock(8, ibn="b")
    >>> x = jnp.ones((2, 6, 6, 8))
    >>> init = lambda key, x: block.init(key, x, use_running_average=True)
    >>> variables = jax.eval_shape(init, jax.random.key(0), x)  # shapes only: nothing runs
    >>> sorted(variables["params"])
    ['conv1', 'conv2', 'instance_norm', 'norm1', 'norm2']
  """

  features: int
  ibn: str | None = None
  strides: int = 1
  use_running_average: bool | None = None
  momentum: float = DEFAULT_MOMENTUM
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Applies the block to `x` (N, H, W, C)."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average
    )
    _check_ibn(self.ibn)
    if x.ndim != 4:
      raise ValueError(f"IBNBasicBlock expects inputs (batch, height, width, C), got {x.shape}")
    if self.has_variable("params", "conv1"):
      in_features = self.get_variable("params", "conv1")["kernel"].shape[-2]
      if x.shape[-1] != in_features:
        raise ValueError(f"IBNBasicBlock expects {in_features} input channels, got {x.shape}")
    norm = dict(_norm_kwargs(self), use_running_average=use_running_average,
                axis_name=self.axis_name)
    conv = dict(use_bias=False, padding=1, dtype=self.dtype, param_dtype=self.param_dtype)
    out = linen.Conv(self.features, (3, 3), strides=self.strides, name="conv1", **conv)(x)
    if self.ibn == "a":
      out = LinenIBN(name="norm1", **_without_fast_variance(norm))(out)
    else:
      out = linen.BatchNorm(name="norm1", **norm)(out)
    out = jax.nn.relu(out)
    out = linen.Conv(self.features, (3, 3), name="conv2", **conv)(out)
    out = linen.BatchNorm(name="norm2", **norm)(out)
    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = linen.Conv(self.features, (1, 1), strides=self.strides, name="shortcut_conv",
                            **{**conv, "padding": 0})(x)
      residual = linen.BatchNorm(name="shortcut_norm", **norm)(residual)
    out = out + residual
    if self.ibn == "b":
      out = linen.InstanceNorm(name="instance_norm", **_in_kwargs(self))(out)
    return jax.nn.relu(out)


class IBNResNet(nnx.Module):
  r"""A small ResNet with IBN-Net placements (official `ResNet_IBN`, stem simplified) in NNX.

  stem: conv3x3 (stride 1, no bias) → BN (IN if `ibn_cfg[0] == 'b'`) → ReLU; then the stages,
  stage s of `blocks_per_stage[s]` `IBNBasicBlock`s with `stage_features[s]` channels (stride 2
  at the first block of every stage but the first), the blocks' `ibn` given by `ibn_cfg[s]`
  ('a': every block; 'b': the last block if the stage has two or more; None: none); then global
  average pooling and a dense
  read-out. Submodules: `stem_conv`, `stem_norm`, `blocks_0`, `blocks_1`, ..., `head`.

  Args:
    in_features: input channels.
    num_classes: outputs of the read-out.
    stage_features: channels of each stage.
    blocks_per_stage: blocks of each stage.
    ibn_cfg: one of None / 'a' / 'b' per stage: IBN-a is ('a', 'a', 'a', None) (`IBN_A`, the
      default), IBN-b ('b', 'b', None, None) (`IBN_B`), as the official code; all None is the
      plain BN ResNet.
    use_running_average: evaluation mode of the batch norms.
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to every variance.
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    axis_name: named axis over which the batch statistics are averaged.
    rngs: random streams for the kernels.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> def build_and_call(x):  # under jax.eval_shape: traced for the shapes, nothing runs
    ...   net = jnn.IBNResNet(1, 10, stage_features=(4, 8), blocks_per_stage=(1, 1),
    ...                       ibn_cfg=("a", None), rngs=nnx.Rngs(0))
    ...   return net(x)
    >>> jax.eval_shape(build_and_call, jnp.ones((2, 8, 8, 1))).shape
    (2, 10)
  """

  def __init__(
      self,
      in_features: int,
      num_classes: int,
      *,
      stage_features: Sequence[int] = (16, 32, 64, 128),
      blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
      ibn_cfg: Sequence[str | None] = IBN_A,
      use_running_average: bool | None = False,
      momentum: float = DEFAULT_MOMENTUM,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs,
  ):
    check_positive_int("in_features", in_features)
    check_positive_int("num_classes", num_classes)
    if len(blocks_per_stage) != len(stage_features) or not stage_features:
      raise ValueError("stage_features and blocks_per_stage must be non-empty, of equal length")
    for value in (*stage_features, *blocks_per_stage):
      check_positive_int("stage_features / blocks_per_stage", value)
    _check_cfg(ibn_cfg, len(stage_features))
    _check_hyperparameters(momentum, epsilon)
    self.in_features = in_features
    self.momentum, self.epsilon = momentum, epsilon
    self.dtype, self.param_dtype = dtype, param_dtype
    width = stage_features[0]
    self.stem_conv = nnx.Conv(in_features, width, (3, 3), padding=1, use_bias=False, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)
    if ibn_cfg[0] == "b":
      self.stem_norm = nnx.InstanceNorm(width, **_in_kwargs(self), rngs=rngs)
    else:
      self.stem_norm = nnx.BatchNorm(width, use_running_average=use_running_average,
                                     axis_name=axis_name, **_norm_kwargs(self), rngs=rngs)
    self.num_blocks = 0
    for stage, (features, num_blocks) in enumerate(zip(stage_features, blocks_per_stage)):
      for index in range(num_blocks):
        # Attributes `blocks_<i>`: the Linen twin's submodule names, so the variables match.
        setattr(self, f"blocks_{self.num_blocks}", IBNBasicBlock(
            width, features, ibn=_block_ibn(ibn_cfg[stage], index, num_blocks),
            strides=2 if stage > 0 and index == 0 else 1,
            use_running_average=use_running_average, axis_name=axis_name,
            **_common_kwargs(self), rngs=rngs))
        self.num_blocks += 1
        width = features
    self.head = nnx.Linear(width, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Logits for images `x` (N, H, W, in_features)."""
    if x.ndim != 4 or x.shape[-1] != self.in_features:
      raise ValueError(
          f"IBNResNet expects inputs (batch, height, width, {self.in_features}), got {x.shape}"
      )
    x = jax.nn.relu(self.stem_norm(self.stem_conv(x)))
    for index in range(self.num_blocks):
      x = getattr(self, f"blocks_{index}")(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


class LinenIBNResNet(linen.Module):
  r"""`IBNResNet` as a Linen module; exported as `jaxlearn.nn.linen.IBNResNet`.

  Same structure, variable names and numbers as the NNX `IBNResNet`.

  Attributes:
    num_classes: outputs of the read-out.
    stage_features: channels of each stage.
    blocks_per_stage: blocks of each stage.
    ibn_cfg: one of None / 'a' / 'b' per stage.
    use_running_average: evaluation mode of the batch norms.
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to every variance.
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    axis_name: named axis over which the batch statistics are averaged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> net = jnn_linen.IBNResNet(10, stage_features=(4, 8), blocks_per_stage=(1, 1),
    ...                           ibn_cfg=("b", None))
    >>> x = jnp.ones((2, 8, 8, 1))
    >>> forward = lambda key, x: net.init_with_output(key, x, use_running_average=True)[0]
    >>> jax.eval_shape(forward, jax.random.key(0), x).shape  # shapes only: nothing runs
    (2, 10)
  """

  num_classes: int
  stage_features: Sequence[int] = (16, 32, 64, 128)
  blocks_per_stage: Sequence[int] = (2, 2, 2, 2)
  ibn_cfg: Sequence[str | None] = IBN_A
  use_running_average: bool | None = None
  momentum: float = DEFAULT_MOMENTUM
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Logits for images `x` (N, H, W, C)."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average
    )
    _check_cfg(self.ibn_cfg, len(self.stage_features))
    if x.ndim != 4:
      raise ValueError(f"IBNResNet expects inputs (batch, height, width, C), got {x.shape}")
    if self.has_variable("params", "stem_conv"):
      in_features = self.get_variable("params", "stem_conv")["kernel"].shape[-2]
      if x.shape[-1] != in_features:
        raise ValueError(f"IBNResNet expects {in_features} input channels, got {x.shape}")
    norm = dict(_norm_kwargs(self), use_running_average=use_running_average,
                axis_name=self.axis_name)
    width = self.stage_features[0]
    x = linen.Conv(width, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="stem_conv")(x)
    if self.ibn_cfg[0] == "b":
      x = linen.InstanceNorm(name="stem_norm", **_in_kwargs(self))(x)
    else:
      x = linen.BatchNorm(name="stem_norm", **norm)(x)
    x = jax.nn.relu(x)
    count = 0
    for stage, (features, num_blocks) in enumerate(zip(self.stage_features,
                                                       self.blocks_per_stage)):
      for index in range(num_blocks):
        x = LinenIBNBasicBlock(
            features, ibn=_block_ibn(self.ibn_cfg[stage], index, num_blocks),
            strides=2 if stage > 0 and index == 0 else 1, name=f"blocks_{count}",
            use_running_average=use_running_average, axis_name=self.axis_name,
            **_common_kwargs(self))(x)
        count += 1
    return linen.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="head")(jnp.mean(x, axis=(1, 2)))


RECORD = registry.record(
    slug="ibn_net",
    kind="normalization",
    title="Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net",
    reference="arXiv:1807.09441",
    experiment="ibn_net_style_shift",
    notes=(
        "IBN layer as the official modules.py: the first int(ratio * C) channels (channels last) "
        "InstanceNorm with affine and eps 1e-5, the rest BatchNorm (flax conventions: momentum "
        "0.99 on the old value, biased running variance, eps 1e-5; torch stores the unbiased "
        "variance, tested); ratio outside (0, 1) or an empty half raises. IBN-a / IBN-b "
        "placements as the official resnet_ibn.py (basic blocks only, no bottleneck); the "
        "ResNet's stem is a 3x3 stride-1 convolution without max-pooling for small images, flax "
        "default initializers. The IN of the blocks and stem is flax's InstanceNorm with "
        "eps 1e-5; every flax norm in the blocks uses the two-pass variance "
        "(use_fast_variance=False, as PyTorch)."
    ),
)
