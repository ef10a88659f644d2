r"""EvoNorm-B0 and EvoNorm-S0: evolved normalization-activation layers.

Paper: Liu, Brock, Simonyan and Le, "Evolving Normalization-Activation Layers", arXiv:2004.02967.
Official code: the `evonorm` function of tensorflow/tpu `models/official/resnet/resnet_model.py`
(read for this module; constants below are from it).

For a channels-last input x of shape (N, ..., C), with per-channel parameters
:math:`\gamma` (init 1), :math:`\beta` (init 0) and :math:`v` (init 1):

EvoNorm-B0 (batch-dependent):

.. math::

  y = \frac{x}{\max\bigl(\sqrt{s^2_{\text{batch}} + \epsilon},\;
      v\,x + \sqrt{s^2_{\text{instance}} + \epsilon}\bigr)}\,\gamma + \beta,

with :math:`s^2_{\text{batch}}` the per-channel (biased) variance over the batch and spatial axes
(N, ...) in training, the running variance in evaluation, and :math:`s^2_{\text{instance}}` the
per-sample, per-channel (biased) variance over the spatial axes. The running variance starts at 1
and is updated in training as :math:`\hat\sigma^2 \leftarrow m\,\hat\sigma^2 + (1 - m)\,
s^2_{\text{batch}}` with the biased batch variance (official `_batch_std`: decay 0.9, flax-style
momentum weighting the old value).

EvoNorm-S0 (batch-independent):

.. math::

  y = \frac{x\,\sigma(v\,x)}{\sqrt{s^2_{\text{group}} + \epsilon}}\,\gamma + \beta,

with :math:`\sigma` the logistic sigmoid and :math:`s^2_{\text{group}}` the per-sample (biased)
variance over the spatial axes and the C/G channels of each of G groups of consecutive channels
(as GroupNorm).

Defaults are the official code's: ε = 1e-5 for both, momentum 0.9, G = 32. Third-party
implementations differ: timm 1.0.31 (`layers/evo_norm.py`) uses ε = 1e-3 for B0, PyTorch
momentum 0.1 (= 0.9 here) and multiplies the batch variance by the Bessel factor n/(n − 1) before
it enters the running variance; the official code uses the biased variance. The official S0
silently lowers G until it divides C; here such a G raises a `ValueError`. The paper's own text
(appendix constants) was not read; the official code is the anchor.

Statistics and the running variance are float32 (>= float32 for float64 inputs); the output has
`dtype` (default: the input's dtype). EvoNorm-B0 takes `axis_name`: its batch mean and variance
are averaged with `lax.pmean` over that named axis. B0 needs at least one spatial axis
(rank >= 3); S0 accepts (N, C) inputs (groups of channels only).

Public API: the pure functions `evonorm_b0`, `evonorm_s0`; the NNX layers `EvoNormB0`,
`EvoNormS0`; the Linen layers `LinenEvoNormB0`, `LinenEvoNormS0` (exported as
`jaxlearn.nn.linen.EvoNormB0` / `EvoNormS0`).

References:
  Liu, H., Brock, A., Simonyan, K. and Le, Q. V. "Evolving Normalization-Activation Layers"
  (https://arxiv.org/abs/2004.02967), NeurIPS 2020. Official code:
  https://github.com/tensorflow/tpu/blob/master/models/official/resnet/resnet_model.py.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive, check_positive_int, check_range
from jaxlearn.nn._modes import RunningAverageMode

__all__ = [
    "EvoNormB0",
    "EvoNormS0",
    "LinenEvoNormB0",
    "LinenEvoNormS0",
    "evonorm_b0",
    "evonorm_s0",
]

DEFAULT_EPSILON = 1e-5
DEFAULT_MOMENTUM = 0.9
DEFAULT_NUM_GROUPS = 32


def _stats_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _check_input(layer: str, x: jax.Array, min_rank: int, num_features: int | None) -> None:
  if x.ndim < min_rank:
    layout = "(batch, spatial..., channels)" if min_rank > 2 else "(batch, ..., channels)"
    raise ValueError(f"{layer} expects inputs of rank >= {min_rank} {layout}, got shape {x.shape}")
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(f"{layer} expects {num_features} channels on the last axis, got shape "
                     f"{x.shape}")


def _check_groups(num_features: int, num_groups: int) -> None:
  check_positive_int("num_groups", num_groups)
  if num_features % num_groups:
    raise ValueError(
        f"num_groups must divide the number of channels ({num_features}), got {num_groups}")


def evonorm_b0(
    x: jax.Array,
    *,
    gamma: jax.Array,
    beta: jax.Array,
    v: jax.Array,
    running_var: jax.Array,
    use_running_average: bool,
    momentum: float = DEFAULT_MOMENTUM,
    epsilon: float = DEFAULT_EPSILON,
    axis_name: str | None = None,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array]:
  r"""EvoNorm-B0 as a pure function (see the module docstring for the math).

  Args:
    x: input of shape (N, spatial..., C), at least one spatial axis.
    gamma: per-channel scale, shape (C,).
    beta: per-channel shift, shape (C,).
    v: per-channel weight of x in the instance branch, shape (C,).
    running_var: the running variance, shape (C,).
    use_running_average: evaluation: the running variance replaces the batch variance and is
      returned unchanged.
    momentum: weight of the old running variance, in [0, 1].
    epsilon: added to both variances (> 0).
    axis_name: a named axis to average the batch statistics over.
    dtype: the output dtype (default: the dtype of `x`).

  Returns:
    `(y, new_running_var)`; the running variance is a stop-gradient float32 (>= float32) array.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import evonorm_b0
    >>> x = jnp.arange(2 * 3 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 3, 4) / 10
    >>> ones, zeros = jnp.ones(4), jnp.zeros(4)
    >>> y, var = evonorm_b0(x, gamma=ones, beta=zeros, v=ones, running_var=ones,
    ...                     use_running_average=False)
    >>> y.shape, var.shape
    ((2, 3, 3, 4), (4,))
  """
  x = jnp.asarray(x)
  num_features = jnp.shape(running_var)[-1]
  _check_input("EvoNormB0", x, 3, num_features)
  check_range("momentum", momentum, 0.0, 1.0)
  check_positive("epsilon", epsilon)
  return _evonorm_b0(x, gamma, beta, v, running_var, momentum, epsilon,
                     use_running_average=bool(use_running_average), axis_name=axis_name,
                     dtype=x.dtype if dtype is None else jnp.dtype(dtype))


# Jitted so that eager NNX calls compile one program instead of one per primitive.
@functools.partial(jax.jit, static_argnames=("use_running_average", "axis_name", "dtype"))
def _evonorm_b0(x, gamma, beta, v, running_var, momentum, epsilon, *, use_running_average,
                axis_name, dtype):
  compute = _stats_dtype(x.dtype)
  x32 = x.astype(compute)
  running_var = jnp.asarray(running_var, compute)
  if use_running_average:
    var = new_var = running_var
  else:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x32, axis=axes)
    if axis_name is not None:
      mean = jax.lax.pmean(mean, axis_name)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes)
    if axis_name is not None:
      var = jax.lax.pmean(var, axis_name)
    new_var = jax.lax.stop_gradient(momentum * running_var + (1.0 - momentum) * var)
  spatial = tuple(range(1, x.ndim - 1))
  instance_var = jnp.var(x32, axis=spatial, keepdims=True)
  gamma, beta, v = (jnp.asarray(p).astype(compute) for p in (gamma, beta, v))
  denominator = jnp.maximum(jnp.sqrt(var + epsilon), v * x32 + jnp.sqrt(instance_var + epsilon))
  y = x32 / denominator * gamma + beta
  return y.astype(dtype), new_var


def evonorm_s0(
    x: jax.Array,
    *,
    gamma: jax.Array,
    beta: jax.Array,
    v: jax.Array,
    num_groups: int = DEFAULT_NUM_GROUPS,
    epsilon: float = DEFAULT_EPSILON,
    dtype: Any = None,
) -> jax.Array:
  r"""EvoNorm-S0 as a pure function: :math:`x\,\sigma(v x) / \text{std}_g(x)\,\gamma + \beta`.

  Args:
    x: input of shape (N, ..., C), C divisible by `num_groups`.
    gamma: per-channel scale, shape (C,).
    beta: per-channel shift, shape (C,).
    v: per-channel slope inside the sigmoid, shape (C,).
    num_groups: number of channel groups G (channel c is in group c // (C / G)).
    epsilon: added to each group's variance (> 0).
    dtype: the output dtype (default: the dtype of `x`).

  Returns:
    The output, shape of `x`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import evonorm_s0
    >>> x = jnp.arange(2 * 3 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 3, 4)
    >>> ones, zeros = jnp.ones(4), jnp.zeros(4)
    >>> evonorm_s0(x, gamma=ones, beta=zeros, v=ones, num_groups=2).shape
    (2, 3, 3, 4)
  """
  x = jnp.asarray(x)
  num_features = jnp.shape(gamma)[-1]
  _check_input("EvoNormS0", x, 2, num_features)
  _check_groups(num_features, num_groups)
  check_positive("epsilon", epsilon)
  return _evonorm_s0(x, gamma, beta, v, epsilon, num_groups=int(num_groups),
                     dtype=x.dtype if dtype is None else jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("num_groups", "dtype"))
def _evonorm_s0(x, gamma, beta, v, epsilon, *, num_groups, dtype):
  compute = _stats_dtype(x.dtype)
  x32 = x.astype(compute)
  channels = x.shape[-1]
  grouped = x32.reshape(x.shape[0], -1, num_groups, channels // num_groups)
  group_var = jnp.var(grouped, axis=(1, 3), keepdims=True)
  std = jnp.broadcast_to(jnp.sqrt(group_var + epsilon), grouped.shape).reshape(x.shape)
  gamma, beta, v = (jnp.asarray(p).astype(compute) for p in (gamma, beta, v))
  y = x32 * jax.nn.sigmoid(v * x32) / std * gamma + beta
  return y.astype(dtype)


def _params(module, num_features: int, param_dtype: Any) -> None:
  module.gamma = nnx.Param(jnp.ones((num_features,), param_dtype))
  module.beta = nnx.Param(jnp.zeros((num_features,), param_dtype))
  module.v = nnx.Param(jnp.ones((num_features,), param_dtype))


class EvoNormB0(RunningAverageMode):
  r"""EvoNorm-B0 (arXiv:2004.02967) as an NNX layer, channels last.

  Parameters (`nnx.Param`, `param_dtype`): `gamma`, `beta`, `v` of shape (C,). Running statistic
  (`nnx.BatchStat`, float32): `var` (init 1). Math and defaults: module docstring. The mode follows
  flax's `BatchNorm`: `use_running_average` at call time wins over the constructor's value;
  `model.train()` / `model.eval()` and `nnx.view` switch it.

  Args:
    num_features: number of channels C.
    use_running_average: evaluation mode (divide by the running standard deviation).
    momentum: weight of the old running variance, in [0, 1] (official 0.9).
    epsilon: added to the variances (> 0; official 1e-5).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    axis_name: named axis over which the batch statistics are averaged.
    rngs: accepted for signature parity with flax layers; the initialization is deterministic.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.EvoNormB0(8, rngs=nnx.Rngs(0))
    >>> y = norm(jnp.ones((2, 4, 4, 8)))  # training: batch variance, running variance updated
    >>> norm.eval()
    >>> norm(jnp.ones((2, 4, 4, 8))).shape
    (2, 4, 4, 8)
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = False,
               momentum: float = DEFAULT_MOMENTUM, epsilon: float = DEFAULT_EPSILON,
               dtype: Any = None, param_dtype: Any = jnp.float32, axis_name: str | None = None,
               rngs: nnx.Rngs | None = None):
    del rngs  # ones/zeros initialization
    check_positive_int("num_features", num_features)
    check_range("momentum", momentum, 0.0, 1.0)
    check_positive("epsilon", epsilon)
    _params(self, num_features, param_dtype)
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.num_features = num_features
    self.use_running_average = use_running_average
    self.momentum, self.epsilon = momentum, epsilon
    self.dtype, self.param_dtype, self.axis_name = dtype, param_dtype, axis_name

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Applies EvoNorm-B0 to `x` (N, spatial..., C); in training also updates `var`."""
    use_running_average = self.running_average_mode(use_running_average)
    y, var = evonorm_b0(x, gamma=self.gamma[...], beta=self.beta[...], v=self.v[...],
                        running_var=self.var[...], use_running_average=use_running_average,
                        momentum=self.momentum, epsilon=self.epsilon, axis_name=self.axis_name,
                        dtype=self.dtype)
    if not use_running_average:
      self.var[...] = var.astype(jnp.float32)
    return y


class EvoNormS0(nnx.Module):
  r"""EvoNorm-S0 (arXiv:2004.02967) as an NNX layer, channels last; no batch statistics.

  Parameters (`nnx.Param`, `param_dtype`): `gamma`, `beta`, `v` of shape (C,).

  Args:
    num_features: number of channels C.
    num_groups: number of channel groups G (must divide C; official 32).
    epsilon: added to the group variance (> 0; official 1e-5).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    rngs: accepted for signature parity with flax layers; the initialization is deterministic.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.EvoNormS0(8, num_groups=4, rngs=nnx.Rngs(0))
    >>> norm(jnp.ones((2, 4, 4, 8))).shape
    (2, 4, 4, 8)
  """

  def __init__(self, num_features: int, *, num_groups: int = DEFAULT_NUM_GROUPS,
               epsilon: float = DEFAULT_EPSILON, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs
    check_positive_int("num_features", num_features)
    _check_groups(num_features, num_groups)
    check_positive("epsilon", epsilon)
    _params(self, num_features, param_dtype)
    self.num_features, self.num_groups, self.epsilon = num_features, num_groups, epsilon
    self.dtype, self.param_dtype = dtype, param_dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies EvoNorm-S0 to `x` (N, ..., C)."""
    return evonorm_s0(x, gamma=self.gamma[...], beta=self.beta[...], v=self.v[...],
                      num_groups=self.num_groups, epsilon=self.epsilon, dtype=self.dtype)


