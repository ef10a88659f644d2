r"""Power Normalization (PowerNorm, PN) for transformers, with masked (padded) tokens.

Paper: Shen, Yao, Gholami, Mahoney and Keutzer, "PowerNorm: Rethinking Batch Normalization in
Transformers", arXiv:2003.07845. Official code: github.com/sIncerass/powernorm,
`fairseq/modules/norms/mask_powernorm.py` (`GroupScaling1D`, `PowerFunction`, `MaskPowerNorm`).
The equations below follow the official code.

Input x of shape (B, ..., C) (tokens: (B, T, C); channels last) with an optional boolean `mask`
of shape (B, ...) that is True on the real tokens and False on padding (the official `pad_mask` is
the opposite: True on padding).

1. Group scaling (`GroupScaling1D`, applied in training and evaluation; gradients flow through it
   by autodiff): with G groups of C/G consecutive channels, every token is divided by the root
   mean square of each of its groups,

   .. math::

      \hat x_{c} = x_{c} / \sqrt{\operatorname{mean}_{c' \in \mathrm{group}(c)} x_{c'}^2
      + \epsilon_g},\qquad \epsilon_g = 10^{-5}.

   The official `NormSelect` passes G = the number of attention heads; the class default is 1.

2. Training, with the iteration counter t = 1, 2, ... (incremented before the call): the
   per-channel quadratic mean over the **real** tokens, the normalization, and the running
   quadratic mean :math:`\psi` (initialized to 1):

   .. math::

      \sigma^2 = \operatorname{mean}_{\text{real tokens}} \hat x^2,\qquad
      z = \begin{cases} \hat x / \sqrt{\sigma^2 + \epsilon} & t \le \text{warmup} \\
                        \hat x / \sqrt{\psi + \epsilon} & t > \text{warmup}, \end{cases}
      \qquad y = \gamma z + \beta,

   .. math::

      \psi \leftarrow \psi \tfrac{t - 1}{t} + \sigma^2 / t \ \ (t < \text{warmup}),\qquad
      \text{then always}\quad \psi \leftarrow \alpha_f \psi + (1 - \alpha_f) \sigma^2 .

   (During warm-up both the cumulative mean and the EMA step run, as in the official code; the
   forward uses ψ from before the update.)

3. Backward (approximate backpropagation), with the incoming gradient
   :math:`\partial L/\partial y` and the backward statistic Γ (official `ema_gz`, initialized
   to 0):

   .. math::

      g = \tfrac{\partial L}{\partial y}\,\gamma,\qquad
      \tilde g = g - (1 - \alpha_b)\,\Gamma\, z,\qquad
      \tfrac{\partial L}{\partial \hat x} = \tilde g / \sqrt{\sigma^2 + \epsilon},\qquad
      \Gamma \leftarrow \Gamma + \operatorname{mean}_{\text{all tokens}}(\tilde g\, z),

   with the **batch** σ² also after warm-up, and the mean of the Γ increment over **all** tokens
   (padding included), as in the official code; ∂L/∂γ = Σ ∂L/∂y·z and ∂L/∂β = Σ ∂L/∂y.
   σ² and ψ get no gradient.

4. Evaluation: :math:`y = \gamma \hat x / \sqrt{\psi + \epsilon} + \beta`; nothing is updated.

Γ is a `jaxlearn.nn.BackwardStat` (Linen collection ``"backward_stats"``): the cotangent the
backward returns for it is the increment above, added by `jaxlearn.nn.apply_backward_stats` after
the step (see `jaxlearn.nn.backward_stats` for the semantics: one increment per call, averaged over
`axis_name`, applied after every micro-step under gradient accumulation). ψ and the counter t
(int32) are `nnx.BatchStat` variables (Linen ``"batch_stats"``).

Defaults: ε = 1e-5, α_f = α_b = 0.9, `warmup` = 10000 (the official class defaults; the paper's
IWSLT14 script sets the warm-up to the learning-rate warm-up, 8000, and `NormSelect` defaults to
1000), G = 1. With `axis_name`, σ² is the mean over the real tokens of all devices (sums and counts
are `psum`-ed) and the Γ increment is averaged over the axis.

Public API: the pure functions `group_scale` and `power_normalize`; the NNX layer `PowerNorm`; the
Linen layer `LinenPowerNorm`, exported as `jaxlearn.nn.linen.PowerNorm`.
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
from jaxlearn._checks import check_bool, check_positive, check_positive_int, check_range
from jaxlearn.nn.backward_stats import BACKWARD_STATS, BackwardStat, sync_increment
from jaxlearn.nn._modes import RunningAverageMode

__all__ = ["PowerNorm", "LinenPowerNorm", "power_normalize", "group_scale"]

DEFAULT_EPSILON = 1e-5
GROUP_EPSILON = 1e-5  # GroupScaling1D's ε in the official code (not tied to the layer's ε)
DEFAULT_ALPHA = 0.9
DEFAULT_WARMUP = 10000


def _stats_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _check_input(x: jax.Array, num_features: int | None = None) -> None:
  if x.ndim < 2:
    raise ValueError(
        f"PowerNorm expects inputs of rank >= 2 (batch, ..., features), got shape {x.shape}"
    )
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(
        f"PowerNorm expects {num_features} features on the last axis, got shape {x.shape}"
    )


def _check_mask(x: jax.Array, mask: jax.Array | None) -> None:
  if mask is None:
    return
  if tuple(mask.shape) != tuple(x.shape[:-1]):
    raise ValueError(
        f"mask must have the input's shape without the feature axis, {tuple(x.shape[:-1])}"
        f" (True on real tokens), got {tuple(mask.shape)}"
    )
  if mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be a boolean array (True on real tokens), got {mask.dtype}")


def _check_groups(num_features: int, num_groups: int) -> None:
  check_positive_int("num_groups", num_groups)
  if num_features % num_groups:
    raise ValueError(
        f"num_groups must divide the number of features ({num_features}), got {num_groups}"
    )


def _check_hyperparameters(alpha_fwd, alpha_bkw, warmup, epsilon, custom_backward) -> None:
  check_range("alpha_fwd", alpha_fwd, 0.0, 1.0)
  check_range("alpha_bkw", alpha_bkw, 0.0, 1.0)
  check_positive("epsilon", epsilon)
  if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
    raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
  check_bool("custom_backward", custom_backward)


def group_scale(x: jax.Array, num_groups: int, *, epsilon: float = GROUP_EPSILON) -> jax.Array:
  r"""Divides every token by the root mean square of each group of C/G channels (>= float32).

  The official `GroupScaling1D`: :math:`x_c / \sqrt{\operatorname{mean}_{group(c)} x^2 + \epsilon}`.

  Args:
    x: input of shape (B, ..., C), C divisible by `num_groups`.
    num_groups: number of groups G of consecutive channels.
    epsilon: added to each group's mean square.

  Returns:
    The scaled input, shape of `x`, dtype >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import group_scale
    >>> print(group_scale(jnp.array([[3.0, -3.0, 2.0, 2.0]]), 2, epsilon=0.0))
    [[ 1. -1.  1.  1.]]
  """
  _check_input(x)
  _check_groups(x.shape[-1], num_groups)
  x = x.astype(_stats_dtype(x.dtype))
  grouped = x.reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)
  moment2 = jnp.mean(jnp.square(grouped), axis=-1, keepdims=True)
  return (grouped * jax.lax.rsqrt(moment2 + epsilon)).reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _approx_normalize(x, var, inv_scale, ema_gz, alpha_bkw, epsilon, axis_name):
  """z = x * inv_scale; the backward is PowerNorm's approximate backpropagation (module docs)."""
  del var, ema_gz, alpha_bkw, epsilon, axis_name
  return x * inv_scale


