r"""AdaB²N: Adaptive Balance of Batch Normalization for continual learning.

Paper: Lyu, Wang, Zhang, Sun, Su, Zhu and Jing, "Overcoming Recency Bias of Normalization
Statistics in Continual Learning: Balance and Adaptation", NeurIPS 2023, arXiv:2310.08855.
Official code: github.com/lvyilin/AdaB2N (``models/utils/adab2n.py``, ``models/derpp_ada.py``).
The equations below are those of the official code.

A batch normalization whose training batches mix samples of several tasks (the incoming batch
of the current task and replayed samples of older ones), with per-sample task ids
:math:`t_i \in \{0, \dots, T\}`, T the current task. Channels last, x of shape (N, ..., C).

**Task-weighted batch statistics** (training, T > 0). With learnable task weights
:math:`w \in \mathbb{R}^{K}` (K tasks in all, initialised to 0) and the per-task sample counts
:math:`n_k` of the batch,

.. math::

   c_k = e^{w_k} + n_k \quad (k \le T), \qquad \pi_k = c_k / \textstyle\sum_{j \le T} c_j,
   \qquad s_i = \pi_{t_i} / n_{t_i},

   \mu = \sum_i s_i\, \overline{x_i}, \qquad
   \sigma^2 = \sum_i s_i\, \overline{(x_i - \mu)^2},

where :math:`\overline{\,\cdot\,}` averages over the spatial positions of sample i. (A task
k ≤ T absent from the batch still takes its share :math:`e^{w_k}` of the mass, so the sample
weights then sum to less than 1, as in the official code.) For T = 0 (or without task ids, a
single task) μ and σ² are the ordinary batch mean and biased variance. The output is
:math:`\gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta`, with gradients through μ, σ² and w.

**Modified momentum** of the running statistics, with :math:`m = 1 -` ``momentum`` (the torch
momentum; ``momentum`` here follows flax and weights the old value) and t the number of training
calls so far, including this one:

.. math::

   \eta_t = \begin{cases} m & \kappa = 1 \\ 1/t & \kappa = 0 \\
   m^\kappa \ (t = 1), \quad \eta_{t-1} / (\eta_{t-1} + (1 - m)^\kappa) \ (t > 1)
   & \text{otherwise} \end{cases}

   \hat\mu \leftarrow \hat\mu + \eta_t(\mu - \hat\mu), \qquad
   \hat\sigma^2 \leftarrow \hat\sigma^2 + \eta_t(\sigma^2 - \hat\sigma^2).

**Regularizer**, after the update (the running statistics without gradient):
:math:`\mathcal{L} = \mathrm{mean}_c(\mu - \hat\mu)^2 + \mathrm{mean}_c(\sigma^2 - \hat\sigma^2)^2`.
The official training step adds :math:`\lambda \sum_{\text{layers}} \mathcal{L}` to its replay loss
(DER++ or ER-ACE) once the task index reaches ``ada_t0``. Here every training call stores its
:math:`\mathcal{L}`: NNX in the layer's ``regularizer`` variable (type
:class:`AdaB2NRegularizer`, e.g. ``nnx.state(model, AdaB2NRegularizer)``), Linen by ``sow``
into the ``"losses"`` collection (name ``"adab2n"``) when that collection is mutable.
``adab2n_regularizer`` sums them.

Evaluation (``use_running_average=True``) is ordinary BN with the running statistics.

Task ids are a call input: required in training when ``num_tasks > 1``; values outside
[0, ``current_task``] raise a ``ValueError`` when the ids are concrete (they cannot be checked
under ``jit``). ``current_task`` (T) defaults to the largest task id of the batch, which is the
official counter in ER / DER++ training, where the incoming batch belongs to the current task.

Statistics are float32 (≥ float32), the output has ``dtype``. With ``axis_name`` the sums and the
task counts are ``lax.psum``-ed over that named axis (the whole batch's statistics).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive, check_positive_int, check_range
from jaxlearn.nn._modes import RunningAverageMode

__all__ = [
    "AdaB2N",
    "LinenAdaB2N",
    "AdaB2NRegularizer",
    "adab2n_norm",
    "adab2n_statistics",
    "adab2n_eta",
    "adab2n_regularizer",
]

DEFAULT_MOMENTUM = 0.9  # torch BatchNorm2d's 0.1 (weight of the new value), as in the official code
DEFAULT_EPSILON = 1e-5
DEFAULT_KAPPA = 1.0


class AdaB2NRegularizer(nnx.Variable):
  """The last training call's AdaB²N regularizer of a layer (not a parameter, not a statistic).

  The training loss adds λ times the sum of every layer's regularizer (`adab2n_regularizer`).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.AdaB2N(2, num_tasks=2, rngs=nnx.Rngs(0))
    >>> y = norm(jnp.arange(8.0).reshape(4, 2), task_ids=jnp.array([1, 1, 0, 1]))
    >>> regularizers = nnx.state(norm, jnn.AdaB2NRegularizer)  # the call's regularizer
    >>> bool(jnn.adab2n_regularizer(regularizers) >= 0)
    True
  """


def _stats_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _check_input(x: jax.Array, num_features: int | None = None) -> None:
  if x.ndim < 2:
    raise ValueError(
        f"AdaB2N expects inputs of rank >= 2 (batch, ..., features), got shape {x.shape}")
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(
        f"AdaB2N expects {num_features} features on the last axis, got shape {x.shape}")


def _check_hyperparameters(momentum: Any, kappa: Any, epsilon: Any) -> None:
  check_range("momentum", momentum, 0.0, 1.0)
  check_range("kappa", kappa, 0.0, 1.0)
  check_positive("epsilon", epsilon)


def _check_task_ids(task_ids, num_tasks: int, batch: int, current_task) -> None:
  if task_ids is None:
    if num_tasks > 1:
      raise ValueError(
          f"AdaB2N expects `task_ids` (one task id per sample) in training when num_tasks > 1"
          f" (num_tasks={num_tasks})")
    return
  if np.shape(task_ids) != (batch,):
    raise ValueError(
        f"AdaB2N expects `task_ids` of shape ({batch},), got {np.shape(task_ids)}")
  if not jnp.issubdtype(jnp.asarray(task_ids).dtype, jnp.integer):
    raise ValueError(f"task_ids must be integers, got dtype {jnp.asarray(task_ids).dtype}")
  if current_task is not None and not isinstance(current_task, jax.core.Tracer):
    current = int(current_task)
    if not 0 <= current < num_tasks:
      raise ValueError(f"current_task must be in [0, {num_tasks}), got {current}")
  else:
    current = num_tasks - 1
  if not isinstance(task_ids, jax.core.Tracer):
    ids = np.asarray(task_ids)
    if ids.size and (ids.min() < 0 or ids.max() > current):
      raise ValueError(
          f"task_ids must be in [0, {current}] (the current task; num_tasks={num_tasks}), got "
          f"values in [{ids.min()}, {ids.max()}]")


def adab2n_statistics(
    x: jax.Array,
    task_weight: jax.Array | None = None,
    task_ids: jax.Array | None = None,
    current_task: Any = None,
    *,
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""AdaB²N's training statistics: task-weighted for T > 0, plain batch ones otherwise.

  Args:
    x: the batch, shape (N, ..., C).
    task_weight: the learnable task weights w, shape (K,); None: one task.
    task_ids: the task of every sample, integers of shape (N,) in [0, T]; None: one task.
    current_task: T (default: ``max(task_ids)``).
    axis_name: a named axis the batch is spread over.

  Returns:
    ``(mean, var)`` of shape (C,), ≥ float32, differentiable in x and ``task_weight``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import adab2n_statistics
    >>> x = jnp.array([[0.0], [2.0], [4.0]])  # samples 0, 1 of task 1, sample 2 of task 0
    >>> mean, var = adab2n_statistics(x, jnp.zeros(2), jnp.array([1, 1, 0]))
    >>> print(mean)  # tasks weighted (1 + 2) : (1 + 1), not 2 : 1
    [2.2]
  """
  _check_input(x)
  if task_weight is None or task_ids is None:
    task_weight, task_ids, current_task = jnp.zeros((1,)), None, 0
  else:
    _check_task_ids(task_ids, task_weight.shape[-1], x.shape[0], current_task)
  return _jitted_statistics(x.astype(_stats_dtype(x.dtype)), task_weight, task_ids,
                            current_task, axis_name=axis_name)


