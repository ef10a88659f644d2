"""Batch-Channel Normalization (BCN): batch normalization followed by a group-wise channel norm.

Paper: Qiao, Wang, Liu, Shen and Yuille, "Micro-Batch Training with Batch-Channel Normalization and
Weight Standardization", arXiv:1903.10520. Official code:
joe-siyuan-qiao/Batch-Channel-Normalization (`BCNorm`, `EstBN` in its README;
`imagenet/models/layers.py`).

For an input x of shape (N, ..., C) (channels last) with G groups of C/G consecutive channels:

1. Batch normalization, per channel c, with a per-channel affine (γ_b, β_b):

     ẋ = γ_b (x − μ_c) / sqrt(σ²_c + ε) + β_b.

   * `use_estimated_stats=False` (large-batch BCN, official `BCNorm(estimate=False)`): μ_c, σ²_c
     are the batch mean and (biased) variance; gradients flow through them. The running
     statistics are updated for evaluation.
   * `use_estimated_stats=True` (micro-batch BCN, official `EstBN`): the layer normalizes with
     its running estimates also in training. Each training call first updates them,

       μ̂ ← momentum·μ̂ + (1 − momentum)·mean(x),
       σ̂² ← momentum·σ̂² + (1 − momentum)·mean((x − μ̂_old)²),

     (the variance is taken around the PREVIOUS estimate μ̂_old, as in the official code and the
     paper's algorithm), then normalizes with the updated μ̂, σ̂² under `stop_gradient`.
   * Evaluation (`use_running_average=True`) normalizes with the running statistics and updates
     nothing, in both variants.

   The paper's update rate is r = 1 − momentum.

2. Channel normalization: every sample and group is standardized over its C/G channels and all
   spatial positions (GroupNorm without affine), then scaled and shifted PER GROUP:

     y = γ_g (ẋ − mean_g(ẋ)) / sqrt(var_g(ẋ) + ε) + β_g,   γ, β ∈ R^G.

   The per-group affine (not per-channel as in GroupNorm) follows the official code.

Defaults: `num_groups=32` (the official ImageNet and DeepLab code), `epsilon=1e-5` for both
steps (official), `momentum=0.99` (flax's BatchNorm default, r = 0.01). The official code does not
publish its EstBN rate: `EstBN.estbn_moving_speed` is a buffer initialized to 0 and set by a
training script that is not released, and the paper does not state it; its large-batch BN uses
PyTorch's momentum 0.1 (flax momentum 0.9).

Statistics and the running estimates are float32 (>= float32 for float64 inputs); the output has
`dtype` (default: the input's dtype). With `axis_name`, the batch statistics are averaged with
`lax.pmean` over that named axis (vmap / pmap / shard_map), which equals the full-batch
statistics when every shard holds the same number of examples.

Public API: the pure functions `batch_statistics`, `channel_normalize` and
`batch_channel_normalize`; the NNX layer `BatchChannelNorm`; the Linen layer
`LinenBatchChannelNorm`, exported as `jaxlearn.nn.linen.BatchChannelNorm`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn._checks import check_positive, check_positive_int, check_range
from jaxlearn.nn._modes import RunningAverageMode

__all__ = [
    "BatchChannelNorm",
    "LinenBatchChannelNorm",
    "batch_channel_normalize",
    "batch_statistics",
    "channel_normalize",
]

DEFAULT_NUM_GROUPS = 32
DEFAULT_MOMENTUM = 0.99
DEFAULT_EPSILON = 1e-5


def _stats_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _check_input(x: jax.Array, num_features: int | None = None) -> None:
  if x.ndim < 2:
    raise ValueError(
        f"BatchChannelNorm expects inputs of rank >= 2 (batch, ..., features), got shape {x.shape}"
    )
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(
        f"BatchChannelNorm expects {num_features} features on the last axis, got shape {x.shape}"
    )


def _check_groups(num_features: int, num_groups: int) -> None:
  check_positive_int("num_groups", num_groups)
  if num_features % num_groups:
    raise ValueError(
        f"num_groups must divide the number of features ({num_features}), got {num_groups}"
    )


def _check_hyperparameters(momentum: Any, epsilon: Any) -> None:
  check_range("momentum", momentum, 0.0, 1.0)
  check_positive("epsilon", epsilon)


def batch_statistics(
    x: jax.Array, *, center: jax.Array | None = None, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array]:
  """Per-feature mean and mean squared deviation over every axis but the last.

  Args:
    x: input of shape (N, ..., C).
    center: the value deviations are measured from; default the batch mean (giving the biased
      variance). Micro-batch BCN passes its previous running mean.
    axis_name: a named axis (vmap/pmap/shard_map) to average the statistics over.

  Returns:
    `(mean, var)`, each of shape (C,) and dtype >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import batch_statistics
    >>> mean, var = batch_statistics(jnp.array([[1.0, 0.0], [3.0, 0.0]]))
    >>> mean, var
    (Array([2., 0.], dtype=float32), Array([1., 0.], dtype=float32))
  """
  _check_input(x)
  axes = tuple(range(x.ndim - 1))
  x = x.astype(_stats_dtype(x.dtype))
  mean = jnp.mean(x, axis=axes)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  reference = mean if center is None else jnp.asarray(center, x.dtype)
  var = jnp.mean(jnp.square(x - reference), axis=axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


def channel_normalize(x: jax.Array, num_groups: int, *, epsilon: float = DEFAULT_EPSILON):
  """Standardizes each sample's channel groups (GroupNorm without affine), in >= float32.

  Args:
    x: input of shape (N, ..., C), C divisible by `num_groups`; channel c is in group
      c // (C / num_groups).
    num_groups: number of groups G.
    epsilon: added to each group's variance.

  Returns:
    The standardized input, shape of `x`, dtype >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import channel_normalize
    >>> y = channel_normalize(jnp.array([[1.0, 3.0, 5.0, 9.0]]), num_groups=2)
    >>> print(y.round(3))  # each group of two channels: zero mean, unit variance
    [[-1.  1. -1.  1.]]
  """
  _check_input(x)
  _check_groups(x.shape[-1], num_groups)
  group_shape = (x.shape[0], -1, num_groups, x.shape[-1] // num_groups)
  grouped = x.astype(_stats_dtype(x.dtype)).reshape(group_shape)
  mean = jnp.mean(grouped, axis=(1, 3), keepdims=True)
  centered = grouped - mean
  var = jnp.mean(jnp.square(centered), axis=(1, 3), keepdims=True)
  return (centered * jax.lax.rsqrt(var + epsilon)).reshape(x.shape)


def batch_channel_normalize(
    x: jax.Array,
    *,
    running_mean: jax.Array,
    running_var: jax.Array,
    bn_scale: jax.Array,
    bn_bias: jax.Array,
    group_scale: jax.Array,
    group_bias: jax.Array,
    use_running_average: bool,
    use_estimated_stats: bool = False,
    momentum: float = DEFAULT_MOMENTUM,
    epsilon: float = DEFAULT_EPSILON,
    axis_name: str | None = None,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Batch-Channel Normalization as a pure function (see the module docstring for the math).

  Args:
    x: input of shape (N, ..., C), channels last.
    running_mean: running (estimated) means, shape (C,).
    running_var: running (estimated) variances, shape (C,).
    bn_scale: per-channel scale γ_b of the batch-normalization step, shape (C,).
    bn_bias: per-channel shift β_b, shape (C,).
    group_scale: per-group scale γ_g of the channel-normalization step, shape (G,).
    group_bias: per-group shift β_g, shape (G,).
    use_running_average: evaluation mode: normalize with the running statistics, update nothing.
    use_estimated_stats: micro-batch BCN: in training, update the running estimates and
      normalize with them (no gradient through them); otherwise use the batch statistics.
    momentum: decay of the running statistics (the paper's rate r = 1 − momentum).
    epsilon: added to the variances of both steps.
    axis_name: a named axis to average the batch statistics over.
    dtype: the output dtype (default: the dtype of `x`).

  Returns:
    `(y, new_running_mean, new_running_var)`; the running statistics are returned unchanged in
    evaluation mode, and always as stop-gradient float32 (>= float32) arrays.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import batch_channel_normalize
    >>> C, G = 8, 2
    >>> x = jnp.arange(4 * C, dtype=jnp.float32).reshape(4, C)
    >>> y, mean, var = batch_channel_normalize(
    ...     x, running_mean=jnp.zeros(C), running_var=jnp.ones(C), bn_scale=jnp.ones(C),
    ...     bn_bias=jnp.zeros(C), group_scale=jnp.ones(G), group_bias=jnp.zeros(G),
    ...     use_running_average=False)
    >>> y.shape, mean.shape
    ((4, 8), (8,))
  """
  num_features = running_mean.shape[-1]
  _check_input(x, num_features)
  _check_groups(num_features, group_scale.shape[-1])
  _check_hyperparameters(momentum, epsilon)
  return _batch_channel_norm(
      x,
      running_mean,
      running_var,
      bn_scale,
      bn_bias,
      group_scale,
      group_bias,
      momentum,
      epsilon,
      use_running_average=bool(use_running_average),
      use_estimated_stats=bool(use_estimated_stats),
      axis_name=axis_name,
      dtype=x.dtype if dtype is None else jnp.dtype(dtype),
  )


