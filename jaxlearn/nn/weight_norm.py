r"""Weight Normalization (WN): every output unit's weight vector as a length times a direction.

Paper: Salimans and Kingma, "Weight Normalization: A Simple Reparameterization to Accelerate
Training of Deep Neural Networks", arXiv:1602.07868. Official code: openai/weightnorm
(`tensorflow/nn.py`, `dense` and `conv2d`).

Each output unit :math:`j` has a direction parameter :math:`v_j` (its fan-in weights) and a scalar
length :math:`g_j`; the layer computes with

.. math::

   w_j = \frac{g_j}{\lVert v_j \rVert} v_j, \qquad y = x \cdot w + b,

and the optimizer updates :math:`v`, :math:`g` and :math:`b`. Two consequences the paper builds
on: the output does not depend on :math:`\lVert v_j \rVert`, and the gradient w.r.t. :math:`v_j`,

.. math::

   \nabla_{v_j} L = \frac{g_j}{\lVert v_j \rVert} M_j \nabla_{w_j} L, \qquad
   M_j = I - \frac{w_j w_j^\top}{\lVert w_j \rVert^2},

is orthogonal to :math:`v_j`, so :math:`\lVert v_j \rVert` grows under gradient descent and
damps the effective step size. Both require :math:`v` to be stored unnormalized.

**Data-dependent initialization** (official code, `init=True`): with :math:`v` drawn from
:math:`\mathcal N(0, 0.05^2)` (our default initializer), run one minibatch through the layer with
:math:`t = x \cdot v / \lVert v \rVert` and set

.. math::

   g \leftarrow \frac{s}{\sqrt{\operatorname{Var}[t] + \epsilon_0}}, \qquad
   b \leftarrow -\operatorname{E}[t]\, g,

per output unit (moments over every axis but the last, i.e. batch and spatial positions), so
that the initialized layer's pre-activations have zero mean and variance :math:`s^2`
(``init_scale``, default 1). The official code uses :math:`\epsilon_0` = 1e-10 for dense and 1e-8 for convolutional
layers; so do we. :func:`wn_init_from_batch` runs a whole model this way, each layer initialized
with the outputs of the already initialized layers before it (as the official `init` pass).

Layout: flax kernels keep output units on the LAST axis (`Dense`: (in, out); `Conv`: HWIO), so
the norm is taken over every axis but the last. :math:`\lVert v \rVert` is computed as
:math:`\sqrt{\sum v^2 + \epsilon}` with :math:`\epsilon` = 1e-12 (as `flax.linen.WeightNorm`; the
official dense layer has no :math:`\epsilon`, its conv layer clamps the squared norm at 1e-12).

**flax.nnx.WeightNorm is not this method** (flax 0.12.8): it writes the normalized kernel back
into the wrapped parameter at every call (resetting :math:`\lVert v \rVert` to 1) and keeps its
gains as non-`Param` data, which `nnx.Optimizer(wrt=nnx.Param)` does not train.
`flax.linen.WeightNorm` is (tested in `tests/nn/test_weight_norm.py`).

Norms and the data-dependent statistics are computed in float32 (or wider); outputs have
``dtype`` (default: the input's dtype).

Public API: :func:`weight_normalize` and :func:`data_dependent_scale_and_bias` (pure functions),
the NNX layers :class:`WNLinear` and :class:`WNConv` and :func:`wn_init_from_batch`, the Linen
layers :class:`LinenWNDense` / :class:`LinenWNConv` and :func:`linen_wn_init_from_batch`,
exported as `jaxlearn.nn.linen.WNDense`, `WNConv` and `wn_init_from_batch`.

References:
  Tim Salimans and Diederik P. Kingma, "Weight Normalization: A Simple Reparameterization to
  Accelerate Training of Deep Neural Networks", NeurIPS 2016,
  `arXiv:1602.07868 <https://arxiv.org/abs/1602.07868>`_. Official code:
  https://github.com/openai/weightnorm.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive, check_positive_int
from jaxlearn.nn._conv import _check_inputs, _conv, _conv_config, _dense, _tuple
from jaxlearn.nn.weight_standardization import _canonical_fan_in_axes

__all__ = [
    "WNLinear",
    "WNConv",
    "weight_normalize",
    "data_dependent_scale_and_bias",
    "wn_init_from_batch",
    "LinenWNDense",
    "LinenWNConv",
    "linen_wn_init_from_batch",
]

DEFAULT_EPSILON = 1e-12
DENSE_INIT_EPSILON = 1e-10  # official `dense`
CONV_INIT_EPSILON = 1e-8  # official `conv2d`
V_INIT_STDDEV = 0.05  # official: tf.random_normal_initializer(0, 0.05)


def _float32_or_wider(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def weight_normalize(
    v: jax.Array,
    g: jax.Array,
    *,
    fan_in_axes: Sequence[int] | None = None,
    epsilon: float = DEFAULT_EPSILON,
) -> jax.Array:
  r"""The weight-normalized kernel :math:`w = g\, v / \lVert v \rVert`, per output unit.

  Args:
    v: the direction parameter, a kernel of rank >= 2 in flax layout ((in, out), HWIO, ...).
    g: the lengths, one per output unit: shape (out,) (the kernel's last axis) or broadcastable
      to `v` with the fan-in axes reduced.
    fan_in_axes: the axes of one unit's weight vector; default: all axes but the last.
    epsilon: added to the squared norm inside the square root (> 0).

  Returns:
    The kernel, shape of `v`, dtype of `v` (norm computed in >= float32).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import weight_normalize
    >>> v = jnp.array([[3.0, 0.0], [4.0, 2.0]])  # (in, out): columns have norms 5 and 2
    >>> weight_normalize(v, jnp.array([10.0, 1.0]))
    Array([[6., 0.],
           [8., 1.]], dtype=float32)
  """
  v = jnp.asarray(v)
  if not jnp.issubdtype(v.dtype, jnp.floating):
    raise ValueError(f"weight_normalize expects a floating-point kernel, got dtype {v.dtype}")
  if v.ndim < 2:
    raise ValueError(
        f"weight_normalize expects a kernel of rank >= 2 (fan-in axes..., outputs), got shape"
        f" {v.shape}"
    )
  check_positive("epsilon", epsilon)
  axes = _canonical_fan_in_axes(v.ndim, fan_in_axes)
  return _weight_normalize(v, jnp.asarray(g), epsilon, axes=axes)


@functools.partial(jax.jit, static_argnames=("axes",))
def _weight_normalize(v, g, epsilon, *, axes):
  v32 = v.astype(_float32_or_wider(v.dtype))
  inv_norm = jax.lax.rsqrt(jnp.sum(jnp.square(v32), axis=axes, keepdims=True) + epsilon)
  if g.ndim == 1 and axes == tuple(range(v.ndim - 1)):
    g = g.reshape((1,) * (v.ndim - 1) + g.shape)
  return (g.astype(v32.dtype) * v32 * inv_norm).astype(v.dtype)


def data_dependent_scale_and_bias(
    t: jax.Array, *, init_scale: float = 1.0, epsilon: float = DENSE_INIT_EPSILON
) -> tuple[jax.Array, jax.Array]:
  r"""The official data-dependent initialization of :math:`g` and :math:`b` from pre-activations.

  :math:`g = s / \sqrt{\operatorname{Var}[t] + \epsilon_0}`, :math:`b = -\operatorname{E}[t]\, g`,
  moments (population variance) over every axis of `t` but the last.

  Args:
    t: pre-activations :math:`x \cdot v / \lVert v \rVert` of one minibatch, shape (..., out).
    init_scale: the target standard deviation :math:`s` of the initialized pre-activations (> 0).
    epsilon: :math:`\epsilon_0`, added to the variance (> 0; official: 1e-10 dense, 1e-8 conv).

  Returns:
    `(g, b)`, each of shape (out,) and dtype >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import data_dependent_scale_and_bias
    >>> g, b = data_dependent_scale_and_bias(jnp.array([[1.0], [3.0]]))  # mean 2, variance 1
    >>> print(g.round(4), b.round(4))
    [1.] [-2.]
  """
  t = jnp.asarray(t)
  if t.ndim < 2:
    raise ValueError(f"data_dependent_scale_and_bias expects t of rank >= 2, got shape {t.shape}")
  check_positive("init_scale", init_scale)
  check_positive("epsilon", epsilon)
  t = t.astype(_float32_or_wider(t.dtype))
  axes = tuple(range(t.ndim - 1))
  mean = jnp.mean(t, axis=axes)
  var = jnp.mean(jnp.square(t - mean), axis=axes)
  g = init_scale * jax.lax.rsqrt(var + epsilon)
  return g, -mean * g


@functools.partial(jax.jit, static_argnames=("conv", "dtype", "data_init"))
def _wn_forward(x, v, g, bias, epsilon, init_scale, init_epsilon, *, conv, dtype, data_init):
  """(y, g, bias): the layer's output, and its g and bias (re-initialized if `data_init`)."""
  axes = tuple(range(v.ndim - 1))
  apply = _dense if conv is None else functools.partial(_conv, **dict(conv))
  if data_init:
    direction = _weight_normalize(v, jnp.ones(v.shape[-1], v.dtype), epsilon, axes=axes)
    t = apply(x.astype(jnp.float32), direction.astype(jnp.float32), None, jnp.float32)
    new_g, new_b = data_dependent_scale_and_bias(t, init_scale=init_scale, epsilon=init_epsilon)
    g = new_g.astype(g.dtype)
    if bias is not None:
      bias = new_b.astype(bias.dtype)
  kernel = _weight_normalize(v, g, epsilon, axes=axes)
  return apply(x, kernel, bias, dtype), g, bias


# The data-dependent initialization pass: `init_scale` while `wn_init_from_batch` runs, else None.
_DATA_INIT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "jaxlearn_wn_data_init", default=None
)