def _statistics(x32, task_weight, task_ids, current_task, axis_name):
  spatial = tuple(range(1, x32.ndim - 1))
  per_sample = jnp.mean(x32, axis=spatial) if spatial else x32  # (N, C)
  reduce = (lambda v: jax.lax.psum(v, axis_name)) if axis_name is not None else (lambda v: v)
  batch = reduce(jnp.asarray(x32.shape[0], x32.dtype))
  plain_mean = reduce(jnp.sum(per_sample, axis=0)) / batch
  plain_var = reduce(jnp.sum(_spatial_mean(jnp.square(x32 - plain_mean), spatial), 0)) / batch
  if task_ids is None:
    return plain_mean, plain_var
  num_tasks = task_weight.shape[-1]
  task_ids = jnp.asarray(task_ids)
  if current_task is None:
    current_task = _reduce_max(jnp.max(task_ids), axis_name)
  onehot = jax.nn.one_hot(task_ids, num_tasks, dtype=x32.dtype)  # (N, K)
  counts = reduce(jnp.sum(onehot, axis=0))  # (K,)
  seen = jnp.arange(num_tasks) <= current_task
  concentration = jnp.where(seen, jnp.exp(task_weight.astype(x32.dtype)) + counts, 0.0)
  weights = concentration / jnp.sum(concentration)
  sample_weight = onehot @ (weights / jnp.maximum(counts, 1.0))  # (N,)
  mean = reduce(sample_weight @ per_sample)
  var = reduce(sample_weight @ _spatial_mean(jnp.square(x32 - mean), spatial))
  active = current_task > 0
  return jnp.where(active, mean, plain_mean), jnp.where(active, var, plain_var)


