r"""Positive-negative momentum (PNM) and its adaptive form AdaPNM, Ranger21's core.

Xie et al., "Positive-Negative Momentum: Manipulating Stochastic Gradient Noise to Improve
Generalization", ICML 2021, arXiv:2103.17182; official code
https://github.com/zeke-xie/Positive-Negative-Momentum (`pnm_optim/pnm.py`, `pnm_optim/adapnm.py`).

PNM keeps two momentum buffers. Odd steps update one, even steps the other, each an EMA with decay
`b1**2` of the gradients it sees; the step combines the buffer just updated (positive weight) with
the other one (negative weight), normalised so that the noise amplitude does not change the scale:

.. math::

  m_t &= \beta_1^2 m_{t-2} + (1 - \beta_1^2) g_t
        \quad (\text{the buffer of } t\text{'s parity}) \\
  d_t &= \frac{(1 + \beta_0) m_t - \beta_0 m_{t-1}}{\sqrt{(1 + \beta_0)^2 + \beta_0^2}} .

`scale_by_pnm` returns `d_t` (PNM, the SGD form: `theta <- theta - lr * d_t`). `scale_by_adapnm`
adds Adam's second moment, with the AMSGrad maximum by default (official default `amsgrad=True`):

.. math::

  v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
  v^{\max}_t = \max(v^{\max}_{t-1}, v_t) \\
  u_t &= \frac{d_t}{(1 - \beta_1^t)\,\bigl(\sqrt{v^{\max}_t / (1 - \beta_2^t)} + \varepsilon\bigr)} .

With `softplus_beta` the denominator becomes `softplus_beta(sqrt(v_max / (1 - b2^t)) + eps)`, as in
Ranger21's official code (see `jaxlearn.optim.softplus`; computed as
`nonnegative_softplus_denominator`: its softplus is within one float32 ulp of `jax.nn.softplus`,
and about twice as fast on XLA:CPU). The first bias correction is
`1 - b1**t` (not `b1**2`), as in the official code. Defaults follow the official code:
b1 = 0.9, b2 = 0.999, b0 = 1.0.

eps placement: as the official `adapnm.py`, ε is added after the bias correction,
`sqrt(v_max) / sqrt(1 - b2^t) + eps`. pytorch-optimizer's `AdaPNM` adds it before,
`(sqrt(v_max + 1e-15) + eps) / sqrt(1 - b2^t)`: an ε larger by `1 / sqrt(1 - b2^t)` (31.6x at the
first step with b2 = 0.999), which matters only for gradients of the order of ε
(`tests/optim/test_pnm.py` shows the difference).

Weight decay in the aliases is decoupled and multiplied by the learning rate,
`theta <- theta - lr * (u_t + wd * theta)`, as the official `decoupled=True` default.

Step cost: each new buffer is computed from its own old buffer only, and the direction from the
new buffers (the one not updated this step equals its old value). Reading an old buffer after
the new one has overwritten it in place (donated state) makes XLA copy every buffer first: PNM's
compiled CPU step accesses 40 bytes per float32 parameter instead of 68 (ideal 28; one kernel per
output, as `optax.adam`), AdaPNM's 68 instead of 96 (ideal 44): five outputs, one kernel each on
XLA:CPU (no multi-output fusion), each state kernel reading its own old buffer (12 each) and the
parameter kernel p and the three buffers the direction needs (20), the minimum in that model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import _checks
from jaxlearn.optim import _common
from jaxlearn.optim.softplus import nonnegative_softplus_denominator

__all__ = [
    "scale_by_pnm",
    "pnm",
    "scale_by_adapnm",
    "adapnm",
    "adapnm_second_moment",
    "ScaleByAdaPNMState",
    "ScaleByPNMState",
]


class ScaleByPNMState(NamedTuple):
  """State of `scale_by_pnm`.

  Attributes:
    count: number of updates so far (int32); its parity picks the buffer to update.
    mu_odd: the momentum buffer updated at odd steps (float32 or wider).
    mu_even: the momentum buffer updated at even steps (float32 or wider).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_pnm
    >>> state = scale_by_pnm().init({"w": jnp.ones(2, jnp.bfloat16)})
    >>> state.mu_even["w"].dtype
    dtype('float32')
  """

  count: jax.Array
  mu_odd: optax.Updates
  mu_even: optax.Updates


class ScaleByAdaPNMState(NamedTuple):
  """State of `scale_by_adapnm`.

  Attributes:
    count: number of updates so far (int32).
    mu_odd: the momentum buffer updated at odd steps (float32 or wider).
    mu_even: the momentum buffer updated at even steps (float32 or wider).
    nu: second moment of the gradients (float32 or wider).
    nu_max: running maximum of `nu` (AMSGrad), or None without `amsgrad`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_adapnm
    >>> state = scale_by_adapnm().init({"w": jnp.ones(2, jnp.bfloat16)})
    >>> state.mu_odd["w"].dtype
    dtype('float32')
  """

  count: jax.Array
  mu_odd: optax.Updates
  mu_even: optax.Updates
  nu: optax.Updates
  nu_max: optax.Updates | None


def _check_pnm(b1, b0) -> None:
  _checks.check_unit_interval("b1", b1)
  _checks.check_non_negative("b0", b0)


def _pnm_step(updates, count, mu_odd, mu_even, b1, b0) -> tuple[Any, Any, Any]:
  """Updates the buffer of `count`'s parity; returns (direction d_t, mu_odd, mu_even).

  Each new buffer reads only its own old buffer, and the direction reads the new buffers (the
  buffer not updated is returned unchanged, so it equals the old one). Reading an old buffer
  after its new value has been written in place (donated state) would make XLA copy it first.
  """
  odd = count % 2 == 1
  noise_norm = jnp.sqrt((1 + b0) ** 2 + b0**2)
  new_odd = jax.tree.map(lambda m, a: jnp.where(odd, m, a),
                         _common.update_moment(updates, mu_odd, b1 * b1), mu_odd)
  new_even = jax.tree.map(lambda m, b: jnp.where(odd, b, m),
                          _common.update_moment(updates, mu_even, b1 * b1), mu_even)

  def direction(a, b):
    current, other = jnp.where(odd, a, b), jnp.where(odd, b, a)
    return ((1 + b0) * current - b0 * other) / noise_norm

  return jax.tree.map(direction, new_odd, new_even), new_odd, new_even


def scale_by_pnm(b1: float = 0.9, b0: float = 1.0) -> optax.GradientTransformationExtraArgs:
  """Positive-negative momentum, the SGD form: returns `d_t` (module docstring).

  Args:
    b1: momentum decay, in [0, 1); each buffer decays by `b1**2` per update it receives.
    b0: weight of the negative buffer (noise amplitude), >= 0 (official default 1.0). With
      b0 = 0 only the positive buffer is used.

  Returns:
    An `optax.GradientTransformationExtraArgs` (state `ScaleByPNMState`).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_pnm
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(scale_by_pnm(b1=0.9, b0=1.0), optax.scale_by_learning_rate(0.1))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)
  """
  _check_pnm(b1, b0)

  def init_fn(params):
    return ScaleByPNMState(
        jnp.zeros([], jnp.int32), _common.state_zeros(params), _common.state_zeros(params)
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "scale_by_pnm")
    count = numerics.safe_increment(state.count)
    direction, mu_odd, mu_even = _pnm_step(
        updates, count, state.mu_odd, state.mu_even, b1, b0
    )
    out = jax.tree.map(lambda d, g: d.astype(g.dtype), direction, updates)
    return out, ScaleByPNMState(count, mu_odd, mu_even)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_adapnm(
    b1: float = 0.9,
    b2: float = 0.999,
    b0: float = 1.0,
    eps: float = 1e-8,
    softplus_beta: float | None = None,
    *,
    amsgrad: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Adaptive positive-negative momentum (AdaPNM), optionally with a softplus denominator.

  Args:
    b1: momentum decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    b0: weight of the negative buffer, >= 0.
    eps: added to the denominator, >= 0.
    softplus_beta: None (official AdaPNM) or the softplus sharpness > 0 (Ranger21: 50).
    amsgrad: divide by the running maximum of the second moment (official default True).

  Returns:
    An `optax.GradientTransformationExtraArgs` (state `ScaleByAdaPNMState`).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_adapnm
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(scale_by_adapnm(softplus_beta=50.0), optax.scale_by_learning_rate(1e-3))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)
  """
  _check_pnm(b1, b0)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  _checks.check_bool("amsgrad", amsgrad)
  if softplus_beta is not None:
    _checks.check_positive("softplus_beta", softplus_beta)

  def init_fn(params):
    return ScaleByAdaPNMState(
        count=jnp.zeros([], jnp.int32),
        mu_odd=_common.state_zeros(params),
        mu_even=_common.state_zeros(params),
        nu=_common.state_zeros(params),
        nu_max=_common.state_zeros(params) if amsgrad else None,
    )

  def denominator(v, root_correction2):
    root = jnp.sqrt(v) / root_correction2 + eps
    return root if softplus_beta is None else nonnegative_softplus_denominator(root, softplus_beta)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "scale_by_adapnm")
    count = numerics.safe_increment(state.count)
    direction, mu_odd, mu_even = _pnm_step(
        updates, count, state.mu_odd, state.mu_even, b1, b0
    )
    nu = _common.update_moment(updates, state.nu, b2, order=2)
    nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else None
    # Scalars once, not once per leaf: fewer instructions for XLA to compile.
    bias_correction1 = _common.bias_correction(b1, count)
    root_correction2 = jnp.sqrt(_common.bias_correction(b2, count))
    out = jax.tree.map(
        lambda g, d, v: (d / bias_correction1 / denominator(v, root_correction2)).astype(g.dtype),
        updates, direction, nu_max if amsgrad else nu,
    )
    return out, ScaleByAdaPNMState(count, mu_odd, mu_even, nu, nu_max)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adapnm_second_moment(state: ScaleByAdaPNMState, b2) -> optax.Updates:
  """The bias-corrected second moment `v_t / (1 - b2^t)` held in an updated AdaPNM state.

  This is the EMA, not its AMSGrad maximum (the one Ranger21's stable weight decay averages; it
  reads the uncorrected `state.nu` through `with_stable_weight_decay(inner_nu=...)`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import adapnm_second_moment, scale_by_adapnm
    >>> opt = scale_by_adapnm(b2=0.999)
    >>> params = {"w": jnp.ones((3, 2))}
    >>> _, state = opt.update({"w": jnp.full((3, 2), 0.5)}, opt.init(params), params)
    >>> round(float(adapnm_second_moment(state, 0.999)["w"][0, 0]), 4)  # g^2 at the first step
    0.25
  """
  return _common.debias(state.nu, b2, state.count)


