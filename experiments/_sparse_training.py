"""A small trainer for the sparse-layer experiments: every (configuration, seed) run in one program.

`jaxlearn.train.fit` vmaps optimizer hyperparameters; these experiments also need per-run values
inside the loss (a decay, an annealing slope, a schedule of the step), so the loss here takes the
run's hyperparameters and the step: `loss_fn(params, hp, x, y, step) -> scalar`. Minibatches are
drawn with replacement from the run's key and the step; all runs of a call are vmapped inside one
`lax.scan`, compiled once.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _hyperparameters(configs, seeds) -> dict[str, jax.Array]:
  """Every run's values, config-major (run r = k * S + s), plus its seed's index."""
  names = sorted(configs[0])
  hp = {n: jnp.asarray([c[n] for c in configs for _ in seeds], jnp.float32) for n in names}
  hp["seed_index"] = jnp.asarray([i for _ in configs for i in range(len(seeds))], jnp.int32)
  return hp


def train_runs(
    loss_fn: Callable, init_params: Callable, make_optimizer: Callable, data,
    configs: Sequence[Mapping[str, float]], *, steps: int, batch_size: int,
    seeds: Sequence[int], record_every: int = 50,
):
  """Trains every (config, seed) pair; returns (params stacked (K*S, ...), losses (K, S, T)).

  `init_params(key, hp)` initializes one run (``hp["seed_index"]`` is the index of its seed);
  `make_optimizer(hp)` builds its optimizer from the run's (traced) hyperparameters `hp`;
  `losses` is the mean minibatch loss of every `record_every` steps.
  """
  hp = _hyperparameters(configs, seeds)
  keys = jnp.stack([jax.random.key(s) for _ in configs for s in seeds])
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

  def one_run(hp, key):
    init_key, data_key = jax.random.split(key)
    params = init_params(init_key, hp)
    opt = make_optimizer(hp)

    def step(carry, t):
      params, state = carry
      idx = jax.random.randint(jax.random.fold_in(data_key, t), (batch_size,), 0, len(x))
      loss, grads = jax.value_and_grad(loss_fn)(params, hp, x[idx], y[idx], t)
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    return params, losses.reshape(-1, record_every).mean(axis=1)

  params, losses = jax.jit(jax.vmap(one_run))(hp, keys)
  return params, np.asarray(losses).reshape(len(configs), len(seeds), -1)


def evaluate_runs(eval_fn: Callable, params, configs: Sequence[Mapping[str, float]],
                  seeds: Sequence[int], splits: Mapping[str, tuple]) -> dict[str, np.ndarray]:
  """`eval_fn(params, hp, x, y)` (a scalar or a vector) of every run on every split
  `{name: (x, y)}`, each of shape (K, S, ...); one program."""
  hp = _hyperparameters(configs, seeds)
  arrays = {k: (jnp.asarray(x), jnp.asarray(y)) for k, (x, y) in splits.items()}

  @jax.jit
  def run(params, hp, arrays):
    return {k: jax.vmap(eval_fn, in_axes=(0, 0, None, None))(params, hp, x, y)
            for k, (x, y) in arrays.items()}

  return {k: np.asarray(v).reshape(len(configs), len(seeds), *np.shape(v)[1:])
          for k, v in run(params, hp, arrays).items()}


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def init_mlp(key, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
  """LeCun-normal kernels (in, out) and zero biases, flax's Dense defaults."""
  layers = []
  for k, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
    kernel = jax.random.truncated_normal(k, -2.0, 2.0, (fan_in, fan_out)) / jnp.sqrt(fan_in)
    layers.append({"kernel": kernel / 0.87962566, "bias": jnp.zeros(fan_out)})
  return layers


def mlp_apply(layers, x, kernel_fn=lambda i, layer: layer["kernel"]):
  """ReLU MLP; `kernel_fn(i, layer)` gives layer i's effective kernel (e.g. a sparse one)."""
  for i, layer in enumerate(layers):
    x = x @ kernel_fn(i, layer) + layer["bias"]
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x
