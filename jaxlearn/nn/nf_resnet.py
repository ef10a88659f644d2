r"""Normalizer-free ResNets: scaled weight standardization, scaled activations and the NF block.

Paper: Brock, De and Smith, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets", arXiv:2101.08692. Official code: google-deepmind/deepmind-research,
`nfnets/base.py` (`WSConv2D`, the activation constants, `signal_metrics`) and
`nfnets/nf_resnet.py` (`NFResBlock`, the β schedule).

**Scaled weight standardization.** A kernel W with output channels on the last axis and fan-in N
(all other axes) is reparametrized per output channel i as

.. math::

  \hat W_{ij} = g_i\,\frac{W_{ij} - \mu_i}{\sqrt{\max(N\,\sigma_i^2,\ \epsilon)}},

with :math:`\mu_i, \sigma_i^2` the (population) mean and variance over the fan-in, a learnable
gain :math:`g_i` (init 1) and ε = 1e-4 used as a **floor** (official), not added. The layers
always add a bias (init 0) and initialize W with a fan-in scaled normal (official haiku
`VarianceScaling(1, 'fan_in', 'normal')`: an untruncated normal of variance 1/fan-in, flax's
`variance_scaling(1, 'fan_in', 'normal')`, `FAN_IN_NORMAL` here).

**Scaled activations.** Each nonlinearity is multiplied by a constant γ that restores unit
variance for a unit-Gaussian input (`NF_GAMMAS`, the official table; e.g. relu 1.7139588594436646,
within 0.1 % of the analytic :math:`(1/2 - 1/(2\pi))^{-1/2}`; how the official constants were
computed is not stated in the code).

**NF residual block** (pre-activation; β and α scalars, `skip_gain` a learnable scalar):

.. math::

  h = \beta\,\phi(x),\quad s = \begin{cases} P(h) & \text{(transition: projection)} \\ x &
  \text{otherwise}\end{cases},\quad f = L_1(\phi(L_0(h))),\quad
  y = \alpha\,\text{skip\_gain}\cdot f + s,

with φ the scaled activation and :math:`L_0, L_1, P` scaled-WS layers. β = 1/E[std(x)], tracked
by `nf_betas`: :math:`\text{Var}(x_{\ell+1}) = \text{Var}(x_\ell) + \alpha^2`, reset to 1 after a
transition block. α defaults to 0.2 and ``skip_gain`` to 0 (SkipInit, official default); a
nonzero init is an option. Deviations from the official block: it is a bottleneck of three
convolutions (1x1, kxk, 1x1, width out/4) with stochastic depth and optional squeeze-excite; ours
is a two-layer basic block (dense layers, or convolutions of one window size), without stochastic
depth or squeeze-excite.

**Signal propagation** (`signal_metrics`, the official metric): for channels-last activations,
the average over channels of the squared channel mean, and the average channel variance, both
over every axis but the last.

Public API: the table `NF_GAMMAS` (module constant), `scaled_activation`,
`scaled_weight_standardize`, `nf_betas`, `signal_metrics`; the NNX layers `ScaledWSLinear`,
`ScaledWSConv`, `NFResidualBlock`; their Linen twins `LinenScaledWSDense`, `LinenScaledWSConv`,
`LinenNFResidualBlock` (exported as `jaxlearn.nn.linen.ScaledWSDense`, `ScaledWSConv`,
`NFResidualBlock`).

References:
  Brock, A., De, S. and Smith, S. L. "Characterizing signal propagation to close the performance
  gap in unnormalized ResNets" (https://arxiv.org/abs/2101.08692), ICLR 2021. Official code:
  https://github.com/google-deepmind/deepmind-research/tree/master/nfnets.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_choice, check_positive, check_positive_int, check_range
from jaxlearn.nn.weight_standardization import _canonical_fan_in_axes

__all__ = [
    "NFResidualBlock",
    "ScaledWSConv",
    "ScaledWSLinear",
    "LinenNFResidualBlock",
    "LinenScaledWSConv",
    "LinenScaledWSDense",
    "nf_betas",
    "scaled_activation",
    "scaled_weight_standardize",
    "signal_metrics",
]

DEFAULT_EPSILON = 1e-4
DEFAULT_ALPHA = 0.2
# Official WSConv2D init: haiku VarianceScaling(1.0, 'fan_in', 'normal'), an untruncated normal.
FAN_IN_NORMAL = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")

# γ per nonlinearity (official nfnets/base.py): act(x)·γ has unit variance for x ~ N(0, 1).
NF_GAMMAS = {
    "identity": 1.0,
    "celu": 1.270926833152771,
    "elu": 1.2716004848480225,
    "gelu": 1.7015043497085571,
    "leaky_relu": 1.70590341091156,
    "log_sigmoid": 1.9193484783172607,
    "relu": 1.7139588594436646,
    "relu6": 1.7131484746932983,
    "selu": 1.0008515119552612,
    "sigmoid": 4.803835391998291,
    "silu": 1.7881293296813965,
    "soft_sign": 2.338853120803833,
    "softplus": 1.9203323125839233,
    "tanh": 1.5939117670059204,
}
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "celu": jax.nn.celu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "leaky_relu": jax.nn.leaky_relu,
    "log_sigmoid": jax.nn.log_sigmoid,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "selu": jax.nn.selu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "soft_sign": jax.nn.soft_sign,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
}


def scaled_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  r"""The nonlinearity `name` times its γ from `NF_GAMMAS`: :math:`x \mapsto \gamma\,\phi(x)`.

  Args:
    name: a key of `NF_GAMMAS` (jax.nn's gelu is the tanh approximation, as in the official
      code, which calls `jax.nn.gelu` with its default).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import scaled_activation
    >>> scaled_activation("relu")(jnp.array([-1.0, 1.0]))
    Array([0.       , 1.7139589], dtype=float32)
  """
  check_choice("activation", name, tuple(NF_GAMMAS))
  act, gamma = _ACTIVATIONS[name], NF_GAMMAS[name]
  return lambda x: act(x) * jnp.asarray(gamma, x.dtype)


def scaled_weight_standardize(
    kernel: jax.Array,
    gain: jax.Array | None = None,
    *,
    fan_in_axes: Sequence[int] | None = None,
    epsilon: float = DEFAULT_EPSILON,
) -> jax.Array:
  r"""Scaled WS: :math:`g\,(W - \mu) / \sqrt{\max(N\sigma^2, \epsilon)}` per output channel.

  Args:
    kernel: a floating-point kernel, output channels last: (in, out) or ``(*window, in, out)``.
    gain: the per-output-channel gain, broadcastable to the non-fan-in axes (default 1).
    fan_in_axes: the axes to standardize over; default all but the last (flax layout).
    epsilon: the floor of N·σ² (> 0; official 1e-4).

  Returns:
    The standardized kernel, shape and dtype of `kernel` (statistics in >= float32).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import scaled_weight_standardize
    >>> w = scaled_weight_standardize(jnp.arange(12.0).reshape(3, 4) ** 2)
    >>> print(jnp.round((w ** 2).sum(axis=0), 4))  # unit norm per output unit: Var(x Ŵ) = Var(x)
    [1. 1. 1. 1.]
  """
  kernel = jnp.asarray(kernel)
  if not jnp.issubdtype(kernel.dtype, jnp.floating):
    raise ValueError(f"kernel must be a floating-point array, got dtype {kernel.dtype}")
  check_positive("epsilon", epsilon)
  axes = _canonical_fan_in_axes(kernel.ndim, fan_in_axes)
  if gain is None:
    gain = jnp.ones((), kernel.dtype)
  return _scaled_standardize(kernel, jnp.asarray(gain), epsilon, axes=axes)


@functools.partial(jax.jit, static_argnames=("axes",))
def _scaled_standardize(kernel, gain, epsilon, *, axes):
  compute = jnp.promote_types(kernel.dtype, jnp.float32)
  w = kernel.astype(compute)
  fan_in = math.prod(kernel.shape[a] for a in axes)
  mean = jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.var(w, axis=axes, keepdims=True)
  scale = jax.lax.rsqrt(jnp.maximum(fan_in * var, epsilon)) * gain.astype(compute)
  return ((w - mean) * scale).astype(kernel.dtype)


def nf_betas(stage_depths: Sequence[int], alpha: float = DEFAULT_ALPHA) -> tuple[float, ...]:
  r"""β = 1/expected std of every block's input, block by block (official schedule).

  The expected variance starts at 1, grows by α² per block (:math:`\text{Var} \leftarrow
  \text{Var} + \alpha^2`) and is reset to 1 after the first (transition) block of every stage,
  which then still adds its α².

  Args:
    stage_depths: number of blocks per stage (the first block of a stage is a transition).
    alpha: the residual-branch scale α (>= 0).

  Returns:
    One β per block, in order.

  Example:
    >>> from jaxlearn.nn import nf_betas
    >>> [round(b, 4) for b in nf_betas([3], alpha=0.2)]
    [1.0, 0.9806, 0.9623]
  """
  check_range("alpha", alpha, 0.0, None)
  betas, expected_std = [], 1.0
  for depth in stage_depths:
    check_positive_int("stage_depths", depth)
    for index in range(depth):
      betas.append(1.0 / expected_std)
      if index == 0:
        expected_std = 1.0
      expected_std = math.sqrt(expected_std**2 + alpha**2)
  return tuple(betas)


def signal_metrics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  r"""(average channel squared mean, average channel variance) of channels-last activations.

  Both statistics are taken per channel over every axis but the last (batch and spatial), then
  averaged over channels (official `signal_metrics`), in >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import signal_metrics
    >>> sq_mean, var = signal_metrics(jnp.array([[1.0, 0.0], [3.0, 0.0]]))
    >>> float(sq_mean), float(var)
    (2.0, 0.5)
  """
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"signal_metrics expects inputs of rank >= 2 (batch, ..., channels), got "
                     f"shape {x.shape}")
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = tuple(range(x.ndim - 1))
  return jnp.mean(jnp.square(jnp.mean(x, axis=axes))), jnp.mean(jnp.var(x, axis=axes))


def _check_input(layer: str, x: jax.Array, min_rank: int, features: int | None) -> None:
  if x.ndim < min_rank:
    raise ValueError(f"{layer} expects inputs of rank >= {min_rank} (batch, ..., features), got "
                     f"shape {x.shape}")
  if features is not None and x.shape[-1] != features:
    raise ValueError(f"{layer} expects {features} input features on the last axis, got shape "
                     f"{x.shape}")


def _window(kernel_size: int | Sequence[int]) -> tuple[int, ...]:
  window = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
  if not 1 <= len(window) <= 3:
    raise ValueError(f"kernel_size must have 1 to 3 spatial dimensions, got {kernel_size!r}")
  for size in window:
    check_positive_int("kernel_size", size)
  return window


def _strides(strides: int | Sequence[int], rank: int) -> tuple[int, ...]:
  strides = (strides,) * rank if isinstance(strides, int) else tuple(strides)
  if len(strides) != rank:
    raise ValueError(f"strides must have {rank} entries, got {strides!r}")
  for stride in strides:
    check_positive_int("strides", stride)
  return strides


def _apply_layer(x, kernel, gain, bias, *, epsilon, strides, padding, dtype):
  """x·Ŵ + b (strides None) or the convolution of channels-last x with Ŵ, plus b."""
  compute = jnp.promote_types(dtype, kernel.dtype)
  weight = _scaled_standardize(kernel, gain, epsilon, axes=tuple(range(kernel.ndim - 1)))
  x, weight = x.astype(compute), weight.astype(compute)
  if strides is None:
    y = x @ weight
  else:
    spatial = "DHW"[3 - len(strides):]
    numbers = jax.lax.conv_dimension_numbers(
        x.shape, weight.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    y = jax.lax.conv_general_dilated(x, weight, strides, padding, dimension_numbers=numbers)
  return (y + bias.astype(compute)).astype(dtype)


# Jitted so that eager NNX calls compile one program instead of one per primitive.
_dense_or_conv = jax.jit(_apply_layer, static_argnames=("epsilon", "strides", "padding", "dtype"))


class ScaledWSLinear(nnx.Module):
  r"""Dense layer with a scaled weight-standardized kernel (arXiv:2101.08692).

  :math:`y = x \hat W + b`, :math:`\hat W` = `scaled_weight_standardize(kernel, gain)`.
  Parameters: `kernel` (in, out), `gain` (out,) init 1, `bias` (out,) init 0 (always used).

  Args:
    in_features: number of input features.
    out_features: number of output features.
    epsilon: the floor of N·σ² (official 1e-4).
    dtype: the computation and output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of the raw kernel (default: the official fan-in scaled normal).
    rngs: the random number generators ('params').

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> jnn.ScaledWSLinear(4, 3, rngs=nnx.Rngs(0))(jnp.ones((2, 4))).shape
    (2, 3)
  """

  def __init__(self, in_features: int, out_features: int, *, epsilon: float = DEFAULT_EPSILON,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               kernel_init=FAN_IN_NORMAL, rngs: nnx.Rngs):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    check_positive("epsilon", epsilon)
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.gain = nnx.Param(jnp.ones((out_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))
    self.in_features, self.out_features = in_features, out_features
    self.epsilon, self.dtype = epsilon, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the standardized kernel to the last axis of `x`."""
    x = jnp.asarray(x)
    _check_input("ScaledWSLinear", x, 1, self.in_features)
    return _dense_or_conv(x, self.kernel[...], self.gain[...], self.bias[...],
                          epsilon=self.epsilon, strides=None, padding=None,
                          dtype=jnp.dtype(self.dtype or x.dtype))


