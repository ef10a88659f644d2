r"""Extra arguments of `update`: one convention for optimizers that need more than a gradient.

Some rules need the loss value, the loss as a function of the parameters, or a quantity of the
batch. jaxlearn names them as optax does, so the same call works for optax's and jaxlearn's
transformations:

========== ========================================================== ============================
name       what it is                                                 optax precedent
========== ========================================================== ============================
``value``  the loss at ``params`` on the current batch (a scalar)     ``optax.scale_by_polyak``
``value_fn`` ``params -> loss`` on the current batch                  ``scale_by_backtracking_linesearch``
``grad``   the gradient of ``value_fn`` at ``params``                 ``scale_by_backtracking_linesearch``
``Hvp``    ``v -> H v``, the Hessian-vector product at ``params``     (none; the PSGD papers' name)
``margins`` per-example margins ``m_i`` with ``σ(-m_i) = 1 - p_i``    (jaxlearn: Normalized LR+GD)
========== ========================================================== ============================

A method's registry record lists the names its `update` needs (``Method.update_extras``), and any
generic harness (`jaxlearn.train.fit`, the sweeps, the test batteries) builds them with
`extra_update_args` from the loss function and the batch, so no harness special-cases a method.

``margins`` is derived from per-example losses :math:`\ell_i`: :math:`m_i = -\log(e^{\ell_i} - 1)`.
For the logistic loss :math:`\ell_i = \log(1 + e^{-y_i a_i^\top \theta})` this is exactly the
margin :math:`y_i a_i^\top \theta`; for softmax cross-entropy it is the multi-class quantity with
:math:`\sigma(-m_i) = 1 - p_{i, y_i}`, the probability mass on wrong classes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["EXTRA_ARG_NAMES", "extra_update_args", "margins_from_losses"]

EXTRA_ARG_NAMES = ("value", "value_fn", "grad", "Hvp", "margins")


def margins_from_losses(losses: jax.Array) -> jax.Array:
  r"""Margins :math:`m_i = -\log(e^{\ell_i} - 1)` from per-example losses, in float32 or wider.

  Computed as ``-log(expm1(l))``, accurate for small and large losses alike (a loss of 0 gives
  a margin of +inf, as a perfectly separated example should).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import margins_from_losses
    >>> margins = jnp.array([2.0, -1.0])
    >>> logistic_losses = jnp.log1p(jnp.exp(-margins))
    >>> print(margins_from_losses(logistic_losses).round(4))  # the margins, recovered
    [ 2. -1.]
  """
  losses = jnp.asarray(losses)
  losses = losses.astype(jnp.promote_types(losses.dtype, jnp.float32))
  return -jnp.log(jnp.expm1(losses))


def extra_update_args(
    names: Sequence[str],
    loss_fn: Callable[..., jax.Array],
    params: Any,
    *batch: Any,
) -> dict[str, Any]:
  """The extra keyword arguments of `update` named in `names`, built from `loss_fn` and a batch.

  Args:
    names: a subset of `EXTRA_ARG_NAMES`.
    loss_fn: ``loss_fn(params, *batch) -> scalar`` (the mean loss over the batch). For
      ``margins`` it is also called on one example at a time (``batch`` arrays sliced to a
      leading axis of 1), so it must be a mean over the leading axis of the batch arrays.
    params: the parameters at which the step is taken.
    *batch: the batch arrays, passed to `loss_fn` after `params`.

  Returns:
    A dict from each name to its value, ready for ``opt.update(grads, state, params, **extras)``.

  Raises:
    ValueError: for a name that is not one of `EXTRA_ARG_NAMES`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import extra_update_args
    >>> loss_fn = lambda params, x, y: jnp.mean((x @ params - y) ** 2)
    >>> extras = extra_update_args(["value", "grad"], loss_fn, jnp.zeros(3), jnp.ones((4, 3)),
    ...                            jnp.ones(4))
    >>> sorted(extras), extras["value"]
    (['grad', 'value'], Array(1., dtype=float32))
  """
  unknown = [name for name in names if name not in EXTRA_ARG_NAMES]
  if unknown:
    raise ValueError(f"names must be drawn from {EXTRA_ARG_NAMES}, got unknown {unknown}")

  def value_fn(p):
    return loss_fn(p, *batch)

  extras: dict[str, Any] = {}
  if "value" in names:
    extras["value"] = value_fn(params)
  if "value_fn" in names:
    extras["value_fn"] = value_fn
  if "grad" in names:
    extras["grad"] = jax.grad(value_fn)(params)
  if "Hvp" in names:
    extras["Hvp"] = lambda v: jax.jvp(jax.grad(value_fn), (params,), (v,))[1]
  if "margins" in names:

    def one_example_loss(*example):
      return loss_fn(params, *(e[None] for e in example))

    extras["margins"] = margins_from_losses(jax.vmap(one_example_loss)(*batch))
  return extras
