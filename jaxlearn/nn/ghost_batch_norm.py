r"""Ghost Batch Normalization (GBN): batch normalization over "ghost" sub-batches of a large batch.

Paper: Hoffer, Hubara and Soudry, "Train longer, generalize better: closing the generalization gap
in large batch training of neural networks", arXiv:1705.08741. Official code:
eladhoffer/bigBatch (`main_gbn.py`).

A batch of N examples is cut, in order, into k = N / b consecutive ghost batches of b examples
(b must divide N). Each ghost batch g is normalized with its own statistics, per channel c over
its b examples and every spatial position:

.. math::

  \mu_{g,c} = \operatorname{mean}_{i \in g}(x_{i,c}), \qquad
  \sigma^2_{g,c} = \operatorname{mean}_{i \in g}((x_{i,c} - \mu_{g,c})^2), \qquad
  y_{i,c} = \gamma_c \frac{x_{i,c} - \mu_{g,c}}{\sqrt{\sigma^2_{g,c} + \epsilon}} + \beta_c.

The official code runs the model on each ghost batch in turn (PyTorch BatchNorm in training mode),
so the running statistics receive one moving-average update per ghost batch, in order. With flax's
momentum m (weight on the old value) the k sequential updates have the closed form

.. math::

  \hat\mu \leftarrow m^k \hat\mu + \sum_{g=0}^{k-1} (1 - m)\, m^{k-1-g} \mu_g

(and the same for the variance), which is what this layer computes, in one pass. The official loop
averages the gradients of the k ghost-batch losses; that is the gradient of the mean loss over the
whole batch computed through this layer, so no accumulation loop is needed. With b = N the layer is
flax's BatchNorm (tested).

Conventions (flax's BatchNorm): momentum 0.99, ε 1e-5, the running variance is the biased batch
variance (PyTorch, which the official code uses, stores the unbiased one: a factor b / (b − 1)
per update, tested). Statistics are float32 (>= float32 for float64 inputs), the output has
`dtype` (default: the input's dtype).

Data parallelism: with `axis_name`, each device holds a consecutive slice of the global batch and
forms its ghost batches inside its slice (b must divide the per-device batch); every device
normalizes with the statistics of its own ghost batches (no cross-device averaging: a ghost batch
never spans devices), and the running statistics get the k·D ordered updates of the global batch
(the per-ghost statistics are `all_gather`-ed over the axis, device-major). The result equals the
single-device layer on the concatenated batch.

The paper's large-batch recipe also scales the learning rate by sqrt(N / b)
(`sqrt_batch_lr_scaling`, official `--lr_bb_fix`, on by default) and optionally multiplies the
number of epochs and every learning-rate milestone by ceil(N / b) (`adapt_regime`, official
`--regime_bb_fix`, off by default); the official loop also clips the gradient's global norm at 5,
a training-loop choice left to the caller.

Public API: the pure function `ghost_batch_normalize`, the schedule helpers
`sqrt_batch_lr_scaling` and `adapt_regime`, the NNX layer `GhostBatchNorm` and the Linen layer
`LinenGhostBatchNorm` (exported as `jaxlearn.nn.linen.GhostBatchNorm`).

References:
  Hoffer, E., Hubara, I. and Soudry, D. "Train longer, generalize better: closing the
  generalization gap in large batch training of neural networks"
  (https://arxiv.org/abs/1705.08741), NeurIPS 2017. Official code:
  https://github.com/eladhoffer/bigBatch
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
from jaxlearn._checks import check_positive, check_positive_int, check_range
from jaxlearn.nn._modes import RunningAverageMode

__all__ = [
    "GhostBatchNorm",
    "LinenGhostBatchNorm",
    "ghost_batch_normalize",
    "sqrt_batch_lr_scaling",
    "adapt_regime",
]

DEFAULT_MOMENTUM = 0.99
DEFAULT_EPSILON = 1e-5


def _check_input(x: jax.Array, num_features: int | None = None) -> None:
  if x.ndim < 2:
    raise ValueError(
        f"GhostBatchNorm expects inputs of rank >= 2 (batch, ..., features), got shape {x.shape}"
    )
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(
        f"GhostBatchNorm expects {num_features} features on the last axis, got shape {x.shape}"
    )


def _ghost_size(batch_size: int, ghost_batch_size: int | None) -> int:
  """The ghost batch size b (None: the whole batch); raises unless b divides the batch."""
  if ghost_batch_size is None:
    return batch_size
  check_positive_int("ghost_batch_size", ghost_batch_size)
  if batch_size % ghost_batch_size:
    raise ValueError(
        f"ghost_batch_size must divide the (per-device) batch size {batch_size}, got "
        f"{ghost_batch_size}"
    )
  return int(ghost_batch_size)


def _check_hyperparameters(momentum: Any, epsilon: Any) -> None:
  check_range("momentum", momentum, 0.0, 1.0)
  check_positive("epsilon", epsilon)


def ghost_batch_normalize(
    x: jax.Array,
    *,
    running_mean: jax.Array,
    running_var: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    ghost_batch_size: int | None,
    use_running_average: bool,
    momentum: float = DEFAULT_MOMENTUM,
    epsilon: float = DEFAULT_EPSILON,
    axis_name: str | None = None,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Ghost Batch Normalization as a pure function (the math is in the module docstring).

  Args:
    x: input of shape (N, ..., C), channels last.
    running_mean: running means, shape (C,).
    running_var: running (biased) variances, shape (C,).
    scale: per-channel scale γ, shape (C,).
    bias: per-channel shift β, shape (C,).
    ghost_batch_size: examples per ghost batch b (must divide N in training; evaluation takes
      any batch size); None: the whole batch (plain BN).
    use_running_average: evaluation mode: normalize with the running statistics, update nothing.
    momentum: decay m of the running statistics (weight on the old value), in [0, 1].
    epsilon: added to the variances (> 0).
    axis_name: a named axis whose devices hold consecutive slices of the batch (module docstring).
    dtype: the output dtype (default: the dtype of `x`).

  Returns:
    `(y, new_running_mean, new_running_var)`; the running statistics come back unchanged in
    evaluation mode, and always as stop-gradient float32 (>= float32) arrays.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import ghost_batch_normalize
    >>> x = jnp.array([[0.0], [2.0], [10.0], [14.0]])
    >>> y, mean, var = ghost_batch_normalize(
    ...     x, running_mean=jnp.zeros(1), running_var=jnp.ones(1), scale=jnp.ones(1),
    ...     bias=jnp.zeros(1), ghost_batch_size=2, use_running_average=False, momentum=0.5)
    >>> print(y[:, 0].round(3))  # each pair standardized on its own
    [-1.  1. -1.  1.]
    >>> print(mean)  # 0.25 * 0 + 0.25 * 1 + 0.5 * 12: two ordered updates
    [6.25]
  """
  num_features = running_mean.shape[-1]
  _check_input(x, num_features)
  # Evaluation normalizes with the running statistics: any batch size.
  ghost = None if use_running_average else _ghost_size(x.shape[0], ghost_batch_size)
  if use_running_average and ghost_batch_size is not None:
    check_positive_int("ghost_batch_size", ghost_batch_size)
  _check_hyperparameters(momentum, epsilon)
  return _ghost_batch_norm(
      x, running_mean, running_var, scale, bias, momentum, epsilon, ghost_batch_size=ghost,
      use_running_average=bool(use_running_average), axis_name=axis_name,
      dtype=x.dtype if dtype is None else jnp.dtype(dtype),
  )