def _linen_params(module: linen.Module, features: int):
  ones, zeros = linen.initializers.ones, linen.initializers.zeros
  return (module.param("gamma", ones, (features,), module.param_dtype),
          module.param("beta", zeros, (features,), module.param_dtype),
          module.param("v", ones, (features,), module.param_dtype))


def _linen_features(module: linen.Module) -> int | None:
  if module.has_variable("params", "gamma"):
    return module.get_variable("params", "gamma").shape[-1]
  return None


class LinenEvoNormB0(linen.Module):
  r"""EvoNorm-B0 as a Linen layer; exported as `jaxlearn.nn.linen.EvoNormB0`.

  Same math and numbers as the NNX `EvoNormB0`. Variables: `params` {gamma, beta, v};
  `batch_stats` {var} (float32). The number of channels is read from the input. As flax's Linen
  `BatchNorm`: `use_running_average` as an attribute or at call time (not both); while
  initializing, the running variance is not updated and `axis_name` is not used.

  Attributes:
    use_running_average: evaluation mode.
    momentum: weight of the old running variance, in [0, 1].
    epsilon: added to the variances (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    axis_name: named axis over which the batch statistics are averaged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.EvoNormB0()
    >>> x = jnp.ones((2, 4, 4, 8))
    >>> variables = norm.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = norm.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> y.shape
    (2, 4, 4, 8)
  """

  use_running_average: bool | None = None
  momentum: float = DEFAULT_MOMENTUM
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Applies EvoNorm-B0 to `x` (N, spatial..., C); in training also updates `batch_stats`."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    x = jnp.asarray(x)
    _check_input("EvoNormB0", x, 3, _linen_features(self))
    features = x.shape[-1]
    initializing = self.is_initializing()
    var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    gamma, beta, v = _linen_params(self, features)
    y, new_var = evonorm_b0(x, gamma=gamma, beta=beta, v=v, running_var=var.value,
                            use_running_average=use_running_average, momentum=self.momentum,
                            epsilon=self.epsilon,
                            axis_name=None if initializing else self.axis_name, dtype=self.dtype)
    if not use_running_average and not initializing:
      var.value = new_var.astype(jnp.float32)
    return y