class ScaledWSConv(nnx.Module):
  r"""Convolution with a scaled weight-standardized kernel (official `WSConv2D`), channels last.

  Parameters: `kernel` ``(*window, in, out)``, `gain` (out,) init 1, `bias` (out,) init 0 (always
  used). Inputs are batched, ``(N, *spatial, in)``, 1 to 3 spatial axes.

  Args:
    in_features: number of input channels.
    out_features: number of output channels.
    kernel_size: the window (an int for 1-D).
    strides: the strides (an int for all axes).
    padding: 'SAME' (default), 'VALID' or explicit pairs, as `lax.conv_general_dilated`.
    epsilon: the floor of N·σ² (official 1e-4).
    dtype: the computation and output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of the raw kernel (default: the official fan-in scaled normal).
    rngs: the random number generators ('params').

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> conv = jnn.ScaledWSConv(3, 8, (3, 3), rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((2, 6, 6, 3))).shape
    (2, 6, 6, 8)
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int],
               strides: int | Sequence[int] = 1, *, padding: Any = "SAME",
               epsilon: float = DEFAULT_EPSILON, dtype: Any = None,
               param_dtype: Any = jnp.float32, kernel_init=FAN_IN_NORMAL, rngs: nnx.Rngs):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    check_positive("epsilon", epsilon)
    window = _window(kernel_size)
    self.strides = _strides(strides, len(window))
    self.kernel_size = window
    shape = (*window, in_features, out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
    self.gain = nnx.Param(jnp.ones((out_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))
    self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))
    self.in_features, self.out_features = in_features, out_features
    self.epsilon, self.dtype = epsilon, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Convolves the batched channels-last `x` with the standardized kernel, plus the bias."""
    x = jnp.asarray(x)
    _check_input("ScaledWSConv", x, len(self.kernel_size) + 2, self.in_features)
    return _dense_or_conv(x, self.kernel[...], self.gain[...], self.bias[...],
                          epsilon=self.epsilon, strides=self.strides, padding=self.padding,
                          dtype=jnp.dtype(self.dtype or x.dtype))


