r"""PCNorm and SCNorm (DAC): normalization that keeps the Fourier phase (content) of a feature map.

Paper: Lee, Bae and Kim, "Decompose, Adjust, Compose: Effective Normalization by Playing with
Frequency for Domain Generalization", arXiv:2303.02328 (CVPR 2023).

**Source of the equations.** The official repository was not found. The equations below are
transcribed from a THIRD-PARTY copy, github.com/wanderer1230/part3 (`norm.py`: `pcnorm`, `SCNorm`,
`decompose`, `compose`), checked against the paper's abstract (amplitude = style, phase = content;
PCNorm removes style while preserving content; SCNorm adjusts the degree of style removal). They
are not verified against the paper's body or official code.

Feature maps are channels last, x of shape (N, H, W, C). For every sample and channel the 2-D
discrete Fourier transform over (H, W) gives an amplitude A and a phase P:

.. math::

   \mathcal{F}(x) = \mathrm{Re} + i\,\mathrm{Im},\quad
   A(x) = \sqrt{g(\mathrm{Re}^2 + \mathrm{Im}^2)},\quad
   P(x) = \operatorname{atan2}(\mathrm{Im}, g(\mathrm{Re})),

where g replaces values in (−10⁻⁵, 10⁻⁵) by +10⁻⁵ (the copy's `replace_denormals`: it keeps the
square root's and atan2's gradients finite near 0; replaced entries get no gradient). The
inverse is :math:`\mathcal{C}(A, P) = \mathcal{F}^{-1}(A\cos P + i\,A\sin P)` (real part; the
half-spectrum inverse `irfft2`, as in the copy).

* **PCNorm** (phase-consistent normalization):

  .. math::

     \mathrm{PCNorm}(x) = \gamma\,\mathcal{C}\big(A(\mathrm{BN}(x)),\; P(x)\big) + \beta,

  with BN(x) = (x − μ)/sqrt(σ² + ε) per channel (no affine inside), batch statistics over
  (N, H, W) in training and running statistics in evaluation, and γ, β per channel.
* **SCNorm** (style-controlled normalization), with IN the instance normalization (per sample and
  channel over (H, W), no affine, ε = 10⁻⁵) and w = softmax(h / T), T = 0.1, h ∈ R² initialized
  to 0:

  .. math::

     \mathrm{SCNorm}(x) = \gamma\,\mathcal{C}\big(w_0 A(\mathrm{IN}(x)) + w_1 A(x),\; P(x)\big)
     + \beta.

* **CCNorm** (content-controlled) is not implemented: its gate (softmax(weight / 10⁻⁴) over two
  entries) has no initialization in the copy, and at that temperature it is a hard gate that
  gets no gradient unless its two logits are within ~10⁻³; without the official code we did not
  add it.

In the DAC networks PCNorm replaces the batch norm at the end of the residual branches of a
ResNet (DAC-P), and SCNorm is applied after the residual additions (DAC-SC).

Conventions: running statistics follow flax's `BatchNorm` (momentum 0.99 weighting the old value,
biased running variance); PyTorch's momentum 0.1 is momentum 0.9 here, and PyTorch keeps the
unbiased running variance. FFTs run in float32 / complex64 (wider for float64 inputs) whatever the
input dtype; statistics in float32; the output has `dtype` (default: the input's dtype). With
`axis_name` the batch statistics are averaged with `lax.pmean` over that named axis.

Public API: the pure functions `spectral_decompose`, `spectral_compose`, `pc_normalize`,
`sc_normalize`; the NNX layers `PCNorm` and `SCNorm`; the Linen layers `LinenPCNorm`,
`LinenSCNorm` (exported as `jaxlearn.nn.linen.PCNorm` / `SCNorm`).
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
    "PCNorm",
    "SCNorm",
    "LinenPCNorm",
    "LinenSCNorm",
    "pc_normalize",
    "sc_normalize",
    "spectral_decompose",
    "spectral_compose",
]

DEFAULT_MOMENTUM = 0.99
DEFAULT_EPSILON = 1e-5
DENORMAL_THRESHOLD = 1e-5  # the copy's `replace_denormals` threshold
SC_TEMPERATURE = 0.1
_SPATIAL = (1, 2)


def _compute_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _check_input(name: str, x: jax.Array, num_features: int | None = None) -> None:
  if x.ndim != 4:
    raise ValueError(f"{name} expects inputs of rank 4 (batch, height, width, channels), got "
                     f"shape {x.shape}")
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(f"{name} expects {num_features} channels on the last axis, got shape "
                     f"{x.shape}")


def _replace_small(v: jax.Array, threshold: float) -> jax.Array:
  return jnp.where(jnp.abs(v) < threshold, threshold, v)


def spectral_decompose(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  r"""Amplitude and phase of the 2-D DFT over (H, W) of a channels-last map, guarded near 0.

  Returns the half spectrum (`rfft2`: W // 2 + 1 frequencies on the W axis), which is all the
  inverse reads. Because of the guards, bins with a squared amplitude below 1e-5 come back with
  amplitude sqrt(1e-5): decompose then compose is the identity only up to them.

  Args:
    x: input of shape (N, H, W, C).

  Returns:
    `(amplitude, phase)`, each of shape (N, H, W // 2 + 1, C), dtype >= float32.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxlearn.nn import spectral_compose, spectral_decompose
    >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 3)), jnp.float32)
    >>> amplitude, phase = spectral_decompose(x)
    >>> amplitude.shape
    (2, 4, 3, 3)
    >>> bool(jnp.allclose(spectral_compose(amplitude, phase, (4, 4)), x, atol=1e-5))
    True
  """
  _check_input("spectral_decompose", x)
  spectrum = jnp.fft.rfft2(x.astype(_compute_dtype(x.dtype)), axes=_SPATIAL)
  real, imag = jnp.real(spectrum), jnp.imag(spectrum)
  amplitude = jnp.sqrt(_replace_small(real * real + imag * imag, DENORMAL_THRESHOLD))
  phase = jnp.arctan2(imag, _replace_small(real, DENORMAL_THRESHOLD))
  return amplitude, phase


def spectral_compose(amplitude: jax.Array, phase: jax.Array,
                     spatial_shape: tuple[int, int]) -> jax.Array:
  """The real map (N, H, W, C) whose half spectrum has this amplitude and phase (`irfft2`).

  Args:
    amplitude: (N, H, W // 2 + 1, C).
    phase: same shape.
    spatial_shape: (H, W) of the output.

  Returns:
    The composed map, shape (N, H, W, C).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import spectral_compose
    >>> amplitude = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(4.0)  # only the DC term
    >>> spectral_compose(amplitude, jnp.zeros_like(amplitude), (2, 2))[0, :, :, 0]
    Array([[1., 1.],
           [1., 1.]], dtype=float32)
  """
  spectrum = jax.lax.complex(amplitude * jnp.cos(phase), amplitude * jnp.sin(phase))
  return jnp.fft.irfft2(spectrum, s=tuple(spatial_shape), axes=_SPATIAL)


def _check_bn_hyperparameters(momentum, epsilon):
  check_range("momentum", momentum, 0.0, 1.0)
  check_positive("epsilon", epsilon)


def pc_normalize(
    x: jax.Array,
    *,
    running_mean: jax.Array,
    running_var: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    use_running_average: bool,
    momentum: float = DEFAULT_MOMENTUM,
    epsilon: float = DEFAULT_EPSILON,
    axis_name: str | None = None,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""PCNorm as a pure function: γ · C(A(BN(x)), P(x)) + β (module docstring).

  Args:
    x: input of shape (N, H, W, C).
    running_mean: running means, shape (C,).
    running_var: running (biased) variances, shape (C,).
    scale: γ, shape (C,).
    bias: β, shape (C,).
    use_running_average: evaluation mode: BN with the running statistics, update nothing.
    momentum: decay of the running statistics (weight of the old value).
    epsilon: added to the variance.
    axis_name: a named axis to average the batch statistics over.
    dtype: the output dtype (default: the dtype of `x`).

  Returns:
    `(y, new_running_mean, new_running_var)` (statistics unchanged in evaluation mode).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import pc_normalize
    >>> x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    >>> y, mean, var = pc_normalize(x, running_mean=jnp.zeros(3), running_var=jnp.ones(3),
    ...                             scale=jnp.ones(3), bias=jnp.zeros(3), use_running_average=False)
    >>> y.shape, mean.shape
    ((2, 4, 4, 3), (3,))
  """
  num_features = running_mean.shape[-1]
  _check_input("PCNorm", x, num_features)
  _check_bn_hyperparameters(momentum, epsilon)
  return _pc_norm(x, running_mean, running_var, scale, bias, momentum, epsilon,
                  use_running_average=bool(use_running_average), axis_name=axis_name,
                  dtype=x.dtype if dtype is None else jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("use_running_average", "axis_name", "dtype"))
def _pc_norm(x, running_mean, running_var, scale, bias, momentum, epsilon, *,
             use_running_average, axis_name, dtype):
  compute_dtype = _compute_dtype(x.dtype)
  x32 = x.astype(compute_dtype)
  running_mean = jnp.asarray(running_mean, compute_dtype)
  running_var = jnp.asarray(running_var, compute_dtype)
  if use_running_average:
    mean, var = running_mean, running_var
    new_mean, new_var = running_mean, running_var
  else:
    mean = jnp.mean(x32, axis=(0, 1, 2))
    if axis_name is not None:
      mean = jax.lax.pmean(mean, axis_name)
    var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
    if axis_name is not None:
      var = jax.lax.pmean(var, axis_name)
    new_mean = jax.lax.stop_gradient(momentum * running_mean + (1.0 - momentum) * mean)
    new_var = jax.lax.stop_gradient(momentum * running_var + (1.0 - momentum) * var)
  normalized = (x32 - mean) * jax.lax.rsqrt(var + epsilon)
  _, phase = spectral_decompose(x32)
  amplitude, _ = spectral_decompose(normalized)
  y = spectral_compose(amplitude, phase, x.shape[1:3]) * scale + bias
  return y.astype(dtype), new_mean, new_var


def sc_normalize(
    x: jax.Array,
    *,
    scale: jax.Array,
    bias: jax.Array,
    mix_logits: jax.Array,
    temperature: float = SC_TEMPERATURE,
    epsilon: float = DEFAULT_EPSILON,
    dtype: Any = None,
) -> jax.Array:
  r"""SCNorm as a pure function: γ · C(w₀A(IN(x)) + w₁A(x), P(x)) + β, w = softmax(h / T).

  Args:
    x: input of shape (N, H, W, C).
    scale: γ, shape (C,).
    bias: β, shape (C,).
    mix_logits: h, shape (2,): the weights of the normalized and the original amplitude.
    temperature: T of the softmax (> 0; the copy's 0.1).
    epsilon: the instance normalization's ε.
    dtype: the output dtype (default: the dtype of `x`).

  Returns:
    The normalized map, shape of `x`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import sc_normalize
    >>> x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    >>> sc_normalize(x, scale=jnp.ones(3), bias=jnp.zeros(3), mix_logits=jnp.zeros(2)).shape
    (2, 4, 4, 3)
  """
  _check_input("SCNorm", x, scale.shape[-1])
  check_positive("temperature", temperature)
  check_positive("epsilon", epsilon)
  if mix_logits.shape != (2,):
    raise ValueError(f"SCNorm expects mix_logits of shape (2,), got {mix_logits.shape}")
  return _sc_norm(x, scale, bias, mix_logits, temperature, epsilon,
                  dtype=x.dtype if dtype is None else jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("dtype",))
def _sc_norm(x, scale, bias, mix_logits, temperature, epsilon, *, dtype):
  x32 = x.astype(_compute_dtype(x.dtype))
  mean = jnp.mean(x32, axis=_SPATIAL, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=_SPATIAL, keepdims=True)
  instance_normed = (x32 - mean) * jax.lax.rsqrt(var + epsilon)
  weights = jax.nn.softmax(mix_logits.astype(x32.dtype) / temperature)
  phase, original_amplitude = spectral_decompose(x32)[::-1]
  normed_amplitude, _ = spectral_decompose(instance_normed)
  amplitude = weights[0] * normed_amplitude + weights[1] * original_amplitude
  y = spectral_compose(amplitude, phase, x.shape[1:3]) * scale + bias
  return y.astype(dtype)


class PCNorm(RunningAverageMode):
  """PCNorm (DAC, arXiv:2303.02328; equations from a third-party copy) as an NNX layer.

  γ · C(A(BN(x)), P(x)) + β over channels-last maps (N, H, W, C); see the module docstring.
  Parameters (`nnx.Param`): `scale`, `bias` of shape (C,). Running statistics (`nnx.BatchStat`,
  float32): `mean`, `var`. Modes as flax's `BatchNorm`: `use_running_average` at the call wins
  over the constructor's; `model.train()` / `model.eval()` switch it.

  Args:
    num_features: number of channels C.
    use_running_average: evaluation mode (BN with the running statistics).
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to the variance (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of γ, β.
    axis_name: named axis over which batch statistics are averaged.
    rngs: accepted for signature parity; the initialization is deterministic.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.PCNorm(3, rngs=nnx.Rngs(0))
    >>> x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    >>> y = norm(x)  # training: batch statistics, running statistics updated
    >>> norm.eval()
    >>> norm(x).shape
    (2, 4, 4, 3)
  """

  def __init__(
      self,
      num_features: int,
      *,
      use_running_average: bool | None = False,
      momentum: float = DEFAULT_MOMENTUM,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive_int("num_features", num_features)
    _check_bn_hyperparameters(momentum, epsilon)
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.num_features = num_features
    self.use_running_average = use_running_average
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.axis_name = axis_name

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalizes `x` (N, H, W, C); in training mode also updates the running statistics."""
    use_running_average = self.running_average_mode(use_running_average)
    y, mean, var = pc_normalize(
        x, running_mean=self.mean[...], running_var=self.var[...], scale=self.scale[...],
        bias=self.bias[...], use_running_average=use_running_average, momentum=self.momentum,
        epsilon=self.epsilon, axis_name=self.axis_name, dtype=self.dtype)
    if not use_running_average:
      self.mean[...] = mean.astype(jnp.float32)
      self.var[...] = var.astype(jnp.float32)
    return y


class SCNorm(nnx.Module):
  """SCNorm (DAC, arXiv:2303.02328; equations from a third-party copy) as an NNX layer.

  γ · C(w₀A(IN(x)) + w₁A(x), P(x)) + β with w = softmax(h / T); no batch statistics (the same
  in training and evaluation). Parameters (`nnx.Param`): `scale`, `bias` (C,), `mix_logits` h
  (2,), initialized to 0 (w = (1/2, 1/2)).

  Args:
    num_features: number of channels C.
    temperature: T (> 0; the copy's 0.1).
    epsilon: the instance normalization's ε (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    rngs: accepted for signature parity; the initialization is deterministic.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.SCNorm(3, rngs=nnx.Rngs(0))
    >>> norm(jnp.ones((2, 4, 4, 3))).shape
    (2, 4, 4, 3)
  """

  def __init__(
      self,
      num_features: int,
      *,
      temperature: float = SC_TEMPERATURE,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive_int("num_features", num_features)
    check_positive("temperature", temperature)
    check_positive("epsilon", epsilon)
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.mix_logits = nnx.Param(jnp.zeros((2,), param_dtype))
    self.num_features = num_features
    self.temperature = temperature
    self.epsilon = epsilon
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalizes `x` (N, H, W, C)."""
    return sc_normalize(x, scale=self.scale[...], bias=self.bias[...],
                        mix_logits=self.mix_logits[...], temperature=self.temperature,
                        epsilon=self.epsilon, dtype=self.dtype)


class LinenPCNorm(linen.Module):
  """PCNorm as a Linen layer; exported as `jaxlearn.nn.linen.PCNorm`.

  Same math and numbers as the NNX `PCNorm`. Variables: `params` {scale, bias}; `batch_stats`
  {mean, var} (float32). As flax's Linen `BatchNorm`: `use_running_average` as an attribute or at
  the call (not both); while initializing, the statistics are not updated and `axis_name` is not
  used.

  Attributes:
    use_running_average: evaluation mode.
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to the variance (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of γ, β.
    axis_name: named axis over which batch statistics are averaged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.PCNorm()
    >>> x = jnp.ones((2, 4, 4, 3))
    >>> variables = norm.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = norm.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> y.shape
    (2, 4, 4, 3)
  """

  use_running_average: bool | None = None
  momentum: float = DEFAULT_MOMENTUM
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalizes `x` (N, H, W, C); in training mode also updates `batch_stats`."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    _check_input("PCNorm", x)
    if self.has_variable("batch_stats", "mean"):
      _check_input("PCNorm", x, self.get_variable("batch_stats", "mean").shape[-1])
    features = x.shape[-1]
    initializing = self.is_initializing()
    mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    y, new_mean, new_var = pc_normalize(
        x, running_mean=mean.value, running_var=var.value,
        scale=self.param("scale", linen.initializers.ones, (features,), self.param_dtype),
        bias=self.param("bias", linen.initializers.zeros, (features,), self.param_dtype),
        use_running_average=use_running_average, momentum=self.momentum, epsilon=self.epsilon,
        axis_name=None if initializing else self.axis_name, dtype=self.dtype)
    if not use_running_average and not initializing:
      mean.value = new_mean.astype(jnp.float32)
      var.value = new_var.astype(jnp.float32)
    return y


class LinenSCNorm(linen.Module):
  """SCNorm as a Linen layer; exported as `jaxlearn.nn.linen.SCNorm`.

  Same math and numbers as the NNX `SCNorm`. Variables: `params` {scale, bias, mix_logits}.

  Attributes:
    temperature: T (> 0; the copy's 0.1).
    epsilon: the instance normalization's ε (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.SCNorm()
    >>> x = jnp.ones((2, 4, 4, 3))
    >>> norm.apply(norm.init(jax.random.key(0), x), x).shape
    (2, 4, 4, 3)
  """

  temperature: float = SC_TEMPERATURE
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalizes `x` (N, H, W, C)."""
    _check_input("SCNorm", x)
    if self.has_variable("params", "scale"):
      _check_input("SCNorm", x, self.get_variable("params", "scale").shape[-1])
    features = x.shape[-1]
    return sc_normalize(
        x, scale=self.param("scale", linen.initializers.ones, (features,), self.param_dtype),
        bias=self.param("bias", linen.initializers.zeros, (features,), self.param_dtype),
        mix_logits=self.param("mix_logits", linen.initializers.zeros, (2,), self.param_dtype),
        temperature=self.temperature, epsilon=self.epsilon, dtype=self.dtype)


RECORD = registry.record(
    slug="pcnorm_dac",
    kind="normalization",
    title=("Decompose, Adjust, Compose: Effective Normalization by Playing with Frequency for "
           "Domain Generalization"),
    reference="arXiv:2303.02328",
    experiment="pcnorm_style_shift",
    notes=(
        "No official code was found: the equations are transcribed from a third-party copy "
        "(github.com/wanderer1230/part3, norm.py) and checked only against the abstract, not the "
        "paper's body. Includes the copy's guards (squared amplitude and the real part inside "
        "atan2 replaced by +1e-5 when smaller than 1e-5 in magnitude). CCNorm is not "
        "implemented (its gate's initialization is not in the copy and its softmax temperature "
        "1e-4 makes it a hard, gradient-free gate). Running statistics follow flax's BatchNorm "
        "(momentum 0.99 on the old value, biased variance); PyTorch's momentum 0.1 = 0.9 here. "
        "Channels-last (N, H, W, C); FFTs in float32/complex64."
    ),
)
