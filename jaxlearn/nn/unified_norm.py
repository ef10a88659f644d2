r"""Unified Normalization (UN): a batch normalization for transformers, foldable at inference.

Paper: "Unified Normalization for Accelerating and Stabilizing Transformers", arXiv:2208.01313
(references below). Official code: github.com/hikvision-research/Unified-Normalization
(`image_classification/models/unified_normalization/unified_normalization.py`: `UN1d`,
`UN2dFunction`).

Input x of shape (..., C), channels last, typically (B, T, C) tokens; every axis but the last holds
tokens. An optional boolean `mask` of shape x.shape[:-1] ((B, T) for (B, T, C)), True on real
tokens and False on padding (the convention of PowerNorm here and of flax's BatchNorm; the official
`UN1d`'s padding mask is its negation), excludes tokens from the forward statistic only: the backward
still averages :math:`g z` over all tokens and corrects every token (official). The official
fairseq transformer passes no mask (statistics over all tokens, consistent with the backward);
in the tiny-transformer experiment here the masked form collapsed in 2 of 3 seeds (held-out token
accuracy 0.27, 0.98, 0.27) and the unmasked form did not (0.995, 1.0, 0.991), so prefer no mask.
No mean is removed.
Training step t = 1, 2, ... (the official counter is incremented before the step), with windows of
sizes :math:`w_f` (forward) and :math:`w_b` (backward), momentum m:

Forward (fluctuation smoothing and adaptive outlier filtration):

* :math:`x^2_t` = per-channel mean of :math:`x^2` over the non-padded tokens;
* :math:`\rho` = the **one scalar** unbiased variance of :math:`\sqrt{\text{buffer}_{x^2}}` over
  all :math:`w_f \times C` entries, taken before the buffer entry :math:`t \bmod w_f` is set to
  :math:`x^2_t`;
* outlier (only with ``outlier_filtration`` and :math:`t \ge` warm-up): with AM and GM the
  arithmetic and geometric means over the window, the batch is an outlier if **any** channel has
  :math:`\mathrm{AM} - \mathrm{GM} > w_f \rho`; then the buffer entry is set to the running
  variance instead, and the batch is normalized with its **own** statistic :math:`x^2_t`.
  A window of size 1 always takes that path (official). The buffer starts at zeros, so with a
  warm-up shorter than the window the first batches are flagged as outliers (also official);
* :math:`\sigma^2 = x^2_t` if :math:`t \le w_f`, :math:`t <` warm-up, or outlier; else the
  geometric mean of the window;
* gradient compensation :math:`r = \sqrt{\sigma^2 + \epsilon} / \sqrt{\sigma^2_{run} + \epsilon}`
  clipped to [1/5, 5], and r = 1 for :math:`t \le \max(1000, \text{warm-up})` or on an outlier
  (the 1000 is hard-coded officially; here ``compensation_start=1000``);
* :math:`z = x / \sqrt{\sigma^2 + \epsilon}`, :math:`y = \gamma z + \beta`, and then
  :math:`\sigma^2_{run} \leftarrow m \sigma^2_{run} + (1 - m) \sigma^2`.

Backward (custom):

.. math::

   g = \frac{\partial L}{\partial y}\,\gamma\, r,\qquad
   g_z = \operatorname{mean}_{\text{all tokens}}(g\, z),\qquad
   \text{buffer}_{gz}[t \bmod w_b] \leftarrow g_z
   \ (\text{or } \text{ema}_{gz} \text{ on an outlier}),

   \bar g_z = g_z \text{ if } t \le w_b,\ t < \text{warm-up or outlier, else }
   \operatorname{mean}(\text{buffer}_{gz}),\qquad
   \text{ema}_{gz} \leftarrow m\, \text{ema}_{gz} + (1 - m)\, \bar g_z,

   \frac{\partial L}{\partial x} = \frac{g - c\, z}{\sqrt{\sigma^2 + \epsilon}},\quad
   c = \text{ema}_{gz} \text{ (updated) or } \bar g_z \text{ on an outlier},\qquad
   \frac{\partial L}{\partial \gamma} = \sum \frac{\partial L}{\partial y}\, r\, z,\qquad
   \frac{\partial L}{\partial \beta} = \sum \frac{\partial L}{\partial y}.

The weight gradient is scaled by r too (official). :math:`\text{ema}_{gz}` and
:math:`\text{buffer}_{gz}` are **backward statistics** (`jaxlearn.nn.BackwardStat`, Linen
collection ``"backward_stats"``): primal inputs of the `custom_vjp` whose cotangents are their
increments (new − old), added by `jaxlearn.nn.apply_backward_stats` (see
`jaxlearn.nn.backward_stats`). The forward state (`nnx.BatchStat` / ``"batch_stats"``) is the
running variance, the forward window and `counts` = (steps taken, outlier batches skipped), kept
as float32 (exact up to 2**24 steps) like every statistic.

`custom_backward=False` (ablation and reference) differentiates the same forward with JAX, with
σ² differentiable where it is the batch's own statistic :math:`x^2_t` (as BatchNorm without
centering) and constant where it comes from the window; no increments. With momentum 0, in the
first w steps or on an outlier, the official backward equals it (the layer battery checks this).

Evaluation: :math:`y = \gamma x / \sqrt{\sigma^2_{run} + \epsilon} + \beta`, a per-channel affine
map that `fold_unified_norm` folds into the adjacent Dense kernel (before or after it).

Defaults (official `UN1d`): window 4, warm-up 4000, outlier filtration off (the paper's NLP
setting; on for vision), ε = 1e-5, m = 0.9.

Data parallelism: with `axis_name`, :math:`x^2_t` is the mean over the non-padded tokens of all
devices (sums and counts are `psum`-ed) and :math:`g_z` is `pmean`-ed in the backward, so every
device holds the same statistics and increments (an extension: the official code is
single-device). Statistics in float32; output in `dtype` (default: the input's dtype).

Public API: `unified_normalize` (pure layer function), `fold_unified_norm`; the NNX layer
`UnifiedNorm`; the Linen layer `LinenUnifiedNorm`, exported as `jaxlearn.nn.linen.UnifiedNorm`.

References:
  Yang, Zhang, Lan, Yang, Li, Tan, Xiao and Pu, "Unified Normalization for Accelerating and
  Stabilizing Transformers", ACM Multimedia 2022, https://arxiv.org/abs/2208.01313 (official code:
  github.com/hikvision-research/Unified-Normalization).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_bool, check_non_negative, check_positive, check_positive_int
from jaxlearn._checks import check_range
from jaxlearn.nn.backward_stats import BACKWARD_STATS, BackwardStat
from jaxlearn.nn._modes import RunningAverageMode

__all__ = [
    "UnifiedNorm",
    "LinenUnifiedNorm",
    "unified_normalize",
    "fold_unified_norm",
]

DEFAULT_WINDOW = 4
DEFAULT_WARMUP = 4000
DEFAULT_COMPENSATION_START = 1000
DEFAULT_MOMENTUM = 0.9
DEFAULT_EPSILON = 1e-5
R_MIN, R_MAX = 1.0 / 5.0, 5.0


def _stats_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _check_input(x: jax.Array, num_features: int | None = None) -> None:
  if x.ndim < 2:
    raise ValueError(
        f"UnifiedNorm expects inputs of rank >= 2 (..., tokens, features), got shape {x.shape}"
    )
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(
        f"UnifiedNorm expects {num_features} features on the last axis, got shape {x.shape}"
    )


def _check_mask(x: jax.Array, mask: jax.Array | None) -> None:
  if mask is None:
    return
  if tuple(mask.shape) != tuple(x.shape[:-1]):
    raise ValueError(
        f"mask must have the shape of the input without its feature axis, "
        f"{tuple(x.shape[:-1])} (e.g. (B, T) for (B, T, C) tokens; True on real tokens), "
        f"got {tuple(mask.shape)}"
    )
  if mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be a boolean array (True on real tokens), got {mask.dtype}")


def _windows(window_size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(window_size, (tuple, list)):
    if len(window_size) != 2:
      raise ValueError(
          f"window_size must be an integer >= 1 or a pair (forward, backward), got {window_size!r}")
    check_positive_int("window_size[0]", window_size[0])
    check_positive_int("window_size[1]", window_size[1])
    return int(window_size[0]), int(window_size[1])
  check_positive_int("window_size", window_size)
  return int(window_size), int(window_size)


def _check_hyperparameters(momentum, epsilon, warmup_iters, compensation_start):
  check_range("momentum", momentum, 0.0, 1.0)
  check_positive("epsilon", epsilon)
  for name, value in (("warmup_iters", warmup_iters), ("compensation_start", compensation_start)):
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    check_non_negative(name, value)


def _geometric_mean(buffer):
  return jnp.exp(jnp.mean(jnp.log(buffer), axis=0))


def _forward_statistics(x, mask, running_var, buffer_x2, counts, *, momentum,
                        warmup_iters, compensation_start, outlier_filtration, axis_name, epsilon,
                        bp_window, differentiable):
  """The official forward bookkeeping: σ², r, the outlier flag and the new forward state.

  With `differentiable`, σ² is differentiable with respect to x where it is the current batch's
  own statistic x2 (BatchNorm-like autodiff); everything else is a constant.
  """
  w = buffer_x2.shape[0]
  if not differentiable:
    x = jax.lax.stop_gradient(x)
  token_axes = tuple(range(x.ndim - 1))
  if mask is None:
    valid = jnp.ones(x.shape[:-1], x.dtype)
  else:
    valid = mask.astype(x.dtype)
  sum_x2 = jnp.sum(jnp.square(x) * valid[..., None], axis=token_axes)
  count = jnp.sum(valid)
  if axis_name is not None:
    sum_x2, count = jax.lax.psum((sum_x2, count), axis_name)
  x2_own = sum_x2 / jnp.maximum(count, 1.0)
  x2 = jax.lax.stop_gradient(x2_own)

  t = counts[0] + 1.0
  t_int = t.astype(jnp.int32)
  recorded_var = jnp.var(jnp.sqrt(buffer_x2), ddof=1)
  index = t_int % w
  buffer = buffer_x2.at[index].set(x2)
  if outlier_filtration and w > 1:
    diff = jnp.mean(buffer, axis=0) - _geometric_mean(buffer)
    outlier = (t >= warmup_iters) & jnp.any(diff > recorded_var * w)
    buffer = jnp.where(outlier, buffer.at[index].set(running_var), buffer)
  else:
    outlier = jnp.array(False)
  skip = outlier | (w <= 1)
  own_statistic = (t <= w) | (t < warmup_iters) | skip
  var_own = jnp.where(own_statistic, x2_own, _geometric_mean(buffer))
  var = jax.lax.stop_gradient(var_own)
  r = jnp.sqrt(var + epsilon) / jnp.sqrt(running_var + epsilon)
  early = (t <= max(compensation_start, warmup_iters)) | skip
  r = jnp.where(early, 1.0, jnp.clip(r, R_MIN, R_MAX))
  new_running_var = momentum * running_var + (1.0 - momentum) * var
  new_counts = jnp.stack([t, counts[1] + outlier.astype(counts.dtype)])
  use_window_bwd = (t > bp_window) & (t >= warmup_iters) & jnp.logical_not(skip)
  return var_own, r, skip, use_window_bwd, t_int, (new_running_var, buffer, new_counts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _un_affine(axis_name, x, scale, bias, ema_gz, buffer_gz, inv_std, r, skip, use_window, t,
               momentum):
  del axis_name, ema_gz, buffer_gz, r, skip, use_window, t, momentum
  return scale * (x * inv_std) + bias


def _un_affine_fwd(axis_name, x, scale, bias, ema_gz, buffer_gz, inv_std, r, skip, use_window, t,
                   momentum):
  del axis_name
  z = x * inv_std
  residuals = (z, scale, ema_gz, buffer_gz, inv_std, r, skip, use_window, t, momentum)
  return scale * z + bias, residuals


def _un_affine_bwd(axis_name, residuals, dy):
  z, scale, ema_gz, buffer_gz, inv_std, r, skip, use_window, t, momentum = residuals
  token_axes = tuple(range(dy.ndim - 1))
  g = dy * scale * r
  gz = jnp.mean(g * z, axis=token_axes)
  if axis_name is not None:
    gz = jax.lax.pmean(gz, axis_name)
  index = t % buffer_gz.shape[0]
  new_buffer = buffer_gz.at[index].set(jnp.where(skip, ema_gz, gz))
  mean_gz = jnp.where(use_window, jnp.mean(new_buffer, axis=0), gz)
  new_ema = momentum * ema_gz + (1.0 - momentum) * mean_gz
  centered = g - jnp.where(skip, mean_gz, new_ema) * z
  dx = centered * inv_std
  d_scale = jnp.sum(dy * r * z, axis=token_axes)
  d_bias = jnp.sum(dy, axis=token_axes)
  return (dx, d_scale, d_bias, new_ema - ema_gz, new_buffer - buffer_gz,
          None, None, None, None, None, None)


_un_affine.defvjp(_un_affine_fwd, _un_affine_bwd)


def unified_normalize(
    x: jax.Array,
    *,
    scale: jax.Array,
    bias: jax.Array,
    running_var: jax.Array,
    buffer_x2: jax.Array,
    counts: jax.Array,
    ema_gz: jax.Array,
    buffer_gz: jax.Array,
    mask: jax.Array | None = None,
    use_running_average: bool = False,
    momentum: float = DEFAULT_MOMENTUM,
    epsilon: float = DEFAULT_EPSILON,
    warmup_iters: int = DEFAULT_WARMUP,
    compensation_start: int = DEFAULT_COMPENSATION_START,
    outlier_filtration: bool = False,
    custom_backward: bool = True,
    axis_name: str | None = None,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  r"""Unified Normalization as a pure function (module docstring for the math).

  The window sizes are the leading sizes of `buffer_x2` (forward) and `buffer_gz` (backward).
  Differentiating the output with respect to `ema_gz` and `buffer_gz` gives their increments.

  Args:
    x: input (..., C), channels last; every other axis holds tokens.
    scale: γ, shape (C,).
    bias: β, shape (C,).
    running_var: the running variance, shape (C,).
    buffer_x2: the forward window of :math:`x^2` statistics, shape (w_f, C).
    counts: (steps taken, outlier batches skipped), shape (2,), float32.
    ema_gz: backward statistic, shape (C,).
    buffer_gz: backward window, shape (w_b, C).
    mask: boolean of shape x.shape[:-1], True on real tokens and False on padding (excluded from
      the forward statistic; as PowerNorm's and flax BatchNorm's `mask`), or None.
    use_running_average: evaluation: :math:`\gamma x / \sqrt{\sigma^2_{run} + \epsilon} + \beta`.
    momentum: m in [0, 1].
    epsilon: ε > 0.
    warmup_iters: steps before the window statistics and outlier filtration are used.
    compensation_start: r = 1 up to max(compensation_start, warmup_iters) (official 1000).
    outlier_filtration: adaptive outlier filtration.
    custom_backward: the official backward (True), or autodiff of the same forward (no
      increments, dγ without r) in which σ² is differentiable where it is the batch's own
      statistic :math:`x^2_t` (as in BatchNorm) and constant where it comes from the window.
      With momentum 0, in the first w steps (or on outliers), the official backward equals it.
    axis_name: named axis over which the statistics are synchronised.
    dtype: the output dtype (default: the dtype of `x`).

  Returns:
    `(y, new_running_var, new_buffer_x2, new_counts)` (unchanged in evaluation mode).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import unified_normalize
    >>> C = 2
    >>> x = jnp.array([[[1.0, 2.0], [7.0, 2.0]]])  # (B, T, C)
    >>> y, running_var, buffer_x2, counts = unified_normalize(
    ...     x, scale=jnp.ones(C), bias=jnp.zeros(C), running_var=jnp.ones(C),
    ...     buffer_x2=jnp.zeros((4, C)), counts=jnp.zeros(2), ema_gz=jnp.zeros(C),
    ...     buffer_gz=jnp.zeros((4, C)))
    >>> # x / sqrt(mean(x^2) + eps), with mean squares (25, 4) over the two tokens
    >>> bool(jnp.allclose(y, x / jnp.array([5.0, 2.0])))
    True
    >>> counts
    Array([1., 0.], dtype=float32)
  """
  num_features = running_var.shape[-1]
  _check_input(x, num_features)
  _check_mask(x, mask)
  _check_hyperparameters(momentum, epsilon, warmup_iters, compensation_start)
  check_bool("outlier_filtration", outlier_filtration)
  return _unified_normalize(
      x, scale, bias, running_var, buffer_x2, counts, ema_gz, buffer_gz, mask, momentum,
      epsilon, use_running_average=bool(use_running_average), warmup_iters=int(warmup_iters),
      compensation_start=int(compensation_start), outlier_filtration=bool(outlier_filtration),
      custom_backward=bool(custom_backward), axis_name=axis_name,
      dtype=x.dtype if dtype is None else jnp.dtype(dtype),
  )


# Jitted so that eager NNX calls compile one program instead of one per primitive.
@functools.partial(jax.jit, static_argnames=(
    "use_running_average", "warmup_iters", "compensation_start", "outlier_filtration",
    "custom_backward", "axis_name", "dtype"))
def _unified_normalize(x, scale, bias, running_var, buffer_x2, counts, ema_gz, buffer_gz,
                       mask, momentum, epsilon, *, use_running_average, warmup_iters,
                       compensation_start, outlier_filtration, custom_backward, axis_name, dtype):
  compute_dtype = _stats_dtype(x.dtype)
  x32 = x.astype(compute_dtype)
  scale, bias = scale.astype(compute_dtype), bias.astype(compute_dtype)
  running_var = jnp.asarray(running_var, compute_dtype)
  if use_running_average:
    y = scale * x32 * jax.lax.rsqrt(running_var + epsilon) + bias
    return y.astype(dtype), running_var, buffer_x2, counts
  var, r, skip, use_window, t, new_state = _forward_statistics(
      x32, mask, running_var, jnp.asarray(buffer_x2, compute_dtype),
      jnp.asarray(counts, compute_dtype), momentum=momentum, warmup_iters=warmup_iters,
      compensation_start=compensation_start, outlier_filtration=outlier_filtration,
      axis_name=axis_name, epsilon=epsilon, bp_window=buffer_gz.shape[0],
      differentiable=not custom_backward)
  inv_std = jax.lax.rsqrt(var + epsilon)
  if custom_backward:
    y = _un_affine(axis_name, x32, scale, bias, jnp.asarray(ema_gz, compute_dtype),
                   jnp.asarray(buffer_gz, compute_dtype), inv_std, r, skip, use_window, t,
                   jnp.asarray(momentum, compute_dtype))
  else:
    y = scale * (x32 * inv_std) + bias
  return (y.astype(dtype), *jax.lax.stop_gradient(new_state))


def fold_unified_norm(
    kernel: jax.Array,
    dense_bias: jax.Array | None,
    *,
    scale: jax.Array,
    bias: jax.Array,
    running_var: jax.Array,
    epsilon: float = DEFAULT_EPSILON,
    norm_first: bool,
) -> tuple[jax.Array, jax.Array]:
  r"""Folds an evaluation-mode UN into the adjacent Dense layer (x @ kernel + dense_bias).

  Evaluation UN is the per-channel affine map :math:`a \odot x + \beta` with
  :math:`a = \gamma / \sqrt{\sigma^2_{run} + \epsilon}`. Norm then Dense (`norm_first=True`):
  kernel' = diag(a) kernel, bias' = β kernel + dense_bias. Dense then norm: kernel' = kernel
  diag(a), bias' = a ⊙ dense_bias + β.

  Args:
    kernel: the Dense kernel, shape (in, out).
    dense_bias: the Dense bias, shape (out,), or None.
    scale: UN's γ (C = in if `norm_first`, else out).
    bias: UN's β.
    running_var: UN's running variance.
    epsilon: UN's ε.
    norm_first: whether UN precedes the Dense (True) or follows it (False).

  Returns:
    `(kernel, bias)` of the single fused Dense, in float32 or wider.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import fold_unified_norm
    >>> k, b = fold_unified_norm(jnp.eye(2), None, scale=jnp.array([2.0, 1.0]),
    ...                          bias=jnp.array([0.0, 1.0]), running_var=jnp.array([4.0, 1.0]),
    ...                          epsilon=0.0, norm_first=True)
    >>> k, b
    (Array([[1., 0.],
           [0., 1.]], dtype=float32), Array([0., 1.], dtype=float32))
  """
  check_bool("norm_first", norm_first)
  check_range("epsilon", epsilon, 0.0, None)
  dtype = _stats_dtype(kernel.dtype)
  kernel = kernel.astype(dtype)
  a = scale.astype(dtype) * jax.lax.rsqrt(running_var.astype(dtype) + epsilon)
  channels = kernel.shape[0] if norm_first else kernel.shape[-1]
  if kernel.ndim != 2 or a.shape != (channels,):
    raise ValueError(
        f"fold_unified_norm expects a (in, out) kernel whose {'in' if norm_first else 'out'}"
        f" size equals UN's {a.shape[-1]} channels, got kernel shape {kernel.shape}")
  dense_bias = jnp.zeros(kernel.shape[-1], dtype) if dense_bias is None else dense_bias.astype(
      dtype)
  if norm_first:
    return a[:, None] * kernel, bias.astype(dtype) @ kernel + dense_bias
  return kernel * a[None, :], a * dense_bias + bias.astype(dtype)


class UnifiedNorm(RunningAverageMode):
  r"""Unified Normalization (arXiv:2208.01313) as an NNX layer.

  Parameters (`nnx.Param`, `param_dtype`): `scale` γ and `bias` β, shape (C,). Forward state
  (`nnx.BatchStat`, float32): `var` (running variance, init 1), `buffer_x2` (w_f, C) and `counts`
  (steps, skipped outliers). Backward statistics (`jaxlearn.nn.BackwardStat`, float32): `ema_gz`
  (C,) and `buffer_gz` (w_b, C); differentiate with `nnx.DiffState(0,
  jnn.PARAMS_AND_BACKWARD_STATS)` and call `jnn.apply_backward_stats(model, grads)` after every
  step. The mode follows flax's `BatchNorm` (`model.train()` / `model.eval()`).

  Args:
    num_features: channels C (the last axis).
    window_size: w (both windows) or (w_f, w_b); official 4.
    warmup_iters: official 4000 (scale it to the run length).
    compensation_start: r = 1 up to max(this, warmup_iters) steps (official 1000).
    outlier_filtration: adaptive outlier filtration (official: False for NLP, True for vision).
    momentum: m in [0, 1] (official 0.9).
    epsilon: ε > 0 (official 1e-5).
    use_running_average: evaluation mode.
    custom_backward: the official backward (True) or plain autodiff (see `unified_normalize`).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of γ and β.
    axis_name: named axis over which statistics and backward statistics are synchronised.
    rngs: accepted for signature parity; the initialization is deterministic.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.UnifiedNorm(4, warmup_iters=10, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 3, 4))
    >>> mask = jnp.array([[True, True, False], [True, False, False]])  # False: padding
    >>> y = norm(x, mask)
    >>> loss = lambda m, x: jnp.sum(m(x) ** 2)
    >>> grads = nnx.grad(loss, argnums=nnx.DiffState(0, jnn.PARAMS_AND_BACKWARD_STATS))(norm, x)
    >>> param_grads = jnn.apply_backward_stats(norm, grads)  # ema_gz, buffer_gz updated
    >>> norm.counts[...]
    Array([2., 0.], dtype=float32)
  """

  def __init__(
      self,
      num_features: int,
      *,
      window_size: int | Sequence[int] = DEFAULT_WINDOW,
      warmup_iters: int = DEFAULT_WARMUP,
      compensation_start: int = DEFAULT_COMPENSATION_START,
      outlier_filtration: bool = False,
      momentum: float = DEFAULT_MOMENTUM,
      epsilon: float = DEFAULT_EPSILON,
      use_running_average: bool | None = False,
      custom_backward: bool = True,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive_int("num_features", num_features)
    fp_window, bp_window = _windows(window_size)
    _check_hyperparameters(momentum, epsilon, warmup_iters, compensation_start)
    check_bool("outlier_filtration", outlier_filtration)
    check_bool("custom_backward", custom_backward)
    c = num_features
    self.var = nnx.BatchStat(jnp.ones((c,), jnp.float32))
    self.buffer_x2 = nnx.BatchStat(jnp.zeros((fp_window, c), jnp.float32))
    self.counts = nnx.BatchStat(jnp.zeros((2,), jnp.float32))
    self.ema_gz = BackwardStat(jnp.zeros((c,), jnp.float32))
    self.buffer_gz = BackwardStat(jnp.zeros((bp_window, c), jnp.float32))
    self.scale = nnx.Param(jnp.ones((c,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((c,), param_dtype))
    self.num_features = num_features
    self.warmup_iters = warmup_iters
    self.compensation_start = compensation_start
    self.outlier_filtration = outlier_filtration
    self.momentum = momentum
    self.epsilon = epsilon
    self.use_running_average = use_running_average
    self.custom_backward = custom_backward
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.axis_name = axis_name

  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               use_running_average: bool | None = None) -> jax.Array:
    """Normalizes `x` (..., C); in training also updates the forward state.

    Args:
      x: input (..., C).
      mask: True on real tokens, False on padding, shape x.shape[:-1] (or None).
      use_running_average: overrides the mode.
    """
    use_running_average = self.running_average_mode(use_running_average)
    y, var, buffer_x2, counts = unified_normalize(
        x, scale=self.scale[...], bias=self.bias[...], running_var=self.var[...],
        buffer_x2=self.buffer_x2[...], counts=self.counts[...], ema_gz=self.ema_gz[...],
        buffer_gz=self.buffer_gz[...], mask=mask,
        use_running_average=use_running_average, momentum=self.momentum, epsilon=self.epsilon,
        warmup_iters=self.warmup_iters, compensation_start=self.compensation_start,
        outlier_filtration=self.outlier_filtration, custom_backward=self.custom_backward,
        axis_name=self.axis_name, dtype=self.dtype,
    )
    if not use_running_average:
      self.var[...] = var.astype(jnp.float32)
      self.buffer_x2[...] = buffer_x2.astype(jnp.float32)
      self.counts[...] = counts.astype(jnp.float32)
    return y


class LinenUnifiedNorm(linen.Module):
  r"""Unified Normalization as a Linen layer; exported as `jaxlearn.nn.linen.UnifiedNorm`.

  Same math and numbers as the NNX `UnifiedNorm`. Variables: `params` {scale, bias};
  `batch_stats` {var, buffer_x2, counts}; `backward_stats` {ema_gz, buffer_gz} (float32).
  Differentiate with respect to ``{"params": ..., "backward_stats": ...}`` and add the increments
  with `jaxlearn.nn.apply_backward_stats_to_variables`. `use_running_average` is an attribute or
  a call argument (not both); while `is_initializing()` nothing is updated and `axis_name` is not
  used.

  Attributes:
    window_size: w or (w_f, w_b).
    warmup_iters: steps before the window statistics are used.
    compensation_start: r = 1 up to max(this, warmup_iters) steps.
    outlier_filtration: adaptive outlier filtration.
    momentum: m in [0, 1].
    epsilon: ε > 0.
    use_running_average: evaluation mode.
    custom_backward: the official backward (True) or plain autodiff (see `unified_normalize`).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of γ and β.
    axis_name: named axis over which statistics are synchronised.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.UnifiedNorm(warmup_iters=10)
    >>> x = jnp.ones((2, 3, 4))
    >>> variables = norm.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = norm.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> updates["batch_stats"]["counts"]
    Array([1., 0.], dtype=float32)
  """

  window_size: int | Sequence[int] = DEFAULT_WINDOW
  warmup_iters: int = DEFAULT_WARMUP
  compensation_start: int = DEFAULT_COMPENSATION_START
  outlier_filtration: bool = False
  momentum: float = DEFAULT_MOMENTUM
  epsilon: float = DEFAULT_EPSILON
  use_running_average: bool | None = None
  custom_backward: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               use_running_average: bool | None = None) -> jax.Array:
    """Normalizes `x` (..., C), `mask` True on real tokens; in training also updates
    `batch_stats`."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average
    )
    _check_input(x)
    if self.has_variable("batch_stats", "var"):
      _check_input(x, self.get_variable("batch_stats", "var").shape[-1])
    fp_window, bp_window = _windows(self.window_size)
    c = x.shape[-1]
    initializing = self.is_initializing()
    var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    buffer_x2 = self.variable("batch_stats", "buffer_x2", jnp.zeros, (fp_window, c), jnp.float32)
    counts = self.variable("batch_stats", "counts", jnp.zeros, (2,), jnp.float32)
    ema_gz = self.variable(BACKWARD_STATS, "ema_gz", jnp.zeros, (c,), jnp.float32)
    buffer_gz = self.variable(BACKWARD_STATS, "buffer_gz", jnp.zeros, (bp_window, c),
                              jnp.float32)
    y, new_var, new_buffer, new_counts = unified_normalize(
        x, scale=self.param("scale", linen.initializers.ones, (c,), self.param_dtype),
        bias=self.param("bias", linen.initializers.zeros, (c,), self.param_dtype),
        running_var=var.value, buffer_x2=buffer_x2.value, counts=counts.value,
        ema_gz=ema_gz.value, buffer_gz=buffer_gz.value, mask=mask,
        use_running_average=use_running_average, momentum=self.momentum, epsilon=self.epsilon,
        warmup_iters=self.warmup_iters, compensation_start=self.compensation_start,
        outlier_filtration=self.outlier_filtration, custom_backward=self.custom_backward,
        axis_name=None if initializing else self.axis_name, dtype=self.dtype,
    )
    if not use_running_average and not initializing:
      var.value = new_var.astype(jnp.float32)
      buffer_x2.value = new_buffer.astype(jnp.float32)
      counts.value = new_counts.astype(jnp.float32)
    return y