# Jitted so that eager NNX calls compile one program instead of one per primitive.
@functools.partial(
    jax.jit, static_argnames=("use_running_average", "use_estimated_stats", "axis_name", "dtype")
)
def _batch_channel_norm(
    x,
    running_mean,
    running_var,
    bn_scale,
    bn_bias,
    group_scale,
    group_bias,
    momentum,
    epsilon,
    *,
    use_running_average,
    use_estimated_stats,
    axis_name,
    dtype,
):
  compute_dtype = _stats_dtype(x.dtype)
  x32 = x.astype(compute_dtype)
  running_mean = jnp.asarray(running_mean, compute_dtype)
  running_var = jnp.asarray(running_var, compute_dtype)

  def moving_average(running, batch):
    return jax.lax.stop_gradient(momentum * running + (1.0 - momentum) * batch)

  if use_running_average:
    mean, var = running_mean, running_var
    new_mean, new_var = running_mean, running_var
  elif use_estimated_stats:
    batch_mean, batch_var = batch_statistics(x32, center=running_mean, axis_name=axis_name)
    new_mean = moving_average(running_mean, batch_mean)
    new_var = moving_average(running_var, batch_var)
    mean, var = new_mean, new_var
  else:
    mean, var = batch_statistics(x32, axis_name=axis_name)
    new_mean = moving_average(running_mean, mean)
    new_var = moving_average(running_var, var)

  batch_normed = (x32 - mean) * jax.lax.rsqrt(var + epsilon) * bn_scale + bn_bias
  num_groups = group_scale.shape[-1]
  channels_per_group = running_mean.shape[-1] // num_groups
  y = channel_normalize(batch_normed, num_groups, epsilon=epsilon)
  y = y * jnp.repeat(group_scale, channels_per_group) + jnp.repeat(group_bias, channels_per_group)
  return y.astype(dtype), new_mean, new_var


