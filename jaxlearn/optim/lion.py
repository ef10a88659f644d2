r"""Lion (EvoLved Sign Momentum): registered from optax, plus an alias with the paper's defaults.

Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, arXiv:2302.06675;
official code: https://github.com/google/automl/tree/master/lion.

Algorithm 2 of the paper (the update is a sign, so every coordinate moves by exactly the learning
rate before weight decay):

.. math::

  c_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
  \theta_t &= \theta_{t-1}
    - \eta_t \left(\operatorname{sign}(c_t) + \lambda\, \theta_{t-1}\right) \\
  m_t &= \beta_2 m_{t-1} + (1 - \beta_2) g_t, \qquad m_0 = 0.

`optax.scale_by_lion` / `optax.lion` implement exactly this (verified in `tests/optim/test_lion.py`
against a NumPy transcription of Algorithm 2 and against pytorch-optimizer's `Lion`).
`jaxlearn.optim.lion` exists because optax's alias differs from the paper in its defaults and
conventions:

- weight decay defaults to 0 (the official code's default, `lion_pytorch.py` and
  `lion_optax.py`; optax uses 1e-3);
- the mask argument is `weight_decay_mask` (optax: `mask`), like every jaxlearn alias;
- the momentum is kept in float32 (or wider) and the updates come back in the gradient's dtype
  (optax keeps bfloat16 momentum for bfloat16 parameters, and with `mu_dtype=float32` returns
  float32 updates for bfloat16 gradients);
- hyperparameters are validated.

The float32 state and the updates in the gradient's dtype come from
`jaxlearn.optim.compute_in_float32`, which every thin optax wrapper of jaxlearn shares.

Step cost: with a known `b2 > 0` and float32 momentum, the sign is computed from the new momentum,
`sign(c_t) = sign(b1 m_t + (b2 - b1) g_t)` (multiply `c_t` by `b2` and substitute
`b2 m_{t-1} = m_t - (1 - b2) g_t`), so the step reads each buffer once: reading `m_{t-1}` after
`m_t` has been written in place (donated state) makes XLA copy every momentum buffer first (36
instead of 28 bytes per parameter on CPU). The two forms differ only by float32 rounding of `c_t`,
so only a coordinate whose `c_t` is zero up to rounding can take another sign.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "lion",
    "scale_by_lion",
]


def scale_by_lion(
    b1: float = 0.9,
    b2: float = 0.99,
    *,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""`optax.scale_by_lion`'s rule with argument checks and float32 momentum: `u_t = sign(c_t)`.

  .. math::

    c_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad u_t = \operatorname{sign}(c_t), \quad
    m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t.

  State: `optax.ScaleByLionState(count, mu)`, the momentum `mu` in float32 or wider (or
  `mu_dtype`). Updates are returned in the gradient's dtype. With a known `b2 > 0` and float32
  momentum the sign is read from `m_t` (module docstring, "Step cost"); otherwise (an injected
  `b2`, `b2 = 0`, a bfloat16 momentum) optax's `update` runs as is.

  Args:
    b1: interpolation weight of the momentum in the update direction, in [0, 1).
    b2: decay rate of the momentum, in [0, 1) (the official code's ranges).
    mu_dtype: dtype of the momentum; None keeps float32 or wider (bfloat16 halves its memory).

  Returns:
    A `GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_lion
    >>> opt = scale_by_lion()
    >>> updates, state = opt.update({"w": jnp.array([0.5, -2.0])}, opt.init({"w": jnp.zeros(2)}))
    >>> updates["w"]
    Array([ 1., -1.], dtype=float32)

  References:
    Chen et al., `Symbolic Discovery of Optimization Algorithms
    <https://arxiv.org/abs/2302.06675>`_, NeurIPS 2023.
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_float_dtype("mu_dtype", mu_dtype)
  transform = _common.compute_in_float32(optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype))
  if _signs_from_new_momentum(b2, mu_dtype):
    transform = optax.GradientTransformationExtraArgs(
        transform.init, _update_from_new_momentum(b1, b2))
  return _common.with_params_check(transform, "scale_by_lion")


def _signs_from_new_momentum(b2, mu_dtype) -> bool:
  """Whether `_update_from_new_momentum` applies: b2 a known number > 0 (`m_{t-1}` can be
  eliminated), and the momentum kept in float32 or wider (its rounding is float32 rounding)."""
  known_b2 = _checks.concrete_float(b2)
  wide = mu_dtype is None or jnp.dtype(mu_dtype).itemsize >= 4
  return known_b2 is not None and known_b2 > 0 and wide


def _update_from_new_momentum(b1, b2):
  r"""Lion's `update`, with the sign read from the new momentum.

  .. math::

    \beta_2 c_t = \beta_1 m_t + (\beta_2 - \beta_1) g_t, \quad\text{so}\quad
    \operatorname{sign}(c_t) = \operatorname{sign}(\beta_1 m_t + (\beta_2 - \beta_1) g_t)
    \ \text{for } \beta_2 > 0.

  One pass per buffer (module docstring, "Step cost"); `m_t` is computed as optax computes it.
  """

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    wide = jax.tree.map(lambda g, m: g.astype(m.dtype), updates, state.mu)
    mu = jax.tree.map(lambda g, m: (1 - b2) * g + b2 * m, wide, state.mu)  # optax's order
    signs = jax.tree.map(lambda g, m, u: jnp.sign(b1 * m + (b2 - b1) * g).astype(u.dtype),
                         wide, mu, updates)
    return signs, optax.ScaleByLionState(numerics.safe_increment(state.count), mu)

  return update_fn


def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Lion: a sign update of an interpolated momentum, with decoupled weight decay.

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \left(\operatorname{sign}(\beta_1 m_{t-1} +
    (1 - \beta_1) g_t) + \lambda\, \theta_{t-1}\right), \qquad
    m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t.

  The weight decay is multiplied by the learning rate, as in the paper's Algorithm 2 and its
  official code. Lion's update has a larger norm than AdamW's (every coordinate moves by η), so
  the paper advises a learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger
  (keeping η·λ about the same). Lion keeps one moment buffer, half of AdamW's optimizer state.

  Differences from `optax.lion` (which registers the same algorithm): weight decay defaults to 0
  (official code; optax: 1e-3), the mask is `weight_decay_mask`, the momentum is float32 by
  default and updates come back in the gradient's dtype.

  Args:
    learning_rate: η, a number or schedule, >= 0 (the official code's default is 1e-4).
    b1: interpolation weight β1 of the update direction, in [0, 1); the paper's default 0.9.
    b2: momentum decay β2, in [0, 1); the paper's default 0.99.
    weight_decay: decoupled weight decay λ, >= 0, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    mu_dtype: dtype of the momentum; None keeps float32 or wider.

  Returns:
    A `GradientTransformationExtraArgs`:
    `chain(scale_by_lion, decayed_weights, scale_by_learning_rate)`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import lion
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> opt = lion(1e-4, weight_decay=1.0, weight_decay_mask={"w": True, "b": False})
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5), "b": -jnp.ones(2)}, state, params)
    >>> updates["b"]  # sign update: every coordinate moves by the learning rate
    Array([0.0001, 0.0001], dtype=float32)

  References:
    Chen et al., `Symbolic Discovery of Optimization Algorithms
    <https://arxiv.org/abs/2302.06675>`_, NeurIPS 2023.
  """
  return _common.alias(
      scale_by_lion(b1, b2, mu_dtype=mu_dtype), learning_rate, weight_decay, weight_decay_mask
  )


RECORD = registry.record(
    slug="lion",
    kind="optimizer",
    title="Symbolic Discovery of Optimization Algorithms",
    reference="arXiv:2302.06675",
    experiment="lion_batch_size",
    also=(
        "jaxlearn.optim.compute_in_float32",
        "optax.lion",
        "optax.scale_by_lion",
    ),
    pytorch_optimizer={"jaxlearn.optim.lion": "Lion", "optax.lion": "Lion"},
    notes=(
        "optax.lion is Algorithm 2 exactly (NumPy transcription and pytorch-optimizer Lion "
        "parity tests). jaxlearn.optim.lion wraps optax.scale_by_lion for the paper's "
        "official-code defaults and jaxlearn's conventions: weight_decay 0 (optax: 1e-3), "
        "weight_decay_mask (optax: mask), float32 momentum for low-precision params (optax: "
        "param dtype) and updates in the gradient dtype (optax with mu_dtype=float32 returns "
        "float32 updates for bfloat16 grads). Defaults and beta ranges [0, 1) as in the "
        "official code (google/automl lion/lion_pytorch.py, lion_optax.py)."
    ),
)
