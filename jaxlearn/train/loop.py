"""A jitted training loop, vmapped over hyperparameter configurations and seeds.

`fit` trains R = (number of configurations) x (number of seeds) runs as ONE compiled program: the
per-run state (parameters, optimizer state, PRNG key) carries a leading axis of size R and one
`jax.vmap`ped `lax.scan` advances every run by `eval_every` steps at a time. Runs that share a seed
share their initialization and their minibatches, so configurations are compared on equal terms.

The optimizer is rebuilt inside the traced function from each run's hyperparameters, so any
numeric hyperparameter of any optimizer factory (the learning rate, betas, weight decay, AdamP's
delta...) can be swept, with no `inject_hyperparams` needed.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import Dataset
from jaxlearn.train.progress import progress_bar

PyTree = Any


class RunState(NamedTuple):
  """The state of one training run (vmapped: every leaf gains a leading run axis)."""

  params: PyTree
  model_state: PyTree  # non-trainable variables such as batch statistics ({} if none)
  opt_state: PyTree
  key: jax.Array
  step: jax.Array


@dataclasses.dataclass
class FitResult:
  """What `fit` returns.

  Attributes:
    configs: one dict of hyperparameters per configuration (K of them).
    seeds: the seeds (S of them). Runs are ordered config-major: run r = k * S + s.
    eval_steps: the steps at which metrics were recorded, shape (T,).
    history: metric name -> array of shape (K, S, T); always has 'train_loss' (the mean minibatch
      loss over the preceding steps) plus `eval_fn`'s metrics on the train and test sets
      ('train_accuracy', 'test_accuracy', ...).
    state: the final `RunState`, each leaf with a leading axis of size K * S.
    wall_time_s: seconds spent, compilation included.
  """

  configs: list[dict[str, float]]
  seeds: list[int]
  eval_steps: np.ndarray
  history: dict[str, np.ndarray]
  state: RunState
  wall_time_s: float

  def final(self, metric: str) -> np.ndarray:
    """The last recorded value of `metric`, shape (K, S)."""
    return self.history[metric][..., -1]


def grid(**values: Sequence[float]) -> list[dict[str, float]]:
  """The Cartesian product of hyperparameter values: grid(lr=[1e-3, 1e-2], b1=[.9]) -> 2 configs."""
  names = list(values)
  return [dict(zip(names, combo)) for combo in itertools.product(*values.values())]


def _with_state(fn: Callable, has_state: bool, returns_state: bool) -> Callable:
  """Adapts a user function to the (params, model_state, ...) signature used internally."""
  if has_state:
    return fn
  if returns_state:
    return lambda params, model_state, *args: (fn(params, *args), model_state)
  return lambda params, model_state, *args: fn(params, *args)


def fit(
    loss_fn: Callable[..., Any],
    init_params: Callable[[jax.Array], Any],
    make_optimizer: Callable[..., optax.GradientTransformation],
    data: Dataset,
    *,
    steps: int,
    batch_size: int | None = 64,
    configs: Sequence[Mapping[str, float]] = ({},),
    seeds: Sequence[int] | int = 0,
    eval_every: int = 100,
    eval_fn: Callable[..., Mapping[str, jax.Array]] | None = None,
    has_state: bool = False,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
  """Trains every (configuration, seed) pair at once and records metrics every `eval_every` steps.

  Args:
    loss_fn: `loss_fn(params, x, y) -> scalar`, or with `has_state`
      `loss_fn(params, model_state, x, y) -> (scalar, new_model_state)`.
    init_params: `init_params(key) -> params`, or with `has_state` `-> (params, model_state)`.
    make_optimizer: `make_optimizer(**config) -> GradientTransformation`; called inside traced
      code, with each configuration's values as scalars.
    data: the `Dataset` to train on (minibatches are drawn from the training split).
    steps: number of optimizer steps; must be a multiple of `eval_every`.
    batch_size: minibatch size (drawn uniformly with replacement), or None for full batch.
    configs: hyperparameter configurations (see `grid`); every config must have the same keys.
    seeds: a seed or list of seeds; each seeds the initialization and the minibatch order.
    eval_every: steps between metric recordings (also the length of one compiled chunk).
    eval_fn: `eval_fn(params, x, y) -> {name: scalar}` (with `has_state`:
      `eval_fn(params, model_state, x, y)`), evaluated on the full train and test sets.
    has_state: whether the model has non-trainable state such as batch statistics.
    progress: show a progress bar.
    desc: the progress bar's label.

  Returns:
    A `FitResult`.
  """
  if steps < 1 or eval_every < 1 or steps % eval_every:
    raise ValueError(
        f"steps ({steps}) must be a positive multiple of eval_every ({eval_every})"
    )
  n_train = len(data.x_train)
  if batch_size is not None and not 1 <= batch_size <= n_train:
    raise ValueError(f"batch_size must be in [1, {n_train}] or None, got {batch_size!r}")
  seeds = [seeds] if isinstance(seeds, int) else list(seeds)
  configs = [dict(c) for c in configs]
  names = sorted(configs[0])
  if any(sorted(c) != names for c in configs):
    raise ValueError("every configuration must set the same hyperparameters")

  loss = _with_state(loss_fn, has_state, returns_state=True)
  evaluate = None if eval_fn is None else _with_state(eval_fn, has_state, returns_state=False)

  # Flatten configs x seeds into R runs, config-major.
  run_hparams = {
      n: jnp.asarray([c[n] for c in configs for _ in seeds], jnp.float32) for n in names
  }
  run_keys = jnp.stack([jax.random.PRNGKey(s) for _ in configs for s in seeds])

  def init_run(hparams, key):
    init_key, data_key = jax.random.split(key)
    out = init_params(init_key)
    params, model_state = out if has_state else (out, {})
    opt_state = make_optimizer(**hparams).init(params)
    return RunState(params, model_state, opt_state, data_key, jnp.zeros([], jnp.int32))

  def train_step(hparams, x_train, y_train, state: RunState, _):
    # Extra-args support lets loss-aware optimizers read `value`; others ignore it.
    optimizer = optax.with_extra_args_support(make_optimizer(**hparams))
    key, batch_key = jax.random.split(state.key)
    if batch_size is None:
      x, y = x_train, y_train
    else:
      idx = jax.random.randint(batch_key, (batch_size,), 0, n_train)
      x, y = x_train[idx], y_train[idx]
    (value, model_state), grads = jax.value_and_grad(loss, has_aux=True)(
        state.params, state.model_state, x, y
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=value)
    params = optax.apply_updates(state.params, updates)
    return RunState(params, model_state, opt_state, key, state.step + 1), value

  def run_chunk(hparams, state, x_train, y_train, x_test, y_test):
    step = lambda s, _: train_step(hparams, x_train, y_train, s, _)
    state, losses = jax.lax.scan(step, state, None, length=eval_every)
    metrics = {"train_loss": jnp.mean(losses)}
    if evaluate is not None:
      for split, (x, y) in {"train": (x_train, y_train), "test": (x_test, y_test)}.items():
        for name, value in evaluate(state.params, state.model_state, x, y).items():
          metrics[f"{split}_{name}"] = value
    return state, metrics

  start = time.perf_counter()
  arrays = [jnp.asarray(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)]
  state = jax.jit(jax.vmap(init_run))(run_hparams, run_keys)
  chunk = jax.jit(jax.vmap(run_chunk, in_axes=(0, 0, None, None, None, None)))
  records: list[dict[str, np.ndarray]] = []
  for _ in progress_bar(range(steps // eval_every), enabled=progress, desc=desc):
    state, metrics = chunk(run_hparams, state, *arrays)
    records.append(jax.device_get(metrics))
  shape = (len(configs), len(seeds), len(records))
  history = {
      name: np.stack([r[name] for r in records], axis=-1).reshape(shape) for name in records[0]
  }
  return FitResult(
      configs=configs,
      seeds=seeds,
      eval_steps=np.arange(1, len(records) + 1) * eval_every,
      history=history,
      state=state,
      wall_time_s=time.perf_counter() - start,
  )


def classifier(
    apply_fn: Callable[[PyTree, jax.Array], jax.Array],
    loss: Callable[[jax.Array, jax.Array], jax.Array] = (
        optax.losses.softmax_cross_entropy_with_integer_labels
    ),
) -> tuple[Callable, Callable]:
  """`(loss_fn, eval_fn)` for `fit` from a logits function `apply_fn(params, x)`.

  `loss(logits, labels)` gives per-example losses (default: softmax cross-entropy).
  `eval_fn` reports 'loss' and 'accuracy'.
  """

  def loss_fn(params, x, y):
    return jnp.mean(loss(apply_fn(params, x), y))

  def eval_fn(params, x, y):
    logits = apply_fn(params, x)
    return {
        "loss": jnp.mean(loss(logits, y)),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
    }

  return loss_fn, eval_fn
