r"""Region Normalization (RN-B and RN-L) for image inpainting.

Paper: Yu, Guo, Jin, Wu, Chen, Li, Zhang and Liu, "Region Normalization for Image Inpainting",
AAAI 2020, arXiv:1911.10375. Official code: github.com/geekyutao/RN, ``rn.py`` (``RN_binarylabel``,
``RN_B``, ``SelfAware_Affine``, ``RN_L``). The equations below are those of the official code.

Features x of shape (B, H, W, C) (channels last) and a binary mask m of shape (B, H, W), 1 in the
holes (corrupted pixels) and 0 in the valid ones, split the pixels into two regions
:math:`r \in \{\text{hole}, \text{valid}\}` with indicators :math:`m_r` (m and 1 − m).

**Region standardization** (``region_normalize``): per region and channel c, with batch-level
statistics (over the whole batch and all positions, not per instance), n = B·H·W,
:math:`S_r = \sum m_r` (set to 1 if the region is empty),

.. math::

   \mu_{r,c} = \frac{1}{S_r} \sum_{b,h,w} m_r\, x_{bhwc}, \qquad
   v_{r,c} = \frac{1}{n} \sum_{b,h,w} m_r\,(x_{bhwc} - \mu_{r,c})^2,

   \hat x = \sum_r m_r\,(x - \mu_r)\,\sqrt{S_r / n}\,/\,\sqrt{v_r + \epsilon}.

This is the official computation: the region is filled with its mean outside, standardized by a
BatchNorm without affine and without running statistics (batch statistics also in evaluation),
then rescaled by :math:`\sqrt{S_r/n}`; it equals standardizing with the region's own variance,
with ε scaled by n / S_r.

**RN-B** (``RegionNormB``): the mask is resized to the feature map by nearest-neighbour sampling
(source index ⌊i · H_in / H_out⌋, torch's ``interpolate(mode="nearest")``), then

.. math::

   y = \hat x \,\big(m\,(1 + \gamma_{\text{hole}}) + (1 - m)(1 + \gamma_{\text{valid}})\big)
       + \beta_{\text{hole}} + \beta_{\text{valid}},

with per-channel γ, β initialised to 0. As in the official code both shifts are added at every
pixel (only their sum matters).

**RN-L** (``RegionNormL``): a spatial importance map from the channel mean and maximum,
:math:`s = \sigma(k_7 * [\mathrm{mean}_c x, \max_c x])` (a 7×7 convolution without bias, zero
padding), the mask :math:`m = [s \ge t]` (threshold t = 0.8, no gradient through it), and a
pixel-wise affine from two 7×7 convolutions with bias on s:

.. math::

   y = \hat x(m) \cdot (1 + k_\gamma * s + b_\gamma) + k_\beta * s + b_\beta .

Kernels and biases are initialised as torch's ``Conv2d`` (uniform in ±1/√fan_in).

Statistics are float32 (≥ float32), outputs have ``dtype``. With ``axis_name`` the region sums
and counts are ``lax.psum``-ed over that named axis (the batch spread over devices).

Public API: ``region_normalize``, ``resize_mask``, ``region_norm_b``, ``region_norm_l``
(pure), the NNX layers ``RegionNormB`` and ``RegionNormL``, the Linen layers
``LinenRegionNormB`` / ``LinenRegionNormL`` (exported as ``jaxlearn.nn.linen.RegionNormB`` /
``RegionNormL``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_choice, check_positive, check_positive_int, check_range

__all__ = [
    "RegionNormB",
    "RegionNormL",
    "LinenRegionNormB",
    "LinenRegionNormL",
    "region_normalize",
    "region_norm_b",
    "region_norm_l",
    "resize_mask",
]

DEFAULT_EPSILON = 1e-5
DEFAULT_THRESHOLD = 0.8
DEFAULT_KERNEL_SIZE = 7


def _stats_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _check_input(x: jax.Array, num_features: int | None = None, name: str = "RegionNorm"):
  if x.ndim != 4:
    raise ValueError(f"{name} expects inputs of rank 4 (batch, height, width, features), got "
                     f"shape {x.shape}")
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(f"{name} expects {num_features} features on the last axis, got shape "
                     f"{x.shape}")


def _check_mask(mask: Any, batch: int) -> None:
  shape = np.shape(mask)
  if len(shape) == 4 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) != 3 or shape[0] != batch or min(shape) < 1:
    raise ValueError(
        f"RegionNorm expects `mask` of shape ({batch}, H, W) or ({batch}, H, W, 1) (1 = hole), "
        f"got shape {np.shape(mask)}")
  dtype = jnp.asarray(mask).dtype if isinstance(mask, jax.core.Tracer) else np.asarray(mask).dtype
  if not (dtype == np.bool_ or jnp.issubdtype(dtype, jnp.floating)):
    raise ValueError(f"`mask` must be boolean or floating point (1 = hole), got dtype {dtype}")
  if not isinstance(mask, jax.core.Tracer) and dtype != np.bool_:
    values = np.asarray(mask, np.float32)
    if not np.all((values == 0) | (values == 1)):
      raise ValueError("a floating-point `mask` must hold only 0 and 1 (1 = hole)")


def resize_mask(mask: jax.Array, height: int, width: int) -> jax.Array:
  """Nearest-neighbour resize of a (B, H, W) or (B, H, W, 1) mask to (B, height, width), float32.

  Source index ⌊i · H_in / height⌋ (torch's ``interpolate(mode="nearest")``).

  Args:
    mask: the mask.
    height: output height.
    width: output width.

  Returns:
    The resized mask, float32, shape (B, height, width).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import resize_mask
    >>> mask = jnp.array([[[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]], bool)
    >>> print(resize_mask(mask, 2, 2)[0])
    [[1. 0.]
     [0. 1.]]
  """
  return _resize_mask(mask, height=int(height), width=int(width))


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _resize_mask(mask, *, height, width):
  if mask.ndim == 4:
    mask = mask[..., 0]
  rows = (np.arange(height) * mask.shape[1]) // height
  cols = (np.arange(width) * mask.shape[2]) // width
  return mask[:, rows][:, :, cols].astype(jnp.float32)


def region_normalize(x: jax.Array, mask: jax.Array, *, epsilon: float = DEFAULT_EPSILON,
                     axis_name: str | None = None) -> jax.Array:
  r"""Standardizes the hole (mask 1) and valid (mask 0) regions with their batch statistics.

  Args:
    x: features (B, H, W, C).
    mask: (B, H, W) or (B, H, W, 1) at the features' resolution, 1 = hole.
    epsilon: the BatchNorm ε of the official code (> 0).
    axis_name: a named axis the batch is spread over.

  Returns:
    :math:`\hat x` (module docstring), ≥ float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import region_normalize
    >>> x = jnp.array([1.0, 3.0, 10.0, 30.0]).reshape(1, 2, 2, 1)
    >>> mask = jnp.array([[[0, 0], [1, 1]]], bool)
    >>> print(region_normalize(x, mask, epsilon=1e-12).ravel().round(4))  # mean 0, var 1 each
    [-1.  1. -1.  1.]
  """
  _check_input(x)
  _check_mask(mask, x.shape[0])
  mask = resize_mask(mask, x.shape[1], x.shape[2])
  check_positive("epsilon", epsilon)
  return _region_normalize(x.astype(_stats_dtype(x.dtype)), mask, epsilon, axis_name)


def _region_normalize(x32, mask, epsilon, axis_name):
  reduce = (lambda v: jax.lax.psum(v, axis_name)) if axis_name is not None else (lambda v: v)
  mask = jax.lax.stop_gradient(mask.astype(x32.dtype))[..., None]
  n = reduce(jnp.asarray(math.prod(x32.shape[:3]), x32.dtype))
  out = jnp.zeros_like(x32)
  for region in (mask, 1.0 - mask):
    size = reduce(jnp.sum(region))
    size = jnp.where(size == 0, 1.0, size)
    mean = reduce(jnp.sum(x32 * region, axis=(0, 1, 2))) / size
    centered = (x32 - mean) * region
    var = reduce(jnp.sum(jnp.square(centered), axis=(0, 1, 2))) / n
    out = out + centered * jnp.sqrt(size / n) * jax.lax.rsqrt(var + epsilon)
  return out


def region_norm_b(
    x: jax.Array,
    mask: jax.Array | None,
    *,
    hole_gamma: jax.Array,
    hole_beta: jax.Array,
    valid_gamma: jax.Array,
    valid_beta: jax.Array,
    epsilon: float = DEFAULT_EPSILON,
    axis_name: str | None = None,
    dtype: Any = None,
) -> jax.Array:
  r"""RN-B as a pure function (module docstring).

  Args:
    x: features (B, H, W, C).
    mask: (B, H', W') or (B, H', W', 1), boolean or 0/1 floats, 1 = hole, resized to (H, W) by
      nearest neighbour; None: no hole (every pixel valid).
    hole_gamma: γ of the hole region (C,) (the scale is 1 + γ).
    hole_beta: β of the hole region (C,).
    valid_gamma: γ of the valid region (C,).
    valid_beta: β of the valid region (C,).
    epsilon: > 0.
    axis_name: a named axis the batch is spread over.
    dtype: output dtype (default: the input's).

  Returns:
    y, shape of x.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import region_norm_b
    >>> x = jnp.arange(32.0).reshape(2, 2, 2, 4)
    >>> mask = jnp.zeros((2, 4, 4), bool).at[:, :2, :2].set(True)  # image-resolution holes
    >>> zeros = jnp.zeros(4)
    >>> y = region_norm_b(x, mask, hole_gamma=zeros, hole_beta=zeros, valid_gamma=zeros,
    ...                   valid_beta=zeros)
    >>> y.shape
    (2, 2, 2, 4)
  """
  _check_input(x, hole_gamma.shape[-1], "RegionNormB")
  check_positive("epsilon", epsilon)
  if mask is None:
    mask = jnp.zeros(x.shape[:3], jnp.float32)
  else:
    _check_mask(mask, x.shape[0])
    mask = resize_mask(mask, x.shape[1], x.shape[2])
  return _region_norm_b(x, mask, hole_gamma, hole_beta, valid_gamma, valid_beta, epsilon,
                        axis_name=axis_name, dtype=x.dtype if dtype is None else jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("axis_name", "dtype"))
def _region_norm_b(x, mask, hole_gamma, hole_beta, valid_gamma, valid_beta, epsilon, *,
                   axis_name, dtype):
  x32 = x.astype(_stats_dtype(x.dtype))
  normalized = _region_normalize(x32, mask, epsilon, axis_name)
  m = jax.lax.stop_gradient(mask)[..., None]
  scale = m * (1.0 + hole_gamma) + (1.0 - m) * (1.0 + valid_gamma)
  return (normalized * scale + hole_beta + valid_beta).astype(dtype)


def _conv(x, kernel):
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (1, 1), ((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def region_norm_l(
    x: jax.Array,
    *,
    detector_kernel: jax.Array,
    gamma_kernel: jax.Array,
    gamma_bias: jax.Array,
    beta_kernel: jax.Array,
    beta_bias: jax.Array,
    threshold: float = DEFAULT_THRESHOLD,
    epsilon: float = DEFAULT_EPSILON,
    axis_name: str | None = None,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array]:
  r"""RN-L as a pure function (module docstring).

  Args:
    x: features (B, H, W, C).
    detector_kernel: k_7 of the importance map, (k, k, 2, 1) HWIO (inputs: channel mean, max).
    gamma_kernel: (k, k, 1, 1).
    gamma_bias: (1,).
    beta_kernel: (k, k, 1, 1).
    beta_bias: (1,).
    threshold: t in [0, 1]; pixels with map ≥ t form the "hole" region.
    epsilon: > 0.
    axis_name: a named axis the batch is spread over.
    dtype: output dtype (default: the input's).

  Returns:
    ``(y, importance_map)``, the map of shape (B, H, W, 1) in ≥ float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import region_norm_l
    >>> x = jnp.arange(32.0).reshape(2, 2, 2, 4) / 32
    >>> y, s = region_norm_l(
    ...     x, detector_kernel=jnp.ones((7, 7, 2, 1)), gamma_kernel=jnp.zeros((7, 7, 1, 1)),
    ...     gamma_bias=jnp.zeros(1), beta_kernel=jnp.zeros((7, 7, 1, 1)), beta_bias=jnp.zeros(1))
    >>> y.shape, s.shape
    ((2, 2, 2, 4), (2, 2, 2, 1))
  """
  _check_input(x, None, "RegionNormL")
  check_range("threshold", threshold, 0.0, 1.0)
  check_positive("epsilon", epsilon)
  return _region_norm_l(x, detector_kernel, gamma_kernel, gamma_bias, beta_kernel, beta_bias,
                        threshold, epsilon, axis_name=axis_name,
                        dtype=x.dtype if dtype is None else jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("axis_name", "dtype"))
def _region_norm_l(x, detector_kernel, gamma_kernel, gamma_bias, beta_kernel, beta_bias,
                   threshold, epsilon, *, axis_name, dtype):
  x32 = x.astype(_stats_dtype(x.dtype))
  pooled = jnp.concatenate([jnp.mean(x32, -1, keepdims=True), jnp.max(x32, -1, keepdims=True)],
                           axis=-1)
  importance = jax.nn.sigmoid(_conv(pooled, detector_kernel))
  mask = (jax.lax.stop_gradient(importance) >= threshold).astype(x32.dtype)[..., 0]
  gamma = _conv(importance, gamma_kernel) + gamma_bias
  beta = _conv(importance, beta_kernel) + beta_bias
  normalized = _region_normalize(x32, mask, epsilon, axis_name)
  return (normalized * (1.0 + gamma) + beta).astype(dtype), importance


def _torch_uniform(fan_in: int):
  """torch Conv2d's default initializer: uniform in ±1/sqrt(fan_in) (weights and biases)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


def _check_l_hyperparameters(threshold, kernel_size, epsilon):
  check_range("threshold", threshold, 0.0, 1.0)
  check_choice("kernel_size", kernel_size, (3, 7))
  check_positive("epsilon", epsilon)


class RegionNormB(nnx.Module):
  r"""RN-B (arXiv:1911.10375, official ``RN_B``) as an NNX layer: region-wise batch standardization.

  Parameters (``nnx.Param``, zeros): ``hole_gamma``, ``hole_beta``, ``valid_gamma``,
  ``valid_beta`` of shape (C,). No running statistics: batch statistics in training and
  evaluation, as in the official code. See the module docstring for the math.

  Args:
    num_features: number of channels C.
    epsilon: > 0.
    dtype: output dtype (default: the input's).
    param_dtype: dtype of the parameters.
    axis_name: named axis the batch is spread over.
    rngs: unused (zero initialization).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.RegionNormB(4, rngs=nnx.Rngs(0))
    >>> x = jnp.arange(2 * 4 * 4 * 4, dtype=jnp.float32).reshape(2, 4, 4, 4)
    >>> holes = jnp.zeros((2, 8, 8), bool).at[:, 2:5, 3:6].set(True)  # image resolution
    >>> norm(x, holes).shape
    (2, 4, 4, 4)
  """

  def __init__(self, num_features: int, *, epsilon: float = DEFAULT_EPSILON, dtype: Any = None,
               param_dtype: Any = jnp.float32, axis_name: str | None = None,
               rngs: nnx.Rngs | None = None):
    del rngs
    check_positive_int("num_features", num_features)
    check_positive("epsilon", epsilon)
    for name in ("hole_gamma", "hole_beta", "valid_gamma", "valid_beta"):
      setattr(self, name, nnx.Param(jnp.zeros((num_features,), param_dtype)))
    self.num_features, self.epsilon = num_features, epsilon
    self.dtype, self.axis_name = dtype, axis_name

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Normalizes ``x`` (B, H, W, C) given the hole ``mask`` (1 = hole; None: no hole).

    Args:
      x: features.
      mask: (B, H', W') or (B, H', W', 1), boolean or 0/1 floats, any resolution.

    Returns:
      The normalized features.
    """
    return region_norm_b(
        x, mask, hole_gamma=self.hole_gamma[...], hole_beta=self.hole_beta[...],
        valid_gamma=self.valid_gamma[...], valid_beta=self.valid_beta[...],
        epsilon=self.epsilon, axis_name=self.axis_name, dtype=self.dtype)


class RegionNormL(nnx.Module):
  r"""RN-L (official ``RN_L``) as an NNX layer: learned region mask and pixel-wise affine.

  Parameters (``nnx.Param``): ``detector_kernel`` (k, k, 2, 1), ``gamma_kernel``,
  ``beta_kernel`` (k, k, 1, 1), ``gamma_bias``, ``beta_bias`` (1,), initialised as torch's
  ``Conv2d``. No running statistics. See the module docstring for the math.

  Args:
    num_features: number of channels C (checked against the input).
    threshold: t in [0, 1] of the mask ``map >= t`` (official default 0.8).
    kernel_size: 3 or 7 (official default 7).
    epsilon: > 0.
    dtype: output dtype (default: the input's).
    param_dtype: dtype of the parameters.
    axis_name: named axis the batch is spread over.
    rngs: for the kernel initialization (stream ``params``).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.RegionNormL(4, rngs=nnx.Rngs(0))
    >>> norm(jnp.ones((2, 4, 4, 4))).shape
    (2, 4, 4, 4)
  """

  def __init__(self, num_features: int, *, threshold: float = DEFAULT_THRESHOLD,
               kernel_size: int = DEFAULT_KERNEL_SIZE, epsilon: float = DEFAULT_EPSILON,
               dtype: Any = None, param_dtype: Any = jnp.float32, axis_name: str | None = None,
               rngs: nnx.Rngs):
    check_positive_int("num_features", num_features)
    _check_l_hyperparameters(threshold, kernel_size, epsilon)
    k = kernel_size
    self.detector_kernel = nnx.Param(_torch_uniform(2 * k * k)(rngs.params(), (k, k, 2, 1),
                                                               param_dtype))
    for name in ("gamma", "beta"):
      init = _torch_uniform(k * k)
      setattr(self, f"{name}_kernel", nnx.Param(init(rngs.params(), (k, k, 1, 1), param_dtype)))
      setattr(self, f"{name}_bias", nnx.Param(init(rngs.params(), (1,), param_dtype)))
    self.num_features, self.threshold, self.kernel_size = num_features, threshold, kernel_size
    self.epsilon, self.dtype, self.axis_name = epsilon, dtype, axis_name

  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalizes ``x`` (B, H, W, C) with its learned region mask."""
    _check_input(x, self.num_features, "RegionNormL")
    return region_norm_l(
        x, detector_kernel=self.detector_kernel[...], gamma_kernel=self.gamma_kernel[...],
        gamma_bias=self.gamma_bias[...], beta_kernel=self.beta_kernel[...],
        beta_bias=self.beta_bias[...], threshold=self.threshold, epsilon=self.epsilon,
        axis_name=self.axis_name, dtype=self.dtype)[0]


class LinenRegionNormB(linen.Module):
  r"""RN-B as a Linen layer; exported as ``jaxlearn.nn.linen.RegionNormB``.

  Same math and numbers as the NNX ``RegionNormB``; ``params`` {hole_gamma, hole_beta,
  valid_gamma, valid_beta}; the number of features is read from the input.

  Attributes:
    epsilon: > 0.
    dtype: output dtype (default: the input's).
    param_dtype: dtype of the parameters.
    axis_name: named axis the batch is spread over.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> x, holes = jnp.ones((2, 4, 4, 3)), jnp.zeros((2, 4, 4), bool).at[:, 1:3, 1:3].set(True)
    >>> norm = jnn_linen.RegionNormB()
    >>> variables = norm.init(jax.random.key(0), x, holes)
    >>> norm.apply(variables, x, holes).shape
    (2, 4, 4, 3)
  """

  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Normalizes ``x`` (B, H, W, C) given the hole ``mask`` (1 = hole; None: no hole)."""
    _check_input(x, None, "RegionNormB")
    if self.has_variable("params", "hole_gamma"):
      _check_input(x, self.get_variable("params", "hole_gamma").shape[-1], "RegionNormB")
    features = x.shape[-1]
    params = {name: self.param(name, linen.initializers.zeros, (features,), self.param_dtype)
              for name in ("hole_gamma", "hole_beta", "valid_gamma", "valid_beta")}
    return region_norm_b(x, mask, **params, epsilon=self.epsilon,
                         axis_name=None if self.is_initializing() else self.axis_name,
                         dtype=self.dtype)


class LinenRegionNormL(linen.Module):
  r"""RN-L as a Linen layer; exported as ``jaxlearn.nn.linen.RegionNormL``.

  Same math and numbers as the NNX ``RegionNormL`` (same ``params`` names and shapes).

  Attributes:
    num_features: number of channels C (checked against the input).
    threshold: t in [0, 1].
    kernel_size: 3 or 7.
    epsilon: > 0.
    dtype: output dtype (default: the input's).
    param_dtype: dtype of the parameters.
    axis_name: named axis the batch is spread over.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.RegionNormL(3)
    >>> x = jnp.ones((2, 4, 4, 3))
    >>> variables = norm.init(jax.random.key(0), x)
    >>> norm.apply(variables, x).shape
    (2, 4, 4, 3)
  """

  num_features: int
  threshold: float = DEFAULT_THRESHOLD
  kernel_size: int = DEFAULT_KERNEL_SIZE
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalizes ``x`` (B, H, W, C) with its learned region mask."""
    _check_l_hyperparameters(self.threshold, self.kernel_size, self.epsilon)
    _check_input(x, self.num_features, "RegionNormL")
    k, dt = self.kernel_size, self.param_dtype
    params = {"detector_kernel": self.param("detector_kernel", _torch_uniform(2 * k * k),
                                            (k, k, 2, 1), dt)}
    for name in ("gamma", "beta"):
      params[f"{name}_kernel"] = self.param(f"{name}_kernel", _torch_uniform(k * k),
                                            (k, k, 1, 1), dt)
      params[f"{name}_bias"] = self.param(f"{name}_bias", _torch_uniform(k * k), (1,), dt)
    return region_norm_l(
        x, **params, threshold=self.threshold, epsilon=self.epsilon,
        axis_name=None if self.is_initializing() else self.axis_name, dtype=self.dtype)[0]


RECORD = registry.record(
    slug="region_normalization",
    kind="normalization",
    title="Region Normalization for Image Inpainting",
    reference="arXiv:1911.10375",
    experiment="region_norm_inpainting",
    notes=(
        "Follows the official rn.py (geekyutao/RN): batch-level region statistics (over the "
        "whole batch, not per instance), computed as the official fill-with-mean + BatchNorm "
        "(no affine, no running statistics, eps 1e-5) + sqrt(S_r / n) rescaling, so the "
        "effective eps is eps * n / S_r; empty regions get S_r = 1; the mask is nearest-"
        "resized to the feature map (integer index floor(i * H_in / H_out)). RN-B: per-region "
        "scale 1 + gamma_r, and both betas added at every pixel as in the official code (only "
        "their sum matters; the paper's text suggests region-wise shifts). RN-L: importance "
        "map sigmoid(conv7x7([mean_c, max_c])) without bias, mask = map >= 0.8 (no gradient), "
        "pixel-wise affine (1 + conv(map)), conv(map) from two 7x7 convolutions with bias "
        "(the abstract's 'global affine' is not what the code does). Kernels initialised as "
        "torch Conv2d. RN-B's mask is optional here (None = no hole) so the layer fits "
        "single-input pipelines; masks must be boolean or 0/1 floats of shape (B, H, W[, 1])."
    ),
)
