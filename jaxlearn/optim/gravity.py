"""Gravity: a bounded, inclined-plane step with a warm-started running average.

Bahrami and Pouriyan Zadeh, "Gravity Optimizer: a Kinematic Approach on Optimization in Deep
Learning", arXiv:2101.09192; official code: https://github.com/dariush-bahrami/gravity.optimizer
(`gravity_optimizer_math.md`, `implementations/gravity_optimizer_keras.py` and
`implementations/gravity_optimizer_pytorch.py`).

A ball on an inclined plane of slope `g / m` moves by `l g / (1 + (g / m)^2)`: linear in `g` for
small gradients, largest at `|g| = m`, and shrinking for steeper slopes, so no weight can take an
unbounded step. The paper picks `m = 1 / max|G|` per weight tensor, averages the steps in a
velocity `V` with a decay `beta_hat_t = (beta t + 1) / (t + 2)` that starts at 1/2 and tends to
`beta`, and starts `V` from random normal values of standard deviation `alpha / lr`.

Step index. The paper's derivation of `beta_hat` (math notes, "at the first step t = 0") and the
official Keras code (`t = optimizer.iterations`, 0 at the first update) use t = 0, 1, 2, ...; the
official PyTorch code and pytorch-optimizer's `Gravity` increment `t` first and so use t = 1, 2, ...
(first decay (beta + 1) / 3 instead of 1/2). This module follows the paper; its tests check that
it matches pytorch-optimizer exactly once the step count is offset by one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax._src import numerics

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "gravity",
    "scale_by_gravity",
    "gravity_step",
    "ScaleByGravityState",
]

KeyOrSeed = Any  # an int seed, or a jax PRNG key (raw uint32[2] or typed)


class ScaleByGravityState(NamedTuple):
  """State of `scale_by_gravity`.

  Attributes:
    count: number of updates so far (int32); the paper's step index t of the next update.
    velocity: the velocity `V` (float32 or wider), initialized from N(0, (alpha / lr)^2).
  """

  count: jax.Array
  velocity: optax.Updates


def _as_key(key: KeyOrSeed) -> jax.Array:
  """A PRNG key from an int seed (also a traced int under inject_hyperparams) or a key."""
  if isinstance(key, bool):
    raise ValueError(f"key must be an int seed or a jax PRNG key, got {key!r}")
  if isinstance(key, (int, np.integer)):
    return jax.random.PRNGKey(key)
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    return key
  if dtype is not None and jnp.issubdtype(dtype, jnp.integer) and jnp.ndim(key) == 0:
    return jax.random.PRNGKey(key)
  if dtype is not None and jnp.dtype(dtype) == jnp.uint32 and jnp.shape(key) == (2,):
    return key
  raise ValueError(f"key must be an int seed or a jax PRNG key, got {key!r}")


def gravity_step(g: jax.Array) -> jax.Array:
  """The paper's gradient term ζ = g / (1 + (g / m)^2) with m = 1 / max|g| over the tensor.

  Written as `g / (1 + (g max|g|)^2)`, which needs no division by max|g| and gives 0 for an
  all-zero gradient.
  """
  largest = jnp.max(jnp.abs(g))
  return g / (1.0 + jnp.square(g * largest))


def scale_by_gravity(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    alpha: float = 0.01,
    beta: float = 0.9,
    *,
    key: KeyOrSeed = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""The Gravity velocity, to be multiplied by `-learning_rate`.

  .. math::

    \zeta_t &= \frac{g_t}{1 + (g_t / m_t)^2}, \qquad m_t = \frac{1}{\max |g_t|}
    \text{ (per leaf)} \\
    \hat\beta_t &= \frac{\beta t + 1}{t + 2}, \qquad t = 0, 1, 2, \dots \\
    V_t &= \hat\beta_t V_{t-1} + (1 - \hat\beta_t) \zeta_t, \qquad
    V_{-1} \sim \mathcal N(0, (\alpha / \eta_0)^2)

  and the update is `V_t`. The learning rate only sets the spread of the initial velocity (η_0 is
  its value at step 0, so that `η_0 V_{-1} ~ N(0, alpha^2)`); the alias applies the step.

  Args:
    learning_rate: η, > 0, a number or a schedule (only η_0 is read here).
    alpha: spread of the initial velocity in units of the first step, >= 0.
    beta: asymptotic decay of the velocity average, in [0, 1).
    key: an int seed or a jax PRNG key for the initial velocity.

  Returns:
    A `GradientTransformationExtraArgs`; its state is a `ScaleByGravityState`.

  References:
    Bahrami and Pouriyan Zadeh, `Gravity Optimizer: a Kinematic Approach on Optimization in Deep
    Learning <https://arxiv.org/abs/2101.09192>`_, 2021.
  """
  _checks.check_positive("learning_rate", learning_rate)
  _checks.check_non_negative("alpha", alpha)
  _checks.check_unit_interval("beta", beta)
  key = _as_key(key)

  def init_fn(params):
    first_lr = learning_rate(0) if callable(learning_rate) else learning_rate
    std = alpha / first_lr
    keys = optax.tree.split_key_like(key, params)

    def velocity(k, p):
      dtype = _common.wide_dtype(p.dtype)
      # Drawn with the parameter's sharding, so that under an explicit mesh the state's type
      # does not change at the first update (the values do not depend on the sharding).
      sharding = jax.typeof(p).sharding
      noise = jax.random.normal(k, jnp.shape(p), jnp.float32, out_sharding=sharding)
      return (std * noise).astype(dtype)

    return ScaleByGravityState(
        count=jnp.zeros([], jnp.int32), velocity=jax.tree.map(velocity, keys, params)
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    t = state.count.astype(jnp.float32)
    decay = (beta * t + 1.0) / (t + 2.0)

    def leaf(g, v):
      zeta = gravity_step(g.astype(v.dtype))
      return (decay * v + (1.0 - decay) * zeta).astype(v.dtype)

    velocity = jax.tree.map(leaf, updates, state.velocity)
    out = jax.tree.map(lambda g, v: v.astype(g.dtype), updates, velocity)
    return out, ScaleByGravityState(numerics.safe_increment(state.count), velocity)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gravity(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    alpha: float = 0.01,
    beta: float = 0.9,
    *,
    key: KeyOrSeed = 0,
) -> optax.GradientTransformationExtraArgs:
  """The Gravity optimizer: `θ_t = θ_{t-1} - η V_t` with `V_t` from `scale_by_gravity`.

  Defaults are the official implementations' (lr 0.1, alpha 0.01, beta 0.9; pytorch-optimizer
  defaults to lr 0.01). The paper has no weight decay.

  Args:
    learning_rate: η, > 0, a number or a schedule.
    alpha: spread of the initial velocity (`η V_{-1} ~ N(0, alpha^2)`), >= 0.
    beta: asymptotic decay of the velocity average, in [0, 1).
    key: an int seed or a jax PRNG key for the initial velocity (under
      `optax.inject_hyperparams` an int seed becomes a traced value; that works).

  Returns:
    A `GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import gravity
    >>> opt = gravity(0.1, alpha=0.0)
    >>> state = opt.init(jnp.zeros(2))
    >>> updates, state = opt.update(jnp.array([1.0, 0.5]), state)
    >>> [round(float(u), 4) for u in updates]
    [-0.025, -0.02]
  """
  return optax.chain(
      scale_by_gravity(learning_rate, alpha, beta, key=key),
      _common.learning_rate_step(learning_rate),
  )


RECORD = registry.record(
    slug="gravity_optimizer",
    kind="optimizer",
    title="Gravity Optimizer: a Kinematic Approach on Optimization in Deep Learning",
    reference="arXiv:2101.09192",
    experiment="gravity_optimizer_seed_variance",
    pytorch_optimizer={"jaxlearn.optim.gravity": "Gravity"},
    notes=(
        "beta_hat_t = (beta t + 1)/(t + 2) with t = 0 at the first update, as in the paper's "
        "derivation and the official Keras code; the official PyTorch code and "
        "pytorch-optimizer start at t = 1 (tested: identical once the count is offset by 1). "
        "The initial velocity N(0, (alpha/lr)^2) needs a PRNG key (`key=`, an int seed or a "
        "key). Defaults are the official lr 0.1, alpha 0.01, beta 0.9 (pytorch-optimizer's lr "
        "default is 0.01). No weight decay (none in the paper)."
    ),
)