_jitted_statistics = jax.jit(lambda *args, axis_name: _statistics(*args, axis_name),
                             static_argnames=("axis_name",))


def _spatial_mean(v, spatial):
  return jnp.mean(v, axis=spatial) if spatial else v


def _reduce_max(value, axis_name):
  return jax.lax.pmax(value, axis_name) if axis_name is not None else value


def adab2n_eta(count: jax.Array, last_eta: jax.Array, momentum: float = DEFAULT_MOMENTUM,
               kappa: float = DEFAULT_KAPPA) -> jax.Array:
  r"""The modified-momentum rate :math:`\eta_t` of the running statistics (module docstring).

  Args:
    count: t, the number of training calls including the current one (≥ 1).
    last_eta: :math:`\eta_{t-1}` (ignored for t = 1, κ = 0 and κ = 1).
    momentum: flax momentum (weight of the old value); the torch momentum is 1 − momentum.
    kappa: κ in [0, 1].

  Returns:
    :math:`\eta_t`, float32.

  Example:
    >>> from jaxlearn.nn import adab2n_eta
    >>> print(adab2n_eta(1.0, 0.0, momentum=0.9, kappa=0.5).round(4))  # 0.1 ** 0.5
    0.3162
  """
  check_range("momentum", momentum, 0.0, 1.0)
  check_range("kappa", kappa, 0.0, 1.0)
  return _jitted_eta(count, last_eta, momentum, kappa=float(kappa))


def _eta(count, last_eta, momentum, kappa):
  count = jnp.asarray(count, jnp.float32)
  last_eta = jnp.asarray(last_eta, jnp.float32)
  torch_momentum = 1.0 - momentum
  if kappa == 1.0:
    return jnp.full_like(count, torch_momentum)
  if kappa == 0.0:
    return 1.0 / count
  first = jnp.asarray(torch_momentum, jnp.float32) ** kappa
  later = last_eta / (last_eta + jnp.asarray(momentum, jnp.float32) ** kappa)
  return jnp.where(count <= 1.0, first, later)


_jitted_eta = jax.jit(_eta, static_argnames=("kappa",))