class LinenEvoNormS0(linen.Module):
  r"""EvoNorm-S0 as a Linen layer; exported as `jaxlearn.nn.linen.EvoNormS0`.

  Same math and numbers as the NNX `EvoNormS0`. Variables: `params` {gamma, beta, v}; the number
  of channels is read from the input.

  Attributes:
    num_groups: number of channel groups G (must divide the number of channels).
    epsilon: added to the group variance (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.EvoNormS0(num_groups=4)
    >>> x = jnp.ones((2, 4, 4, 8))
    >>> variables = norm.init(jax.random.key(0), x)
    >>> norm.apply(variables, x).shape
    (2, 4, 4, 8)
  """

  num_groups: int = DEFAULT_NUM_GROUPS
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies EvoNorm-S0 to `x` (N, ..., C)."""
    x = jnp.asarray(x)
    _check_input("EvoNormS0", x, 2, _linen_features(self))
    features = x.shape[-1]
    _check_groups(features, self.num_groups)
    gamma, beta, v = _linen_params(self, features)
    return evonorm_s0(x, gamma=gamma, beta=beta, v=v, num_groups=self.num_groups,
                      epsilon=self.epsilon, dtype=self.dtype)


RECORD = registry.record(
    slug="evonorm",
    kind="normalization",
    title="Evolving Normalization-Activation Layers",
    reference="arXiv:2004.02967",
    experiment="evonorm_batch_size",
    notes=(
        "B0 and S0 from the official TensorFlow code (tensorflow/tpu resnet_model.py, "
        "`evonorm`): eps 1e-5 (B0 and S0), running variance with decay 0.9 of the biased batch "
        "variance, init 1; v, gamma init 1, beta init 0; S0 groups of consecutive channels "
        "over (spatial, C/G), default G = 32. Channels last. Differences: the official S0 "
        "lowers G until it divides C, here that raises ValueError; timm 1.0.31 (third party) "
        "uses eps 1e-3 for B0 and an unbiased (n/(n-1)) batch variance in its running "
        "variance (not followed). The official init_zero (gamma = 0) and nonlinearity=False "
        "(affine only) options are not provided. The paper's text constants were not read."
    ),
)
