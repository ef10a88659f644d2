r"""Spectral Normalization (SN): kernels divided by a power-iteration estimate of sigma(W).

Paper: Miyato, Kataoka, Koyama and Yoshida, "Spectral Normalization for Generative Adversarial
Networks", arXiv:1802.05957. Official code: pfnet-research/sngan_projection
(`source/functions/max_sv.py`, `source/links/sn_linear.py`, `sn_convolution_2d.py`).

The kernel is viewed as a matrix :math:`W` of shape (fan-in, out) (flax layout: a Dense kernel as
it is, a Conv kernel ``(*window, in, out)`` reshaped to (-1, out), as `flax.linen.SpectralNorm`). A
persistent vector :math:`\tilde u \in \mathbb R^{out}` carries the power iteration across training
steps; each call performs (Algorithm 1 of the paper, one iteration by default)

.. math::

   \tilde v \leftarrow \frac{W \tilde u}{\lVert W \tilde u \rVert}, \qquad
   \tilde u \leftarrow \frac{W^\top \tilde v}{\lVert W^\top \tilde v \rVert}, \qquad
   \sigma(W) \approx \tilde v^\top W \tilde u, \qquad
   W_{SN} = W / \sigma(W),

with no gradient through :math:`\tilde u, \tilde v` (the gradient does flow through
:math:`\sigma` into :math:`W`, as the paper's Eq. (12) and the official code). Vectors are
normalized as :math:`x / \sqrt{\lVert x \rVert^2 + \epsilon}`, :math:`\epsilon` = 1e-12
(`flax.linen.SpectralNorm`; the official code divides by :math:`\lVert x \rVert + \epsilon`).

State: :math:`\tilde u` (shape (out,)) and the last :math:`\sigma` are batch statistics
(`nnx.BatchStat`, Linen collection `batch_stats`, float32). **Training** calls store the new
:math:`\tilde u` and :math:`\sigma`; **evaluation** calls (`use_running_average=True`) run the
same iteration from the stored :math:`\tilde u` and store nothing, as `flax.linen.SpectralNorm`
with `update_stats=False`. (The official Chainer code stores :math:`\tilde u` in every call;
PyTorch's `parametrizations.spectral_norm` skips the iteration in eval mode and reuses its stored
u and v.) The stored kernel :math:`W` is never modified; the state depends on the kernel only,
not on the batch, so it needs no synchronization under data parallelism.

**flax.nnx.SpectralNorm is not this method** (flax 0.12.8): it writes :math:`W/\sigma` back into
the wrapped parameter, also in evaluation mode, so every call divides the stored kernel again
(tested in `tests/nn/test_spectral_norm.py`).

The power iteration runs in float32 (or wider); outputs have ``dtype`` (default: the input's).

Public API: :func:`spectral_normalize` (pure), the NNX layers :class:`SNLinear` and
:class:`SNConv`, the Linen layers :class:`LinenSNDense` / :class:`LinenSNConv`, exported as
`jaxlearn.nn.linen.SNDense` / `jaxlearn.nn.linen.SNConv`.

References:
  Takeru Miyato, Toshiki Kataoka, Masanori Koyama and Yuichi Yoshida, "Spectral Normalization
  for Generative Adversarial Networks", ICLR 2018,
  `arXiv:1802.05957 <https://arxiv.org/abs/1802.05957>`_. Official code:
  https://github.com/pfnet-research/sngan_projection.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive, check_positive_int
from jaxlearn.nn._conv import _check_inputs, _conv, _conv_config, _dense, _tuple
from jaxlearn.nn._modes import RunningAverageMode

__all__ = [
    "SNLinear",
    "SNConv",
    "spectral_normalize",
    "LinenSNConv",
    "LinenSNDense",
]

DEFAULT_EPSILON = 1e-12


def _check_hyperparameters(n_power_iterations: Any, epsilon: Any) -> None:
  check_positive_int("n_power_iterations", n_power_iterations)
  check_positive("epsilon", epsilon)


def spectral_normalize(
    kernel: jax.Array,
    u: jax.Array,
    *,
    n_power_iterations: int = 1,
    epsilon: float = DEFAULT_EPSILON,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Power iteration from `u`, then :math:`W / \sigma(W)`.

  Args:
    kernel: a kernel of rank >= 2 in flax layout (fan-in axes..., out), viewed as (-1, out).
    u: the persistent left vector :math:`\tilde u`, shape (out,).
    n_power_iterations: iterations per call (>= 1; the paper uses 1 per training step).
    epsilon: added to the squared norms when normalizing the vectors (> 0).

  Returns:
    `(normalized_kernel, new_u, sigma)`: the kernel divided by :math:`\sigma` (shape and dtype of
    `kernel`), the new :math:`\tilde u` and :math:`\sigma = \tilde v^\top W \tilde u`
    (stop-gradient; float32 or wider). Gradients flow into `kernel` through both `kernel` and
    :math:`\sigma`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import spectral_normalize
    >>> kernel = jnp.array([[3.0, 0.0], [0.0, 1.0]])
    >>> w, u, sigma = spectral_normalize(kernel, jnp.array([1.0, 1.0]), n_power_iterations=20)
    >>> print(round(float(sigma), 4), w.round(4))
    3.0 [[1.     0.    ]
     [0.     0.3333]]
  """
  kernel = jnp.asarray(kernel)
  if not jnp.issubdtype(kernel.dtype, jnp.floating):
    raise ValueError(f"spectral_normalize expects a floating-point kernel, got {kernel.dtype}")
  if kernel.ndim < 2:
    raise ValueError(
        f"spectral_normalize expects a kernel of rank >= 2 (fan-in axes..., outputs), got shape"
        f" {kernel.shape}"
    )
  u = jnp.asarray(u)
  if u.shape != kernel.shape[-1:]:
    raise ValueError(
        f"spectral_normalize expects u of shape {kernel.shape[-1:]} (one entry per output), got"
        f" {u.shape}"
    )
  _check_hyperparameters(n_power_iterations, epsilon)
  return _spectral_normalize(kernel, u, epsilon, n_power_iterations=int(n_power_iterations))


