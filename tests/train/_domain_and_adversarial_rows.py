"""Battery adapters for Fish, UDIM, AAER and representational-alignment guidance.

Each builds the method on the battery's own problem (`loss_fn(params, x, y)`, params
{"w": (5,), "b": ()}, minibatches of 16) and says what it adds:

- Fish: the 16 examples are split into 2 "domains" of 8 (the batch's first and second half).
- UDIM: perturbs the battery's inputs x; the penalty uses every leaf.
- AAER: needs per-example losses and logits, which the battery's mean `loss_fn` does not give:
  the adapter writes the battery's logistic problem per example (softplus(-y * score), score =
  x @ w + b as the one logit). AAER never evaluates the loss at the clean inputs, so the
  battery's NaN-gradient trap (a term of value 0 whose gradient is NaN when the batch's inputs
  are all zero) is evaluated on the clean batch, whose max |x| travels with the labels, and
  added to every per-example loss (value 0, gradient 0 on any nonzero batch). (Evaluating the
  battery's `loss_fn` itself at x + delta inside one program is fragile: its trap's jnp.max
  gradient mask `x == max(x)` came out empty, 0/0, when XLA recomputed x + delta with and
  without a fused multiply-add.)
- Guidance: the student's one "layer" is the battery's score (B, 1) and the guide's one layer a
  fixed linear map of x to 3 features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.train import aaer, fish, representation_guidance, udim
from jaxlearn.train.step import TrainingStep


def fish_row(loss_fn, learning_rate, meta_learning_rate):
  """Fish with SGD inner steps on the batch split into 2 domains of 8 examples."""
  inner = fish(loss_fn, optax.sgd(learning_rate), meta_learning_rate)

  def step(state, batch, key):
    split = tuple(b.reshape(2, b.shape[0] // 2, *b.shape[1:]) for b in batch)
    return inner.step(state, split, key)

  return TrainingStep(inner.init, step)


def udim_row(loss_fn, learning_rate, rho, syn_lr=1.0, worst_weight=1.0):
  return udim(loss_fn, optax.sgd(learning_rate, momentum=0.9), rho=rho, syn_lr=syn_lr,
              worst_weight=worst_weight)


def aaer_row(loss_fn, learning_rate, epsilon, lambda3=1.5):
  """AAER on the battery's logistic problem (see the module docstring)."""
  del loss_fn  # its trap's jnp.max would be evaluated at perturbed inputs, see below

  def model_fn(params, x_adv, labels):
    y, clean_scale = labels[:, 0], labels[:, 1]
    score = x_adv @ params["w"] + params["b"]
    trap = jnp.sqrt(0.0 * params["b"] + clean_scale) - jnp.sqrt(clean_scale)
    return jax.nn.softplus(-y * score) + trap, score[:, None]

  inner = aaer(model_fn, optax.sgd(learning_rate, momentum=0.9), epsilon=epsilon,
               lambda3=lambda3)

  def step(state, batch, key):
    x, y = batch
    scale = jnp.broadcast_to(jnp.max(jnp.abs(x)), y.shape)
    return inner.step(state, (x, jnp.stack([y, scale], axis=1)), key)

  return TrainingStep(inner.init, step)


_GUIDE = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32))


def guidance_row(loss_fn, learning_rate, alpha):
  representations = lambda params, x: [(x @ params["w"] + params["b"])[:, None]]
  guide = lambda x: [x @ _GUIDE]
  return representation_guidance(loss_fn, representations, guide,
                                 optax.sgd(learning_rate, momentum=0.9), alpha)
