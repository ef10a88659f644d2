"""Small functional models shared by experiments, tests and benchmarks.

Each builder returns `(init_params, apply_fn)`: `init_params(key) -> params` and
`apply_fn(params, x) -> logits`, the pure-function form that `jaxlearn.train.fit` vmaps.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MLP", "mlp"]


class MLP(nn.Module):
  """A multilayer perceptron: Dense -> activation, repeated, then a linear read-out.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.train import MLP
    >>> model = MLP(hidden=(16,), num_outputs=3)
    >>> variables = model.init(jax.random.key(0), jnp.ones((2, 4)))
    >>> model.apply(variables, jnp.ones((2, 4))).shape
    (2, 3)
  """

  hidden: Sequence[int]
  num_outputs: int
  activation: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = self.activation(nn.Dense(width)(x))
    return nn.Dense(self.num_outputs)(x)


def mlp(
    input_shape: Sequence[int],
    hidden: Sequence[int],
    num_outputs: int,
    activation: Callable[[jax.Array], jax.Array] = nn.relu,
):
  """`(init_params, apply_fn)` for an `MLP` taking inputs of shape `(batch, *input_shape)`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.train import mlp
    >>> init_params, apply_fn = mlp((8, 8), (16,), 10)  # inputs (batch, 8, 8), flattened
    >>> apply_fn(init_params(jax.random.key(0)), jnp.ones((2, 8, 8))).shape
    (2, 10)
  """
  model = MLP(tuple(hidden), num_outputs, activation)
  dummy = jnp.zeros((1, *input_shape), jnp.float32)
  init_params = lambda key: model.init(key, dummy)["params"]
  apply_fn = lambda params, x: model.apply({"params": params}, x)
  return init_params, apply_fn