# Jitted so that eager NNX calls compile one program instead of one per primitive.
@functools.partial(
    jax.jit, static_argnames=("ghost_batch_size", "use_running_average", "axis_name", "dtype")
)
def _ghost_batch_norm(
    x, running_mean, running_var, scale, bias, momentum, epsilon, *, ghost_batch_size,
    use_running_average, axis_name, dtype,
):
  compute_dtype = jnp.promote_types(x.dtype, jnp.float32)
  running_mean = jnp.asarray(running_mean, compute_dtype)
  running_var = jnp.asarray(running_var, compute_dtype)
  scale = jnp.asarray(scale, compute_dtype)
  bias = jnp.asarray(bias, compute_dtype)
  x32 = x.astype(compute_dtype)
  if use_running_average:
    y = (x32 - running_mean) * jax.lax.rsqrt(running_var + epsilon) * scale + bias
    return y.astype(dtype), running_mean, running_var

  num_ghosts = x.shape[0] // ghost_batch_size
  grouped = x32.reshape(num_ghosts, ghost_batch_size, *x.shape[1:])
  axes = tuple(range(1, grouped.ndim - 1))
  mean = jnp.mean(grouped, axis=axes, keepdims=True)
  centered = grouped - mean
  var = jnp.mean(jnp.square(centered), axis=axes, keepdims=True)
  y = (centered * jax.lax.rsqrt(var + epsilon) * scale + bias).reshape(x.shape)

  # One moving-average update per ghost batch, in order (closed form of the sequential updates).
  ghost_means = mean.reshape(num_ghosts, -1)
  ghost_vars = var.reshape(num_ghosts, -1)
  if axis_name is not None:
    ghost_means = jax.lax.all_gather(ghost_means, axis_name).reshape(-1, ghost_means.shape[-1])
    ghost_vars = jax.lax.all_gather(ghost_vars, axis_name).reshape(-1, ghost_vars.shape[-1])
  total = ghost_means.shape[0]
  momentum = jnp.asarray(momentum, compute_dtype)
  weights = (1.0 - momentum) * momentum ** jnp.arange(total - 1, -1, -1, dtype=compute_dtype)
  decay = momentum**total

  def update(running, stats):
    return jax.lax.stop_gradient(decay * running + weights @ stats)

  return y.astype(dtype), update(running_mean, ghost_means), update(running_var, ghost_vars)


