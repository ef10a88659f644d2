r"""Batch Normalization: flax's `BatchNorm`, registered, with its conventions made explicit.

Paper: Ioffe and Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
Internal Covariate Shift", arXiv:1502.03167.

For every feature (channel) :math:`c`, over the mini-batch :math:`B` (every axis but the feature
axis: the batch and, for images, the spatial positions, as the paper does for convolutions):

.. math::

  \mu_B = \frac{1}{m}\sum_{i=1}^m x_i, \qquad
  \sigma_B^2 = \frac{1}{m}\sum_{i=1}^m (x_i - \mu_B)^2, \qquad
  \hat x_i = \frac{x_i - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}}, \qquad
  y_i = \gamma \hat x_i + \beta.

Gradients flow through :math:`\mu_B` and :math:`\sigma_B^2` (the paper's backward pass). At
inference the layer is the fixed affine map
:math:`y = \gamma (x - \mathrm{E}[x]) / \sqrt{\mathrm{Var}[x] + \epsilon} + \beta` with population
statistics; the paper's Algorithm 2 averages the statistics of many mini-batches and uses the
unbiased variance :math:`\frac{m}{m-1}\mathrm{E}_B[\sigma_B^2]`. Practical implementations (flax,
PyTorch, the paper's own ImageNet setup) keep exponential moving averages instead.

flax's `nnx.BatchNorm` / `linen.BatchNorm` compute exactly the training-mode equations above. This
module registers them; `BatchNorm` and `LinenBatchNorm` are flax's classes (subclasses, nothing
re-implemented) that only add what jaxlearn layers promise: a `ValueError` containing "expects"
for an input of the wrong rank or feature count (flax raises a shape `TypeError` or silently
normalizes a rank-1 input over nothing), and checks of `momentum` and `epsilon` (NaN, inf and
out-of-range values rejected, nothing clamped).

Conventions, flax vs PyTorch (each one is tested in `tests/nn/test_batch_norm.py`):

============================  ================================  ================================
item                          flax (`BatchNorm`)                PyTorch (`BatchNorm1d/2d`)
============================  ================================  ================================
momentum                      0.99, weight of the OLD value:    0.1, weight of the NEW value:
                              r ← m·r + (1 − m)·batch           r ← (1 − m)·r + m·batch
                              (`momentum_from_torch(0.1)` 0.9)
running variance              biased batch variance             unbiased: ×n/(n − 1), n the
                                                                elements per channel
eval-mode variance            the stored running variance       the stored running variance
ε                             1e-5, inside the square root      1e-5, inside the square root
variance formula              `use_fast_variance=True`:         two-pass
                              E[x²] − E[x]² in float32, loses
                              precision when mean ≫ std
                              (`False`: two-pass)
no running statistics         not available: train with         `track_running_stats=False`
                              `use_running_average=False`
                              and drop the update
`momentum=None` (cumulative)  not available                     cumulative moving average
layout                        features last (`axis=-1`)         channels at axis 1 (NCHW)
InstanceNorm affine default   on (`use_scale`, `use_bias`)      off (`affine=False`)
InstanceNorm / LayerNorm ε    1e-6                              1e-5
============================  ================================  ================================

Statistics are float32 (flax's `force_float32_reductions`), outputs are in `dtype` (default: the
promoted input dtype). With `axis_name`, flax averages the batch statistics with `lax.pmean`.
The mode follows flax: `use_running_average` in the constructor or at call time, NNX
`model.train()` / `model.eval()`.

Helpers: `momentum_from_torch` converts PyTorch's momentum, `variables_from_torch` copies a
PyTorch BatchNorm's parameters and running statistics into flax's layout (the running variance as
stored, so evaluation outputs agree).

References:
  Sergey Ioffe and Christian Szegedy, "Batch Normalization: Accelerating Deep Network Training by
  Reducing Internal Covariate Shift", ICML 2015. https://arxiv.org/abs/1502.03167
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as linen
import jax
import numpy as np
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_axis, check_positive, check_positive_int, check_range

__all__ = [
    "BatchNorm",
    "LinenBatchNorm",
    "momentum_from_torch",
    "variables_from_torch",
]


def _check_hyperparameters(momentum: Any, epsilon: Any) -> None:
  check_range("momentum", momentum, 0.0, 1.0)
  check_positive("epsilon", epsilon)


def _check_input(x: jax.Array, axis: int | Sequence[int], num_features: int | None) -> None:
  if x.ndim < 2:
    raise ValueError(
        f"BatchNorm expects inputs of rank >= 2 (batch, ..., features), got shape {x.shape}"
    )
  if num_features is None or not isinstance(axis, (int, np.integer)):
    return
  feature_axis = check_axis("axis", int(axis), x.ndim)
  if x.shape[feature_axis] != num_features:
    raise ValueError(
        f"BatchNorm expects {num_features} features on axis {axis}, got shape {x.shape}"
    )


class BatchNorm(nnx.BatchNorm):
  r"""flax's `nnx.BatchNorm` with input and hyperparameter checks (arXiv:1502.03167).

  Training: :math:`y = \gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta` with the batch
  mean and biased variance over every axis but `axis`; the running statistics are updated as
  `r ← momentum·r + (1 − momentum)·batch`. Evaluation: the running statistics, no update.

  Args:
    num_features: the size of the feature axis.
    momentum: weight of the old running value, in [0, 1] (flax convention; PyTorch's 0.1 is
      flax's 0.9, see `momentum_from_torch`).
    epsilon: added to the variance inside the square root (> 0).
    rngs: the random number generators.
    **kwargs: every other argument of `nnx.BatchNorm` (use_running_average, axis, dtype,
      param_dtype, use_bias, use_scale, axis_name, axis_index_groups, use_fast_variance, ...).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> bn = jnn.BatchNorm(3, rngs=nnx.Rngs(0))
    >>> y = bn(jnp.arange(12.0).reshape(4, 3))
    >>> [round(float(v), 3) for v in y[:, 0]]
    [-1.342, -0.447, 0.447, 1.342]
    >>> [round(float(v), 3) for v in bn.mean[...]]  # 0.99 * 0 + 0.01 * batch mean
    [0.045, 0.055, 0.065]
  """

  def __init__(
      self,
      num_features: int,
      *,
      momentum: float = 0.99,
      epsilon: float = 1e-5,
      rngs: nnx.Rngs,
      **kwargs: Any,
  ):
    check_positive_int("num_features", num_features)
    _check_hyperparameters(momentum, epsilon)
    super().__init__(num_features, momentum=momentum, epsilon=epsilon, rngs=rngs, **kwargs)

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    """Normalizes `x` with batch statistics (training) or the running ones (evaluation)."""
    _check_input(x, self.axis, self.num_features)
    return super().__call__(x, use_running_average, mask=mask)


class LinenBatchNorm(linen.BatchNorm):
  """flax's `linen.BatchNorm` with input and hyperparameter checks; `jaxlearn.nn.linen.BatchNorm`.

  Same numbers as `BatchNorm` (NNX) and as `flax.linen.BatchNorm`; the feature count is taken from
  the input at `init`, then checked against the stored statistics.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> bn = jnn_linen.BatchNorm(momentum=0.9)
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> variables = bn.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> [round(float(v), 3) for v in updates["batch_stats"]["mean"]]
    [0.45, 0.55, 0.65]
  """

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    """Normalizes `x` with batch statistics (training) or the running ones (evaluation)."""
    _check_hyperparameters(self.momentum, self.epsilon)
    features = None
    if self.has_variable("batch_stats", "mean"):
      features = self.get_variable("batch_stats", "mean").shape[0]
    _check_input(x, self.axis, features)
    return super().__call__(x, use_running_average, mask=mask)


def momentum_from_torch(momentum: float) -> float:
  """flax's `momentum` for PyTorch's: 1 − m (PyTorch weighs the new value, flax the old one).

  Args:
    momentum: PyTorch's `momentum`, in [0, 1]. PyTorch's `None` (a cumulative average) has no
      flax equivalent and is rejected.

  Returns:
    The flax momentum.

  Example:
    >>> from jaxlearn.nn import momentum_from_torch
    >>> momentum_from_torch(0.1)
    0.9
  """
  if momentum is None:
    raise ValueError(
        "momentum must be in [0, 1], got None (PyTorch's cumulative moving average has no flax "
        "equivalent)"
    )
  check_range("momentum", momentum, 0.0, 1.0)
  return 1.0 - float(momentum)


def variables_from_torch(module: Any) -> dict[str, dict[str, np.ndarray]]:
  """Linen `BatchNorm` variables holding a PyTorch BatchNorm's parameters and running statistics.

  The running variance is copied as stored (PyTorch's unbiased estimate): both libraries use the
  stored value as is in evaluation, so evaluation outputs agree (with the same `epsilon`). Later
  training updates then follow flax's convention (biased batch variance). For an NNX layer,
  assign the arrays to `scale`, `bias`, `mean` and `var`.

  Args:
    module: a `torch.nn.BatchNorm1d/2d/3d` (anything with `running_mean` and `running_var`, and
      `weight` and `bias` unless `affine=False`, as tensors or arrays). torch itself is not
      imported here.

  Returns:
    `{"params": {"scale", "bias"}, "batch_stats": {"mean", "var"}}` as float32 NumPy arrays
    (`params` empty when the module has no affine parameters).

  Example:
    With `torch.nn.BatchNorm1d(3)` as `module` (here a stand-in with the same attributes):

    >>> import types
    >>> import numpy as np
    >>> from jaxlearn.nn import variables_from_torch
    >>> module = types.SimpleNamespace(weight=np.ones(3), bias=np.zeros(3),
    ...                                running_mean=np.zeros(3), running_var=np.full(3, 2.0))
    >>> variables = variables_from_torch(module)
    >>> variables["batch_stats"]["var"]  # PyTorch's unbiased running variance, as stored
    array([2., 2., 2.], dtype=float32)
  """
  running_mean = getattr(module, "running_mean", None)
  running_var = getattr(module, "running_var", None)
  if running_mean is None or running_var is None:
    raise ValueError(
        "variables_from_torch expects a BatchNorm module that tracks running statistics "
        "(track_running_stats=True)"
    )
  def as_numpy(t):  # a torch tensor, or anything NumPy converts
    t = t.detach().cpu().numpy() if hasattr(t, "detach") else t
    return np.asarray(t, np.float32)

  params = {}
  if getattr(module, "weight", None) is not None:
    params["scale"] = as_numpy(module.weight)
  if getattr(module, "bias", None) is not None:
    params["bias"] = as_numpy(module.bias)
  return {
      "params": params,
      "batch_stats": {"mean": as_numpy(running_mean), "var": as_numpy(running_var)},
  }


RECORD = registry.record(
    slug="batch_norm",
    kind="normalization",
    title=(
        "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate "
        "Shift"
    ),
    reference="arXiv:1502.03167",
    experiment="batch_norm_sigmoid_lr",
    notes=(
        "Registers flax's BatchNorm (flax.nnx.BatchNorm, flax.linen.BatchNorm): jaxlearn's "
        "BatchNorm / linen.BatchNorm are subclasses that only add input-shape and momentum/epsilon "
        "checks. Training mode is the paper's transform (batch mean, biased variance, eps inside "
        "the square root, gradients through the statistics); inference uses exponential moving "
        "averages of the batch mean and the BIASED batch variance (flax), not the paper's "
        "population average with the unbiased m/(m-1) variance (Algorithm 2); PyTorch's running "
        "variance is unbiased. Momentum is flax's (weight of the old value, 0.99) = 1 - PyTorch's "
        "momentum (0.1). Verified against torch BatchNorm1d/2d in train and eval (tested), and "
        "a NumPy transcription of the paper's equations."
    ),
)