def _l2_normalize(x, epsilon):
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x)) + epsilon)


@functools.partial(jax.jit, static_argnames=("n_power_iterations",))
def _spectral_normalize(kernel, u, epsilon, *, n_power_iterations):
  compute = jnp.promote_types(kernel.dtype, jnp.float32)
  w = kernel.astype(compute).reshape(-1, kernel.shape[-1])
  w_const = jax.lax.stop_gradient(w)
  u = jax.lax.stop_gradient(u.astype(compute))

  def iteration(_, u):
    return _l2_normalize(_l2_normalize(w_const @ u, epsilon) @ w_const, epsilon)

  if n_power_iterations > 1:  # a loop, not unrolled: one small program for any count
    u = jax.lax.fori_loop(0, n_power_iterations - 1, iteration, u)
  v = _l2_normalize(w_const @ u, epsilon)
  u = _l2_normalize(v @ w_const, epsilon)
  sigma = v @ w @ u
  normalized = w / jnp.where(sigma != 0, sigma, 1)
  return (
      normalized.reshape(kernel.shape).astype(kernel.dtype),
      u,
      jax.lax.stop_gradient(sigma),
  )


@functools.partial(jax.jit, static_argnames=("n_power_iterations", "conv", "dtype"))
def _sn_forward(x, kernel, bias, u, epsilon, *, n_power_iterations, conv, dtype):
  kernel, u, sigma = _spectral_normalize(kernel, u, epsilon, n_power_iterations=n_power_iterations)
  if conv is None:
    y = _dense(x, kernel, bias, dtype)
  else:
    y = _conv(x, kernel, bias, dtype, **dict(conv))
  return y, u.astype(jnp.float32), sigma.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# NNX