def _approx_normalize_fwd(x, var, inv_scale, ema_gz, alpha_bkw, epsilon, axis_name):
  del alpha_bkw, epsilon, axis_name
  z = x * inv_scale
  return z, (z, var, inv_scale, ema_gz)


def _approx_normalize_bwd(alpha_bkw, epsilon, axis_name, residuals, g):
  z, var, inv_scale, ema_gz = residuals
  g_tilde = g - (1.0 - alpha_bkw) * ema_gz * z
  axes = tuple(range(z.ndim - 1))
  increment = sync_increment(jnp.mean(g_tilde * z, axis=axes), axis_name)
  dx = g_tilde * jax.lax.rsqrt(var + epsilon)
  return dx, jnp.zeros_like(var), jnp.zeros_like(inv_scale), increment.astype(ema_gz.dtype)


_approx_normalize.defvjp(_approx_normalize_fwd, _approx_normalize_bwd)


def power_normalize(
    x: jax.Array,
    *,
    scale: jax.Array,
    bias: jax.Array,
    psi: jax.Array,
    step: jax.Array,
    ema_gz: jax.Array,
    mask: jax.Array | None = None,
    use_running_average: bool = False,
    num_groups: int = 1,
    alpha_fwd: float = DEFAULT_ALPHA,
    alpha_bkw: float = DEFAULT_ALPHA,
    warmup: int = DEFAULT_WARMUP,
    epsilon: float = DEFAULT_EPSILON,
    custom_backward: bool = True,
    axis_name: str | None = None,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""PowerNorm's forward (and, through `jax.custom_vjp`, its approximate backward).

  Differentiating with respect to `ema_gz` gives the Γ increment (module docstring), not a
  gradient.

  Args:
    x: input of shape (B, ..., C).
    scale: γ, shape (C,).
    bias: β, shape (C,).
    psi: running quadratic mean ψ, shape (C,), float32.
    step: number of training calls so far (int32 scalar); this call is t = step + 1.
    ema_gz: the backward statistic Γ, shape (C,), float32.
    mask: boolean, shape `x.shape[:-1]`, True on real tokens (statistics use those only); None:
      every token is real. A training batch without any real token has undefined statistics
      (NaN, as the official mean over an empty selection).
    use_running_average: evaluation: normalize with ψ, update nothing.
    num_groups: groups of the group-scaling pre-step (the number of attention heads officially).
    alpha_fwd: EMA rate α_f of ψ, in [0, 1].
    alpha_bkw: rate α_b of the backward correction, in [0, 1] (1: no correction).
    warmup: the batch σ² normalizes while t <= warmup; ψ is a cumulative mean while t < warmup.
    epsilon: added to σ² and ψ (> 0).
    custom_backward: False: the same forward under plain autodiff with σ², ψ under
      `stop_gradient` (no correction, zero Γ increment); a test reference and an ablation.
    axis_name: named axis over which σ² (psum of sums and counts) and the Γ increment are
      averaged.
    dtype: output dtype (default: the input's).

  Returns:
    `(y, new_psi, new_step)`; in evaluation the statistics are returned unchanged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import power_normalize
    >>> x = jnp.array([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # (B=1, T=3, C=2)
    >>> mask = jnp.array([[True, True, False]])  # the last token is padding
    >>> c = jnp.ones(2)
    >>> y, psi, step = power_normalize(x, scale=c, bias=0 * c, psi=c, step=jnp.int32(0),
    ...                                ema_gz=0 * c, mask=mask)
    >>> int(step), y.shape
    (1, (1, 3, 2))
  """
  _check_input(x)
  _check_groups(x.shape[-1], num_groups)
  _check_mask(x, mask)
  _check_hyperparameters(alpha_fwd, alpha_bkw, warmup, epsilon, custom_backward)
  dtype = x.dtype if dtype is None else dtype
  xg = group_scale(x, num_groups)
  sdt = xg.dtype
  psi = jnp.asarray(psi, sdt)
  if use_running_average:
    z = xg * jax.lax.rsqrt(psi + epsilon)
    return (scale * z + bias).astype(dtype), psi, step

  axes = tuple(range(x.ndim - 1))
  squares = jnp.square(jax.lax.stop_gradient(xg))
  if mask is None:
    total = jnp.sum(squares, axis=axes)
    count = jnp.asarray(squares.size // squares.shape[-1], sdt)
  else:
    weights = mask.astype(sdt)[..., None]
    total = jnp.sum(squares * weights, axis=axes)
    count = jnp.sum(weights)
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  var = total / count

  t = step + 1
  tf = t.astype(sdt)
  inv_scale = jnp.where(t <= warmup, jax.lax.rsqrt(var + epsilon), jax.lax.rsqrt(psi + epsilon))
  inv_scale = jax.lax.stop_gradient(inv_scale)
  if custom_backward:
    z = _approx_normalize(xg, var, inv_scale, jnp.asarray(ema_gz, sdt), alpha_bkw, epsilon,
                          axis_name)
  else:
    z = xg * inv_scale
  y = scale * z + bias

  new_psi = jnp.where(t < warmup, psi * (tf - 1.0) / tf + var / tf, psi)
  new_psi = alpha_fwd * new_psi + (1.0 - alpha_fwd) * var
  return y.astype(dtype), new_psi, t


class PowerNorm(RunningAverageMode):
  """PowerNorm (arXiv:2003.07845) as an NNX layer, for (B, ..., C) inputs with a token mask.

  Parameters (`nnx.Param`, `param_dtype`): `scale` γ, `bias` β of shape (C,). Running statistics
  (`nnx.BatchStat`): `psi` ψ (float32, init 1) and `step` t (int32). Backward statistic
  (`jaxlearn.nn.BackwardStat`, float32, init 0): `ema_gz` Γ. The math and defaults are in the
  module docstring; a training step differentiates with respect to
  `jaxlearn.nn.PARAMS_AND_BACKWARD_STATS` and calls `jaxlearn.nn.apply_backward_stats`.

  The mode follows flax's `BatchNorm`: `use_running_average` at call time wins over the
  constructor's value; `model.train()` / `model.eval()` switch it.

  Args:
    num_features: number of channels C.
    num_groups: groups of the group-scaling pre-step (the number of attention heads in the
      official training code; default 1, the class default).
    use_running_average: evaluation mode.
    alpha_fwd: EMA rate α_f of ψ, in [0, 1].
    alpha_bkw: rate α_b of the backward correction, in [0, 1].
    warmup: training calls normalized with batch statistics (integer >= 0).
    epsilon: added to σ² and ψ (> 0).
    custom_backward: the official approximate backward (True) or plain autodiff with the
      statistics held constant (False).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of γ, β.
    axis_name: named axis over which σ² and the Γ increment are averaged.
    rngs: accepted for signature parity with flax layers; the initialization is deterministic.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.PowerNorm(4, num_groups=2, warmup=100, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 3, 4))
    >>> mask = jnp.array([[True, True, True], [True, False, False]])
    >>> def loss(model, x):
    ...   return jnp.sum(model(x, mask) ** 2)
    >>> grads = nnx.grad(loss, argnums=nnx.DiffState(0, jnn.PARAMS_AND_BACKWARD_STATS))(norm, x)
    >>> param_grads = jnn.apply_backward_stats(norm, grads)  # Γ += its increment
    >>> int(norm.step[...]), sorted(param_grads)
    (1, ['bias', 'scale'])
  """

  def __init__(
      self,
      num_features: int,
      *,
      num_groups: int = 1,
      use_running_average: bool | None = False,
      alpha_fwd: float = DEFAULT_ALPHA,
      alpha_bkw: float = DEFAULT_ALPHA,
      warmup: int = DEFAULT_WARMUP,
      epsilon: float = DEFAULT_EPSILON,
      custom_backward: bool = True,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs | None = None,
  ):
    del rngs  # ones/zeros initialization
    check_positive_int("num_features", num_features)
    _check_groups(num_features, num_groups)
    _check_hyperparameters(alpha_fwd, alpha_bkw, warmup, epsilon, custom_backward)
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.psi = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))
    self.ema_gz = BackwardStat(jnp.zeros((num_features,), jnp.float32))
    self.num_features = num_features
    self.num_groups = num_groups
    self.use_running_average = use_running_average
    self.alpha_fwd = alpha_fwd
    self.alpha_bkw = alpha_bkw
    self.warmup = warmup
    self.epsilon = epsilon
    self.custom_backward = custom_backward
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.axis_name = axis_name

  def __call__(
      self, x: jax.Array, mask: jax.Array | None = None, use_running_average: bool | None = None
  ) -> jax.Array:
    """Normalizes `x` (B, ..., C); `mask` (B, ...) is True on real tokens."""
    use_running_average = self.running_average_mode(use_running_average)
    _check_input(x, self.num_features)
    y, psi, step = power_normalize(
        x,
        scale=self.scale[...],
        bias=self.bias[...],
        psi=self.psi[...],
        step=self.step[...],
        ema_gz=self.ema_gz[...],
        mask=mask,
        use_running_average=use_running_average,
        num_groups=self.num_groups,
        alpha_fwd=self.alpha_fwd,
        alpha_bkw=self.alpha_bkw,
        warmup=self.warmup,
        epsilon=self.epsilon,
        custom_backward=self.custom_backward,
        axis_name=self.axis_name,
        dtype=self.dtype,
    )
    if not use_running_average:
      self.psi[...] = psi.astype(jnp.float32)
      self.step[...] = step.astype(jnp.int32)
    return y


class LinenPowerNorm(linen.Module):
  """PowerNorm as a Linen layer; exported as `jaxlearn.nn.linen.PowerNorm`.

  Same math and numbers as the NNX `PowerNorm`. Variables: `params` {scale, bias};
  `batch_stats` {psi (float32), step (int32)}; `backward_stats` {ema_gz} (float32), whose
  gradient is the Γ increment: differentiate with respect to {"params", "backward_stats"} and call
  `jaxlearn.nn.apply_backward_stats_to_variables`. The number of features is read from the
  input. As in flax's Linen `BatchNorm`, `use_running_average` is an attribute or a call argument
  (not both), and while `is_initializing()` nothing is updated and `axis_name` is not used.

  Attributes:
    num_groups: groups of the group-scaling pre-step.
    use_running_average: evaluation mode.
    alpha_fwd: EMA rate α_f of ψ, in [0, 1].
    alpha_bkw: rate α_b of the backward correction, in [0, 1].
    warmup: training calls normalized with batch statistics (integer >= 0).
    epsilon: added to σ² and ψ (> 0).
    custom_backward: the official approximate backward (True) or plain autodiff (False).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of γ, β.
    axis_name: named axis over which σ² and the Γ increment are averaged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import apply_backward_stats_to_variables
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.PowerNorm(num_groups=2, warmup=100)
    >>> x = jnp.ones((2, 3, 4))
    >>> variables = norm.init(jax.random.key(0), x, use_running_average=True)
    >>> def loss(diff, x):
    ...   y, updates = norm.apply({**variables, **diff}, x, use_running_average=False,
    ...                           mutable=["batch_stats"])
    ...   return jnp.sum(y ** 2), updates
    >>> diff = {k: variables[k] for k in ("params", "backward_stats")}
    >>> grads, updates = jax.grad(loss, has_aux=True)(diff, x)
    >>> variables, param_grads = apply_backward_stats_to_variables(
    ...     {**variables, **updates}, grads)
    >>> int(variables["batch_stats"]["step"]), list(param_grads)
    (1, ['params'])
  """

  num_groups: int = 1
  use_running_average: bool | None = None
  alpha_fwd: float = DEFAULT_ALPHA
  alpha_bkw: float = DEFAULT_ALPHA
  warmup: int = DEFAULT_WARMUP
  epsilon: float = DEFAULT_EPSILON
  custom_backward: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(
      self, x: jax.Array, mask: jax.Array | None = None, use_running_average: bool | None = None
  ) -> jax.Array:
    """Normalizes `x` (B, ..., C); in training mode also updates `batch_stats`."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average
    )
    _check_input(x)
    if self.has_variable("batch_stats", "psi"):
      _check_input(x, self.get_variable("batch_stats", "psi").shape[-1])
    features = x.shape[-1]
    _check_groups(features, self.num_groups)
    initializing = self.is_initializing()
    ones, zeros = linen.initializers.ones, linen.initializers.zeros
    scale = self.param("scale", ones, (features,), self.param_dtype)
    bias = self.param("bias", zeros, (features,), self.param_dtype)
    psi = self.variable("batch_stats", "psi", jnp.ones, (features,), jnp.float32)
    step = self.variable("batch_stats", "step", jnp.zeros, (), jnp.int32)
    ema_gz = self.variable(BACKWARD_STATS, "ema_gz", jnp.zeros, (features,), jnp.float32)
    y, new_psi, new_step = power_normalize(
        x,
        scale=scale,
        bias=bias,
        psi=psi.value,
        step=step.value,
        ema_gz=ema_gz.value,
        mask=mask,
        use_running_average=use_running_average,
        num_groups=self.num_groups,
        alpha_fwd=self.alpha_fwd,
        alpha_bkw=self.alpha_bkw,
        warmup=self.warmup,
        epsilon=self.epsilon,
        custom_backward=self.custom_backward,
        axis_name=None if initializing else self.axis_name,
        dtype=self.dtype,
    )
    if not use_running_average and not initializing:
      psi.value = new_psi.astype(jnp.float32)
      step.value = new_step.astype(jnp.int32)
    return y


RECORD = registry.record(
    slug="powernorm",
    kind="normalization",
    title="PowerNorm: Rethinking Batch Normalization in Transformers",
    reference="arXiv:2003.07845",
    experiment="transformer_batch_norms",
    extra_tests=("tests/nn/test_backward_stats.py",),
    notes=(
        "Follows the official MaskPowerNorm/PowerFunction (fairseq/modules/norms/"
        "mask_powernorm.py): GroupScaling1D pre-step (eps 1e-5), quadratic mean over the real "
        "tokens, warm-up with the batch statistic for t <= warmup and a cumulative mean of psi "
        "for t < warmup followed by the EMA step, approximate backward with the batch variance "
        "also after warm-up and the Gamma (ema_gz) increment averaged over all tokens, padding "
        "included. Channels last, (B, ..., C), with a boolean mask that is True on real tokens "
        "(the official pad_mask is True on padding). Gamma is a BackwardStat updated through "
        "jaxlearn.nn.apply_backward_stats (one increment per call; under axis_name the "
        "increment is averaged over devices, whereas the official code keeps per-process "
        "buffers). Defaults are the class defaults (warmup 10000, num_groups 1); the paper's "
        "training passes num_groups = attention heads and warmup = the lr warm-up."
    ),
)
