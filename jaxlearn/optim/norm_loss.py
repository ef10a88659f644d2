r"""Norm loss: a decoupled pull of every unit's weight norm towards 1.

Georgiou et al., "Norm Loss: An efficient yet effective regularization method for deep neural
networks", ICPR 2020, arXiv:2103.06583; as used by Ranger21 (Wright & Demeure, arXiv:2106.13731,
official code https://github.com/lessw2020/Ranger21).

For every output unit u of a leaf (a neuron's incoming weights, a conv filter; the whole leaf when
ndim <= 1) Ranger21 adds to the update

.. math::

  \Delta_u = 2 \lambda_{nl} \Bigl(1 - \frac{1}{\lVert \theta_u \rVert + \varepsilon}\Bigr)
  \theta_u ,

which (for eps = 0) is the gradient of the penalty `factor * sum_u (||theta_u|| - 1)**2`, applied
decoupled from the adaptive scaling; the learning-rate step that follows multiplies it by `-lr`, as
in the official code (`p <- p * (1 - lr * correction)`). Default factor 1e-4 and eps 1e-8 (official).

Layout: `channel_axis=-1` (default) is Flax's output-unit axis (Dense `(in, out)`, Conv `HWIO`); the
norm runs over every other axis. Pass `channel_axis=0` for PyTorch-layout kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "add_norm_loss",
    "unit_norm",
]


def unit_norm(x: jax.Array, channel_axis: int = -1) -> jax.Array:
  """L2 norm of every output unit (keepdims), or of the whole leaf when ndim <= 1 (float32+).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import unit_norm
    >>> unit_norm(jnp.array([[3.0, 0.0], [4.0, 1.0]]))  # one norm per output unit (column)
    Array([[5., 1.]], dtype=float32)
  """
  return _with_unit_axes(unit_norms(x, channel_axis), x.ndim, channel_axis)


def unit_norms(x: jax.Array, channel_axis: int = -1) -> jax.Array:
  """`unit_norm` without the reduced axes: shape (units,), or () when ndim <= 1.

  The per-unit arithmetic that follows a norm compiles faster on these vectors: behind a kept
  axis (a reshape in XLA), XLA's simplifier moves the reshape down a chain of elementwise ops
  one op per iteration, and each iteration is a pass over the whole program.
  """
  x32 = x.astype(_common.wide_dtype(x.dtype))
  axes = None if x.ndim <= 1 else _common.unit_axes(x.ndim, channel_axis)
  return jnp.sqrt(jnp.sum(jnp.square(x32), axis=axes))


def _with_unit_axes(per_unit: jax.Array, ndim: int, channel_axis: int) -> jax.Array:
  """A `unit_norms`-shaped value with the reduced axes back (size 1), for an ndim-array."""
  return per_unit if ndim <= 1 else jnp.expand_dims(per_unit, _common.unit_axes(ndim, channel_axis))


def add_norm_loss(
    factor: float = 1e-4, eps: float = 1e-8, *, channel_axis: int = -1
) -> optax.GradientTransformationExtraArgs:
  """Adds the norm-loss term `2 * factor * (1 - 1 / (||theta_u|| + eps)) * theta_u` to the updates.

  Args:
    factor: the norm-loss coefficient λ_nl, >= 0 (official 1e-4).
    eps: added to each unit norm, > 0, so that an all-zero unit gives a zero term, not NaN.
    channel_axis: the output-unit axis of leaves with ndim > 1.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`; `update` requires `params`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import add_norm_loss
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(add_norm_loss(1e-4), optax.sgd(0.1))
    >>> updates, _ = opt.update({"w": jnp.zeros((3, 2))}, opt.init(params), params)
  """
  _checks.check_non_negative("factor", factor)
  _checks.check_positive("eps", eps)
  _common.check_channel_axis(channel_axis)

  def term(u, p):
    p32 = p.astype(_common.wide_dtype(p.dtype))
    correction = 2 * factor * (1 - 1 / (unit_norms(p, channel_axis) + eps))
    return (u + _with_unit_axes(correction, p.ndim, channel_axis) * p32).astype(u.dtype)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "add_norm_loss", updates=updates)
    return jax.tree.map(term, updates, params), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