def _check_block(alpha, beta, activation, skip_gain_init):
  check_range("alpha", alpha, 0.0, None)
  check_positive("beta", beta)
  check_choice("activation", activation, tuple(NF_GAMMAS))
  check_range("skip_gain_init", skip_gain_init)


@functools.partial(jax.jit, static_argnames=("strides", "activation", "epsilon", "dtype"))
def _nf_block(x, layers, skip_gain, alpha, beta, *, strides, activation, epsilon, dtype):
  """The NF block (module docstring); `layers` = {name: (kernel, gain, bias)}, strides None for
  dense layers."""
  act = scaled_activation(activation)
  compute = jnp.promote_types(dtype, jnp.float32)
  unit = None if strides is None else (1,) * len(strides)
  layer = functools.partial(_apply_layer, epsilon=epsilon, padding="SAME", dtype=dtype)
  h = (act(x.astype(compute)) * beta).astype(dtype)
  skip = x if layers.get("shortcut") is None else layer(h, *layers["shortcut"], strides=strides)
  f = layer(h, *layers["layer0"], strides=strides)
  f = layer(act(f.astype(compute)).astype(dtype), *layers["layer1"], strides=unit)
  y = f.astype(compute) * (alpha * skip_gain.astype(compute)) + skip.astype(compute)
  return y.astype(dtype)


