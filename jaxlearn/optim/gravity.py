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

Learning-rate schedules. The paper assumes a constant learning rate η and draws the initial
velocity as N(0, (α / η)²), so that the first step η V_{-1} has spread α. With a schedule there is
no single η: dividing by its first value gives an infinite spread (NaN from the first step) for a
warm-up from 0, and a huge one (divergence) for a warm-up from 1e-6. A schedule therefore needs
`initial_learning_rate`, the η of that formula (typically the schedule's peak, so that the velocity
noise moves the weights by about α per step at the peak rate); without it the factories raise.
`initial_learning_rate` also overrides a constant learning rate.

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
    velocity: the velocity `V` (float32 or wider), initialized from N(0, (alpha / η_0)^2), η_0 the
      `initial_learning_rate` or else the constant learning rate.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_gravity
    >>> state = scale_by_gravity(key=0).init({"w": jnp.zeros(3)})
    >>> state.velocity["w"].shape  # initialized at random, as in the paper
    (3,)
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

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import gravity_step
    >>> print(gravity_step(jnp.array([1.0, -2.0])))  # m = 1 / 2: g / (1 + (2 g)^2)
    [ 0.2        -0.11764...]
  """
  largest = jnp.max(jnp.abs(g))
  return g / (1.0 + jnp.square(g * largest))


def _initial_learning_rate(learning_rate, initial_learning_rate):
  """η_0 of the initial spread α / η_0: `initial_learning_rate`, else the constant lr."""
  if initial_learning_rate is not None:
    _checks.check_positive("initial_learning_rate", initial_learning_rate)
    return initial_learning_rate
  if callable(learning_rate):
    raise ValueError(
        "initial_learning_rate is required when learning_rate is a schedule: the initial velocity "
        "is drawn from N(0, (alpha / initial_learning_rate)^2); pass the schedule's peak (its "
        "first value, 0 for a warm-up, would give an infinite spread)"
    )
  return learning_rate


def scale_by_gravity(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    alpha: float = 0.01,
    beta: float = 0.9,
    *,
    key: KeyOrSeed = 0,
    initial_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Gravity velocity, to be multiplied by `-learning_rate`.

  .. math::

    \zeta_t &= \frac{g_t}{1 + (g_t / m_t)^2}, \qquad m_t = \frac{1}{\max |g_t|}
    \text{ (per leaf)} \\
    \hat\beta_t &= \frac{\beta t + 1}{t + 2}, \qquad t = 0, 1, 2, \dots \\
    V_t &= \hat\beta_t V_{t-1} + (1 - \hat\beta_t) \zeta_t, \qquad
    V_{-1} \sim \mathcal N(0, (\alpha / \eta_0)^2)

  and the update is `V_t`. The learning rate only sets the spread of the initial velocity: η_0 is
  `initial_learning_rate` if given, else the constant `learning_rate` (so that
  `η_0 V_{-1} ~ N(0, alpha^2)`); the alias applies the step.

  Args:
    learning_rate: η, > 0, a number or a schedule (a schedule needs `initial_learning_rate`).
    alpha: spread of the initial velocity in units of the first step, >= 0.
    beta: asymptotic decay of the velocity average, in [0, 1).
    key: an int seed or a jax PRNG key for the initial velocity.
    initial_learning_rate: η_0 > 0 of the initial spread α / η_0; required with a schedule (pass
      its peak: a warm-up's first value, 0 or tiny, would give an infinite or huge spread).
      None: the constant `learning_rate`.

  Returns:
    A `GradientTransformationExtraArgs`; its state is a `ScaleByGravityState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_gravity
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(scale_by_gravity(0.1, key=0), optax.scale_by_learning_rate(0.1))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)

  References:
    Bahrami and Pouriyan Zadeh, `Gravity Optimizer: a Kinematic Approach on Optimization in Deep
    Learning <https://arxiv.org/abs/2101.09192>`_, 2021.
  """
  _checks.check_positive("learning_rate", learning_rate)
  _checks.check_non_negative("alpha", alpha)
  _checks.check_unit_interval("beta", beta)
  std = alpha / _initial_learning_rate(learning_rate, initial_learning_rate)
  key = _as_key(key)

  def init_fn(params):
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
    del extra_args
    _common.check_params(updates, params, "scale_by_gravity")
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
    initial_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """The Gravity optimizer: `θ_t = θ_{t-1} - η V_t` with `V_t` from `scale_by_gravity`.

  Defaults are the official implementations' (lr 0.1, alpha 0.01, beta 0.9; pytorch-optimizer
  defaults to lr 0.01). The paper has no weight decay.

  Args:
    learning_rate: η, > 0, a number or a schedule (then pass `initial_learning_rate`).
    alpha: spread of the initial velocity (`η_0 V_{-1} ~ N(0, alpha^2)`), >= 0.
    beta: asymptotic decay of the velocity average, in [0, 1).
    key: an int seed or a jax PRNG key for the initial velocity (under
      `optax.inject_hyperparams` an int seed becomes a traced value; that works).
    initial_learning_rate: η_0 > 0 of the initial spread α / η_0; required with a schedule
      (typically its peak); None: the constant `learning_rate`. Keyword-only, so it stays static
      under `jaxlearn.optim.inject_hyperparams`, where a scheduled learning rate arrives as a
      number (its value at step 0) and would otherwise set the spread.

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
      scale_by_gravity(
          learning_rate, alpha, beta, key=key, initial_learning_rate=initial_learning_rate
      ),
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
        "key). The paper assumes a constant lr; with a schedule the spread alpha / lr is "
        "undefined (a warm-up from 0 gave NaN, from 1e-6 divergence), so a schedule requires "
        "initial_learning_rate= (e.g. its peak; tested with warmup_cosine_decay_schedule), "
        "which also overrides a constant lr. Defaults are the official lr 0.1, alpha 0.01, "
        "beta 0.9 (pytorch-optimizer's lr default is 0.01). No weight decay (none in the paper)."
    ),
)
