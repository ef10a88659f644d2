"""Weight Standardization (WS): kernels standardized per output channel over their fan-in.

Paper: Qiao, Wang, Liu, Shen and Yuille, "Micro-Batch Training with Batch-Channel Normalization and
Weight Standardization", arXiv:1903.10520. Official code: joe-siyuan-qiao/WeightStandardization.

For a kernel `W` with `O` output channels and fan-in `I` (input channels times the kernel window),
each output channel `i` is reparametrized as

  Ŵ_ij = (W_ij − μ_i) / σ_i,   μ_i = (1/I) Σ_j W_ij,   σ_i = sqrt((1/I) Σ_j (W_ij − μ_i)² + ε).

The layer computes with `Ŵ`, the optimizer updates `W`, and gradients flow through `μ` and `σ`
(that is the point of WS: it reshapes the gradient, it is not an initialization). No gain is
added: the paper places a normalization layer (GroupNorm, BatchChannelNorm) after every WS layer.

Layout: flax kernels keep output channels on the LAST axis (`Dense`: (in, out); `Conv`: HWIO,
i.e. `(*window, in / feature_group_count, out)`), so the fan-in axes are all axes but the last.

Epsilon: the paper puts ε inside the square root of the population variance, as above (default
ε = 1e-5, the value of the official code). The official README's PyTorch snippet instead divides by
`std + 1e-5` with the unbiased (Bessel-corrected) std, and its TensorFlow snippet by the population
std + 1e-5; with the Bessel correction its Ŵ is ours times sqrt((I − 1) / I). We follow the paper;
`tests/nn/test_weight_standardization_bcn.py` documents the difference.

Statistics are computed in at least float32; the standardized kernel keeps the kernel's dtype.

Public API: `weight_standardize` (the pure function), the NNX layers `WSLinear` and `WSConv`
(subclasses of `nnx.Linear` / `nnx.Conv`, same arguments plus `epsilon`), and the Linen layers
`LinenWSDense` / `LinenWSConv`, exported as `jaxlearn.nn.linen.WSDense` /
`jaxlearn.nn.linen.WSConv`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

from jaxlearn import registry
from jaxlearn._checks import check_positive, check_positive_int

__all__ = [
    "weight_standardize",
    "WSConv",
    "WSLinear",
    "LinenWSConv",
    "LinenWSDense",
]

DEFAULT_EPSILON = 1e-5


def _canonical_fan_in_axes(ndim: int, fan_in_axes: Sequence[int] | None) -> tuple[int, ...]:
  if fan_in_axes is None:
    if ndim < 2:
      raise ValueError(
          f"kernel must have rank >= 2 (fan-in axes..., output channels), got rank {ndim}"
      )
    return tuple(range(ndim - 1))
  axes = tuple(int(a) for a in fan_in_axes)
  if not axes or any(not -ndim <= a < ndim for a in axes):
    raise ValueError(
        f"fan_in_axes must be a non-empty sequence of axes in [-{ndim}, {ndim}) for a kernel of"
        f" rank {ndim}, got {fan_in_axes!r}"
    )
  normalized = tuple(sorted(a % ndim for a in axes))
  if len(set(normalized)) != len(normalized):
    raise ValueError(f"fan_in_axes must not repeat an axis, got {fan_in_axes!r}")
  return normalized


def weight_standardize(
    kernel: jax.Array,
    *,
    fan_in_axes: Sequence[int] | None = None,
    epsilon: float = DEFAULT_EPSILON,
) -> jax.Array:
  """Standardizes `kernel` to zero mean and unit variance over its fan-in, per output channel.

  Ŵ = (W − mean(W)) / sqrt(var(W) + ε), with the (population) mean and variance taken over
  `fan_in_axes` separately for every index of the remaining axes.

  Args:
    kernel: a floating-point kernel, e.g. (in, out) for Dense or (kh, kw, in, out) for Conv.
    fan_in_axes: the axes to standardize over; default: all axes but the last (flax layout).
    epsilon: added to the variance inside the square root (> 0).

  Returns:
    The standardized kernel, same shape and dtype as `kernel` (statistics in >= float32).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import weight_standardize
    >>> kernel = jnp.arange(3 * 3 * 8 * 16.0).reshape(3, 3, 8, 16) ** 2  # HWIO
    >>> w = weight_standardize(kernel)
    >>> bool(jnp.allclose(w.mean(axis=(0, 1, 2)), 0.0, atol=1e-5))  # per output channel
    True
  """
  kernel = jnp.asarray(kernel)
  if not jnp.issubdtype(kernel.dtype, jnp.floating):
    raise ValueError(f"kernel must be a floating-point array, got dtype {kernel.dtype}")
  check_positive("epsilon", epsilon)
  return _standardize(kernel, epsilon, axes=_canonical_fan_in_axes(kernel.ndim, fan_in_axes))


# Jitted so that eager NNX calls compile one program instead of one per primitive.
@functools.partial(jax.jit, static_argnames=("axes",))
def _standardize(kernel: jax.Array, epsilon: jax.Array, *, axes: tuple[int, ...]) -> jax.Array:
  w = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
  centered = w - jnp.mean(w, axis=axes, keepdims=True)
  variance = jnp.mean(jnp.square(centered), axis=axes, keepdims=True)
  return (centered * jax.lax.rsqrt(variance + epsilon)).astype(kernel.dtype)


@dataclasses.dataclass(frozen=True)
class _StandardizeKernelThenPromote:
  """An NNX `promote_dtype` hook: standardizes the kernel, then applies the user's promotion.

  `nnx.Linear` / `nnx.Conv` call `promote_dtype((inputs, kernel, bias), dtype=...)` right before
  the product, with the kernel still in `param_dtype`; standardizing there keeps every option of
  the flax layers working. Frozen (hashable, compared by value) so the graph definition is stable
  under `nnx.jit`.
  """

  promote_dtype: Callable[..., Any]
  epsilon: float

  def __call__(self, arrays, /, **kwargs):
    inputs, kernel, bias = arrays
    kernel = weight_standardize(kernel, epsilon=self.epsilon)
    return self.promote_dtype((inputs, kernel, bias), **kwargs)


def _check_inputs(layer: str, inputs: jax.Array, min_rank: int, features: int) -> None:
  if inputs.ndim < min_rank:
    raise ValueError(
        f"{layer} expects inputs of rank >= {min_rank} (..., features), got shape {inputs.shape}"
    )
  if inputs.shape[-1] != features:
    raise ValueError(
        f"{layer} expects {features} input features on the last axis, got shape {inputs.shape}"
    )


class WSLinear(nnx.Linear):
  """`nnx.Linear` whose kernel is weight-standardized at every call (arXiv:1903.10520).

  y = x Ŵ + b, with Ŵ = `weight_standardize(kernel)` over the input axis, per output unit. The
  stored parameter is the raw kernel.

  Args:
    in_features: number of input features.
    out_features: number of output features.
    epsilon: ε of the standardization, inside the square root (default 1e-5).
    promote_dtype: as in `nnx.Linear`; applied after the standardization.
    rngs: the random number generators.
    **linear_kwargs: every other keyword argument of `nnx.Linear` (use_bias, dtype,
      param_dtype, precision, kernel_init, bias_init, dot_general, ...).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.WSLinear(4, 3, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 4))).shape
    (2, 3)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      epsilon: float = DEFAULT_EPSILON,
      promote_dtype: Callable[..., Any] = nnx_dtypes.promote_dtype,
      rngs: nnx.Rngs,
      **linear_kwargs: Any,
  ):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    check_positive("epsilon", epsilon)
    super().__init__(
        in_features,
        out_features,
        promote_dtype=_StandardizeKernelThenPromote(promote_dtype, epsilon),
        rngs=rngs,
        **linear_kwargs,
    )
    self.epsilon = epsilon

  def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
    """Applies the standardized kernel to the last axis of `inputs`."""
    _check_inputs("WSLinear", inputs, 1, self.in_features)
    return super().__call__(inputs, out_sharding=out_sharding)


