r"""Lookahead as the last link of an optax chain: slow weights kept in the optimizer state.

Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019, arXiv:1907.08610;
as used by Ranger21 (Wright & Demeure, arXiv:2106.13731; official code
https://github.com/lessw2020/Ranger21, `lookahead_process_step`).

The inner optimizer moves the fast weights θ. Every `k` steps the slow weights φ move a fraction α
towards them and the fast weights restart from the slow ones:

.. math::

  \text{if } t \bmod k = 0: \quad \phi \leftarrow \phi + \alpha (\theta_t - \phi), \qquad
  \theta_t \leftarrow \phi ,

with φ initialised to θ_0. Defaults k = 5 and α = 0.5 (Ranger21 and the Lookahead paper).

Why not `optax.lookahead`: it implements the same rule but keeps both weight sets in the
*parameters* (`optax.LookaheadParams(fast, slow)`), wraps the inner optimizer rather than chaining,
and needs the training loop to differentiate `params.fast`. That does not fit a plain
`params -> updates` chain (jaxlearn's `fit`, Flax NNX `nnx.Optimizer`). `lookahead_sync` keeps φ in
its own state instead (as the official Ranger21 and pytorch-optimizer do), so it must be the LAST
transform of a chain (after the learning rate): it turns the incoming update `u` into
`phi_new - theta` on synchronisation steps, which is only right if nothing rescales it afterwards.
The trajectory equals `optax.lookahead`'s fast weights (`tests/optim/test_lookahead.py`). The fast
optimizer's state is never reset (`optax.lookahead(reset_state=False)`, the paper's default).

The synchronisation is a `lax.cond`, so the slow weights are read and written only on the steps
that synchronise (a select would pass over them at every step). `init` copies the parameters:
the state must not hold the parameter arrays themselves, or a step that donates params and state
fails (one buffer donated twice).
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
    "lookahead_sync",
    "LookaheadSyncState",
]


class LookaheadSyncState(NamedTuple):
  """State of `lookahead_sync`.

  Attributes:
    count: number of updates so far (int32).
    slow: the slow weights φ (float32 or wider).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import lookahead_sync
    >>> state = lookahead_sync().init({"w": jnp.ones(2, jnp.bfloat16)})
    >>> state.slow["w"].dtype
    dtype('float32')
  """

  count: jax.Array
  slow: optax.Params


def _check_sync_period(sync_period) -> None:
  if isinstance(sync_period, bool):
    raise ValueError(f"sync_period must be an integer >= 1, got {sync_period!r}")
  value = _checks.concrete_float(sync_period)
  if value is not None and (value < 1 or value != int(value)):
    raise ValueError(f"sync_period must be an integer >= 1, got {sync_period!r}")


def lookahead_sync(
    sync_period: int = 5, slow_step_size: float = 0.5
) -> optax.GradientTransformationExtraArgs:
  """Lookahead synchronisation; must be the last transform of a chain (module docstring).

  Args:
    sync_period: k, fast steps between synchronisations, an integer >= 1.
    slow_step_size: α, the fraction of the way the slow weights move, in [0, 1]. α = 1 makes the
      transform the identity.

  Returns:
    An `optax.GradientTransformationExtraArgs` (state `LookaheadSyncState`); `update` requires
    `params`. Evaluate with `state.slow` (the paper's choice) or with the returned params.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import lookahead_sync
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(optax.adam(1e-3), lookahead_sync(sync_period=5, slow_step_size=0.5))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  _check_sync_period(sync_period)
  _checks.check_range("slow_step_size", slow_step_size, 0.0, 1.0)

  def init_fn(params):
    # A copy, never the parameter arrays themselves: a step that donates params and state
    # would otherwise donate the same buffer twice.
    slow = jax.tree.map(
        lambda p: jnp.array(p, dtype=_common.wide_dtype(p.dtype), copy=True), params)
    return LookaheadSyncState(jnp.zeros([], jnp.int32), slow)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "lookahead_sync", updates=updates)
    count = numerics.safe_increment(state.count)

    def synchronise(updates, slow):
      def leaf(u, p, slow):
        fast = p.astype(slow.dtype) + u.astype(slow.dtype)
        new_slow = slow + slow_step_size * (fast - slow)
        return (new_slow - p.astype(slow.dtype)).astype(u.dtype), new_slow

      pairs = jax.tree.map(leaf, updates, params, slow)
      return (jax.tree.map(lambda _, pair: pair[0], updates, pairs),
              jax.tree.map(lambda _, pair: pair[1], updates, pairs))

    # A conditional, not a select: between synchronisations the slow weights are neither read
    # nor written (a select would pass over them, and over the update, at every step).
    updates, slow = jax.lax.cond(count % sync_period == 0, synchronise, lambda u, s: (u, s),
                                 updates, state.slow)
    return updates, LookaheadSyncState(count, slow)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
