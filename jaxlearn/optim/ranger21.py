r"""Ranger21: AdamW's core plus eight components, as an `optax.chain` of separately usable parts.

Wright & Demeure, "Ranger21: a synergistic deep learning optimizer", arXiv:2106.13731; official code
https://github.com/lessw2020/Ranger21 (`ranger21/ranger21.py`). The paper's body could not be
checked (only its abstract); every equation below follows the official code, each component's own
paper and official code, with the official code's evident bugs fixed (listed under Deviations).

Per step t (1-based), with g_t the gradient and θ the parameters before the step:

1. adaptive gradient clipping per output unit, λ = 1e-2, ε = 1e-3 (`jaxlearn.optim.agc`);
2. gradient centralization per output unit (`centralize_gradients`);
3. gradient normalization `g / (std(g) + 1e-8)` per leaf (`normalize_gradients`; official code,
   added after the paper);
4. AdaPNM with softplus denominator (`scale_by_adapnm(softplus_beta=50)`; Xie et al. 2021 and
   Tong et al. 2019):

   .. math::

     m_t &= \beta_1^2 m_{t-2} + (1 - \beta_1^2) g_t, \quad
     v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \quad
     v^{\max}_t = \max(v^{\max}_{t-1}, v_t) \\
     u_t &= \frac{(1 + \beta_0) m_t - \beta_0 m_{t-1}}
               {\sqrt{(1 + \beta_0)^2 + \beta_0^2}\,(1 - \beta_1^t)\,
                \operatorname{softplus}_{50}\bigl(\sqrt{v^{\max}_t / (1 - \beta_2^t)} + \varepsilon\bigr)};

5. stable weight decay `+ wd / (sqrt(mean_all v_t / (1 - b2^t)) + eps) * θ`
   (`with_stable_weight_decay`, reading AdaPNM's own `v_t`);
6. norm loss `+ 2 * 1e-4 * (1 - 1 / (||θ_u|| + eps)) * θ_u` per unit (`add_norm_loss`);
7. the learning-rate step `* -lr_t` with the warmup/warmdown schedule (`ranger21_schedule`);
8. Lookahead every 5 steps with α = 0.5 (`lookahead_sync`, last link).

So `θ_t = θ_{t-1} - lr_t * (u_t + decay terms)`, then Lookahead. Defaults (official): lr 1e-3,
b1 0.9, b2 0.999, b0 1.0 (`pnm_momentum_factor`), eps 1e-8, wd 1e-4, norm loss 1e-4, softplus 50,
AGC 1e-2 / 1e-3, Lookahead 5 / 0.5, warmdown from 72% of the run to 3e-5.

Schedule (`ranger21_schedule`, official `warmup_dampening` + `get_warm_down`), T = num_iterations:
warmup over W = ceil(2 / (1 - b2)) steps (Ma & Yarats' untuned rule, arXiv:1910.04209), or W = floor(0.22 T) when
that exceeds 45% of the run: `lr_t = lr * min(1, t / W)` for t <= W. Warmdown from
s = floor(0.72 T): for t >= s, `lr_t = max(lr - (lr - min_lr) * min((t + 1 - s) / (T - s + 1), 1),
min_lr)`, reaching `min_lr` at t = T.

Deviations from the official code (each a bug there; pytorch-optimizer 4.1.0 differs as noted):

- stable weight decay and norm loss: applied to every parameter. The official code applies them
  outside its parameter loop, so only to the last parameter of each group (pytorch-optimizer fixed).
- AMSGrad maximum: kept in `nu_max`. The official code writes `max(max_v, v)` back into `v`, so
  `max_v` stays 0 and the maximum is a no-op (pytorch-optimizer fixed). `amsgrad=False` gives the
  official code's effective behaviour.
- PNM combination: `(1 + b0) m_t - b0 m_{t-1}` normalised by `sqrt((1 + b0)^2 + b0^2)` with
  b0 = 1 (the PNM paper's rule). The official code weights the buffers with the boolean
  `momentum_type == "pnm"` (so b0 = 1 by accident, ignoring `pnm_momentum_factor`) and normalises
  with b2 in place of b0: `sqrt((1 + b2)^2 + b2^2)` (2.2347 vs 2.2361, -0.06%).
  pytorch-optimizer uses b0 correctly but defaults to b0 = 0.9.
- gradient centralization and normalization: applied once. Both reference codes preprocess the
  gradient in place for the second moment and then preprocess it again for the momentum;
  centralization is idempotent, but normalizing twice divides again by `std + 1e-8`
  (`tests/optim/test_ranger21.py` shows the difference for small gradients).
- stable weight decay's denominator is `sqrt(mean v_hat) + eps`, and no decay is applied while
  every gradient so far is exactly zero (the official code divides by zero there).
  pytorch-optimizer starts the sum of `v_hat` at 1.0, i.e. uses `sqrt((1 + sum v_hat) / N)`.
- pytorch-optimizer rejects b0 = 1 (it validates beta0 in [0, 1)), so it cannot run the PNM
  paper's default.
- all decay terms read θ_{t-1} (additive optax form); the reference codes apply them one after the
  other in place: θ ← (1 − a) θ with a = lr · wd / (σ + eps) the stable decay's factor per step
  (σ = sqrt(mean v_hat)), then the norm loss computed from that decayed θ. With f the norm-loss
  factor and n = ‖θ_u‖, the two orders differ per unit by exactly
  `2 lr f n |a − 1/(n + eps) + (1 − a)/(|1 − a| n + eps)|`, which is
  `2 lr f a n |1 − eps/((n + eps)((1 − a) n + eps))|` for a <= 1 and at most
  `2 lr f (a n + 2 min(a, 1))` for every a >= 0 (`tests/optim/test_ranger21.py` checks it). That is
  first order in a, and a is O(lr wd) only while σ >> lr wd: for small gradients the decay factor
  approaches (or passes) 1 and the gap is as large as the norm-loss step itself, O(lr f), not
  O(lr^2 wd f). (Without norm loss the two orders agree exactly.)

Layout: unit-wise parts assume Flax kernels (output units on the last axis).

Step cost (XLA:CPU, float32, params and state donated): `ranger21` is the chain above with the
same state, but AGC, centralization and normalization run as one function of each leaf: the
gradient is read by two reductions (unit sums, then unit spreads) and the weights by one (shared
with the norm loss), and no clipped or centralized gradient is written (141 -> 124 bytes per
parameter). Lookahead's update is a select that XLA fuses into the parameter update
(`lookahead_sync`'s module docstring; 124 -> 96; ideal 52). What remains: one kernel per output
(XLA:CPU has no multi-output fusion): the two momenta, v and max v (12 each) and the parameters
(20); stable weight decay's mean of v (4); the slow weights, read by the parameters' kernel (4)
and copied from the parameters after a synchronising step (8, which XLA counts although it runs
one step in k). The softplus denominator (`nonnegative_softplus_denominator`) makes the step
partly compute-bound.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common
from jaxlearn.optim import agc as agc_lib
from jaxlearn.optim import centralization
from jaxlearn.optim.agc import adaptive_grad_clip
from jaxlearn.optim.centralization import centralize_gradients, normalize_gradients
from jaxlearn.optim.lookahead import lookahead_sync
from jaxlearn.optim.norm_loss import add_norm_loss, unit_norms
from jaxlearn.optim.pnm import scale_by_adapnm
from jaxlearn.optim.stable_weight_decay import with_stable_weight_decay

__all__ = [
    "ranger21",
    "ranger21_schedule",
]

# The official code's fixed epsilon of gradient normalization (not the optimizer's eps).
GRADIENT_NORMALIZATION_EPS = 1e-8


def _check_iterations(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  number = _checks.concrete_float(value)
  if number is not None and (number < minimum or number != int(number)):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def default_warmup_iterations(
    num_iterations: int, b2: float = 0.999, warmup_pct_default: float = 0.22
) -> int:
  """The official warmup length: ceil(2 / (1 - b2)), or floor(0.22 T) if that exceeds 0.45 T."""
  beta_warmup = math.ceil(2.0 / (1.0 - b2))
  if beta_warmup / num_iterations > 0.45:
    return int(warmup_pct_default * num_iterations)
  return beta_warmup


def _boundaries(num_iterations, b2, num_warmup_iterations, warmdown_start_pct, warmup_pct_default):
  """(warmup length W, warmdown start s) as Python ints when every input is concrete.

  Python floats reproduce the official integer rounding exactly (for example
  ceil(2 / (1 - 0.999)) = 2000, which is 2001 in float32); traced inputs fall back to float32, where
  a boundary can be off by one step.
  """
  values = [num_iterations, b2, warmdown_start_pct, warmup_pct_default]
  if num_warmup_iterations is not None:
    values.append(num_warmup_iterations)
  concrete = [_checks.concrete_float(v) for v in values]
  if all(c is not None for c in concrete):
    total, beta2, start_pct, warm_pct = concrete[:4]
    if num_warmup_iterations is None:
      warmup = default_warmup_iterations(total, beta2, warm_pct)
    else:
      warmup = int(concrete[4])
    return warmup, int(start_pct * total)
  total = jnp.asarray(num_iterations, jnp.float32)
  if num_warmup_iterations is None:
    beta_warmup = jnp.ceil(2.0 / (1.0 - b2))
    warmup = jnp.where(beta_warmup / total > 0.45, jnp.floor(warmup_pct_default * total),
                       beta_warmup)
  else:
    warmup = jnp.asarray(num_warmup_iterations, jnp.float32)
  return warmup, jnp.floor(warmdown_start_pct * total)


def ranger21_schedule(
    learning_rate: float,
    num_iterations: int,
    b2: float = 0.999,
    num_warmup_iterations: int | None = None,
    warmdown_start_pct: float = 0.72,
    warmdown_min_lr: float = 3e-5,
    warmup_pct_default: float = 0.22,
) -> optax.Schedule:
  """Ranger21's linear warmup and linear warmdown (module docstring), as an optax schedule.

  Args:
    learning_rate: the peak learning rate, >= 0.
    num_iterations: T, the total number of optimizer steps, an integer >= 1.
    b2: the second-moment decay that sets the default warmup length ceil(2 / (1 - b2)).
    num_warmup_iterations: W, an integer >= 0, or None for the default rule.
    warmdown_start_pct: where the warmdown starts, as a fraction of T in [0, 1].
    warmdown_min_lr: the learning rate at step T, in [0, learning_rate].
    warmup_pct_default: W as a fraction of T when ceil(2 / (1 - b2)) > 0.45 T, in [0, 1].

  Returns:
    `schedule(count)`: the learning rate of step `count + 1` (optax passes the number of updates
    done so far, starting at 0).

  Example:
    >>> from jaxlearn.optim import ranger21_schedule
    >>> schedule = ranger21_schedule(1e-3, num_iterations=10_000)  # warmup: 2 / (1 - b2) steps
    >>> print(f"{schedule(0):.1e} {schedule(5_000):.1e} {schedule(9_999):.1e}")
    5.0e-07 1.0e-03 3.0e-05
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  if callable(learning_rate):
    raise ValueError("learning_rate must be a number when num_iterations is given, got a callable")
  _check_iterations("num_iterations", num_iterations, 1)
  if num_warmup_iterations is not None:
    _check_iterations("num_warmup_iterations", num_warmup_iterations, 0)
  _checks.check_unit_interval("b2", b2)
  _checks.check_range("warmdown_start_pct", warmdown_start_pct, 0.0, 1.0)
  _checks.check_range("warmup_pct_default", warmup_pct_default, 0.0, 1.0)
  peak = _checks.concrete_float(learning_rate)
  _checks.check_range("warmdown_min_lr", warmdown_min_lr, 0.0, peak)
  warmup, start = _boundaries(
      num_iterations, b2, num_warmup_iterations, warmdown_start_pct, warmup_pct_default
  )

  def schedule(count):
    t = jnp.asarray(count, jnp.float32) + 1.0
    warm = jnp.where(t > warmup, 1.0, jnp.minimum(1.0, t / jnp.maximum(warmup, 1)))
    warmdown_steps = num_iterations - start
    fraction = jnp.minimum(jnp.maximum(t + 1 - start, 1.0) / (warmdown_steps + 1), 1.0)
    down = jnp.maximum(learning_rate - (learning_rate - warmdown_min_lr) * fraction,
                       warmdown_min_lr)
    return jnp.where(t < start, learning_rate * warm, down)

  return schedule