def adab2n_norm(
    x: jax.Array,
    *,
    running_mean: jax.Array,
    running_var: jax.Array,
    count: jax.Array,
    last_eta: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    task_weight: jax.Array,
    task_ids: jax.Array | None = None,
    current_task: Any = None,
    use_running_average: bool,
    momentum: float = DEFAULT_MOMENTUM,
    kappa: float = DEFAULT_KAPPA,
    epsilon: float = DEFAULT_EPSILON,
    axis_name: str | None = None,
    dtype: Any = None,
):
  r"""AdaB²N as a pure function (module docstring).

  Args:
    x: input (N, ..., C).
    running_mean: running means (C,).
    running_var: running variances (C,).
    count: training calls so far (scalar, float32).
    last_eta: the previous call's η (scalar).
    scale: γ (C,).
    bias: β (C,).
    task_weight: w (K,), K = the number of tasks.
    task_ids: per-sample task ids (N,), required in training when K > 1.
    current_task: T (default ``max(task_ids)``).
    use_running_average: evaluation (running statistics; nothing updated).
    momentum: flax momentum in [0, 1] (torch's is 1 − momentum).
    kappa: κ in [0, 1].
    epsilon: added to the variance (> 0).
    axis_name: a named axis the batch is spread over.
    dtype: output dtype (default: the input's).

  Returns:
    ``(y, (new_mean, new_var, new_count, new_eta), regularizer)``; in evaluation the state is
    returned unchanged and the regularizer is 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import adab2n_norm
    >>> x = jnp.arange(8.0).reshape(4, 2)
    >>> y, state, reg = adab2n_norm(
    ...     x, running_mean=jnp.zeros(2), running_var=jnp.ones(2), count=0.0, last_eta=0.0,
    ...     scale=jnp.ones(2), bias=jnp.zeros(2), task_weight=jnp.zeros(2),
    ...     task_ids=jnp.array([1, 1, 0, 1]), use_running_average=False)
    >>> y.shape, state[0].shape
    ((4, 2), (2,))
  """
  num_features = running_mean.shape[-1]
  _check_input(x, num_features)
  _check_hyperparameters(momentum, kappa, epsilon)
  if not use_running_average:
    _check_task_ids(task_ids, task_weight.shape[-1], x.shape[0], current_task)
  return _adab2n(
      x, running_mean, running_var, count, last_eta, scale, bias, task_weight,
      None if use_running_average else task_ids,
      None if (use_running_average or task_ids is None) else current_task,
      momentum, epsilon, kappa=float(kappa), use_running_average=bool(use_running_average),
      axis_name=axis_name, dtype=x.dtype if dtype is None else jnp.dtype(dtype),
  )


@functools.partial(jax.jit,
                   static_argnames=("kappa", "use_running_average", "axis_name", "dtype"))
def _adab2n(x, running_mean, running_var, count, last_eta, scale, bias, task_weight, task_ids,
            current_task, momentum, epsilon, *, kappa, use_running_average, axis_name, dtype):
  x32 = x.astype(_stats_dtype(x.dtype))
  running_mean = jnp.asarray(running_mean, x32.dtype)
  running_var = jnp.asarray(running_var, x32.dtype)
  count = jnp.asarray(count, jnp.float32)
  last_eta = jnp.asarray(last_eta, jnp.float32)
  if use_running_average:
    y = (x32 - running_mean) * jax.lax.rsqrt(running_var + epsilon) * scale + bias
    return y.astype(dtype), (running_mean, running_var, count, last_eta), jnp.zeros((), x32.dtype)
  if task_ids is None:
    mean, var = _statistics(x32, jnp.zeros((1,)), None, 0, axis_name)
  else:
    mean, var = _statistics(x32, task_weight, task_ids, current_task, axis_name)
  new_count = count + 1.0
  eta = _eta(new_count, last_eta, momentum, kappa)
  new_mean = jax.lax.stop_gradient(running_mean + eta * (mean - running_mean))
  new_var = jax.lax.stop_gradient(running_var + eta * (var - running_var))
  regularizer = jnp.mean(jnp.square(mean - new_mean)) + jnp.mean(jnp.square(var - new_var))
  y = (x32 - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
  return y.astype(dtype), (new_mean, new_var, new_count, eta), regularizer


def adab2n_regularizer(tree: Any) -> jax.Array:
  """Sum of the AdaB²N regularizers in an NNX model or state, or a Linen ``"losses"`` collection.

  Args:
    tree: an NNX module (its ``AdaB2NRegularizer`` variables are summed), or any pytree of the
      regularizers (e.g. Linen's ``updates["losses"]``).

  Returns:
    The sum, a float32 scalar (0 if there is none).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.AdaB2N(2, num_tasks=2, rngs=nnx.Rngs(0))
    >>> y = layer(jnp.arange(8.0).reshape(4, 2), task_ids=jnp.array([1, 1, 0, 1]))
    >>> float(jnn.adab2n_regularizer(layer)) >= 0.0
    True
  """
  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree, AdaB2NRegularizer)
  leaves = jax.tree.leaves(tree)
  return sum((jnp.sum(jnp.asarray(leaf, jnp.float32)) for leaf in leaves),
             jnp.zeros((), jnp.float32))