@contextlib.contextmanager
def _data_init_pass(init_scale: float):
  check_positive("init_scale", init_scale)
  token = _DATA_INIT.set(float(init_scale))
  try:
    yield
  finally:
    _DATA_INIT.reset(token)


def _init_args(conv: bool, init_epsilon: float | None):
  scale = _DATA_INIT.get()
  if init_epsilon is None:
    init_epsilon = CONV_INIT_EPSILON if conv else DENSE_INIT_EPSILON
  return scale, init_epsilon


# ----------------------------------------------------------------------------------------------
# NNX


class _WNBase(nnx.Module):
  v: nnx.Param
  g: nnx.Param
  bias: nnx.Param | None

  def _make_params(self, shape, use_bias, kernel_init, param_dtype, rngs):
    self.v = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
    self.g = nnx.Param(jnp.ones((shape[-1],), param_dtype))
    self.bias = nnx.Param(jnp.zeros((shape[-1],), param_dtype)) if use_bias else None

  def _forward(self, x, conv):
    scale, init_eps = _init_args(conv is not None, self.init_epsilon)
    bias = None if self.bias is None else self.bias[...]
    dtype = jnp.dtype(x.dtype if self.dtype is None else self.dtype)
    y, g, bias = _wn_forward(
        x, self.v[...], self.g[...], bias, self.epsilon, 1.0 if scale is None else scale,
        init_eps, conv=conv, dtype=dtype, data_init=scale is not None,
    )
    if scale is not None:
      self.g[...] = g
      if self.bias is not None:
        self.bias[...] = bias
    return y


