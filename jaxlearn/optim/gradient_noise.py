r"""Annealed Gaussian gradient noise, registered from optax (`optax.add_noise`).

Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep Networks",
arXiv:1511.06807 (2015).

At every training step t = 0, 1, 2, ... the gradient gets fresh Gaussian noise whose variance
decays polynomially:

.. math::

  \tilde g_t = g_t + \mathcal{N}(0, \sigma_t^2), \qquad
  \sigma_t^2 = \frac{\eta}{(1 + t)^\gamma},

with η from {0.01, 0.3, 1.0} and γ = 0.55 in the paper. The noisy gradient then goes to any
optimizer (SGD, Adam...): chain this transform before it.

`optax.add_noise(eta, gamma, key)` implements exactly this, verified in
`tests/optim/test_gradient_noise.py`: η is the variance (the standard deviation is
`sqrt(eta / (1 + t)**gamma)`), t counts from 0 (optax's counter is 1 at the first step and
plays the role of 1 + t), and the noise is independent across leaves (one key per leaf) and
across steps (the key is split every step). The paper writes (1 + t), which only makes sense if
the first step is t = 0; the paper has no official code.

`add_gradient_noise` is that transform with argument checks (optax turns a negative η into NaN
updates) and the jaxlearn dtype policy (`compute_in_float32`): the noise is drawn in float32 and
the result is cast back to the gradient's dtype, also under `inject_hyperparams` (where optax would
return float32 updates for bfloat16 gradients). Its state holds the key as raw `uint32` key data
(`jax.random.key_data`) rather than optax's typed key, so the state is a tree of plain arrays
that NumPy, pickle and array utilities accept.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "add_gradient_noise",
]


def _typed_key(key: Any) -> jax.Array:
  """An int seed, a typed key or raw key data (`jax.random.PRNGKey`), as a typed key."""
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return key
  key = jnp.asarray(key)
  return jax.random.key(key) if key.ndim == 0 else jax.random.wrap_key_data(key)


def _with_raw_key(
    inner: optax.GradientTransformationExtraArgs, impl: Any
) -> optax.GradientTransformationExtraArgs:
  """Stores `inner`'s typed `rng_key` as raw key data between steps."""

  def init_fn(params):
    state = inner.init(params)
    return state._replace(rng_key=jax.random.key_data(state.rng_key))

  def update_fn(updates, state, params=None, **extra_args):
    _common.check_params(updates, params, "add_gradient_noise")
    typed = state._replace(rng_key=jax.random.wrap_key_data(state.rng_key, impl=impl))
    updates, state = inner.update(updates, typed, params, **extra_args)
    return updates, state._replace(rng_key=jax.random.key_data(state.rng_key))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def add_gradient_noise(
    eta: float,
    gamma: float = 0.55,
    key: Any = 0,
) -> optax.GradientTransformationExtraArgs:
  """Adds N(0, η / (1 + t)^γ) noise to every gradient coordinate, t = 0 at the first step.

  State: `optax.AddNoiseState(count, rng_key)`: the number of steps taken and the PRNG key (raw
  key data), split once per step and then once per leaf, so the noise is independent across steps
  and leaves. Runs that must see different noise need different keys.

  Args:
    eta: η, the noise variance at the first step, >= 0 (paper: 0.01, 0.3 or 1.0).
    gamma: γ, the decay exponent of the variance, >= 0 (paper: 0.55; 0 keeps it constant).
    key: an int seed, a typed key (`jax.random.key`) or raw key data (`jax.random.PRNGKey`).
      Under `inject_hyperparams` pass an int or a typed key (a raw key array would be taken for a
      numeric hyperparameter).

  Returns:
    A `GradientTransformationExtraArgs` (the updates keep the gradients' dtype).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import add_gradient_noise
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(add_gradient_noise(eta=0.01, gamma=0.55, key=0), optax.adam(1e-3))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.zeros((3, 2))}, state, params)

  References:
    Neelakantan et al., `Adding Gradient Noise Improves Learning for Very Deep Networks
    <https://arxiv.org/abs/1511.06807>`_, 2015.
  """
  _checks.check_non_negative("eta", eta)
  _checks.check_non_negative("gamma", gamma)
  if isinstance(key, float) or key is None:
    raise ValueError(f"key must be an int seed or a jax.random.key, got {key!r}")
  key = _typed_key(key)
  inner = _common.compute_in_float32(optax.add_noise(eta, gamma, key))
  return _with_raw_key(inner, jax.random.key_impl(key))


RECORD = registry.record(
    slug="gradient_noise",
    kind="transform",
    title="Adding Gradient Noise Improves Learning for Very Deep Networks",
    reference="arXiv:1511.06807",
    experiment="gradient_noise_deep_mlp",
    also=(
        "optax.add_noise",
    ),
    notes=(
        "optax.add_noise matches sigma_t^2 = eta / (1 + t)^gamma with eta the variance and t = "
        "0 at the first step, independent noise per leaf and per step (measured in the tests). "
        "The paper has no official code and does not spell out where t starts; (1 + t) implies "
        "t = 0 first, as optax and Chainer's GradientNoise do. "
        "jaxlearn.optim.add_gradient_noise adds argument checks (optax turns eta < 0 into NaN "
        "updates) and keeps the gradient dtype under inject_hyperparams. Not in "
        "pytorch-optimizer."
    ),
)