class AdaB2N(RunningAverageMode):
  r"""AdaB²N (arXiv:2310.08855, official code) as an NNX layer.

  Parameters (``nnx.Param``): ``scale``, ``bias`` (C,), ``task_weight`` (K,) initialised to
  ``init_weight``. Statistics (``nnx.BatchStat``, float32): ``mean``, ``var``, ``count`` (training
  calls), ``eta`` (the last rate). ``regularizer`` (:class:`AdaB2NRegularizer`): the last training
  call's regularizer. Modes as flax's ``BatchNorm`` (``model.train()`` / ``model.eval()``).

  Args:
    num_features: number of channels C.
    num_tasks: number of tasks K (≥ 1).
    kappa: κ in [0, 1] of the modified momentum (official default 1: plain momentum).
    use_running_average: evaluation mode.
    momentum: flax momentum in [0, 1] (default 0.9 = torch's 0.1).
    epsilon: added to the variance (> 0).
    init_weight: initial task weights (official default 0).
    dtype: output dtype (default: the input's).
    param_dtype: dtype of the parameters.
    axis_name: named axis the batch is spread over.
    rngs: unused (deterministic initialization).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.AdaB2N(3, num_tasks=5, kappa=0.5, rngs=nnx.Rngs(0))
    >>> x = jnp.arange(24.0).reshape(4, 2, 3)
    >>> y = layer(x, task_ids=jnp.array([2, 2, 0, 1]))  # current task 2, replayed 0 and 1
    >>> loss = jnn.adab2n_regularizer(layer)  # add lambda * loss to the replay loss
    >>> layer.eval()
    >>> y = layer(x)  # evaluation: running statistics, no task ids needed
  """

  def __init__(self, num_features: int, *, num_tasks: int, kappa: float = DEFAULT_KAPPA,
               use_running_average: bool | None = False, momentum: float = DEFAULT_MOMENTUM,
               epsilon: float = DEFAULT_EPSILON, init_weight: float = 0.0, dtype: Any = None,
               param_dtype: Any = jnp.float32, axis_name: str | None = None,
               rngs: nnx.Rngs | None = None):
    del rngs
    check_positive_int("num_features", num_features)
    check_positive_int("num_tasks", num_tasks)
    _check_hyperparameters(momentum, kappa, epsilon)
    check_range("init_weight", init_weight)
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.count = nnx.BatchStat(jnp.zeros((), jnp.float32))
    self.eta = nnx.BatchStat(jnp.zeros((), jnp.float32))
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.task_weight = nnx.Param(jnp.full((num_tasks,), init_weight, param_dtype))
    self.regularizer = AdaB2NRegularizer(jnp.zeros((), jnp.float32))
    self.num_features, self.num_tasks, self.kappa = num_features, num_tasks, kappa
    self.use_running_average = use_running_average
    self.momentum, self.epsilon = momentum, epsilon
    self.dtype, self.axis_name = dtype, axis_name

  def __call__(self, x: jax.Array, task_ids: jax.Array | None = None, current_task: Any = None,
               use_running_average: bool | None = None) -> jax.Array:
    """Normalizes ``x`` (N, ..., C); training updates the statistics and ``regularizer``.

    Args:
      x: input (N, ..., C).
      task_ids: per-sample task ids (N,); required in training when ``num_tasks > 1``.
      current_task: T (default ``max(task_ids)``).
      use_running_average: overrides the mode.

    Returns:
      The normalized input.
    """
    use_running_average = self.running_average_mode(use_running_average)
    y, (mean, var, count, eta), regularizer = adab2n_norm(
        x, running_mean=self.mean[...], running_var=self.var[...], count=self.count[...],
        last_eta=self.eta[...], scale=self.scale[...], bias=self.bias[...],
        task_weight=self.task_weight[...], task_ids=task_ids, current_task=current_task,
        use_running_average=use_running_average, momentum=self.momentum, kappa=self.kappa,
        epsilon=self.epsilon, axis_name=self.axis_name, dtype=self.dtype,
    )
    if not use_running_average:
      self.mean[...] = mean.astype(jnp.float32)
      self.var[...] = var.astype(jnp.float32)
      self.count[...] = count
      self.eta[...] = eta
      self.regularizer[...] = regularizer.astype(jnp.float32)
    return y