class _SNBase(RunningAverageMode):

  def _setup(self, shape, use_bias, kernel_init, bias_init, param_dtype, rngs, *,
             n_power_iterations, epsilon, use_running_average, dtype):
    _check_hyperparameters(n_power_iterations, epsilon)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (shape[-1],), param_dtype)) if use_bias else None
    # As the official code and flax.linen: u ~ N(0, I) (normalized by the first iteration).
    self.u = nnx.BatchStat(jax.random.normal(rngs.params(), (shape[-1],), jnp.float32))
    self.sigma = nnx.BatchStat(jnp.ones((), jnp.float32))
    self.n_power_iterations, self.epsilon = n_power_iterations, epsilon
    self.use_running_average = use_running_average
    self.dtype, self.param_dtype = dtype, param_dtype

  def _forward(self, x, conv, use_running_average):
    use_running_average = self.running_average_mode(use_running_average)
    y, u, sigma = _sn_forward(
        x, self.kernel[...], None if self.bias is None else self.bias[...], self.u[...],
        self.epsilon, n_power_iterations=self.n_power_iterations, conv=conv,
        dtype=jnp.dtype(x.dtype if self.dtype is None else self.dtype),
    )
    if not use_running_average:
      self.u[...] = u
      self.sigma[...] = sigma
    return y


class SNLinear(_SNBase):
  r"""A dense layer with a spectrally normalized kernel (arXiv:1802.05957).

  :math:`y = x\, W / \sigma(W) + b`. Parameters (`nnx.Param`): `kernel` (in, out), `bias` (out,);
  batch statistics (`nnx.BatchStat`, float32): `u` (out,), `sigma` (). Training mode updates `u`
  and `sigma`; `model.eval()` (or `use_running_average=True`) does not.

  Args:
    in_features: number of input features.
    out_features: number of output units.
    use_bias: whether to add `bias`.
    n_power_iterations: power iterations per call (default 1, the paper's).
    epsilon: added to the squared norms in the power iteration (default 1e-12).
    use_running_average: evaluation mode (default False: training).
    dtype: computation and output dtype (default: the input's dtype).
    param_dtype: dtype of `kernel` and `bias`.
    kernel_init: initializer of `kernel` (default: LeCun normal, as `nnx.Linear`).
    bias_init: initializer of `bias` (default zeros).
    rngs: the random number generators (`kernel` and the initial `u`).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.SNLinear(4, 3, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 4))).shape  # training: u and sigma are updated
    (2, 3)
    >>> layer.eval()
    >>> layer(jnp.ones((2, 4))).shape  # evaluation: nothing is updated
    (2, 3)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      use_bias: bool = True,
      n_power_iterations: int = 1,
      epsilon: float = DEFAULT_EPSILON,
      use_running_average: bool | None = False,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      kernel_init: Any = nnx.initializers.lecun_normal(),
      bias_init: Any = nnx.initializers.zeros_init(),
      rngs: nnx.Rngs,
  ):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    self._setup(
        (in_features, out_features), use_bias, kernel_init, bias_init, param_dtype, rngs,
        n_power_iterations=n_power_iterations, epsilon=epsilon,
        use_running_average=use_running_average, dtype=dtype,
    )
    self.in_features, self.out_features = in_features, out_features

  def __call__(self, inputs: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Applies :math:`W/\\sigma(W)` to the last axis of `inputs`."""
    _check_inputs("SNLinear", inputs, 1, self.in_features)
    return self._forward(inputs, None, use_running_average)