class WNLinear(_WNBase):
  r"""A dense layer with a weight-normalized kernel (arXiv:1602.07868).

  :math:`y = x \cdot w + b`, :math:`w_{:,j} = g_j v_{:,j} / \lVert v_{:,j} \rVert`. Parameters
  (`nnx.Param`): `v` (in, out), `g` (out,), `bias` (out,). A forward call never changes them;
  :func:`wn_init_from_batch` sets `g` and `bias` from data.

  Args:
    in_features: number of input features.
    out_features: number of output units.
    use_bias: whether to add `bias`.
    epsilon: added to :math:`\lVert v \rVert^2` (default 1e-12).
    init_epsilon: :math:`\epsilon_0` of the data-dependent initialization (default 1e-10, the
      official dense value).
    dtype: computation and output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of `v` (default :math:`\mathcal N(0, 0.05^2)`, official).
    rngs: the random number generators.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.WNLinear(4, 3, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 4))).shape
    (2, 3)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      use_bias: bool = True,
      epsilon: float = DEFAULT_EPSILON,
      init_epsilon: float | None = None,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      kernel_init: Any = nnx.initializers.normal(V_INIT_STDDEV),
      rngs: nnx.Rngs,
  ):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    check_positive("epsilon", epsilon)
    if init_epsilon is not None:
      check_positive("init_epsilon", init_epsilon)
    self._make_params((in_features, out_features), use_bias, kernel_init, param_dtype, rngs)
    self.in_features, self.out_features = in_features, out_features
    self.epsilon, self.init_epsilon = epsilon, init_epsilon
    self.dtype, self.param_dtype = dtype, param_dtype

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the weight-normalized kernel to the last axis of `inputs`."""
    _check_inputs("WNLinear", inputs, 1, self.in_features)
    return self._forward(inputs, None)


