r"""The induced-metric optimiser: SGD with momentum in the metric the loss graph induces.

Harvey, "The Optimiser Hidden in Plain Sight: Training with the Loss Landscape's Induced Metric",
arXiv:2509.03594 (2025); official code: https://github.com/harveyThomas4692/Induced-Metric-Optimiser
(`optimisers/jax_imp.py`, with the equivalent `optimisers/torch_imp.py`).

Embedding the loss landscape as the graph `(θ, √ξ L(θ))` gives the parameters the pull-back metric
`G = I + ξ ∇L ∇Lᵀ`; by Sherman–Morrison `G⁻¹ ∇L = ∇L / (1 + ξ ‖∇L‖²)`, so the gradient step
shrinks where the loss is steep: a smoothed form of gradient clipping. The official code keeps an
exponential moving average of the trace term `ξ ‖g‖²` over steps and applies the resulting scalar
to bias-corrected momentum SGD. Three forms, chosen with `metric=`:

========== ================================= =============================================
``metric`` official function                 scale ``s_t`` and step direction
========== ================================= =============================================
``plain``  ``custom_sgd``                    :math:`1 / (1 + |\hat e_t|)`, :math:`\hat m_t`
``log``    ``custom_sgd_log`` (needs the     :math:`L_t / (L_t^2 + \hat e_t)` (the metric of
           loss: ``update(..., value=L)``)   the graph of :math:`\log L`), :math:`\hat m_t`
``rms``    ``custom_sgd_rms``                :math:`1 / (1 + |\hat e_t|)`, with the trace and
                                             the step RMSprop-preconditioned
========== ================================= =============================================
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import _checks, registry
from jaxlearn.optim import _common

__all__ = [
    "induced_metric",
    "scale_by_induced_metric",
    "ScaleByInducedMetricState",
]

METRICS = ("plain", "log", "rms")

_NEEDS_VALUE = (
    "scale_by_induced_metric(metric='log') needs the loss at params: call "
    "update(grads, state, params, value=loss)"
)


class ScaleByInducedMetricState(NamedTuple):
  """State of `scale_by_induced_metric`.

  Attributes:
    count: number of updates so far (int32), for the bias corrections.
    mu: momentum buffer `m_t` (float32 or wider).
    trace: moving average `e_t` of the trace term (a float32 or wider scalar).
    nu: moving average `r_t` of the squared gradients with `metric="rms"` (float32 or wider),
      else `optax.EmptyState()`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_induced_metric
    >>> state = scale_by_induced_metric(metric="rms").init({"w": jnp.ones(2, jnp.bfloat16)})
    >>> state.mu["w"].dtype, state.nu["w"].dtype, state.trace.shape
    (dtype('float32'), dtype('float32'), ())
  """

  count: jax.Array
  mu: optax.Updates
  trace: jax.Array
  nu: optax.Updates | optax.EmptyState


def _scalar_dtype(tree):
  """The dtype of a global scalar over `tree`: float32, or wider if a leaf is wider."""
  dtypes = [_common.wide_dtype(x.dtype) for x in jax.tree.leaves(tree)]
  return functools.reduce(jnp.promote_types, dtypes, jnp.float32)


def _safe_divide(numerator, denominator):
  """`numerator / denominator`, and 0 where the denominator is 0 (never 0/0 = NaN)."""
  nonzero = denominator != 0
  return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), 0)


def scale_by_induced_metric(
    momentum: float = 0.9,
    xi: float = 0.1,
    beta: float = 0.8,
    beta_rms: float = 0.99,
    eps: float = 1e-8,
    *,
    metric: str = "plain",
) -> optax.GradientTransformationExtraArgs:
  r"""Bias-corrected momentum scaled by the induced metric (the official code's update).

  With the gradient :math:`g_t`, step count t and the sums over every leaf of the tree:

  .. math::

    \tau_t &= \xi \sum g_t^2 \quad\text{(plain, log)}, \qquad
    \tau_t = \xi \sum \frac{g_t^2}{\sqrt{\hat r_t} + \varepsilon} \quad\text{(rms)} \\
    e_t &= \beta e_{t-1} + (1 - \beta) \tau_t, \qquad \hat e_t = e_t / (1 - \beta^t) \\
    s_t &= \frac{1}{1 + |\hat e_t|} \quad\text{(plain, rms)}, \qquad
    s_t = \frac{L_t}{L_t^2 + \hat e_t} \quad\text{(log)} \\
    m_t &= \mu m_{t-1} + (1 - \mu) g_t, \qquad \hat m_t = m_t / (1 - \mu^t) \\
    u_t &= s_t \hat m_t \quad\text{(plain, log)}, \qquad
    u_t = s_t \frac{\hat m_t}{\sqrt{\hat r_t} + \varepsilon} \quad\text{(rms)}

  where `rms` also keeps :math:`r_t = \beta_r r_{t-1} + (1 - \beta_r) g_t^2`,
  :math:`\hat r_t = r_t / (1 - \beta_r^t)` (the current step's estimate enters the trace, as in the
  official code). `induced_metric` multiplies `u_t` by `-learning_rate`.

  The log form divides by :math:`L_t^2 + \hat e_t`, which is 0 only when the loss is 0 and every
  gradient so far was 0 (a perfect fit from the start); the scale is then 0 instead of 0/0. The log
  form assumes a positive loss (it is the metric of the graph of log L): a negative loss gives a
  negative scale, an ascent step, as in the official code. `rms` with `eps = 0` treats `g / 0`
  and `m / 0` of a never-seen coordinate as 0.

  Args:
    momentum: μ, decay of the momentum buffer, in [0, 1) (official default 0.9).
    xi: ξ >= 0, weight of the loss direction in the metric (official default 0.1; 0 gives SGD
      with bias-corrected momentum for `plain`).
    beta: β, decay of the trace average, in [0, 1) (official default 0.8).
    beta_rms: β_r, decay of the squared-gradient average of `rms`, in [0, 1) (default 0.99).
    eps: ε >= 0, added to `sqrt(r_hat)` by `rms` (default 1e-8); unused otherwise.
    metric: "plain", "log" or "rms" (keyword-only: it fixes the state's structure).

  Returns:
    A `GradientTransformationExtraArgs`; `update` takes `value=` (the loss at params), which
    `metric="log"` requires and the other forms ignore.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_induced_metric
    >>> opt = scale_by_induced_metric(xi=1.0, beta=0.0)
    >>> g = jnp.array([3.0, 4.0])   # |g|^2 = 25: the step is scaled by 1 / (1 + 25)
    >>> updates, _ = opt.update(g, opt.init(g))
    >>> print((updates * 26).round(4))
    [3. 4.]

  References:
    Harvey, `The Optimiser Hidden in Plain Sight: Training with the Loss Landscape's Induced
    Metric <https://arxiv.org/abs/2509.03594>`_, 2025.
  """
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_non_negative("xi", xi)
  _checks.check_unit_interval("beta", beta)
  _checks.check_unit_interval("beta_rms", beta_rms)
  _checks.check_non_negative("eps", eps)
  _checks.check_choice("metric", metric, METRICS)

  def init_fn(params):
    return ScaleByInducedMetricState(
        count=jnp.zeros([], jnp.int32),
        mu=_common.state_zeros(params),
        trace=jnp.zeros([], _scalar_dtype(params)),
        nu=_common.state_zeros(params) if metric == "rms" else optax.EmptyState(),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "scale_by_induced_metric")
    if metric == "log" and value is None:
      raise ValueError(_NEEDS_VALUE)
    count = numerics.safe_increment(state.count)
    step = count.astype(state.trace.dtype)
    wide = jax.tree.map(lambda g, m: g.astype(m.dtype), updates, state.mu)
    nu = _common.update_moment(wide, state.nu, beta_rms, order=2) if metric == "rms" else state.nu
    total, denominators = squared_norm(wide, nu, step)
    trace = beta * state.trace + (1.0 - beta) * xi * total.astype(state.trace.dtype)
    scale = metric_scale(trace / _common.bias_correction(beta, step), value)
    scale = scale / _common.bias_correction(momentum, step)
    mu = _common.update_moment(wide, state.mu, momentum)

    def direction(g, m, d=None):
      step_ = scale.astype(m.dtype) * m
      return (step_ if d is None else _safe_divide(step_, d)).astype(g.dtype)

    extra = () if denominators is None else (denominators,)
    new_updates = jax.tree.map(direction, updates, mu, *extra)
    return new_updates, ScaleByInducedMetricState(count, mu, trace, nu)

  def squared_norm(wide, nu, step):
    """Σ g² (plain, log) or Σ g² / (sqrt(r_hat) + ε) (rms), and the rms denominators (else
    None)."""
    zero = jnp.zeros([], step.dtype)
    if metric != "rms":
      return sum((jnp.sum(g * g) for g in jax.tree.leaves(wide)), zero), None
    correction = _common.bias_correction(beta_rms, step)
    denominators = jax.tree.map(lambda r: jnp.sqrt(r / correction) + eps, nu)
    terms = jax.tree.map(lambda g, d: jnp.sum(_safe_divide(g * g, d)), wide, denominators)
    return sum(jax.tree.leaves(terms), zero), denominators

  def metric_scale(trace_hat, value):
    """s_t: L / (L² + ê) for `log` (0 at 0/0), 1 / (1 + |ê|) otherwise."""
    if metric != "log":
      return 1.0 / (1.0 + jnp.abs(trace_hat))
    loss = jnp.asarray(value).astype(trace_hat.dtype)
    return _safe_divide(loss, loss * loss + trace_hat)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def induced_metric(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    momentum: float = 0.9,
    xi: float = 0.1,
    beta: float = 0.8,
    beta_rms: float = 0.99,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    metric: str = "plain",
) -> optax.GradientTransformationExtraArgs:
  r"""The induced-metric optimiser (`custom_sgd`, `custom_sgd_log`, `custom_sgd_rms`).

  .. math::

    \theta_t = \theta_{t-1} - \eta \left(u_t + \lambda \theta_{t-1}\right)

  with `u_t` from `scale_by_induced_metric` and decoupled weight decay λ multiplied by the learning
  rate η, outside the metric scale, as in the official code. Defaults are the official ones
  (lr 0.1, μ 0.9, ξ 0.1, β 0.8, β_r 0.99, ε 1e-8, no weight decay).

  Args:
    learning_rate: η >= 0, a number or a schedule.
    momentum: μ in [0, 1).
    xi: ξ >= 0.
    beta: decay of the trace average, in [0, 1).
    beta_rms: decay of the squared-gradient average of `metric="rms"`, in [0, 1).
    eps: ε >= 0 of `metric="rms"`.
    weight_decay: decoupled weight decay λ >= 0, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    metric: "plain", "log" (pass the loss: `update(..., value=loss)`) or "rms".

  Returns:
    A `GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.optim import induced_metric
    >>> loss_fn = lambda p: 50.0 * jnp.sum(p["w"] ** 2)   # steep: SGD at lr 0.1 diverges
    >>> params = {"w": jnp.array([1.0, -0.5])}
    >>> opt = induced_metric(0.1, metric="log")
    >>> @jax.jit
    ... def step(params, state):
    ...   loss, grads = jax.value_and_grad(loss_fn)(params)
    ...   updates, state = opt.update(grads, state, params, value=loss)
    ...   return optax.apply_updates(params, updates), state
    >>> state = opt.init(params)
    >>> for _ in range(100):
    ...   params, state = step(params, state)
    >>> bool(loss_fn(params) < 1e-3)
    True
  """
  scale = scale_by_induced_metric(momentum, xi, beta, beta_rms, eps, metric=metric)
  return _common.alias(scale, learning_rate, weight_decay, weight_decay_mask)


RECORD = registry.record(
    slug="induced_metric_optimiser",
    kind="optimizer",
    title="The Optimiser Hidden in Plain Sight: Training with the Loss Landscape's Induced Metric",
    reference="arXiv:2509.03594",
    experiment="induced_metric_curvature",
    update_extras=("value",),
    notes=(
        "Follows the official optimisers/jax_imp.py: metric='plain' is custom_sgd, 'log' is "
        "custom_sgd_log, 'rms' is custom_sgd_rms; official defaults (lr 0.1, momentum 0.9, xi "
        "0.1, beta 0.8, beta_rms 0.99, eps 1e-8, wd 0; the README's beta=0.1 is a usage "
        "example). The official log form takes the loss as a third positional argument before "
        "params; here it is the optax keyword value= (as optax.scale_by_polyak), which fit "
        "passes. Guards not in the official code: the log scale L/(L^2 + e_hat) is 0 when L = 0 "
        "and e_hat = 0 (0/0 there), and rms with eps = 0 gives 0 for 0/0 coordinates. State, "
        "the trace and the norms are kept in float32 or wider; updates in the gradient's dtype."
    ),
)