def sqrt_batch_lr_scaling(
    learning_rate: float | Callable[[Any], Any], batch_size: int, base_batch_size: int
) -> float | Callable[[Any], Any]:
  r"""The paper's large-batch learning rate: :math:`\eta \sqrt{B / b}` (official `--lr_bb_fix`).

  Args:
    learning_rate: the learning rate tuned at batch size `base_batch_size`: a number or an optax
      schedule (step -> learning rate).
    batch_size: the large batch size B.
    base_batch_size: the small batch size b the learning rate was tuned for (the official code
      uses its ghost batch size).

  Returns:
    The scaled learning rate (a schedule if `learning_rate` is one).

  Example:
    >>> from jaxlearn.nn import sqrt_batch_lr_scaling
    >>> sqrt_batch_lr_scaling(0.1, batch_size=4096, base_batch_size=256)
    0.4
  """
  check_positive_int("batch_size", batch_size)
  check_positive_int("base_batch_size", base_batch_size)
  factor = math.sqrt(batch_size / base_batch_size)
  if callable(learning_rate):
    return lambda step: learning_rate(step) * factor
  check_positive("learning_rate", learning_rate)
  return learning_rate * factor


def adapt_regime(
    epochs: int, *, batch_size: int, base_batch_size: int, milestones: Sequence[int] = ()
) -> tuple[int, tuple[int, ...]]:
  r"""The paper's "regime adaptation": epochs and milestones times :math:`\lceil B / b \rceil`.

  Training a batch B for ⌈B/b⌉ times as many epochs makes as many weight updates as batch b did
  (official `--regime_bb_fix`).

  Args:
    epochs: the number of epochs used at batch size `base_batch_size`.
    batch_size: the large batch size B.
    base_batch_size: the small batch size b.
    milestones: epochs at which the learning-rate regime changes (scaled by the same factor).

  Returns:
    `(epochs, milestones)` for batch size B.

  Example:
    >>> from jaxlearn.nn import adapt_regime
    >>> adapt_regime(10, batch_size=512, base_batch_size=128, milestones=(5, 8))
    (40, (20, 32))
  """
  check_positive_int("epochs", epochs)
  check_positive_int("batch_size", batch_size)
  check_positive_int("base_batch_size", base_batch_size)
  for milestone in milestones:
    check_positive_int("milestones", milestone)
  factor = -(-batch_size // base_batch_size)
  return epochs * factor, tuple(int(m) * factor for m in milestones)


class GhostBatchNorm(RunningAverageMode):
  r"""Ghost Batch Normalization (arXiv:1705.08741) as an NNX layer.

  Parameters (`nnx.Param`, `param_dtype`): `scale`, `bias` of shape (C,). Running statistics
  (`nnx.BatchStat`, float32): `mean`, `var` (flax BatchNorm's names). The math and the
  conventions are in the module docstring. The mode follows flax's `BatchNorm`:
  `use_running_average` given at call time wins over the constructor's value;
  `model.train()` / `model.eval()` and `nnx.view(model, use_running_average=...)` switch it.

  Args:
    num_features: number of channels C (the last axis of the input).
    ghost_batch_size: examples per ghost batch (must divide the batch); None: plain BN.
    use_running_average: evaluation mode (normalize with the running statistics).
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to the variances (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the affine parameters.
    axis_name: named axis whose devices hold consecutive slices of the batch.
    rngs: accepted for signature parity with flax layers; the initialization is deterministic.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.GhostBatchNorm(4, ghost_batch_size=8, rngs=nnx.Rngs(0))
    >>> x = jnp.arange(32 * 4, dtype=jnp.float32).reshape(32, 4)
    >>> y = norm(x)  # four ghost batches of 8, four running-statistics updates
    >>> norm.eval()
    >>> norm(x).shape
    (32, 4)
  """

  def __init__(
      self,
      num_features: int,
      *,
      ghost_batch_size: int | None,
      use_running_average: bool | None = False,
      momentum: float = DEFAULT_MOMENTUM,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs | None = None,
  ):
    del rngs  # ones/zeros initialization
    check_positive_int("num_features", num_features)
    if ghost_batch_size is not None:
      check_positive_int("ghost_batch_size", ghost_batch_size)
    _check_hyperparameters(momentum, epsilon)
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.num_features = num_features
    self.ghost_batch_size = ghost_batch_size
    self.use_running_average = use_running_average
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.axis_name = axis_name

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalizes `x` (N, ..., C); in training mode also updates the running statistics."""
    use_running_average = self.running_average_mode(use_running_average)
    y, mean, var = ghost_batch_normalize(
        x, running_mean=self.mean[...], running_var=self.var[...], scale=self.scale[...],
        bias=self.bias[...], ghost_batch_size=self.ghost_batch_size,
        use_running_average=use_running_average, momentum=self.momentum, epsilon=self.epsilon,
        axis_name=self.axis_name, dtype=self.dtype,
    )
    if not use_running_average:
      self.mean[...] = mean.astype(jnp.float32)
      self.var[...] = var.astype(jnp.float32)
    return y


class LinenGhostBatchNorm(linen.Module):
  r"""Ghost Batch Normalization as a Linen layer; exported as `jaxlearn.nn.linen.GhostBatchNorm`.

  Same math and numbers as the NNX `GhostBatchNorm`. Variables: `params` {scale, bias};
  `batch_stats` {mean, var} (float32). The number of features is read from the input. As in
  flax's Linen `BatchNorm`, `use_running_average` is set either as an attribute or at call time,
  and while `is_initializing()` the running statistics are not updated and `axis_name` is not
  used.

  Attributes:
    ghost_batch_size: examples per ghost batch (must divide the batch; required, as in the NNX
      layer); None: plain BN.
    use_running_average: evaluation mode (normalize with the running statistics).
    momentum: decay of the running statistics, in [0, 1].
    epsilon: added to the variances (> 0).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the affine parameters.
    axis_name: named axis whose devices hold consecutive slices of the batch.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.GhostBatchNorm(ghost_batch_size=8)
    >>> x = jnp.ones((32, 4))
    >>> variables = norm.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = norm.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> y.shape
    (32, 4)
  """

  ghost_batch_size: int | None
  use_running_average: bool | None = None
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
    initializing = self.is_initializing()
    mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    scale = self.param("scale", linen.initializers.ones, (features,), self.param_dtype)
    bias = self.param("bias", linen.initializers.zeros, (features,), self.param_dtype)
    y, new_mean, new_var = ghost_batch_normalize(
        x, running_mean=mean.value, running_var=var.value, scale=scale, bias=bias,
        ghost_batch_size=self.ghost_batch_size, use_running_average=use_running_average,
        momentum=self.momentum, epsilon=self.epsilon,
        axis_name=None if initializing else self.axis_name, dtype=self.dtype,
    )
    if not use_running_average and not initializing:
      mean.value = new_mean.astype(jnp.float32)
      var.value = new_var.astype(jnp.float32)
    return y


RECORD = registry.record(
    slug="ghost_batch_norm",
    kind="normalization",
    title=(
        "Train longer, generalize better: closing the generalization gap in large batch training "
        "of neural networks"
    ),
    reference="arXiv:1705.08741",
    experiment="ghost_batch_norm_large_batch",
    notes=(
        "One moving-average update per ghost batch, in order, as the official sequential loop "
        "(closed form, one pass); the gradient of the mean loss through the layer equals the "
        "official accumulate-and-average. flax conventions: momentum 0.99 on the old value, "
        "biased running variance (official PyTorch BN: momentum 0.1 on the new value, unbiased; "
        "tested), eps 1e-5. A batch the ghost size does not divide raises (the official "
        "torch.chunk would make uneven chunks). With axis_name, ghost batches stay inside each "
        "device's slice and the running statistics take every device's ghost statistics in "
        "device-major order (equal to the single-device layer on the concatenated batch). The "
        "clip-at-5 of the official loop is left to the training loop. init2winit/composer/keras "
        "ghost-BN implementations were not read."
    ),
)