class WNConv(_WNBase):
  r"""A channels-last convolution with a weight-normalized kernel (arXiv:1602.07868).

  Each output channel's kernel (window × input channels) is :math:`g_j v_j / \lVert v_j \rVert`.
  Parameters (`nnx.Param`): `v` ``(*kernel_size, in / feature_group_count, out)``, `g` (out,),
  `bias` (out,).

  Args:
    in_features: number of input channels.
    out_features: number of output channels.
    kernel_size: the window shape (an int for 1-D).
    strides: window strides (int or one per spatial axis).
    padding: 'SAME', 'VALID', an int or one (low, high) pair per spatial axis.
    kernel_dilation: dilation of the kernel (int or one per spatial axis).
    feature_group_count: grouped convolution (must divide both feature counts).
    use_bias: whether to add `bias`.
    epsilon: added to :math:`\lVert v \rVert^2` (default 1e-12).
    init_epsilon: :math:`\epsilon_0` of the data-dependent initialization (default 1e-8, the
      official conv value).
    dtype: computation and output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of `v` (default :math:`\mathcal N(0, 0.05^2)`, official).
    rngs: the random number generators.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> conv = jnn.WNConv(3, 8, kernel_size=(3, 3), rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((2, 6, 6, 3))).shape
    (2, 6, 6, 8)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: int | Sequence[int],
      strides: int | Sequence[int] = 1,
      *,
      padding: Any = "SAME",
      kernel_dilation: int | Sequence[int] = 1,
      feature_group_count: int = 1,
      use_bias: bool = True,
      epsilon: float = DEFAULT_EPSILON,
      init_epsilon: float | None = None,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      kernel_init: Any = nnx.initializers.normal(V_INIT_STDDEV),
      rngs: nnx.Rngs,
  ):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    check_positive_int("feature_group_count", feature_group_count)
    if in_features % feature_group_count or out_features % feature_group_count:
      raise ValueError(
          f"feature_group_count ({feature_group_count}) must divide in_features ({in_features})"
          f" and out_features ({out_features})"
      )
    check_positive("epsilon", epsilon)
    if init_epsilon is not None:
      check_positive("init_epsilon", init_epsilon)
    window = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    window = _tuple(window, len(window), "kernel_size")
    self.conv = _conv_config(window, strides, padding, kernel_dilation, feature_group_count)
    shape = (*window, in_features // feature_group_count, out_features)
    self._make_params(shape, use_bias, kernel_init, param_dtype, rngs)
    self.in_features, self.out_features, self.kernel_size = in_features, out_features, window
    self.epsilon, self.init_epsilon = epsilon, init_epsilon
    self.dtype, self.param_dtype = dtype, param_dtype

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Convolves channels-last `inputs` ``(batch..., *spatial, C)`` with the normalized kernel."""
    _check_inputs("WNConv", inputs, len(self.kernel_size) + 2, self.in_features)
    return self._forward(inputs, self.conv)