class SNConv(_SNBase):
  r"""A channels-last convolution with a spectrally normalized kernel (arXiv:1802.05957).

  The kernel ``(*window, in / groups, out)`` is viewed as a (-1, out) matrix for :math:`\sigma`, as
  `flax.linen.SpectralNorm`. Parameters: `kernel`, `bias`; batch statistics: `u` (out,),
  `sigma` ().

  Args:
    in_features: number of input channels.
    out_features: number of output channels.
    kernel_size: the window shape (an int for 1-D).
    strides: window strides (int or one per spatial axis).
    padding: 'SAME', 'VALID', an int or one (low, high) pair per spatial axis.
    kernel_dilation: dilation of the kernel.
    feature_group_count: grouped convolution (must divide both feature counts).
    use_bias: whether to add `bias`.
    n_power_iterations: power iterations per call (default 1).
    epsilon: added to the squared norms in the power iteration (default 1e-12).
    use_running_average: evaluation mode (default False: training).
    dtype: computation and output dtype (default: the input's dtype).
    param_dtype: dtype of `kernel` and `bias`.
    kernel_init: initializer of `kernel` (default: LeCun normal, as `nnx.Conv`).
    bias_init: initializer of `bias` (default zeros).
    rngs: the random number generators.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> conv = jnn.SNConv(3, 8, kernel_size=(3, 3), rngs=nnx.Rngs(0))
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
      n_power_iterations: int = 1,
      epsilon: float = DEFAULT_EPSILON,
      use_running_average: bool | None = False,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      kernel_init: Any = nnx.initializers.lecun_normal(),
      bias_init: Any = nnx.initializers.zeros_init(),
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
    window = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    window = _tuple(window, len(window), "kernel_size")
    self.conv = _conv_config(window, strides, padding, kernel_dilation, feature_group_count)
    self._setup(
        (*window, in_features // feature_group_count, out_features), use_bias, kernel_init,
        bias_init, param_dtype, rngs, n_power_iterations=n_power_iterations, epsilon=epsilon,
        use_running_average=use_running_average, dtype=dtype,
    )
    self.in_features, self.out_features, self.kernel_size = in_features, out_features, window

  def __call__(self, inputs: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Convolves channels-last `inputs` ``(batch..., *spatial, C)`` with :math:`W/\\sigma(W)`."""
    _check_inputs("SNConv", inputs, len(self.kernel_size) + 2, self.in_features)
    return self._forward(inputs, self.conv, use_running_average)


# ----------------------------------------------------------------------------------------------
# Linen


class _LinenSNBase(linen.Module):

  def _sn(self, x, shape, conv, use_running_average):
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average
    )
    _check_hyperparameters(self.n_power_iterations, self.epsilon)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = (
        self.param("bias", self.bias_init, (shape[-1],), self.param_dtype)
        if self.use_bias else None
    )
    initializing = self.is_initializing()
    u = self.variable(
        "batch_stats", "u",
        lambda: jax.random.normal(self.make_rng("params"), (shape[-1],), jnp.float32),
    )
    sigma = self.variable("batch_stats", "sigma", jnp.ones, (), jnp.float32)
    y, new_u, new_sigma = _sn_forward(
        x, kernel, bias, u.value, self.epsilon, n_power_iterations=self.n_power_iterations,
        conv=conv, dtype=jnp.dtype(x.dtype if self.dtype is None else self.dtype),
    )
    if not use_running_average and not initializing:
      u.value = new_u
      sigma.value = new_sigma
    return y