def _layer_params(layer) -> tuple[jax.Array, jax.Array, jax.Array] | None:
  return None if layer is None else (layer.kernel[...], layer.gain[...], layer.bias[...])


class NFResidualBlock(nnx.Module):
  r"""A normalizer-free pre-activation residual block (arXiv:2101.08692), basic two-layer form.

  :math:`y = \alpha\,\text{skip\_gain}\cdot L_1(\phi(L_0(\beta\phi(x)))) + s`, with
  :math:`s = x`, or :math:`P(\beta\phi(x))` when `out_features` differs from `in_features` or
  the stride is not 1 (transition block). :math:`L_0, L_1, P` are `ScaledWSLinear`
  (``kernel_size=None``) or `ScaledWSConv` (P with a 1x1 window); φ is
  `scaled_activation(activation)`. Parameters: `layer0`, `layer1`, `shortcut` (transition only)
  and the scalar `skip_gain`.

  Args:
    in_features: input channels.
    out_features: output channels (default: `in_features`).
    kernel_size: None for dense layers, else the convolution window.
    strides: stride of the first convolution and of the projection (convolutions only).
    alpha: residual-branch scale α (official 0.2).
    beta: input scale β = 1/expected std (`nf_betas`; default 1).
    activation: a key of `NF_GAMMAS` (default 'relu').
    skip_gain_init: initial skip gain: 0 (SkipInit, official default) or any finite value.
    epsilon: scaled-WS floor (official 1e-4).
    dtype: computation and output dtype (default: the input's).
    param_dtype: dtype of the parameters.
    rngs: the random number generators ('params').

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> block = jnn.NFResidualBlock(8, rngs=nnx.Rngs(0))  # dense layers
    >>> x = jnp.ones((2, 8))
    >>> bool(jnp.all(block(x) == x))  # skip_gain starts at 0: the identity
    True
  """

  def __init__(self, in_features: int, out_features: int | None = None, *,
               kernel_size: int | Sequence[int] | None = None, strides: int = 1,
               alpha: float = DEFAULT_ALPHA, beta: float = 1.0, activation: str = "relu",
               skip_gain_init: float = 0.0, epsilon: float = DEFAULT_EPSILON,
               dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    _check_block(alpha, beta, activation, skip_gain_init)
    check_positive_int("in_features", in_features)
    out_features = in_features if out_features is None else out_features
    check_positive_int("out_features", out_features)
    check_positive_int("strides", strides)
    if kernel_size is None and strides != 1:
      raise ValueError(f"strides must be 1 for dense layers (kernel_size=None), got {strides}")
    common = dict(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if kernel_size is None:
      self.layer0 = ScaledWSLinear(in_features, out_features, **common)
      self.layer1 = ScaledWSLinear(out_features, out_features, **common)
    else:
      self.layer0 = ScaledWSConv(in_features, out_features, kernel_size, strides, **common)
      self.layer1 = ScaledWSConv(out_features, out_features, kernel_size, **common)
    transition = out_features != in_features or strides != 1
    if not transition:
      self.shortcut = nnx.data(None)
    elif kernel_size is None:
      self.shortcut = ScaledWSLinear(in_features, out_features, **common)
    else:
      ones = (1,) * len(_window(kernel_size))
      self.shortcut = ScaledWSConv(in_features, out_features, ones, strides, **common)
    self.skip_gain = nnx.Param(jnp.full((), skip_gain_init, param_dtype))
    self.in_features, self.out_features = in_features, out_features
    self.strides = None if kernel_size is None else _strides(strides, len(_window(kernel_size)))
    self.min_rank = 2 if kernel_size is None else len(_window(kernel_size)) + 2
    self.alpha, self.beta, self.activation = alpha, beta, activation
    self.epsilon, self.dtype = epsilon, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block to `x` (batch, ..., in_features)."""
    x = jnp.asarray(x)
    _check_input("NFResidualBlock", x, self.min_rank, self.in_features)
    layers = {name: _layer_params(getattr(self, name))
              for name in ("layer0", "layer1", "shortcut")}
    return _nf_block(x, layers, self.skip_gain[...], self.alpha, self.beta,
                     strides=self.strides, activation=self.activation, epsilon=self.epsilon,
                     dtype=jnp.dtype(self.dtype or x.dtype))


def _linen_layer(module: linen.Module, x: jax.Array, window, strides, padding):
  """The parameters and output of a scaled-WS Linen layer: Dense if `window` is None."""
  in_features, features = x.shape[-1], module.features
  shape = (in_features, features) if window is None else (*window, in_features, features)
  kernel = module.param("kernel", module.kernel_init, shape, module.param_dtype)
  gain = module.param("gain", linen.initializers.ones, (features,), module.param_dtype)
  bias = module.param("bias", linen.initializers.zeros, (features,), module.param_dtype)
  return _dense_or_conv(x, kernel, gain, bias, epsilon=module.epsilon, strides=strides,
                        padding=padding, dtype=jnp.dtype(module.dtype or x.dtype))


def _linen_in_features(module: linen.Module) -> int | None:
  if module.has_variable("params", "kernel"):
    return module.get_variable("params", "kernel").shape[-2]
  return None


class LinenScaledWSDense(linen.Module):
  r"""The Linen twin of `ScaledWSLinear` (exported as `jaxlearn.nn.linen.ScaledWSDense`).

  Attributes:
    features: number of output features.
    epsilon: the floor of N·σ² (official 1e-4).
    dtype: computation and output dtype (default: the input's).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of the raw kernel (default: the official fan-in scaled normal).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> dense = jnn_linen.ScaledWSDense(3)
    >>> variables = dense.init(jax.random.key(0), jnp.ones((2, 4)))
    >>> dense.apply(variables, jnp.ones((2, 4))).shape
    (2, 3)
  """

  features: int
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = FAN_IN_NORMAL

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the standardized kernel to the last axis of `x`."""
    check_positive_int("features", self.features)
    check_positive("epsilon", self.epsilon)
    x = jnp.asarray(x)
    _check_input("ScaledWSDense", x, 1, _linen_in_features(self))
    return _linen_layer(self, x, None, None, None)


class LinenScaledWSConv(linen.Module):
  r"""The Linen twin of `ScaledWSConv` (exported as `jaxlearn.nn.linen.ScaledWSConv`).

  Attributes:
    features: number of output channels.
    kernel_size: the window (an int for 1-D).
    strides: the strides (an int for all axes).
    padding: 'SAME' (default), 'VALID' or explicit pairs.
    epsilon: the floor of N·σ² (official 1e-4).
    dtype: computation and output dtype (default: the input's).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of the raw kernel (default: the official fan-in scaled normal).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> conv = jnn_linen.ScaledWSConv(8, (3, 3))
    >>> variables = conv.init(jax.random.key(0), jnp.ones((2, 6, 6, 3)))
    >>> conv.apply(variables, jnp.ones((2, 6, 6, 3))).shape
    (2, 6, 6, 8)
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Any = "SAME"
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = FAN_IN_NORMAL

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Convolves the batched channels-last `x` with the standardized kernel, plus the bias."""
    check_positive_int("features", self.features)
    check_positive("epsilon", self.epsilon)
    window = _window(self.kernel_size)
    strides = _strides(self.strides, len(window))
    x = jnp.asarray(x)
    _check_input("ScaledWSConv", x, len(window) + 2, _linen_in_features(self))
    padding = self.padding if isinstance(self.padding, str) else \
        tuple(map(tuple, self.padding))
    return _linen_layer(self, x, window, strides, padding)


class LinenNFResidualBlock(linen.Module):
  r"""The Linen twin of `NFResidualBlock` (exported as `jaxlearn.nn.linen.NFResidualBlock`).

  Same parameters (`layer0`, `layer1`, `shortcut` for a transition, `skip_gain`) and numbers;
  the input features are read from the input.

  Attributes:
    out_features: output channels (default: the input's).
    kernel_size: None for dense layers, else the convolution window.
    strides: stride of the first convolution and of the projection.
    alpha: residual-branch scale α.
    beta: input scale β.
    activation: a key of `NF_GAMMAS`.
    skip_gain_init: initial skip gain (default 0, SkipInit).
    epsilon: scaled-WS floor.
    dtype: computation and output dtype (default: the input's).
    param_dtype: dtype of the parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> block = jnn_linen.NFResidualBlock(16, skip_gain_init=1.0)
    >>> variables = block.init(jax.random.key(0), jnp.ones((2, 8)))
    >>> block.apply(variables, jnp.ones((2, 8))).shape
    (2, 16)
  """

  out_features: int | None = None
  kernel_size: int | Sequence[int] | None = None
  strides: int = 1
  alpha: float = DEFAULT_ALPHA
  beta: float = 1.0
  activation: str = "relu"
  skip_gain_init: float = 0.0
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block to `x` (batch, ..., features)."""
    _check_block(self.alpha, self.beta, self.activation, self.skip_gain_init)
    check_positive_int("strides", self.strides)
    if self.kernel_size is None and self.strides != 1:
      raise ValueError(f"strides must be 1 for dense layers (kernel_size=None), got "
                       f"{self.strides}")
    x = jnp.asarray(x)
    min_rank = 2 if self.kernel_size is None else len(_window(self.kernel_size)) + 2
    in_features = None
    if self.has_variable("params", "layer0"):
      in_features = self.get_variable("params", "layer0")["kernel"].shape[-2]
    _check_input("NFResidualBlock", x, min_rank, in_features)
    in_features = x.shape[-1]
    out_features = in_features if self.out_features is None else self.out_features
    window = None if self.kernel_size is None else _window(self.kernel_size)
    strides = None if window is None else _strides(self.strides, len(window))

    def params(name, fan_in, unit_window=False):
      shape = (fan_in, out_features) if window is None else \
          ((1,) * len(window) if unit_window else window) + (fan_in, out_features)
      return _LinenScaledWSParams(shape, self.param_dtype, name=name)()

    layers = {"layer0": params("layer0", in_features),
              "layer1": params("layer1", out_features), "shortcut": None}
    if out_features != in_features or self.strides != 1:
      layers["shortcut"] = params("shortcut", in_features, unit_window=True)
    skip_gain = self.param("skip_gain", linen.initializers.constant(self.skip_gain_init), (),
                           self.param_dtype)
    return _nf_block(x, layers, skip_gain, self.alpha, self.beta, strides=strides,
                     activation=self.activation, epsilon=self.epsilon,
                     dtype=jnp.dtype(self.dtype or x.dtype))


class _LinenScaledWSParams(linen.Module):
  """The (kernel, gain, bias) of one scaled-WS layer of `LinenNFResidualBlock`."""

  shape: tuple[int, ...]
  param_dtype: Any = jnp.float32
  kernel_init: Any = FAN_IN_NORMAL

  @linen.compact
  def __call__(self):
    features = self.shape[-1]
    return (self.param("kernel", self.kernel_init, self.shape, self.param_dtype),
            self.param("gain", linen.initializers.ones, (features,), self.param_dtype),
            self.param("bias", linen.initializers.zeros, (features,), self.param_dtype))


RECORD = registry.record(
    slug="nf_resnet_scaled_ws",
    kind="layer",
    title="Characterizing signal propagation to close the performance gap in unnormalized ResNets",
    reference="arXiv:2101.08692",
    experiment="nf_resnet_signal_propagation",
    notes=(
        "From the official nfnets code (base.py WSConv2D, nonlinearities, signal_metrics; "
        "nf_resnet.py NFResBlock and the beta schedule): scaled WS g (W - mean)/sqrt(max(N var, "
        "1e-4)) with eps a floor, gain per output channel (init 1), bias always added, "
        "fan-in scaled (untruncated) normal init; gamma table of the official code folded into "
        "the activations; block y = alpha skip_gain f(beta act(x)) + shortcut with skip_gain a "
        "learnable scalar initialized to 0 (SkipInit, official default; nonzero init an "
        "option), alpha 0.2, beta from nf_betas. Deviations: the block is a basic two-layer "
        "block (dense or one conv window), not the official 1x1-kxk-1x1 bottleneck; no "
        "stochastic depth or squeeze-excite. timm's ScaledStdConv2d differs (eps 1e-6 added "
        "inside the variance, gamma folded into the weight), not followed. Which skip_gain the "
        "paper's signal-propagation plots use is not verified: the experiment states its own."
    ),
)
