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

Step cost. When every leaf's parameters, update and slow weights share one dtype (float32
training, the usual case), a synchronising step writes no slow weights: after it the parameters
ARE the new slow weights (the fast weights restart from them), so the next update copies them
into the state, in a `lax.cond` that runs the copy only then. `state.slow_in_params` says when
the parameters hold φ; `lookahead_slow_weights(state, params)` returns the right ones. The update
itself is a select, `α u + (1 - α)(φ - θ)` on synchronising steps and `u` otherwise, which XLA
fuses into the parameter update: the slow weights are read at every step, but the update is
never written out. (Taken as the operand of a conditional, it was written to a temporary buffer
and applied by a kernel of its own.) With other dtypes (bfloat16 parameters, or bfloat16
updates), copying the parameters would round the float32 slow weights to their precision, so
there the conditional computes and stores φ at the synchronising step, taking the update as an
operand. `init` copies the parameters: the state must not hold the parameter arrays themselves,
or a step that donates params and state fails (one buffer donated twice).
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
    "lookahead_slow_weights",
    "LookaheadSyncState",
]


class LookaheadSyncState(NamedTuple):
  """State of `lookahead_sync`.

  Attributes:
    count: number of updates so far (int32).
    slow: the slow weights φ (float32 or wider), except while `slow_in_params` is True.
    slow_in_params: True right after a synchronising step whose new slow weights were not
      written here (see the module docstring): the parameters are φ then, and the next update
      copies them into `slow`. `lookahead_slow_weights(state, params)` gives φ either way.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import lookahead_sync
    >>> state = lookahead_sync().init({"w": jnp.ones(2, jnp.bfloat16)})
    >>> state.slow["w"].dtype
    dtype('float32')
  """

  count: jax.Array
  slow: optax.Params
  slow_in_params: jax.Array


def lookahead_slow_weights(state: LookaheadSyncState, params: optax.Params) -> optax.Params:
  """Lookahead's slow weights φ (float32 or wider): the ones to evaluate, as the paper does.

  Args:
    state: the `LookaheadSyncState` after a step (for a chain, its element from the chain's
      state tuple).
    params: the parameters after that step's update was applied.

  Returns:
    `params` right after a synchronising step that left φ in them, `state.slow` otherwise.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import lookahead_sync, lookahead_slow_weights
    >>> params = {"w": jnp.zeros(2)}
    >>> opt = optax.chain(optax.sgd(1.0), lookahead_sync(sync_period=1, slow_step_size=0.5))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.array([-2.0, 4.0])}, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> print(lookahead_slow_weights(state[1], params)["w"])  # halfway from 0 to (2, -4)
    [ 1. -2.]
  """
  return jax.tree.map(
      lambda slow, p: jnp.where(state.slow_in_params, p.astype(slow.dtype), slow),
      state.slow, params)


def _one_dtype(updates, params, slow) -> bool:
  """Whether every leaf's update, parameters and slow weights share one dtype (static)."""
  return all(u.dtype == p.dtype == s.dtype for u, p, s in zip(
      jax.tree.leaves(updates), jax.tree.leaves(params), jax.tree.leaves(slow)))


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
    `params`. Evaluate with `lookahead_slow_weights(state, params)` (the paper's choice)
    or with the params.

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
    return LookaheadSyncState(jnp.zeros([], jnp.int32), slow, jnp.zeros([], jnp.bool_))

  def synchronise_later(updates, state, params, synchronising):
    """The slow weights are left in the parameters; copied into the state at the next update."""
    slow = jax.lax.cond(
        state.slow_in_params,
        lambda slow, params: jax.tree.map(lambda p: jnp.array(p, copy=True), params),
        lambda slow, params: slow,
        state.slow, params)
    # On a synchronising step θ + update = θ + u + (1 - α)(φ - θ - u), the new slow weights.
    updates = jax.tree.map(
        lambda u, p, s: jnp.where(
            synchronising, slow_step_size * u + (1.0 - slow_step_size) * (s - p), u),
        updates, params, slow)
    return updates, slow, synchronising

  def synchronise_now(updates, state, params, synchronising):
    """The new slow weights computed and stored in a conditional that takes the update."""
    def synchronise(updates, slow):
      def leaf(u, p, slow):
        fast = p.astype(slow.dtype) + u.astype(slow.dtype)
        new_slow = slow + slow_step_size * (fast - slow)
        return (new_slow - p.astype(slow.dtype)).astype(u.dtype), new_slow

      pairs = jax.tree.map(leaf, updates, params, slow)
      return (jax.tree.map(lambda _, pair: pair[0], updates, pairs),
              jax.tree.map(lambda _, pair: pair[1], updates, pairs))

    updates, slow = jax.lax.cond(
        synchronising, synchronise, lambda u, s: (u, s), updates, state.slow)
    return updates, slow, jnp.zeros([], jnp.bool_)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "lookahead_sync", updates=updates)
    count = numerics.safe_increment(state.count)
    synchronising = count % sync_period == 0
    if _one_dtype(updates, params, state.slow):
      step = synchronise_later
    else:
      step = synchronise_now
    updates, slow, slow_in_params = step(updates, state, params, synchronising)
    return updates, LookaheadSyncState(count, slow, slow_in_params)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