def wn_init_from_batch(model: nnx.Module, *args: Any, init_scale: float = 1.0, **kwargs: Any):
  r"""The official data-dependent initialization of every WN layer in `model`, from one batch.

  Calls `model(*args, **kwargs)` once, eagerly; each :class:`WNLinear` / :class:`WNConv` it
  reaches sets its `g` and `bias` from the pre-activations :math:`t = x \cdot v/\lVert v\rVert`
  of its input (see :func:`data_dependent_scale_and_bias`) and passes on its re-initialized
  output, so later layers see the initialized earlier ones (the official `init` pass). `v` keeps
  its value (draw it from :math:`\mathcal N(0, 0.05^2)`, the default initializer). A layer
  without bias only sets `g`. A layer called twice in the pass is initialized twice (the last
  call wins).

  Args:
    model: an NNX module containing WN layers (or a WN layer).
    *args: the model's inputs (one minibatch).
    init_scale: :math:`s`, the standard deviation of every initialized pre-activation (> 0).
    **kwargs: keyword arguments of the model's call.

  Returns:
    The model's output on the batch, with the initialized parameters.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.WNLinear(4, 3, rngs=nnx.Rngs(0))
    >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 4)), jnp.float32)
    >>> y = jnn.wn_init_from_batch(layer, x)
    >>> print(y.mean(0).round(4) + 0.0, y.std(0).round(4))
    [0. 0. 0.] [1. 1. 1.]
  """
  with _data_init_pass(init_scale):
    return model(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Linen


class _LinenWNBase(linen.Module):

  def _wn(self, x, shape, conv, init_epsilon):
    v = self.param("v", self.kernel_init, shape, self.param_dtype)
    g = self.param("g", linen.initializers.ones, (shape[-1],), self.param_dtype)
    bias = (
        self.param("bias", linen.initializers.zeros, (shape[-1],), self.param_dtype)
        if self.use_bias else None
    )
    scale, init_eps = _init_args(conv is not None, init_epsilon)
    data_init = scale is not None and self.is_mutable_collection("params")
    dtype = jnp.dtype(x.dtype if self.dtype is None else self.dtype)
    y, g, bias = _wn_forward(
        x, v, g, bias, self.epsilon, 1.0 if scale is None else scale, init_eps,
        conv=conv, dtype=dtype, data_init=data_init,
    )
    if data_init:
      self.put_variable("params", "g", g)
      if self.use_bias:
        self.put_variable("params", "bias", bias)
    return y


class LinenWNDense(_LinenWNBase):
  r"""Weight-normalized dense layer in Linen; exported as `jaxlearn.nn.linen.WNDense`.

  Same math and numbers as :class:`WNLinear`. Params: `v` (in, out), `g` (out,), `bias` (out,).

  Attributes:
    features: number of output units.
    use_bias: whether to add `bias`.
    epsilon: added to :math:`\lVert v \rVert^2` (default 1e-12).
    init_epsilon: :math:`\epsilon_0` of the data-dependent initialization (default 1e-10).
    dtype: computation and output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of `v` (default :math:`\mathcal N(0, 0.05^2)`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> dense = jnn_linen.WNDense(features=3)
    >>> variables = dense.init(jax.random.key(0), jnp.ones((2, 4)))
    >>> dense.apply(variables, jnp.ones((2, 4))).shape
    (2, 3)
  """

  features: int
  use_bias: bool = True
  epsilon: float = DEFAULT_EPSILON
  init_epsilon: float | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = linen.initializers.normal(V_INIT_STDDEV)

  @linen.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the weight-normalized kernel to the last axis of `inputs`."""
    check_positive_int("features", self.features)
    check_positive("epsilon", self.epsilon)
    if self.has_variable("params", "v"):
      in_features = self.get_variable("params", "v").shape[0]
    else:
      in_features = inputs.shape[-1] if inputs.ndim else 0
    _check_inputs("WNDense", inputs, 1, in_features)
    return self._wn(inputs, (in_features, self.features), None, self.init_epsilon)


class LinenWNConv(_LinenWNBase):
  r"""Weight-normalized convolution in Linen; exported as `jaxlearn.nn.linen.WNConv`.

  Same math and numbers as :class:`WNConv`. Params: `v` ``(*kernel_size, in / groups, out)``, `g`,
  `bias`.

  Attributes:
    features: number of output channels.
    kernel_size: the window shape (an int for 1-D).
    strides: window strides.
    padding: 'SAME', 'VALID', an int or one (low, high) pair per spatial axis.
    kernel_dilation: dilation of the kernel.
    feature_group_count: grouped convolution.
    use_bias: whether to add `bias`.
    epsilon: added to :math:`\lVert v \rVert^2` (default 1e-12).
    init_epsilon: :math:`\epsilon_0` of the data-dependent initialization (default 1e-8).
    dtype: computation and output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of `v` (default :math:`\mathcal N(0, 0.05^2)`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> conv = jnn_linen.WNConv(features=8, kernel_size=(3, 3))
    >>> variables = conv.init(jax.random.key(0), jnp.ones((2, 6, 6, 3)))
    >>> conv.apply(variables, jnp.ones((2, 6, 6, 3))).shape
    (2, 6, 6, 8)
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Any = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  epsilon: float = DEFAULT_EPSILON
  init_epsilon: float | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = linen.initializers.normal(V_INIT_STDDEV)

  @linen.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Convolves channels-last `inputs` ``(batch..., *spatial, C)`` with the normalized kernel."""
    check_positive_int("features", self.features)
    check_positive("epsilon", self.epsilon)
    groups = self.feature_group_count
    check_positive_int("feature_group_count", groups)
    window = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    n = len(window)
    if self.has_variable("params", "v"):
      in_features = self.get_variable("params", "v").shape[-2] * groups
    else:
      in_features = inputs.shape[-1] if inputs.ndim else 0
    _check_inputs("WNConv", inputs, n + 2, in_features)
    if in_features % groups or self.features % groups:
      raise ValueError(
          f"feature_group_count ({groups}) must divide the input ({in_features}) and output"
          f" ({self.features}) feature counts"
      )
    conv = _conv_config(window, self.strides, self.padding, self.kernel_dilation, groups)
    shape = (*window, in_features // groups, self.features)
    return self._wn(inputs, shape, conv, self.init_epsilon)


def linen_wn_init_from_batch(
    module: linen.Module, variables: Any, *args: Any, init_scale: float = 1.0, **kwargs: Any
):
  r"""The data-dependent initialization of every Linen WN layer of `module`, from one batch.

  Linen equivalent of :func:`wn_init_from_batch`; exported as
  `jaxlearn.nn.linen.wn_init_from_batch`. Runs `module.apply(variables, *args, **kwargs)` with
  every collection mutable.

  Args:
    module: a Linen module containing WN layers.
    variables: its variables (from `module.init`).
    *args: the module's inputs (one minibatch).
    init_scale: :math:`s`, the standard deviation of every initialized pre-activation (> 0).
    **kwargs: keyword arguments of the module's call.

  Returns:
    `(output, variables)`: the output on the batch and the variables with `g` and `bias` set.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> dense = jnn_linen.WNDense(features=3)
    >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 4)), jnp.float32)
    >>> variables = dense.init(jax.random.key(0), x)
    >>> y, variables = jnn_linen.wn_init_from_batch(dense, variables, x)
    >>> print(y.std(0).round(4))
    [1. 1. 1.]
  """
  with _data_init_pass(init_scale):
    y, updated = module.apply(variables, *args, mutable=True, **kwargs)
  return y, {**variables, **updated}


RECORD = registry.record(
    slug="weight_normalization",
    kind="normalization",
    title=(
        "Weight Normalization: A Simple Reparameterization to Accelerate Training of Deep Neural"
        " Networks"
    ),
    reference="arXiv:1602.07868",
    experiment="weight_norm_digits",
    notes=(
        "Own implementation: flax.nnx.WeightNorm (0.12.8) writes the normalized kernel back into "
        "the wrapped parameter at every call and keeps its gains out of nnx.Param, so it is not "
        "the paper's parametrization (tested); flax.linen.WeightNorm and torch's "
        "parametrizations.weight_norm are (parity tested). ||v|| = sqrt(sum v^2 + 1e-12) as "
        "flax.linen (the official dense layer has no epsilon). Data-dependent initialization as "
        "the official code (v ~ N(0, 0.05), g = s/sqrt(var(t) + eps0), b = -mean(t) g, eps0 1e-10 "
        "dense / 1e-8 conv), as an explicit pass `wn_init_from_batch`; it keeps the current v. "
        "The official code's mean-only batch normalization and EMA of parameters are not "
        "included."
    ),
)
