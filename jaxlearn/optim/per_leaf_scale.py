r"""Per-leaf learning-rate multipliers: each leaf's update times its own static Python float.

Width-aware parametrizations and structured layers give every parameter tensor its own learning
rate: μP (`jaxlearn.nn.scale_by_mup`, after microsoft/mup's `MuAdam` / `MuSGD`, which split the
parameters into groups with their own `lr`) and the block-tensor-train and Monarch layers of
`jaxlearn.nn.btt` (per-core multipliers, after the official compute-better-spent code). Both
reduce to one transform:

.. math::

  u_\ell \leftarrow m_\ell \, u_\ell \qquad \text{for every leaf } \ell,

with :math:`m_\ell \ge 0` a Python float fixed when the optimizer is built (it depends on shapes
only, never on values), so it is not state, survives `inject_hyperparams`, and costs one
multiplication. A PyTorch parameter group with `lr = m·η` is this transform chained with the
learning-rate step `η`; for an Adam-like optimizer it must come *after* the normalization
(`optax.chain(optax.scale_by_adam(), scale_by_per_leaf(multipliers=m),
optax.scale_by_learning_rate(η))`), since Adam undoes any scaling of its input.

Public API: `scale_by_per_leaf`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import optax

from jaxlearn import _checks

__all__ = [
    "scale_by_per_leaf",
]

Multipliers = Any  # a pytree (or pytree prefix) of Python floats, or params -> such a pytree


def scale_by_per_leaf(
    *,
    multipliers: Multipliers | Callable[[optax.Params], Multipliers],
) -> optax.GradientTransformationExtraArgs:
  r"""Multiplies every leaf of the updates by its own static multiplier, :math:`u_\ell m_\ell`.

  Stateless; `update` does not need `params`.

  Args:
    multipliers: a pytree of non-negative Python floats with the structure of the parameters
      (or a prefix of it: one float then scales a whole subtree), or a function of the parameter
      tree returning one (it is called on the parameters in `init` and on the updates in
      `update`, so it may read shapes only). Keyword-only, so `jaxlearn.optim.inject_hyperparams`
      keeps it static.

  Returns:
    A `GradientTransformationExtraArgs`; updates keep their dtype.

  Raises:
    ValueError: a multiplier that is not a finite number >= 0, or a tree that does not match.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_per_leaf
    >>> params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
    >>> opt = optax.chain(optax.scale_by_adam(), scale_by_per_leaf(multipliers={"w": 0.25, "b": 1.0}),
    ...                   optax.scale_by_learning_rate(1e-2))
    >>> updates, _ = opt.update({"w": jnp.ones((4, 4)), "b": jnp.ones(4)}, opt.init(params))
    >>> round(float(updates["w"][0, 0]), 6), round(float(updates["b"][0]), 6)
    (-0.0025, -0.01)
  """
  if not callable(multipliers):
    _check_multipliers(multipliers)

  def resolve(tree):
    resolved = multipliers(tree) if callable(multipliers) else multipliers
    if callable(multipliers):
      _check_multipliers(resolved)
    return resolved

  def init_fn(params):
    _scale(resolve(params), params)  # checks the structure once, eagerly where possible
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return _scale(resolve(updates), updates), state

  return optax.with_extra_args_support(optax.GradientTransformation(init_fn, update_fn))


def _check_multipliers(multipliers: Multipliers) -> None:
  leaves = jax.tree.leaves(multipliers)
  if not leaves:
    raise ValueError(f"multipliers must hold at least one number, got {multipliers!r}")
  for leaf in leaves:
    value = _checks.concrete_float(leaf)
    if value is None or isinstance(leaf, bool) or not math.isfinite(value) or value < 0:
      raise ValueError(f"multipliers must be finite Python numbers >= 0, got {leaf!r}")


def _scale(multipliers: Multipliers, updates: optax.Updates) -> optax.Updates:
  try:
    # A prefix tree: each multiplier scales its whole subtree of updates.
    return jax.tree.map(
        lambda m, sub: jax.tree.map(lambda u: u if u is None else u * float(m), sub),
        multipliers, updates,
    )
  except ValueError as error:
    raise ValueError(
        f"multipliers must have the structure of the parameters (or a prefix of it): {error}"
    ) from None