def pnm(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b0: float = 1.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """PNM: `theta <- theta - lr * (d_t + weight_decay * theta)` (module docstring).

  Args:
    learning_rate: step size or schedule, >= 0.
    b1: momentum decay, in [0, 1).
    b0: weight of the negative buffer, >= 0 (official default 1.0).
    weight_decay: decoupled weight decay, >= 0.
    weight_decay_mask: which leaves decay (pytree of bools or callable of params).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import pnm
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = pnm(0.1, weight_decay=1e-4)
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  return _common.alias(scale_by_pnm(b1, b0), learning_rate, weight_decay, weight_decay_mask)


def adapnm(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    b0: float = 1.0,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    amsgrad: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """AdaPNM: `theta <- theta - lr * (u_t + weight_decay * theta)` (module docstring).

  Args:
    learning_rate: step size or schedule, >= 0 (official default 1e-3).
    b1: momentum decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    b0: weight of the negative buffer, >= 0.
    eps: added to the denominator, >= 0.
    weight_decay: decoupled weight decay, >= 0.
    weight_decay_mask: which leaves decay (pytree of bools or callable of params).
    amsgrad: divide by the running maximum of the second moment (official default True).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import adapnm
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = adapnm(1e-3, weight_decay=1e-4)
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  return _common.alias(
      scale_by_adapnm(b1, b2, b0, eps, amsgrad=amsgrad),
      learning_rate, weight_decay, weight_decay_mask,
  )
