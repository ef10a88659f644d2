"""Battery adapters for GradNorm, GradCache, F-GR and WGAN-GP (`test_training_step_battery.py`).

Each builds the method from the battery's problem, `loss_fn(params, x, y)` with params
{"w": (5,), "b": ()}, and returns a `TrainingStep` whose state keeps the battery's parameters in
`params` (the battery evaluates `loss_fn(state.params, ...)`). Where the method needs more than one
loss (GradNorm's tasks) or a network in pieces (GradCache's encoder, WGAN-GP's critic and
generator), the docstring says how the pieces are made from the problem.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlearn.train import finite_difference_grad_reg


def fgr(loss_fn, gamma, epsilon=0.1, method="forward"):
  """F-GR / B-GR / DB-GR on the battery's loss with SGD + momentum (lr 0.3)."""
  if method == "exact":
    epsilon = None
  return finite_difference_grad_reg(
      loss_fn, optax.sgd(0.3, momentum=0.9), gamma=gamma, epsilon=epsilon, method=method
  )


def gradnorm_two_tasks(loss_fn, alpha, weight_learning_rate=0.05):
  """GradNorm on two tasks made from the battery's loss: the loss itself, and 3x the loss on the
  inputs halved (a task of another scale that trains at another rate). The shared layer is
  params["w"]; SGD + momentum (lr 0.3) for the parameters, SGD for the weights."""
  from jaxlearn.train import gradnorm

  def task_losses(params, x, y):
    return jnp.stack([loss_fn(params, x, y), 3.0 * loss_fn(params, 0.5 * x, y)])

  return gradnorm(
      task_losses, optax.sgd(0.3, momentum=0.9), optax.sgd(weight_learning_rate), num_tasks=2,
      shared_params=lambda p: p["w"], alpha=alpha,
  )


def gradcache_linear(loss_fn, learning_rate, chunk_size=4):
  """Gradient caching on the battery's problem: the linear model is the encoder (its scores are
  the representations, computed 4 examples at a time) and the battery's loss of those scores is
  the loss of the representations, `loss_fn({"w": 1, "b": 0}, scores[:, None], y)`. The encoder
  carries the battery's trap (0 in value, a NaN gradient on b for an all-zero chunk). GradCache
  has no numeric hyperparameter of its own: the sweep is over the SGD learning rate."""
  from jaxlearn.train import gradcache

  def encode(params, x):
    scale = jnp.max(jnp.abs(x))
    trap = jnp.sqrt(0.0 * params["b"] + scale) - jnp.sqrt(scale)
    return x @ params["w"] + params["b"] + trap

  unit = {"w": jnp.ones(1), "b": jnp.zeros([])}

  def loss_of_scores(scores, y):
    return loss_fn(unit, scores[:, None], y)

  return gradcache(encode, loss_of_scores, optax.sgd(learning_rate, momentum=0.9),
                   chunk_size=chunk_size)


def wgan_gp_linear(loss_fn, lam, n_critic=2):
  """WGAN-GP on the battery's inputs: the real data are the batch's x (16 x 5, split into
  n_critic = 2 critic batches of 8; the labels y are not used, a GAN models the inputs), the
  critic is the battery's linear model D(x) = x.w + b with its trap (a NaN gradient on b for an
  all-zero batch), the generator an affine map z A + c of 5-D Gaussian noise. Adam for both.
  The battery keeps `loss_fn(state.params, x, y)` meaningful, so the adapter's state holds the
  critic (the battery's {"w", "b"}) in `params` and the generator in `method_state`; 'loss' is
  the critic's loss E D(fake) - E D(real) + GP, which falls as the critic learns."""
  from jaxlearn.train import TrainState, TrainingStep, wgan_gp

  def critic(params, x):
    # The battery's trap per example (a batch-wide max would couple the examples, which the
    # penalty forbids): 0 in value, a NaN gradient on b for an all-zero example.
    scale = jnp.sum(x * x, axis=-1)
    trap = jnp.sqrt(0.0 * params["b"] + scale) - jnp.sqrt(scale)
    return x @ params["w"] + params["b"] + trap

  generator = lambda g, z: z @ g["a"] + g["c"]
  inner = wgan_gp(generator, critic, optax.adam(0.05), optax.adam(0.05), noise_shape=(5,),
                  n_critic=n_critic, lam=lam)

  def init(params, key):
    dim = params["w"].shape[0]
    gen = {"a": 0.5 * jnp.eye(dim), "c": jnp.zeros(dim)}
    s = inner.init({"generator": gen, "critic": params}, key)
    return TrainState(params, s.opt_state, gen, s.count, s.skipped)

  def step(state, batch, key):
    x = batch[0]
    real = x.reshape((n_critic, x.shape[0] // n_critic) + x.shape[1:])
    s = TrainState({"generator": state.method_state, "critic": state.params}, state.opt_state,
                   (), state.count, state.skipped)
    s, metrics = inner.step(s, (real,), key)
    return TrainState(s.params["critic"], s.opt_state, s.params["generator"], s.count,
                      s.skipped), metrics

  return TrainingStep(init, step)
