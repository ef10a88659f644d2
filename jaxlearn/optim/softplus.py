r"""The softplus-calibrated denominator of adaptive methods, and Sadam, the optimizer that uses it.

Tong, Liang & Bi, "Calibrating the Adaptive Learning Rate to Improve Convergence of ADAM"
(arXiv:1908.00700; official code https://github.com/neilliang90/Sadam). Adam divides by
`sqrt(v)`; tiny second moments then give huge steps. Passing the denominator through a softplus

.. math::

  \operatorname{softplus}_\beta(x) = \frac{1}{\beta} \log\bigl(1 + e^{\beta x}\bigr)
  \;\ge\; \max\Bigl(x, \frac{\log 2}{\beta}\Bigr)

keeps it at least `log(2)/beta` (0.0139 for the default beta = 50) while leaving large values
unchanged, so the adaptive step is bounded by `beta / log 2` times the momentum.

`softplus_denominator` is the shared piece (Ranger21's `scale_by_adapnm(softplus_beta=50)` uses it);
`scale_by_sadam` is the official Sadam rule, with its AMSGrad maximum (official default):

.. math::

  m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
  v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
  \hat v_t = \max(\hat v_{t-1}, v_t) \\
  u_t &= \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}
        \frac{m_t}{\operatorname{softplus}_\beta(\sqrt{\hat v_t})} .

The official code has no epsilon in this branch (the softplus replaces it) and takes the softplus of
the *uncorrected* `sqrt(v)`, folding the second bias correction into the step size; both are kept.

Step cost: the softplus of a denominator (an argument >= 0) is computed as `y + log(1 + exp(-y))`
(`nonnegative_softplus_denominator`), within one float32 ulp of `jax.nn.softplus`'s log1p form
(two of the denominator once divided by beta), which XLA:CPU compiles, fused with the exp, to
code about twice as slow per element: the transcendental functions, not the memory traffic,
bound an optimizer step that uses it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "softplus_denominator",
    "scale_by_sadam",
    "ScaleBySadamState",
]


def softplus_denominator(x: jax.Array, beta) -> jax.Array:
  """`softplus(beta * x) / beta`, computed stably (no overflow for large `beta * x`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import softplus_denominator
    >>> print(softplus_denominator(jnp.array([0.0, 1.0]), 50.0))  # log(2) / 50 at 0, ~x for large x
    [0.01386... 1.        ]
  """
  return jax.nn.softplus(beta * x) / beta


def nonnegative_softplus_denominator(x: jax.Array, beta) -> jax.Array:
  """`softplus_denominator(x, beta)` for `x >= 0` (a root of a second moment plus eps), faster.

  softplus(y) = y + log(1 + exp(-y)) for y = beta * x >= 0. `jax.nn.softplus` computes the
  logarithm with log1p, whose fusion with exp XLA:CPU compiles to code about twice as slow per
  element (the step is then compute-bound). The softplus itself is within one float32 ulp of
  `jax.nn.softplus(y)` (the rounding of 1 + exp(-y) moves it by at most 2^-24, and softplus(y)
  >= log 2 here), so the denominator is within two ulps of `softplus_denominator` once both are
  divided by beta; equal from y = 17 on, where both are y / beta
  (`tests/optim/test_softplus.py`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim.softplus import nonnegative_softplus_denominator
    >>> print(nonnegative_softplus_denominator(jnp.array([0.0, 1.0]), 50.0))
    [0.01386... 1.        ]
  """
  y = beta * x
  return (y + jnp.log(1 + jnp.exp(-y))) / beta


class ScaleBySadamState(NamedTuple):
  """State of `scale_by_sadam`.

  Attributes:
    count: number of updates so far (int32).
    mu: first moment (float32 or wider).
    nu: second moment (float32 or wider).
    nu_max: running maximum of `nu` (AMSGrad), or None without `amsgrad`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_sadam
    >>> state = scale_by_sadam().init({"w": jnp.ones(2, jnp.bfloat16)})
    >>> state.nu_max["w"].dtype
    dtype('float32')
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  nu_max: optax.Updates | None


def scale_by_sadam(
    b1: float = 0.9,
    b2: float = 0.999,
    beta: float = 50.0,
    *,
    amsgrad: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Sadam: Adam with a softplus-calibrated denominator (official code, module docstring).

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    beta: softplus sharpness, > 0 (official default 50).
    amsgrad: divide by the running maximum of the second moment (official default True).

  Returns:
    An `optax.GradientTransformationExtraArgs` (state `ScaleBySadamState`).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_sadam
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(scale_by_sadam(beta=50.0), optax.scale_by_learning_rate(1e-3))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_positive("beta", beta)
  _checks.check_bool("amsgrad", amsgrad)

  def init_fn(params):
    return ScaleBySadamState(
        count=jnp.zeros([], jnp.int32),
        mu=_common.state_zeros(params),
        nu=_common.state_zeros(params),
        nu_max=_common.state_zeros(params) if amsgrad else None,
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "scale_by_sadam")
    count = numerics.safe_increment(state.count)
    mu = _common.update_moment(updates, state.mu, b1)
    nu = _common.update_moment(updates, state.nu, b2, order=2)
    nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else None
    step_size = _common.folded_bias_correction(b1, b2, count)
    out = jax.tree.map(
        lambda g, m, v: (step_size * m / nonnegative_softplus_denominator(jnp.sqrt(v), beta)
                         ).astype(g.dtype),
        updates, mu, nu_max if amsgrad else nu,
    )
    return out, ScaleBySadamState(count, mu, nu, nu_max)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