def _axes_tuple(axes, ndim: int) -> tuple[int, ...]:
  """Reduction axes (None: all; an int; a tuple) as a sorted tuple of non-negative ints."""
  if axes is None:
    return tuple(range(ndim))
  return tuple(sorted(a % ndim for a in ((axes,) if isinstance(axes, int) else axes)))


def _preprocess_leaf(g, p, clipping, agc_eps, use_agc: bool, use_gc: bool, use_gn: bool):
  """AGC, then gradient centralization, then gradient normalization of one leaf, fused.

  Equal to the three parts applied in turn, to float32 rounding. Per unit (the axes AGC and
  centralization share), with m the unit's mean gradient and S = sum (g - m)² its spread:
  ‖g‖² = S + n m² (AGC's gradient norm), the clipping factor c scales the unit, so the
  centralized gradient is c (g - m) with leaf mean 0, and the normalization's sum of squares is
  sum c² S (plus the between-unit term when not centralized). So the gradient is read by two
  reductions (the unit sums of g, then S) and the weights by one (AGC's weight norm, the norm
  loss's expression, which XLA computes once for both), and each consumer (the momenta, the
  second moment) computes g k - m k itself: no clipped or centralized gradient is written
  (7 passes over g and 2 written gradients before).
  Gradients below float32 (the parts round them between each other) and units that AGC and
  centralization define differently (rank-3 kernels: axis 0 for AGC, every axis but the last for
  centralization) take the parts in turn.
  """
  gc_on = use_gc and g.ndim > 1
  gn_on = use_gn and g.size > 2
  gc_axes = _common.unit_axes(g.ndim, -1) if gc_on else None
  agc_axes = agc_lib.agc_unit_axes(p, None) if use_agc else None
  if (g.dtype != _common.wide_dtype(g.dtype)
      or (use_agc and gc_on and _axes_tuple(agc_axes, g.ndim) != _axes_tuple(gc_axes, g.ndim))):
    if use_agc:
      wide = lambda x: x.astype(_common.wide_dtype(x.dtype))
      g = agc_lib.clip_unitwise(wide(g), wide(p), clipping, agc_eps, agc_axes).astype(g.dtype)
    if gc_on:
      g = centralization.centralize_leaf(g)
    if gn_on:
      g = centralization.normalize_leaf(g, GRADIENT_NORMALIZATION_EPS)
    return g
  if not (use_agc or gc_on or gn_on):
    return g
  axes = _axes_tuple(gc_axes if gc_on else agc_axes, g.ndim)
  unit_size = math.prod(g.shape[a] for a in axes)
  # Per-unit statistics are vectors (no kept axes), expanded only where a full-size operand
  # meets them: behind a kept axis (a reshape), XLA's simplifier moved the reshape down their
  # chain of ops one per iteration over the whole program (7 iterations instead of 3). A leaf
  # that is one unit keeps its axes: as scalars, XLA compiled one more kernel for it.
  whole_leaf = len(axes) == g.ndim
  sum_units = lambda x: jnp.sum(x, axis=axes, keepdims=whole_leaf)
  full = lambda x: x if whole_leaf else jnp.expand_dims(x, axes)
  mean = sum_units(g) / unit_size
  spread = sum_units(jnp.square(g - full(mean)))
  if use_agc:
    if axes == _axes_tuple(None if g.ndim <= 1 else _common.unit_axes(g.ndim, -1), g.ndim):
      p_norm = unit_norms(p)  # the norm loss's own expression: XLA computes it once for both
    else:
      p_wide = p.astype(_common.wide_dtype(p.dtype))
      p_norm = jnp.sqrt(sum_units(jnp.square(p_wide)))
    max_norm = clipping * jnp.maximum(p_norm, agc_eps)
    g_norm = jnp.sqrt(spread + unit_size * jnp.square(mean))  # sum of g² (no cancellation)
    # 1e-6 only guards the division: optax's `div_eps`, as `adaptive_grad_clip`.
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(g_norm, 1e-6))
  else:
    scale = jnp.ones_like(mean)
  if gn_on:
    # The clipped (centralized) gradient's sum of squared deviations from its leaf mean:
    # within units plus between units, each a sum of non-negative terms.
    squares = jnp.square(scale) * spread
    if not gc_on:
      leaf_mean = jnp.sum(scale * mean) * unit_size / g.size
      squares = squares + unit_size * jnp.square(scale * mean - leaf_mean)
    variance = jnp.sum(squares) / (g.size - 1)
    scale = scale / (jnp.sqrt(variance) + GRADIENT_NORMALIZATION_EPS)
  # g * scale - offset rather than (g - mean) * scale: the consumers then share no full-size
  # subexpression (the broadcast mean) with the reduction above, which XLA would write out.
  offset = full(mean * scale) if gc_on else 0.0
  return (g * full(scale) - offset).astype(g.dtype)


