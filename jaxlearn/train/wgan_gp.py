r"""WGAN-GP: a Wasserstein GAN whose critic is kept 1-Lipschitz by a gradient penalty.

Paper: Ishaan Gulrajani, Faruk Ahmed, Martin Arjovsky, Vincent Dumoulin and Aaron Courville,
"Improved Training of Wasserstein GANs", NeurIPS 2017, arXiv:1704.00028. Official code:
github.com/igul222/improved_wgan_training (`gan_toy.py` for the 2-D toy problems).

The critic :math:`D` minimises, and the generator :math:`G` then minimises,

.. math::

   L_D = \mathbb E[D(\tilde x)] - \mathbb E[D(x)]
     + \lambda\, \mathbb E_{\hat x}\bigl[(\lVert\nabla_{\hat x} D(\hat x)\rVert_2 - 1)^2\bigr],
   \qquad L_G = -\mathbb E[D(G(z))],

with :math:`\tilde x = G(z)`, and the penalty taken at interpolates
:math:`\hat x = \epsilon x + (1 - \epsilon)\tilde x`, one :math:`\epsilon \sim U[0, 1]` per example
(`jax.random.uniform(key, (B, 1, ..., 1))`). Each generator step follows :math:`n_\text{critic}`
critic steps, with fresh real data and noise at each, and the two networks have their own
optimizers. The official toy script uses :math:`\lambda = 0.1` (its comment: a smaller
:math:`\lambda` is faster on toy tasks), 5 critic iterations, Adam (lr 1e-4, betas 0.5, 0.9),
batch 256 and ReLU MLPs of width 512; the paper's default is :math:`\lambda = 10`.

The per-example input gradients :math:`\nabla_{\hat x_n} D(\hat x_n)` are computed as the gradient
of :math:`\sum_n D(\hat x_n)` with respect to the batch of interpolates, as in the official code.
This equals the per-example gradients only when the critic does not couple the examples of a batch:
no batch normalization in the critic (the paper says so too; layer normalization is fine).

At an interpolate where the critic's input gradient is exactly zero the norm has no derivative;
there the penalty's gradient is taken as zero (a `where` around the square root), where the
official TensorFlow code would give NaN.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks, registry
from jaxlearn.train.step import TrainingStep, TrainState, keep_if_finite

__all__ = ["wgan_gp", "gradient_penalty", "interpolate_gradient_norms"]

PyTree = Any
CriticFn = Callable[[PyTree, jax.Array], jax.Array]


def _safe_norm(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  squares = jnp.sum(x.astype(jnp.promote_types(x.dtype, jnp.float32)) ** 2, axis=axes)
  positive = squares > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def interpolate_gradient_norms(
    critic_fn: CriticFn, critic_params: PyTree, real: jax.Array, fake: jax.Array, key: jax.Array
) -> jax.Array:
  r"""The norms :math:`\lVert\nabla_{\hat x} D(\hat x_n)\rVert_2` at random interpolates.

  .. math::

     \hat x_n = \epsilon_n x_n + (1 - \epsilon_n)\tilde x_n,\quad \epsilon_n \sim U[0, 1]

  Args:
    critic_fn: `critic_fn(params, x) -> (B,)` scores; must not couple the examples of a batch.
    critic_params: the critic's parameters.
    real: real examples, (B, ...).
    fake: generated examples, same shape.
    key: draws :math:`\epsilon` as `jax.random.uniform(key, (B, 1, ..., 1))`.

  Returns:
    The float32 norms, shape (B,).

  References:
    Gulrajani, Ahmed, Arjovsky, Dumoulin and Courville, "Improved Training of Wasserstein GANs"
    (https://arxiv.org/abs/1704.00028), NeurIPS 2017. Code:
    https://github.com/igul222/improved_wgan_training

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.train import interpolate_gradient_norms
    >>> critic = lambda w, x: x @ w  # a linear critic: the gradient is w everywhere
    >>> real, fake = jnp.ones((3, 2)), jnp.zeros((3, 2))
    >>> interpolate_gradient_norms(critic, jnp.array([3.0, 4.0]), real, fake, jax.random.key(0))
    Array([5., 5., 5.], dtype=float32)
  """
  if real.shape != fake.shape or real.ndim < 1:
    raise ValueError(f"real and fake must have the same shape (B, ...), got {real.shape} and "
                     f"{fake.shape}")
  dtype = jnp.promote_types(real.dtype, jnp.float32)
  eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), dtype)
  mixed = (eps * real.astype(dtype) + (1 - eps) * fake.astype(dtype)).astype(real.dtype)
  input_grads = jax.grad(lambda x: jnp.sum(critic_fn(critic_params, x)))(mixed)
  return _safe_norm(input_grads, tuple(range(1, real.ndim))).astype(jnp.float32)


def gradient_penalty(
    critic_fn: CriticFn,
    critic_params: PyTree,
    real: jax.Array,
    fake: jax.Array,
    key: jax.Array,
    lam: float | jax.Array = 10.0,
) -> jax.Array:
  r"""The WGAN-GP penalty :math:`\lambda\,\mathrm{mean}_n(\lVert\nabla D(\hat x_n)\rVert_2 - 1)^2`.

  Differentiable in `critic_params` (a second-order derivative through the input gradient).

  Args:
    critic_fn: `critic_fn(params, x) -> (B,)`; must not couple the examples of a batch (no batch
      normalization).
    critic_params: the critic's parameters.
    real: real examples, (B, ...).
    fake: generated examples, same shape (pass them through `jax.lax.stop_gradient` when only
      the critic is trained).
    key: draws the interpolation weights, one per example (see `interpolate_gradient_norms`).
    lam: :math:`\lambda \ge 0` (traceable; the paper's default 10, the official toy script's 0.1).

  Returns:
    The float32 scalar penalty.

  References:
    Gulrajani, Ahmed, Arjovsky, Dumoulin and Courville, "Improved Training of Wasserstein GANs"
    (https://arxiv.org/abs/1704.00028), NeurIPS 2017. Code:
    https://github.com/igul222/improved_wgan_training

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.train import gradient_penalty
    >>> critic = lambda w, x: x @ w
    >>> real, fake = jnp.ones((3, 2)), jnp.zeros((3, 2))
    >>> penalty = jax.jit(gradient_penalty, static_argnums=0)
    >>> penalty(critic, jnp.array([3.0, 4.0]), real, fake, jax.random.key(0), lam=0.1)
    Array(1.6, dtype=float32)
  """
  _checks.check_non_negative("lam", lam)
  norms = interpolate_gradient_norms(critic_fn, critic_params, real, fake, key)
  return jnp.asarray(lam, jnp.float32) * jnp.mean((norms - 1.0) ** 2)


def wgan_gp(
    generator_fn: Callable[[PyTree, jax.Array], jax.Array],
    critic_fn: CriticFn,
    generator_optimizer: optax.GradientTransformation,
    critic_optimizer: optax.GradientTransformation,
    *,
    noise_shape: Sequence[int],
    n_critic: int = 5,
    lam: float | jax.Array = 10.0,
) -> TrainingStep:
  r"""One WGAN-GP generator iteration: `n_critic` critic steps, then one generator step.

  The parameters are `{"generator": ..., "critic": ...}` and `opt_state` holds the two optimizers'
  states under the same keys. The batch is `(real,)` with `real` of shape
  `(n_critic, B, ...)`: critic step i uses `real[i]` and fresh noise
  :math:`z \sim \mathcal N(0, I)` of shape ``(B, *noise_shape)``; the generator step draws its own
  noise. The non-finite guard watches every critic step and the generator step: one non-finite
  value skips the whole iteration.

  Args:
    generator_fn: `generator_fn(generator_params, z) -> (B, ...)` samples.
    critic_fn: `critic_fn(critic_params, x) -> (B,)` scores; must not couple the examples of a
      batch (no batch normalization, see `gradient_penalty`).
    generator_optimizer: the generator's optax optimizer.
    critic_optimizer: the critic's optax optimizer (the official toy: Adam 1e-4, b1 0.5, b2 0.9).
    noise_shape: the shape of one noise vector (static), e.g. `(2,)` in the official toy.
    n_critic: critic steps per generator step (static; the paper's 5).
    lam: the penalty weight :math:`\lambda \ge 0` (traceable).

  Returns:
    A `TrainingStep`; metrics 'loss' (the first critic step's loss :math:`L_D`, at the incoming
    parameters), 'critic_loss' (the last critic step's), 'gradient_penalty' (the last critic
    step's), 'wasserstein_estimate' (:math:`\mathbb E D(x) - \mathbb E D(\tilde x)` at the last
    critic step), 'generator_loss' and 'skipped'.

  References:
    Gulrajani, Ahmed, Arjovsky, Dumoulin and Courville, "Improved Training of Wasserstein GANs"
    (https://arxiv.org/abs/1704.00028), NeurIPS 2017. Code:
    https://github.com/igul222/improved_wgan_training

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import wgan_gp
    >>> generator = lambda g, z: z @ g["a"] + g["c"]
    >>> critic = lambda c, x: jnp.tanh(x @ c["w1"]) @ c["w2"]
    >>> training = wgan_gp(generator, critic, optax.adam(1e-3), optax.adam(1e-3),
    ...                    noise_shape=(2,), n_critic=2, lam=0.1)
    >>> params = {"generator": {"a": jnp.eye(2), "c": jnp.zeros(2)},
    ...           "critic": {"w1": jnp.ones((2, 4)) / 2, "w2": jnp.ones(4) / 4}}
    >>> state = training.init(params, jax.random.key(0))
    >>> real = jnp.ones((2, 8, 2))  # (n_critic, batch, 2)
    >>> state, metrics = jax.jit(training.step)(state, (real,), jax.random.key(1))
    >>> int(state.count), bool(metrics["skipped"])
    (1, False)
  """
  _checks.check_positive_int("n_critic", n_critic)
  _checks.check_non_negative("lam", lam)
  try:
    noise_shape = tuple(int(d) for d in noise_shape)
  except TypeError:
    raise ValueError(f"noise_shape must be a tuple of positive integers, got {noise_shape!r}")
  if not all(d >= 1 for d in noise_shape):
    raise ValueError(f"noise_shape must be a tuple of positive integers, got {noise_shape!r}")

  def init(params, key):
    del key  # the parameters are given
    if not isinstance(params, dict) or set(params) != {"generator", "critic"}:
      raise ValueError("params must be a dict with the keys 'generator' and 'critic'")
    opt_state = {
        "generator": generator_optimizer.init(params["generator"]),
        "critic": critic_optimizer.init(params["critic"]),
    }
    zero = jnp.zeros([], jnp.int32)
    return TrainState(params, opt_state, (), zero, zero)

  def critic_objective(critic_params, real, fake, key):
    d_real = jnp.mean(critic_fn(critic_params, real).astype(jnp.float32))
    d_fake = jnp.mean(critic_fn(critic_params, fake).astype(jnp.float32))
    penalty = gradient_penalty(critic_fn, critic_params, real, fake, key, lam)
    return d_fake - d_real + penalty, (penalty, d_real - d_fake)

  def step(state, batch, key):
    (real,) = tuple(batch)
    if real.ndim < 2 or real.shape[0] != n_critic:
      raise ValueError(
          f"the batch must be (real,) with real of shape (n_critic={n_critic}, B, ...), got "
          f"{real.shape}"
      )
    gen_params, critic_params = state.params["generator"], state.params["critic"]
    critic_key, gen_key = jax.random.split(key)
    critic_keys = jax.random.split(critic_key, (n_critic, 2))
    size = real.shape[1]

    def critic_step(carry, inputs):
      params, opt_state = carry
      real_i, keys = inputs
      z = jax.random.normal(keys[0], (size,) + noise_shape)
      fake = jax.lax.stop_gradient(generator_fn(gen_params, z))
      (value, (penalty, estimate)), grads = jax.value_and_grad(critic_objective, has_aux=True)(
          params, real_i, fake, keys[1]
      )
      updates, opt_state = critic_optimizer.update(grads, opt_state, params)
      finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
      return (optax.apply_updates(params, updates), opt_state), (value, penalty, estimate, finite)

    (new_critic, critic_opt_state), (values, penalties, estimates, finite) = jax.lax.scan(
        critic_step, (critic_params, state.opt_state["critic"]), (real, critic_keys)
    )

    def generator_objective(params):
      z = jax.random.normal(gen_key, (size,) + noise_shape)
      return -jnp.mean(critic_fn(new_critic, generator_fn(params, z)).astype(jnp.float32))

    gen_value, gen_grads = jax.value_and_grad(generator_objective)(gen_params)
    gen_updates, gen_opt_state = generator_optimizer.update(
        gen_grads, state.opt_state["generator"], gen_params
    )
    new = TrainState(
        {"generator": optax.apply_updates(gen_params, gen_updates), "critic": new_critic},
        {"generator": gen_opt_state, "critic": critic_opt_state},
        state.method_state,
        state.count + 1,
        state.skipped,
    )
    new, skipped = keep_if_finite(
        state, new, values, jnp.where(jnp.all(finite), 0.0, jnp.nan), gen_value, gen_grads
    )
    metrics = {
        "loss": values[0],
        "critic_loss": values[-1],
        "gradient_penalty": penalties[-1],
        "wasserstein_estimate": estimates[-1],
        "generator_loss": gen_value,
        "skipped": skipped,
    }
    return new, metrics

  return TrainingStep(init, step)


RECORD = registry.record(
    slug="wgan_gp",
    kind="training_step",
    title="Improved Training of Wasserstein GANs",
    reference="arXiv:1704.00028",
    experiment="wgan_gp_gaussians",
    notes=(
        "Follows the official gan_toy.py: per-example interpolation weights, the penalty "
        "lambda * mean (|grad D(x_hat)| - 1)^2 from the gradient of sum D(x_hat) (valid only for "
        "a critic without batch interaction: no batch normalization), critic loss E D(fake) - "
        "E D(real) + GP, generator loss -E D(G(z)), n_critic critic steps (fresh real data and "
        "noise each) per generator step, two optimizers. The official loop runs the generator "
        "step before the critic steps of an iteration (from the second iteration on); here each "
        "step runs the critic steps first, as the paper's Algorithm 1. At a zero input gradient "
        "the penalty's gradient is taken as 0 (the official code would give NaN). The default "
        "lam = 10 is the paper's; the official toy uses 0.1. The paper's Algorithm 1 defaults "
        "(Adam betas 0, 0.9) were not re-read; the experiment uses the toy script's settings."
    ),
)
