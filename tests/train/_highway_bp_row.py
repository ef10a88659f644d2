"""The training-step battery's adapter for Highway-BP (`jaxlearn.train.highway_bp`).

The battery trains a linear model `loss_fn({'w', 'b'}, x, y)`; Highway-BP needs a residual
network. The adapter puts two trainable residual blocks `g(A, h) = tanh(h @ A)` in front of the
battery's loss (the head), so that Highway-BP's estimate reaches the blocks, while the state the
battery sees keeps its parameters `{'w', 'b'}`: the blocks' parameters travel in `method_state`
(they are trained all the same, and the non-finite guard restores them with the rest).
"""

import jax.numpy as jnp
import optax

from jaxlearn.train import HighwayParams, TrainState, TrainingStep, highway_bp

NUM_BLOCKS = 2


def _block(a, h):
  return jnp.tanh(h @ a)


def highway_bp_row(loss_fn, learning_rate, iterations=1, momentum=0.9):
  """`factory(loss_fn, **kwargs)` for the battery: Highway-BP on stem = identity, two tanh
  residual blocks and the battery's loss as the head."""
  inner = highway_bp(lambda p, x: x, _block, loss_fn,
                     optax.sgd(learning_rate, momentum=momentum), iterations=iterations)

  def outer(state):
    return TrainState(state.params.head, state.opt_state, state.params.blocks, state.count,
                      state.skipped)

  def init(params, key):
    dim = params["w"].shape[0]
    blocks = 0.2 * jnp.stack([jnp.eye(dim) * (i + 1) for i in range(NUM_BLOCKS)])
    return outer(inner.init(HighwayParams((), blocks, params), key))

  def step(state, batch, key):
    full = TrainState(HighwayParams((), state.method_state, state.params), state.opt_state, (),
                      state.count, state.skipped)
    new, metrics = inner.step(full, batch, key)
    return outer(new), metrics

  return TrainingStep(init, step)