def _with_fused_preprocessing(flags, clipping, agc_eps, parts, rest):
  """`optax.chain(*parts, *rest)` (same state), whose stateless preprocessing `parts` (AGC,
  centralization, normalization) run as one function of each leaf (`_preprocess_leaf`)."""
  chain = optax.chain(*parts, *rest)
  rest = [optax.with_extra_args_support(t) for t in rest]
  use_agc, use_gc, use_gn = flags

  def update_fn(updates, state, params=None, **extra_args):
    if use_agc:
      _common.require_params(params, "adaptive_grad_clip", updates=updates)
    else:
      _common.check_params(
          updates, params, "centralize_gradients" if use_gc else "normalize_gradients")
    leaf = lambda g, p: _preprocess_leaf(g, p, clipping, agc_eps, use_agc, use_gc, use_gn)
    updates = jax.tree.map(leaf, updates, updates if params is None else params)
    new_state = list(state[:len(parts)])
    for transform, inner_state in zip(rest, state[len(parts):]):
      updates, inner_state = transform.update(updates, inner_state, params, **extra_args)
      new_state.append(inner_state)
    return updates, tuple(new_state)

  return optax.GradientTransformationExtraArgs(chain.init, update_fn)


def ranger21(
    learning_rate: optax.ScalarOrSchedule,
    num_iterations: int | None,
    b1: float = 0.9,
    b2: float = 0.999,
    b0: float = 1.0,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    weight_decay_mask: _common.MaskOrFn | None = None,
    agc_clipping: float = 1e-2,
    agc_eps: float = 1e-3,
    norm_loss_factor: float = 1e-4,
    softplus_beta: float | None = 50.0,
    lookahead_sync_period: int = 5,
    lookahead_step_size: float = 0.5,
    num_warmup_iterations: int | None = None,
    warmdown_start_pct: float = 0.72,
    warmdown_min_lr: float = 3e-5,
    warmup_pct_default: float = 0.22,
    *,
    amsgrad: bool = True,
    use_agc: bool = True,
    use_gc: bool = True,
    use_gn: bool = True,
    use_lookahead: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Ranger21 (module docstring) as `optax.chain(agc, gc, gn, stable_wd(adapnm), norm_loss, lr, la)`.

  Every part can be switched off for ablations: `use_agc`, `use_gc`, `use_gn`, `use_lookahead`
  remove a link; `weight_decay=0`, `norm_loss_factor=0`, `softplus_beta=None`, `b0=0` (positive
  momentum only) and `num_iterations=None` (constant `learning_rate`, or your own schedule) turn
  off the others.

  Args:
    learning_rate: the peak learning rate (>= 0), or a schedule when `num_iterations` is None.
    num_iterations: total optimizer steps, for the built-in warmup/warmdown; None disables it.
    b1: momentum decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    b0: PNM's negative-momentum weight, >= 0.
    eps: denominator epsilon (AdaPNM, stable weight decay, norm loss), > 0.
    weight_decay: stable weight decay coefficient, >= 0.
    weight_decay_mask: which leaves decay (pytree of bools or callable of params).
    agc_clipping: AGC's λ, > 0.
    agc_eps: AGC's floor of the weight norm, >= 0.
    norm_loss_factor: norm-loss coefficient, >= 0.
    softplus_beta: softplus sharpness of the denominator (> 0), or None for `sqrt(v_hat) + eps`.
    lookahead_sync_period: Lookahead's k, an integer >= 1.
    lookahead_step_size: Lookahead's α, in [0, 1].
    num_warmup_iterations: warmup length, or None for the official rule.
    warmdown_start_pct: start of the warmdown as a fraction of `num_iterations`.
    warmdown_min_lr: learning rate at the last step.
    warmup_pct_default: warmup fraction used when the b2 rule is too long for the run.
    amsgrad: use the running maximum of the second moment (AdaPNM default).
    use_agc: clip gradients adaptively.
    use_gc: centralize gradients.
    use_gn: normalize gradients.
    use_lookahead: end with Lookahead.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update` requires `params`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.optim import ranger21
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> opt = ranger21(1e-3, num_iterations=1000)
    >>> state = opt.init(params)
    >>> grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
    >>> updates, state = jax.jit(opt.update)(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  _common.check_mask(weight_decay_mask)
  # Checked here too so that errors name this function's arguments, not the parts'.
  _checks.check_positive("agc_clipping", agc_clipping)
  _checks.check_non_negative("agc_eps", agc_eps)
  _checks.check_non_negative("norm_loss_factor", norm_loss_factor)
  _checks.check_positive("eps", eps)
  _check_iterations("lookahead_sync_period", lookahead_sync_period, 1)
  _checks.check_range("lookahead_step_size", lookahead_step_size, 0.0, 1.0)
  for flag, value in (("amsgrad", amsgrad), ("use_agc", use_agc), ("use_gc", use_gc),
                      ("use_gn", use_gn), ("use_lookahead", use_lookahead)):
    _checks.check_bool(flag, value)
  if num_iterations is None:
    rate = learning_rate
  else:
    rate = ranger21_schedule(
        learning_rate, num_iterations, b2, num_warmup_iterations, warmdown_start_pct,
        warmdown_min_lr, warmup_pct_default,
    )
  parts = []
  if use_agc:
    parts.append(adaptive_grad_clip(agc_clipping, agc_eps))
  if use_gc:
    parts.append(centralize_gradients())
  if use_gn:
    parts.append(normalize_gradients(GRADIENT_NORMALIZATION_EPS))
  core = scale_by_adapnm(b1, b2, b0, eps, softplus_beta, amsgrad=amsgrad)
  rest = [with_stable_weight_decay(
      core, weight_decay, weight_decay_mask, b2, eps,
      inner_nu=lambda state: state.nu,
  )]
  rest.append(add_norm_loss(norm_loss_factor, eps))
  rest.append(_common.learning_rate_step(rate))
  if use_lookahead:
    rest.append(lookahead_sync(lookahead_sync_period, lookahead_step_size))
  if not parts:
    return optax.chain(*rest)
  # The same chain and state, its preprocessing fused (`_preprocess_leaf`): 2 passes over g
  # instead of 7, and no clipped or centralized gradient written.
  return _with_fused_preprocessing(
      (use_agc, use_gc, use_gn), agc_clipping, agc_eps, parts, rest)


RECORD = registry.record(
    slug="ranger21",
    kind="optimizer",
    title="Ranger21: a synergistic deep learning optimizer",
    reference="arXiv:2106.13731",
    experiment="ranger21_deep_mlp",
    also=(
        "jaxlearn.optim.centralize_gradients",
        "jaxlearn.optim.normalize_gradients",
        "jaxlearn.optim.scale_by_pnm",
        "jaxlearn.optim.pnm",
        "jaxlearn.optim.scale_by_adapnm",
        "jaxlearn.optim.adapnm",
        "jaxlearn.optim.adapnm_second_moment",
        "jaxlearn.optim.with_stable_weight_decay",
        "jaxlearn.optim.adam_second_moment",
        "jaxlearn.optim.adams",
        "jaxlearn.optim.add_norm_loss",
        "jaxlearn.optim.unit_norm",
        "jaxlearn.optim.softplus_denominator",
        "jaxlearn.optim.scale_by_sadam",
        "jaxlearn.optim.lookahead_sync",
        "jaxlearn.optim.lookahead_slow_weights",
    ),
    pytorch_optimizer={"jaxlearn.optim.ranger21": "Ranger21", "jaxlearn.optim.adapnm": "AdaPNM", "jaxlearn.optim.pnm": "PNM", "jaxlearn.optim.adams": "AdamS"},
    notes=(
        "An optax.chain of parts, each usable alone: AGC (jaxlearn.optim.adaptive_grad_clip, "
        "slug nfnet_agc), gradient centralization (per output unit, Flax layout; "
        "optax.centralize averages over the PyTorch axes), gradient normalization, AdaPNM "
        "(PNM: arXiv:2103.17182) with a softplus denominator (Sadam: arXiv:1908.00700), stable "
        "weight decay (AdamS: arXiv:2011.11152), norm loss (arXiv:2103.06583), the "
        "warmup/warmdown schedule, and Lookahead (arXiv:1907.08610) kept in the optimizer "
        "state (optax.lookahead keeps it in the params). The paper body could not be checked: "
        "the rule follows the official code (lessw2020/Ranger21) with its bugs fixed: stable "
        "decay and norm loss on every parameter (official: last parameter only), a working "
        "AMSGrad maximum (official: no-op), PNM with b0=1 and sqrt((1+b0)^2+b0^2) (official: "
        "bool factor and b2 in the norm), one gradient normalization (both references "
        "normalize twice), eps in the stable-decay denominator and no decay while every "
        "gradient is zero. pytorch-optimizer 4.1.0 Ranger21 differs: sum of v_hat starts at "
        "1.0, double normalization, default beta0=0.9 and beta0=1.0 rejected. Decay terms are "
        "additive in theta_{t-1}; the references apply stable decay (factor a = lr wd / "
        "(sqrt(mean v_hat) + eps) per step) then the norm loss (factor f) in place, which "
        "differs per unit by at most 2 lr f (a ||theta_u|| + 2 min(a, 1)) (exact expression "
        "and test in the module docstring): first order in a, which nears 1 for small "
        "gradients, so the gap can reach the size of the norm-loss step. AdaPNM (pnm.py) "
        "follows the official code's eps placement, sqrt(v_max) / sqrt(1 - b2^t) + eps; "
        "pytorch-optimizer AdaPNM uses (sqrt(v_max + 1e-15) + eps) / sqrt(1 - b2^t), an eps "
        "larger by 1 / sqrt(1 - b2^t) (31.6x at the first step with b2 = 0.999; parity test "
        "with tiny gradients)."
    ),
)