class BatchChannelNorm(RunningAverageMode):
  """Batch-Channel Normalization (arXiv:1903.10520) as an NNX layer.

  Parameters (`nnx.Param`, `param_dtype`): `bn_scale`, `bn_bias` of shape (C,) and `group_scale`,
  `group_bias` of shape (G,). Running statistics (`nnx.BatchStat`, float32): `mean`, `var`.
  The math, defaults and the two training variants are described in the module docstring.

  The mode follows flax's `BatchNorm`: `use_running_average` given at call time wins over the
  constructor's value; `model.train()` / `model.eval()` and `nnx.view(model,
  use_running_average=...)` switch it.

  Args:
    num_features: number of channels C (the last axis of the input).
    num_groups: number of channel groups G (must divide C; default 32 as in the official code).
    use_running_average: evaluation mode (normalize with the running statistics).
    use_estimated_stats: micro-batch BCN: normalize with the running estimates also in training.
    momentum: decay of the running statistics, in [0, 1] (r = 1 − momentum).
    epsilon: added to the variances (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the affine parameters.
    axis_name: named axis over which batch statistics are averaged (vmap/pmap/shard_map).
    rngs: accepted for signature parity with flax layers; the initialization is deterministic.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.BatchChannelNorm(16, num_groups=4, rngs=nnx.Rngs(0))
    >>> x = jnp.arange(2 * 4 * 4 * 16, dtype=jnp.float32).reshape(2, 4, 4, 16)
    >>> y = norm(x)  # training: batch statistics, running statistics updated
    >>> norm.eval()
    >>> y = norm(x)  # evaluation: running statistics
    >>> y.shape
    (2, 4, 4, 16)
  """

  def __init__(
      self,
      num_features: int,
      *,
      num_groups: int = DEFAULT_NUM_GROUPS,
      use_running_average: bool | None = False,
      use_estimated_stats: bool = False,
      momentum: float = DEFAULT_MOMENTUM,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs | None = None,
  ):
    del rngs  # ones/zeros initialization
    check_positive_int("num_features", num_features)
    _check_groups(num_features, num_groups)
    _check_hyperparameters(momentum, epsilon)
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.bn_scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bn_bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.group_scale = nnx.Param(jnp.ones((num_groups,), param_dtype))
    self.group_bias = nnx.Param(jnp.zeros((num_groups,), param_dtype))
    self.num_features = num_features
    self.num_groups = num_groups
    self.use_running_average = use_running_average
    self.use_estimated_stats = use_estimated_stats
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.axis_name = axis_name

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalizes `x` (N, ..., C); in training mode also updates the running statistics."""
    use_running_average = self.running_average_mode(use_running_average)
    y, mean, var = batch_channel_normalize(
        x,
        running_mean=self.mean[...],
        running_var=self.var[...],
        bn_scale=self.bn_scale[...],
        bn_bias=self.bn_bias[...],
        group_scale=self.group_scale[...],
        group_bias=self.group_bias[...],
        use_running_average=use_running_average,
        use_estimated_stats=self.use_estimated_stats,
        momentum=self.momentum,
        epsilon=self.epsilon,
        axis_name=self.axis_name,
        dtype=self.dtype,
    )
    if not use_running_average:
      self.mean[...] = mean.astype(jnp.float32)
      self.var[...] = var.astype(jnp.float32)
    return y


class LinenBatchChannelNorm(linen.Module):
  """Batch-Channel Normalization as a Linen layer; exported as `jaxlearn.nn.linen.BatchChannelNorm`.

  Same math and numbers as the NNX `BatchChannelNorm`. Variables: `params` {bn_scale, bn_bias,
  group_scale, group_bias}; `batch_stats` {mean, var} (float32). The number of features is read
  from the input. As in flax's Linen `BatchNorm`, `use_running_average` is set either as an
  attribute or at call time (not both), and while `is_initializing()` the running statistics
  are not updated and `axis_name` is not used.

  Attributes:
    num_groups: number of channel groups G (must divide the number of features).
    use_running_average: evaluation mode (normalize with the running statistics).
    use_estimated_stats: micro-batch BCN: normalize with the running estimates also in training.
    momentum: decay of the running statistics, in [0, 1] (r = 1 − momentum).
    epsilon: added to the variances (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the affine parameters.
    axis_name: named axis over which batch statistics are averaged (vmap/pmap/shard_map).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.BatchChannelNorm(num_groups=4)
    >>> x = jnp.ones((2, 4, 4, 16))
    >>> variables = norm.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = norm.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> y.shape
    (2, 4, 4, 16)
  """

  num_groups: int = DEFAULT_NUM_GROUPS
  use_running_average: bool | None = None
  use_estimated_stats: bool = False
  momentum: float = DEFAULT_MOMENTUM
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalizes `x` (N, ..., C); in training mode also updates `batch_stats`."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average
    )
    _check_input(x)
    if self.has_variable("batch_stats", "mean"):
      _check_input(x, self.get_variable("batch_stats", "mean").shape[-1])
    features = x.shape[-1]
    _check_groups(features, self.num_groups)
    initializing = self.is_initializing()
    mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    ones, zeros = linen.initializers.ones, linen.initializers.zeros
    y, new_mean, new_var = batch_channel_normalize(
        x,
        running_mean=mean.value,
        running_var=var.value,
        bn_scale=self.param("bn_scale", ones, (features,), self.param_dtype),
        bn_bias=self.param("bn_bias", zeros, (features,), self.param_dtype),
        group_scale=self.param("group_scale", ones, (self.num_groups,), self.param_dtype),
        group_bias=self.param("group_bias", zeros, (self.num_groups,), self.param_dtype),
        use_running_average=use_running_average,
        use_estimated_stats=self.use_estimated_stats,
        momentum=self.momentum,
        epsilon=self.epsilon,
        axis_name=None if initializing else self.axis_name,
        dtype=self.dtype,
    )
    if not use_running_average and not initializing:
      mean.value = new_mean.astype(jnp.float32)
      var.value = new_var.astype(jnp.float32)
    return y