RECORD = registry.record(
    slug="unified_normalization",
    kind="normalization",
    title="Unified Normalization for Accelerating and Stabilizing Transformers",
    reference="arXiv:2208.01313",
    experiment="transformer_batch_norms",
    notes=(
        "Follows the official UN1d / UN2dFunction step by step: geometric-mean fluctuation "
        "smoothing over the window, adaptive outlier filtration (an outlier batch is normalized "
        "with its OWN statistic and its buffer entry replaced by the running variance, not with "
        "the running statistics), the gradient compensation r (also scaling the weight "
        "gradient), and the ema_gz / buffer_gz backward statistics as jaxlearn.nn.BackwardStat "
        "(their gradients are their increments). Deviations: the hard-coded 1000 steps before r "
        "is used are the argument compensation_start (default 1000); the step and outlier "
        "counters are float32 batch statistics `counts`; with axis_name the forward statistic "
        "and g_z are synchronised across devices (the official code is single-device); a fully "
        "padded batch gives x2 = 0 instead of NaN. The mask is True on real tokens (as "
        "PowerNorm's and flax's; the official padding mask is its negation); it restricts only the forward statistic, g_z averages over all tokens "
        "(padding included), as officially; this inconsistency collapsed 2 of 3 seeds in the "
        "tiny transformer (the official fairseq code passes no mask, which trained fine). Verified "
        "against a NumPy transcription of the official step over a sequence reaching the "
        "warm-up, window, clipped-r and outlier branches; fold_unified_norm (eval UN folded "
        "into the adjacent Dense) is tested fused == unfused. The experiment is UN's row in the "
        "shared tiny-transformer comparison (warm-up and compensation start scaled to the lr "
        "warm-up, 100 steps; official NLP setting without outlier filtration); the GPU "
        "inference speed-up is not measured."
    ),
)