class LinenAdaB2N(linen.Module):
  r"""AdaB²N as a Linen layer; exported as ``jaxlearn.nn.linen.AdaB2N``.

  Same math and numbers as the NNX ``AdaB2N``. Variables: ``params`` {scale, bias, task_weight},
  ``batch_stats`` {mean, var, count, eta}; a training call ``sow``s its regularizer into the
  ``"losses"`` collection (name ``"adab2n"``, the last value kept) when that collection is
  mutable. ``use_running_average`` as in flax's Linen ``BatchNorm``; while initializing, the
  output uses the running statistics and nothing is updated or sown.

  Attributes:
    num_tasks: number of tasks K (≥ 1).
    kappa: κ in [0, 1].
    use_running_average: evaluation mode.
    momentum: flax momentum in [0, 1].
    epsilon: added to the variance (> 0).
    init_weight: initial task weights.
    dtype: output dtype (default: the input's).
    param_dtype: dtype of the parameters.
    axis_name: named axis the batch is spread over.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> from jaxlearn.nn import adab2n_regularizer
    >>> layer = jnn_linen.AdaB2N(num_tasks=2)
    >>> x, ids = jnp.arange(8.0).reshape(4, 2), jnp.array([1, 1, 0, 1])
    >>> variables = layer.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = layer.apply(variables, x, ids, use_running_average=False,
    ...                          mutable=["batch_stats", "losses"])
    >>> loss = adab2n_regularizer(updates["losses"])
  """

  num_tasks: int = 1
  kappa: float = DEFAULT_KAPPA
  use_running_average: bool | None = None
  momentum: float = DEFAULT_MOMENTUM
  epsilon: float = DEFAULT_EPSILON
  init_weight: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, task_ids: jax.Array | None = None, current_task: Any = None,
               use_running_average: bool | None = None) -> jax.Array:
    """Normalizes ``x`` (N, ..., C); training updates ``batch_stats`` and sows the regularizer."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    check_positive_int("num_tasks", self.num_tasks)
    _check_input(x)
    if self.has_variable("batch_stats", "mean"):
      _check_input(x, self.get_variable("batch_stats", "mean").shape[-1])
    features = x.shape[-1]
    initializing = self.is_initializing()
    stat = lambda name, init, shape: self.variable("batch_stats", name, init, shape, jnp.float32)
    mean = stat("mean", jnp.zeros, (features,))
    var = stat("var", jnp.ones, (features,))
    count = stat("count", jnp.zeros, ())
    eta = stat("eta", jnp.zeros, ())
    init_weight = self.init_weight
    params = dict(
        scale=self.param("scale", linen.initializers.ones, (features,), self.param_dtype),
        bias=self.param("bias", linen.initializers.zeros, (features,), self.param_dtype),
        task_weight=self.param("task_weight", lambda _, s, d: jnp.full(s, init_weight, d),
                               (self.num_tasks,), self.param_dtype),
    )
    train = not use_running_average and not initializing
    y, state, regularizer = adab2n_norm(
        x, running_mean=mean.value, running_var=var.value, count=count.value,
        last_eta=eta.value, **params, task_ids=task_ids if train else None,
        current_task=current_task if train else None, use_running_average=not train,
        momentum=self.momentum, kappa=self.kappa, epsilon=self.epsilon,
        axis_name=self.axis_name if train else None, dtype=self.dtype,
    )
    if train:
      mean.value, var.value, count.value, eta.value = (v.astype(jnp.float32) for v in state)
      self.sow("losses", "adab2n", regularizer.astype(jnp.float32),
               init_fn=lambda: jnp.zeros((), jnp.float32), reduce_fn=lambda _, new: new)
    return y


RECORD = registry.record(
    slug="adab2n",
    kind="normalization",
    title=("Overcoming Recency Bias of Normalization Statistics in Continual Learning: Balance "
           "and Adaptation"),
    reference="arXiv:2310.08855",
    experiment="adab2n_split_digits",
    notes=(
        "Follows the official code (lvyilin/AdaB2N, models/utils/adab2n.py, derpp_ada.py): "
        "task-weighted batch statistics only once the current task T > 0 (concentration "
        "exp(w[:T+1]) + per-task counts; absent tasks keep their exp(w) share, so the sample "
        "weights may sum to < 1), modified momentum eta (kappa = 1: momentum, 0: 1/t, else "
        "eta_1 = m^kappa, eta_t = eta_{t-1} / (eta_{t-1} + (1-m)^kappa) with m the torch "
        "momentum), the running variance updated with the biased batch variance, and the "
        "regularizer MSE(batch mean, running mean) + MSE(batch var, running var) after the "
        "update. `momentum` follows flax (weight of the old value; default 0.9 = torch 0.1). "
        "Differences in form: task ids and the current task are call inputs (the official "
        "code sets per-sample counts on the module and counts end_task() calls); the current "
        "task defaults to max(task_ids); the first-call test of the modified momentum uses the "
        "call counter (official: a Python attribute last_eta is None). The regularizer is "
        "stored (NNX variable / Linen sow) for the training loop to add with its lambda; the "
        "official ada_t0 gate is the loop's business. Task ids out of [0, T] are rejected only "
        "when concrete (not under jit)."
    ),
)