class WSConv(nnx.Conv):
  """`nnx.Conv` whose kernel is weight-standardized at every call (arXiv:1903.10520).

  y = Ŵ * x + b, with Ŵ = `weight_standardize(kernel)`: each output channel's kernel has zero mean
  and unit variance over its window and input channels. Inputs are channels-last (NHWC...).

  Args:
    in_features: number of input channels.
    out_features: number of output channels.
    kernel_size: the window shape (an int for 1-D).
    strides: as in `nnx.Conv`.
    epsilon: ε of the standardization, inside the square root (default 1e-5).
    promote_dtype: as in `nnx.Conv`; applied after the standardization.
    rngs: the random number generators.
    **conv_kwargs: every other keyword argument of `nnx.Conv` (padding, input_dilation,
      kernel_dilation, feature_group_count, use_bias, dtype, param_dtype, precision,
      kernel_init, bias_init, ...) except `mask`, which is not supported (the statistics of a
      masked kernel are ambiguous).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> conv = jnn.WSConv(3, 8, kernel_size=(3, 3), rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((2, 6, 6, 3))).shape
    (2, 6, 6, 8)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: int | Sequence[int],
      strides: int | Sequence[int] | None = 1,
      *,
      epsilon: float = DEFAULT_EPSILON,
      promote_dtype: Callable[..., Any] = nnx_dtypes.promote_dtype,
      rngs: nnx.Rngs,
      **conv_kwargs: Any,
  ):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    check_positive("epsilon", epsilon)
    if conv_kwargs.get("mask") is not None:
      raise ValueError("WSConv does not support `mask`")
    super().__init__(
        in_features,
        out_features,
        kernel_size,
        strides,
        promote_dtype=_StandardizeKernelThenPromote(promote_dtype, epsilon),
        rngs=rngs,
        **conv_kwargs,
    )
    self.epsilon = epsilon

  def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
    """Convolves channels-last `inputs` (batched or not) with the standardized kernel."""
    _check_inputs("WSConv", inputs, len(self.kernel_size) + 1, self.in_features)
    return super().__call__(inputs, out_sharding=out_sharding)


class LinenWSDense(linen.Dense):
  """Linen `Dense` with a weight-standardized kernel; exported as `jaxlearn.nn.linen.WSDense`.

  Same math and numbers as `WSLinear`. The `params` collection stores the raw kernel.

  Attributes:
    epsilon: ε of the standardization, inside the square root (default 1e-5).
    (all other attributes as `flax.linen.Dense`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> dense = jnn_linen.WSDense(features=3)
    >>> variables = dense.init(jax.random.key(0), jnp.ones((2, 4)))
    >>> dense.apply(variables, jnp.ones((2, 4))).shape
    (2, 3)
  """

  epsilon: float = DEFAULT_EPSILON

  @linen.nowrap
  def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
    """Reads or creates a parameter; the kernel is handed to `Dense` standardized."""
    value = super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)
    return weight_standardize(value, epsilon=self.epsilon) if name == "kernel" else value

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the standardized kernel to the last axis of `inputs`."""
    check_positive("epsilon", self.epsilon)
    if self.has_variable("params", "kernel"):
      features = self.get_variable("params", "kernel").shape[0]
    else:
      features = inputs.shape[-1] if inputs.ndim else 0
    _check_inputs("WSDense", inputs, 1, features)
    return super().__call__(inputs)


class LinenWSConv(linen.Conv):
  """Linen `Conv` with a weight-standardized kernel; exported as `jaxlearn.nn.linen.WSConv`.

  Same math and numbers as `WSConv`. The `params` collection stores the raw kernel. `mask` is not
  supported.

  Attributes:
    epsilon: ε of the standardization, inside the square root (default 1e-5).
    (all other attributes as `flax.linen.Conv`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> conv = jnn_linen.WSConv(features=8, kernel_size=(3, 3))
    >>> variables = conv.init(jax.random.key(0), jnp.ones((2, 6, 6, 3)))
    >>> conv.apply(variables, jnp.ones((2, 6, 6, 3))).shape
    (2, 6, 6, 8)
  """

  epsilon: float = DEFAULT_EPSILON

  @linen.nowrap
  def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
    """Reads or creates a parameter; the kernel is handed to `Conv` standardized."""
    value = super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)
    return weight_standardize(value, epsilon=self.epsilon) if name == "kernel" else value

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Convolves channels-last `inputs` (batched or not) with the standardized kernel."""
    check_positive("epsilon", self.epsilon)
    if self.mask is not None:
      raise ValueError("WSConv does not support `mask`")
    window = (self.kernel_size,) if isinstance(self.kernel_size, int) else self.kernel_size
    if self.has_variable("params", "kernel"):
      kernel_shape = self.get_variable("params", "kernel").shape
      features = kernel_shape[-2] * self.feature_group_count
    else:
      features = inputs.shape[-1] if inputs.ndim else 0
    _check_inputs("WSConv", inputs, len(window) + 1, features)
    return super().__call__(inputs)


RECORD = registry.record(
    slug="weight_standardization_bcn",
    kind="normalization",
    title="Micro-Batch Training with Batch-Channel Normalization and Weight Standardization",
    reference="arXiv:1903.10520",
    experiment="microbatch_norm",
    extra_tests=("tests/nn/test_weight_standardization_bcn.py",),
    also=(
        "jaxlearn.nn.BatchChannelNorm",
        "jaxlearn.nn.linen.BatchChannelNorm",
        "jaxlearn.nn.batch_channel_normalize",
    ),
    notes=(
        "WS follows the paper: eps inside the square root of the population variance; the "
        "official PyTorch snippet divides by the unbiased std + 1e-5, which scales the "
        "standardized kernel by sqrt((I-1)/I) for fan-in I (tested). BCN follows the official "
        "code: per-group affine after the channel normalization, num_groups=32, eps 1e-5; "
        "`use_estimated_stats=True` is micro-batch BCN (EstBN: variance around the previous "
        "estimate, normalization with the updated estimates, no gradient through them). "
        "EstBN's rate is published neither in the paper nor in the code (its buffer defaults "
        "to 0): we default to momentum 0.99 (r = 0.01), flax's BatchNorm default. With batch "
        "statistics the running variance uses the biased batch variance (flax); PyTorch's "
        "BatchNorm2d uses the unbiased one (tested). Outputs default to the input dtype. "
        "WSConv/WSLinear reject `mask`."
    ),
)
