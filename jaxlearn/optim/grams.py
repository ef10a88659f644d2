"""Grams: Adam's moments give the step size, the current gradient gives the direction.

Cao, Li and Song, "Grams: Gradient Descent with Adaptive Momentum Scaling", arXiv:2412.17107
(ICLR 2025 SCOPE workshop); official code: https://github.com/Gunale0926/Grams, released on PyPI
as `grams-pytorch` (`grams.py` of version 0.0.2).

Adam moves along its first moment `m`; cautious optimizers drop the coordinates where `m` and the
gradient disagree; Grams keeps every coordinate but takes its sign from the current gradient and
only its magnitude from `m`, so the update always points downhill coordinate by coordinate:
`sign(update) = sign(g)` wherever the update is non-zero.

Where the official code and pytorch-optimizer differ, this follows the official code:

* epsilon is added to `sqrt(v_t)` before the bias correction, which is folded into the step size
  (`lr * sqrt(1 - b2^t) / (1 - b1^t)`), as in Hugging Face's AdamW that the official code extends.
  pytorch-optimizer's `Grams` adds epsilon after the correction (`sqrt(v_t / (1 - b2^t)) + eps`),
  so the two differ while `sqrt(v_hat)` is not much larger than eps; with eps = 0 they coincide.
* `correct_bias=False` (the official "BERT" switch) drops both bias corrections.

pytorch-optimizer 4.1.0's first moment is the ordinary EMA `m <- lerp(m, g, 1 - b1)`; it does not
weight the new gradient by b1 (a test checks it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "grams",
    "scale_by_grams",
    "ScaleByGramsState",
]


class ScaleByGramsState(NamedTuple):
  """State of `scale_by_grams`.

  Attributes:
    count: number of updates so far (int32), for the bias corrections.
    mu: first moment of the gradients, `m_t` (float32 or wider).
    nu: second moment of the gradients, `v_t` (float32 or wider).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_grams
    >>> state = scale_by_grams().init({"w": jnp.ones(2, jnp.bfloat16)})
    >>> state.mu["w"].dtype, state.nu["w"].dtype
    (dtype('float32'), dtype('float32'))
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def scale_by_grams(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    *,
    correct_bias: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""The Grams direction: the gradient's sign with the magnitude of Adam's step.

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    u_t &= c_t\, \operatorname{sign}(g_t) \odot \frac{|m_t|}{\sqrt{v_t} + \varepsilon},
    \qquad c_t = \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}

  (`c_t = 1` with `correct_bias=False`). Equivalently `|m_hat| / (sqrt(v_hat) + eps / sqrt(1 -
  b2^t))`. `grams` multiplies `u_t` by `-learning_rate`. State: `m, v` (zeros at the start) and
  the step count `t`.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to `sqrt(v_t)`, >= 0 (official default 1e-6).
    correct_bias: apply Adam's bias corrections through `c_t` (official default True).

  Returns:
    A `GradientTransformationExtraArgs`; its state is a `ScaleByGramsState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_grams
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(scale_by_grams(), optax.scale_by_learning_rate(1e-3))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)

  References:
    Cao, Li and Song, `Grams: Gradient Descent with Adaptive Momentum Scaling
    <https://arxiv.org/abs/2412.17107>`_, 2024.
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  _checks.check_bool("correct_bias", correct_bias)

  def init_fn(params):
    return ScaleByGramsState(
        count=jnp.zeros([], jnp.int32),
        mu=_common.state_zeros(params),
        nu=_common.state_zeros(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "scale_by_grams")
    count = numerics.safe_increment(state.count)
    mu = _common.update_moment(updates, state.mu, b1)
    nu = _common.update_moment(updates, state.nu, b2, order=2)
    step = count.astype(jnp.float32)
    scale = _common.folded_bias_correction(b1, b2, step) if correct_bias else 1.0

    def direction(g, m, v):
      # m = 0 wherever every past gradient was 0 (then v = 0 too): no step instead of 0/0 at eps 0.
      magnitude = jnp.where(m == 0, 0.0, scale * jnp.abs(m) / (jnp.sqrt(v) + eps))
      return (jnp.sign(g).astype(m.dtype) * magnitude).astype(g.dtype)

    return jax.tree.map(direction, updates, mu, nu), ScaleByGramsState(count, mu, nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def grams(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    correct_bias: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Grams: Gradient Descent with Adaptive Momentum Scaling.

  .. math::

    \theta_t = \theta_{t-1} - \eta \left(c_t\, \operatorname{sign}(g_t) \odot
    \frac{|m_t|}{\sqrt{v_t} + \varepsilon} + \lambda \theta_{t-1}\right)

  with `m_t, v_t, c_t` as in `scale_by_grams` and decoupled weight decay λ multiplied by the
  learning rate η, as in the official code (`p <- p - lr * wd * p` before the step). Defaults are
  the official ones (lr 1e-3, betas (0.9, 0.999), eps 1e-6, no weight decay).

  Args:
    learning_rate: η, a number or a schedule, >= 0.
    b1: first-moment decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    eps: added to `sqrt(v_t)`, >= 0.
    weight_decay: decoupled weight decay λ, >= 0, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    correct_bias: apply the bias corrections.

  Returns:
    A `GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import grams
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> opt = grams(0.1)
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.array([0.5, -0.5])}, state, params)
    >>> [round(float(u), 4) for u in updates["w"]]
    [-0.1, 0.1]
  """
  scale = scale_by_grams(b1, b2, eps, correct_bias=correct_bias)
  return _common.alias(scale, learning_rate, weight_decay, weight_decay_mask)


RECORD = registry.record(
    slug="grams",
    kind="optimizer",
    title="Grams: Gradient Descent with Adaptive Momentum Scaling",
    reference="arXiv:2412.17107",
    experiment="grams_vs_adam_lion",
    pytorch_optimizer={"jaxlearn.optim.grams": "Grams"},
    notes=(
        "Follows the official grams-pytorch 0.0.2: eps is added to sqrt(v_t) before the bias "
        "correction, which is folded into the step size (pytorch-optimizer adds eps after the "
        "correction; identical for eps=0, a test documents the difference); optional "
        "correct_bias=False as in the official code. pytorch-optimizer 4.1.0's first moment is "
        "the ordinary EMA (a claim that it weights the new gradient by b1 does not hold for "
        "that version; tested). A zero first moment gives a zero step (no 0/0 at eps=0)."
    ),
)
