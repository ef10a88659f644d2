r"""Stable weight decay: decoupled weight decay divided by the root mean second moment.

Xie et al., "On the Overlooked Pitfalls of Weight Decay and How to Mitigate Them: A Gradient-Norm
Perspective" (first titled "Stable Weight Decay Regularization"), arXiv:2011.11152; official code
https://github.com/zeke-xie/stable-weight-decay-regularization (`swd_optim/adams.py`, AdamS).
Used by Ranger21 (Wright & Demeure, arXiv:2106.13731).

With an adaptive optimizer the effective step of a parameter is `lr / sqrt(v_hat)`, but AdamW's
decoupled decay `lr * wd * theta` ignores it. Stable weight decay rescales the decay by the root
mean of the bias-corrected second moment over ALL parameters (one scalar per step):

.. math::

  \bar v_t = \frac{1}{N} \sum_{\text{all leaves}} \sum_i \hat v_{t,i}, \qquad
  u_t \leftarrow u_t + \frac{\lambda}{\sqrt{\bar v_t} + \varepsilon}\, \theta_{t-1}
  \quad (\text{on the leaves selected by the mask}),

and the learning-rate step that follows multiplies the whole update by `-lr`, so the decay is
`lr * wd / sqrt(mean v_hat)`, as in AdamS and Ranger21. The mean runs over every parameter, decayed
or not, as in both official codes.

`with_stable_weight_decay(inner, ...)` wraps the adaptive transform `inner` because the decay needs
the gradient's second moment while it must be added to `inner`'s output. By default the wrapper
keeps its own EMA `v_t = b2 v_{t-1} + (1 - b2) g_t^2` of the gradients it receives (identical to
`inner`'s when `b2` matches); `inner_nu=fn` reads `inner`'s own EMA `v_t` from its updated state
instead and saves that copy (`inner_nu=lambda state: state.nu` for `optax.scale_by_adam` and
`jaxlearn.optim.scale_by_adapnm`).

Cost: the mean is one pass over `v_t` (its bias correction divides the mean, a scalar, so no
corrected copy of `v_t` is written), and the per-leaf sums are totalled in one reduction
(`_common.leaf_sums_total`), which keeps compile time linear in the number of leaves.

Deviations: the official codes divide by `sqrt(mean v_hat)` alone, which is infinite when every
gradient so far is zero (Ranger21's official code raises). Here `eps` is added, as in
pytorch-optimizer's `AdamS`, and while `mean v_hat` is exactly 0 no decay is applied at all (with
only `eps`, the factor `lr * wd / eps` would flip the weights' sign and blow them up; `AdamS` in
pytorch-optimizer does that). pytorch-optimizer's `Ranger21` instead starts the sum of `v_hat` at 1.0
(a defect for small models: see `tests/optim/test_ranger21.py`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "with_stable_weight_decay",
    "adam_second_moment",
    "adams",
    "StableWeightDecayState",
]

class StableWeightDecayState(NamedTuple):
  """State of `with_stable_weight_decay`.

  Attributes:
    count: number of updates so far (int32), for the bias correction of `nu`.
    nu: the wrapper's own EMA of squared gradients, or None when `inner_nu` is given.
    inner_state: the wrapped transform's state.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import with_stable_weight_decay
    >>> state = with_stable_weight_decay(optax.scale_by_adam()).init({"w": jnp.ones(2)})
    >>> state.count, state.nu["w"]
    (Array(0, dtype=int32), Array([0., 0.], dtype=float32))
  """

  count: jax.Array
  nu: optax.Updates | None
  inner_state: Any


def mean_second_moment(nu: optax.Updates) -> jax.Array:
  """The mean of every element of every leaf of `nu` (float32 at least), in one reduction."""
  leaves = jax.tree.leaves(nu)
  total = _common.leaf_sums_total(
      [jnp.sum(v.astype(_common.wide_dtype(v.dtype))) for v in leaves])
  return total / sum(v.size for v in leaves)


def adam_second_moment(state: optax.ScaleByAdamState, b2) -> optax.Updates:
  """The bias-corrected second moment `v_t / (1 - b2^t)` of an updated `optax.scale_by_adam` state.

  (`with_stable_weight_decay` reads the uncorrected `state.nu` itself: `inner_nu`.)

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import adam_second_moment
    >>> adam = optax.scale_by_adam(b2=0.999)
    >>> params = {"w": jnp.ones((3, 2))}
    >>> _, state = adam.update({"w": jnp.full((3, 2), 0.5)}, adam.init(params))
    >>> round(float(adam_second_moment(state, 0.999)["w"][0, 0]), 4)  # g^2 at the first step
    0.25
  """
  return _common.debias(state.nu, b2, state.count)


def with_stable_weight_decay(
    inner: optax.GradientTransformation,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    weight_decay_mask: _common.MaskOrFn | None = None,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    inner_nu: Callable[[Any], optax.Updates] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Adds stable weight decay to the output of the adaptive transform `inner`.

  Args:
    inner: the adaptive transform (e.g. `optax.scale_by_adam`, `scale_by_adapnm`).
    weight_decay: the decay coefficient λ, >= 0, or a schedule of the step count.
    weight_decay_mask: which leaves decay (pytree of bools, a prefix of it, or a callable of
      params). Every leaf counts in the mean second moment either way.
    b2: decay of the second-moment EMA, in [0, 1): the wrapper's own, or `inner`'s (with
      `inner_nu`), whose bias correction `1 - b2^t` the wrapper applies.
    eps: added to `sqrt(mean v_hat)`, > 0. While `mean v_hat` is exactly 0 the decay is skipped.
    inner_nu: optional `fn(inner_state_after_update) -> v_t` returning `inner`'s own uncorrected
      EMA `b2 v_{t-1} + (1 - b2) g_t^2` of the gradients it receives (e.g.
      `lambda state: state.nu`), read instead of keeping a copy.

  Returns:
    An `optax.GradientTransformationExtraArgs` (state `StableWeightDecayState`); the decay reads
    `params`, which `update` therefore requires.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import with_stable_weight_decay
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(with_stable_weight_decay(optax.scale_by_adam(), weight_decay=1e-4),
    ...                   optax.scale_by_learning_rate(1e-3))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)
  """
  _checks.check_non_negative("weight_decay", weight_decay)
  _checks.check_unit_interval("b2", b2)
  _checks.check_positive("eps", eps)
  _common.check_mask(weight_decay_mask)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    own_nu = None if inner_nu is not None else _common.state_zeros(params)
    return StableWeightDecayState(jnp.zeros([], jnp.int32), own_nu, inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    _common.require_params(params, "with_stable_weight_decay", updates=updates)
    count = numerics.safe_increment(state.count)
    inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    if inner_nu is None:
      nu = _common.update_moment(updates, state.nu, b2, order=2)
      mean = mean_second_moment(nu)
    else:
      nu, mean = None, mean_second_moment(inner_nu(inner_state))
    # Corrected as a scalar: a corrected copy of v_t would be one more pass over it.
    mean = mean / _common.bias_correction(b2, count)
    decay = weight_decay(state.count) if callable(weight_decay) else weight_decay
    # All-zero gradients so far: no curvature information, and the rule would divide by zero.
    scale = jnp.where(mean > 0, decay / (jnp.sqrt(mean) + eps), 0.0)
    flags = _common.decay_flags(weight_decay_mask, params)
    out = jax.tree.map(
        lambda u, p, flag: (u + scale * p).astype(u.dtype) if flag else u,
        inner_updates, params, flags,
    )
    return out, StableWeightDecayState(count, nu, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adams(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    weight_decay_mask: _common.MaskOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamS: Adam with stable weight decay (official `swd_optim/adams.py`, `amsgrad=False`).

  `theta <- theta - lr * (m_hat / (sqrt(v_hat) + eps) + wd / (sqrt(mean v_hat) + eps) * theta)`;
  the mean reads Adam's own `v_t`. Official defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
  weight decay 1e-4.

  Args:
    learning_rate: step size or schedule, >= 0.
    b1: first-moment decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    eps: added to Adam's denominator and to `sqrt(mean v_hat)`, > 0.
    weight_decay: the stable weight decay coefficient, >= 0.
    weight_decay_mask: which leaves decay.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import adams
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> opt = adams(1e-3, weight_decay=1e-4)
    >>> state = opt.init(params)
    >>> grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
    >>> updates, state = opt.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  _checks.check_unit_interval("b1", b1)
  # Moments in float32 even for float16 params: eps = 1e-8 underflows in float16 (0 / 0 = NaN).
  adam = _common.compute_in_float32(optax.scale_by_adam(b1, b2, eps))
  return optax.chain(
      with_stable_weight_decay(
          adam, weight_decay, weight_decay_mask, b2, eps, inner_nu=lambda state: state.nu
      ),
      _common.learning_rate_step(learning_rate),
  )