class LinenSNDense(_LinenSNBase):
  r"""Spectrally normalized dense layer in Linen; exported as `jaxlearn.nn.linen.SNDense`.

  Same math and numbers as :class:`SNLinear`. Variables: `params` {kernel, bias},
  `batch_stats` {u, sigma}. As flax's Linen `BatchNorm`, `use_running_average` is an attribute
  or a call argument (not both); training calls need `mutable=["batch_stats"]`.

  Attributes:
    features: number of output units.
    use_bias: whether to add `bias`.
    n_power_iterations: power iterations per call (default 1).
    epsilon: added to the squared norms in the power iteration (default 1e-12).
    use_running_average: evaluation mode.
    dtype: computation and output dtype (default: the input's dtype).
    param_dtype: dtype of `kernel` and `bias`.
    kernel_init: initializer of `kernel` (LeCun normal).
    bias_init: initializer of `bias` (zeros).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> dense = jnn_linen.SNDense(features=3)
    >>> x = jnp.ones((2, 4))
    >>> variables = dense.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = dense.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> y.shape, updates["batch_stats"]["u"].shape
    ((2, 3), (3,))
  """

  features: int
  use_bias: bool = True
  n_power_iterations: int = 1
  epsilon: float = DEFAULT_EPSILON
  use_running_average: bool | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = linen.initializers.lecun_normal()
  bias_init: Any = linen.initializers.zeros_init()

  @linen.compact
  def __call__(self, inputs: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Applies :math:`W/\\sigma(W)` to the last axis of `inputs`."""
    check_positive_int("features", self.features)
    if self.has_variable("params", "kernel"):
      in_features = self.get_variable("params", "kernel").shape[0]
    else:
      in_features = inputs.shape[-1] if inputs.ndim else 0
    _check_inputs("SNDense", inputs, 1, in_features)
    return self._sn(inputs, (in_features, self.features), None, use_running_average)


class LinenSNConv(_LinenSNBase):
  r"""Spectrally normalized convolution in Linen; exported as `jaxlearn.nn.linen.SNConv`.

  Same math and numbers as :class:`SNConv`. Variables: `params` {kernel, bias},
  `batch_stats` {u, sigma}.

  Attributes:
    features: number of output channels.
    kernel_size: the window shape (an int for 1-D).
    strides: window strides.
    padding: 'SAME', 'VALID', an int or one (low, high) pair per spatial axis.
    kernel_dilation: dilation of the kernel.
    feature_group_count: grouped convolution.
    use_bias: whether to add `bias`.
    n_power_iterations: power iterations per call (default 1).
    epsilon: added to the squared norms in the power iteration (default 1e-12).
    use_running_average: evaluation mode.
    dtype: computation and output dtype (default: the input's dtype).
    param_dtype: dtype of `kernel` and `bias`.
    kernel_init: initializer of `kernel` (LeCun normal).
    bias_init: initializer of `bias` (zeros).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> conv = jnn_linen.SNConv(features=8, kernel_size=(3, 3))
    >>> x = jnp.ones((2, 6, 6, 3))
    >>> variables = conv.init(jax.random.key(0), x, use_running_average=True)
    >>> conv.apply(variables, x, use_running_average=True).shape
    (2, 6, 6, 8)
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Any = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  n_power_iterations: int = 1
  epsilon: float = DEFAULT_EPSILON
  use_running_average: bool | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = linen.initializers.lecun_normal()
  bias_init: Any = linen.initializers.zeros_init()

  @linen.compact
  def __call__(self, inputs: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Convolves channels-last `inputs` ``(batch..., *spatial, C)`` with :math:`W/\\sigma(W)`."""
    check_positive_int("features", self.features)
    groups = self.feature_group_count
    check_positive_int("feature_group_count", groups)
    window = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    if self.has_variable("params", "kernel"):
      in_features = self.get_variable("params", "kernel").shape[-2] * groups
    else:
      in_features = inputs.shape[-1] if inputs.ndim else 0
    _check_inputs("SNConv", inputs, len(window) + 2, in_features)
    if in_features % groups or self.features % groups:
      raise ValueError(
          f"feature_group_count ({groups}) must divide the input ({in_features}) and output"
          f" ({self.features}) feature counts"
      )
    conv = _conv_config(window, self.strides, self.padding, self.kernel_dilation, groups)
    shape = (*window, in_features // groups, self.features)
    return self._sn(inputs, shape, conv, use_running_average)


RECORD = registry.record(
    slug="spectral_normalization",
    kind="normalization",
    title="Spectral Normalization for Generative Adversarial Networks",
    reference="arXiv:1802.05957",
    experiment="spectral_norm_gan_ring",
    notes=(
        "Own implementation: flax.nnx.SpectralNorm (0.12.8) writes W/sigma back into the wrapped "
        "parameter (also in eval mode), so repeated calls keep dividing the stored kernel "
        "(tested); flax.linen.SpectralNorm (identical u) and torch's "
        "parametrizations.spectral_norm (train mode) are parity tested. Kernel viewed as "
        "(-1, out) (flax layout); u stored as shape (out,) (flax.linen: (1, out)). Vectors "
        "normalized as x/sqrt(|x|^2 + 1e-12) (flax.linen; official: x/(|x| + 1e-12), torch: "
        "x/max(|x|, 1e-12)). Evaluation runs the power iteration from the stored u without "
        "storing it (flax.linen); the official Chainer code stores u in every call and torch's "
        "eval mode skips the iteration. The official optional learnable gain (use_gamma) is "
        "not included. The paper's conv treatment reshapes the kernel to a matrix, not the "
        "exact operator norm of the convolution."
    ),
)
