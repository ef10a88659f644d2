"""A jitted training loop, vmapped over hyperparameter configurations and seeds.

`fit` trains R = (number of configurations) x (number of seeds) runs as ONE compiled program: the
per-run state (parameters, optimizer state, PRNG key) carries a leading axis of size R and one
`jax.vmap`ped `lax.scan` advances every run by `eval_every` steps at a time. Runs that share a seed
share their initialization and their minibatches, so configurations are compared on equal terms.

The optimizer is rebuilt inside the traced function from each run's hyperparameters, so any
numeric hyperparameter of any optimizer factory (the learning rate, betas, weight decay, AdamP's
delta...) can be swept, with no `inject_hyperparams` needed. Its `update` always receives the
batch loss as `value=`, plus the extra arguments named in `update_extras`
(`jaxlearn.optim.extra_args`: `value_fn`, `grad`, `Hvp`, `margins`).

Minibatches are drawn without replacement by default: every epoch is a fresh permutation of the
training set, derived from the run's data key and the epoch number alone (no sampler state), so a
run resumed from a checkpoint sees exactly the batches it would have seen. A loss can ask for the
batch's example indices and the epoch (`loss_takes_indices`), to keep per-example buffers.

Keyword-only options scale the same loop up: `mesh` splits the runs and/or every minibatch over
devices and hosts (`jaxlearn.train.parallel`), `checkpoint` saves and resumes exactly
(`jaxlearn.train.checkpoint`), `callback` reports metrics as they arrive. Compiled programs are
cached, so repeated calls with the same functions (a sweep's chunks, a resumed run) reuse them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import Dataset
from jaxlearn.train import parallel
from jaxlearn.train import step as step_lib
from jaxlearn.train.checkpoint import Checkpointer
from jaxlearn.train.progress import progress_bar

__all__ = [
    "SAMPLINGS", "FitResult", "RunState", "classifier", "fit", "grid", "stateful_classifier",
]

PyTree = Any


class RunState(NamedTuple):
  """The state of one training run (vmapped: every leaf gains a leading run axis).

  Example:
    >>> from jaxlearn.train import RunState
    >>> RunState._fields  # fit's result.state holds them with a leading axis of K x S runs
    ('params', 'model_state', 'opt_state', 'key', 'step')
  """

  params: PyTree
  model_state: PyTree  # non-trainable variables such as batch statistics ({} if none)
  opt_state: PyTree
  key: jax.Array  # the run's data key; constant (batches derive from it and the step)
  step: jax.Array


@dataclasses.dataclass
class FitResult:
  """What `fit` returns.

  Attributes:
    configs: one dict of hyperparameters per configuration (K of them).
    seeds: the seeds (S of them). Runs are ordered config-major: run r = k * S + s.
    eval_steps: the steps at which metrics were recorded, shape (T,).
    history: metric name -> array of shape (K, S, T); always has 'minibatch_loss' (the mean
      minibatch loss over the preceding steps) and 'train_loss' (`eval_fn`'s 'loss' on the whole
      train set where it gives one, else the minibatch mean), plus `eval_fn`'s metrics on the
      train and test sets ('train_accuracy', 'test_accuracy', ...).
    state: the final `RunState`, each leaf with a leading axis of size K * S.
    wall_time_s: seconds spent, compilation included.

  Example:
    >>> import numpy as np
    >>> from jaxlearn.train import FitResult
    >>> result = FitResult(  # as fit returns it: 1 configuration, 2 seeds, 2 evaluations
    ...     configs=[{"learning_rate": 0.1}], seeds=[0, 1], eval_steps=np.array([10, 20]),
    ...     history={"test_accuracy": np.array([[[0.5, 0.8], [0.6, 0.9]]])}, state=None,
    ...     wall_time_s=1.0)
    >>> result.final("test_accuracy")
    array([[0.8, 0.9]])
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
  """The Cartesian product of hyperparameter values: grid(lr=[1e-3, 1e-2], b1=[.9]) -> 2 configs.

  Example:
    >>> from jaxlearn.train import grid
    >>> grid(learning_rate=[1e-3, 1e-2], b1=[0.9])
    [{'learning_rate': 0.001, 'b1': 0.9}, {'learning_rate': 0.01, 'b1': 0.9}]
  """
  names = list(values)
  return [dict(zip(names, combo)) for combo in itertools.product(*values.values())]


SAMPLINGS = ("without_replacement", "replacement")


def _with_state(fn: Callable, has_state: bool, returns_state: bool) -> Callable:
  """Adapts a user function to the (params, model_state, ...) signature used internally."""
  if has_state:
    return fn
  if returns_state:
    return lambda params, model_state, *args, **kw: (fn(params, *args, **kw), model_state)
  return lambda params, model_state, *args, **kw: fn(params, *args, **kw)


@dataclasses.dataclass(frozen=True)
class _Task:
  """Everything the compiled programs close over. Hashable (functions by identity), so that calls
  with the same pieces find their compiled programs in `_programs`'s cache."""

  loss_fn: Callable
  eval_fn: Callable | None
  init_params: Callable
  make_optimizer: Callable
  has_state: bool
  batch_size: int | None
  n_train: int
  eval_every: int
  layout: parallel.RunLayout
  update_extras: tuple[str, ...] = ()
  sampling: str = "without_replacement"
  loss_takes_indices: bool = False

  @property
  def steps_per_epoch(self) -> int:
    """Minibatches per epoch (the last, incomplete one is dropped); 1 for full batch."""
    return 1 if self.batch_size is None else self.n_train // self.batch_size

  def batch_indices(self, key: jax.Array, step: jax.Array) -> tuple[jax.Array | None, jax.Array]:
    """(example indices of step `step`'s minibatch, or None for the full batch; its epoch).

    Stateless: a function of the run's data key and the step only, so resumed runs replay it.
    """
    epoch = step // self.steps_per_epoch
    if self.batch_size is None:
      return None, epoch
    if self.sampling == "replacement":
      return jax.random.randint(
          jax.random.fold_in(key, step), (self.batch_size,), 0, self.n_train
      ), epoch
    order = jax.random.permutation(jax.random.fold_in(key, epoch), self.n_train)
    start = (step % self.steps_per_epoch) * self.batch_size
    return jax.lax.dynamic_slice_in_dim(order, start, self.batch_size), epoch


@functools.lru_cache(maxsize=16)
def _programs(task: _Task, compiler_options: tuple[tuple[str, Any], ...] = ()
              ) -> tuple[Callable, Callable]:
  """The jitted `init(hparams, keys) -> state` and `chunk(hparams, state, *data) -> (state,
  metrics)` that advance all runs at once (inputs and outputs carry the leading run axis),
  compiled with `compiler_options` (items of `jax.jit`'s dict, hashable for the cache)."""
  loss = _with_state(task.loss_fn, task.has_state, returns_state=True)
  evaluate = None if task.eval_fn is None else _with_state(
      task.eval_fn, task.has_state, returns_state=False
  )
  layout = task.layout

  def init_run(hparams, key):
    init_key, data_key = jax.random.split(key)
    out = task.init_params(init_key)
    params, model_state = out if task.has_state else (out, {})
    params = layout.params(params)
    opt_state = task.make_optimizer(**hparams).init(params)
    return RunState(params, model_state, opt_state, data_key, jnp.zeros([], jnp.int32))

  def train_step(hparams, x_train, y_train, state: RunState, _):
    optimizer = task.make_optimizer(**hparams)
    idx, epoch = task.batch_indices(state.key, state.step)
    if idx is None:
      x, y = x_train, y_train
      idx = jnp.arange(task.n_train) if task.loss_takes_indices else None
    else:
      x, y = x_train[idx], y_train[idx]
    # Data parallel: each device takes a slice of the batch (and of its indices).
    batch = tuple(layout.batch(a) for a in (x, y) + ((idx,) if task.loss_takes_indices else ()))

    def batch_loss(params, model_state, x, y, *indices):
      if task.loss_takes_indices:
        return loss(params, model_state, x, y, indices=indices[0], epoch=epoch)
      return loss(params, model_state, x, y)

    (value, model_state), grads = jax.value_and_grad(batch_loss, has_aux=True)(
        state.params, state.model_state, *batch
    )
    # `value` and `grad` reuse this pass; the other extras are built from the loss at the
    # incoming model state.
    value_fn = lambda params, *b: batch_loss(params, state.model_state, *b)[0]
    updates, opt_state = step_lib.update_with_extras(
        optimizer, task.update_extras, value_fn, grads, state.opt_state, state.params, value,
        *batch,
    )
    params = layout.params(optax.apply_updates(state.params, updates))
    return RunState(params, model_state, opt_state, state.key, state.step + 1), value

  def run_chunk(hparams, state, x_train, y_train, x_test, y_test):
    step = lambda s, _: train_step(hparams, x_train, y_train, s, _)
    state, losses = jax.lax.scan(step, state, None, length=task.eval_every)
    metrics = {"minibatch_loss": jnp.mean(losses)}
    if evaluate is not None:
      for split, (x, y) in {"train": (x_train, y_train), "test": (x_test, y_test)}.items():
        for name, value in evaluate(state.params, state.model_state, x, y).items():
          metrics[f"{split}_{name}"] = value
    metrics.setdefault("train_loss", metrics["minibatch_loss"])
    return state, metrics

  def init_all(hparams, keys):
    if layout.mesh is None:
      # A loop over one run's init: bitwise the same as vmap, and it compiles in less than half
      # the time (vmapping a Flax init is costly to compile; running it is not).
      return jax.lax.map(lambda args: init_run(*args), (hparams, keys))
    return layout.constrain_state(layout.vmap(init_run)(hparams, keys))

  def chunk_all(hparams, state, *arrays):
    vmapped = layout.vmap(run_chunk, in_axes=(0, 0, None, None, None, None))
    state, metrics = vmapped(hparams, state, *arrays)
    return layout.constrain_state(state), layout.constrain_runs(metrics)

  options = dict(compiler_options) or None
  return (jax.jit(init_all, compiler_options=options),
          jax.jit(chunk_all, compiler_options=options))


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
    mesh: jax.sharding.Mesh | None = None,
    param_specs: Callable[[PyTree], PyTree] | None = None,
    checkpoint: Checkpointer | str | os.PathLike | None = None,
    callback: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    update_extras: Sequence[str] = (),
    sampling: str = "without_replacement",
    loss_takes_indices: bool = False,
    compiler_options: Mapping[str, Any] | None = None,
) -> FitResult:
  """Trains every (configuration, seed) pair at once and records metrics every `eval_every` steps.

  Args:
    loss_fn: `loss_fn(params, x, y) -> scalar` (the mean over the batch), or with `has_state`
      `loss_fn(params, model_state, x, y) -> (scalar, new_model_state)`; with
      `loss_takes_indices` it also takes the keywords `indices` and `epoch`.
    init_params: `init_params(key) -> params`, or with `has_state` `-> (params, model_state)`.
    make_optimizer: `make_optimizer(**config) -> GradientTransformation`; called inside traced
      code, with each configuration's values as scalars.
    data: the `Dataset` to train on (minibatches are drawn from the training split).
    steps: number of optimizer steps; must be a multiple of `eval_every`.
    batch_size: minibatch size, or None for full batch (every step sees the whole training set).
    configs: hyperparameter configurations (see `grid`); every config must have the same keys.
    seeds: a seed or list of seeds; each seeds the initialization and the minibatch order.
    eval_every: steps between metric recordings (also the length of one compiled chunk).
    eval_fn: `eval_fn(params, x, y) -> {name: scalar}` (with `has_state`:
      `eval_fn(params, model_state, x, y)`), evaluated on the full train and test sets.
    has_state: whether the model has non-trainable state such as batch statistics.
    progress: show a progress bar.
    desc: the progress bar's label.
    mesh: a ('runs', 'data') mesh from `parallel.make_mesh`: the runs are split over 'runs' (their
      number must be a multiple of its size) and every minibatch over 'data' (`batch_size` must be
      a multiple of its size); batch statistics stay global. Default: the mesh set with
      `jax.set_mesh`, if any, else one device.
    param_specs: `param_specs(params) -> PartitionSpec tree` sharding one run's parameters over
      the mesh (e.g. `functools.partial(parallel.fsdp_specs, mesh=mesh)`); optimizer-state leaves
      shaped like the parameters follow them. Default: replicated.
    checkpoint: a `Checkpointer` or a directory (saved every `eval_every` steps). The run resumes
      from the newest intact checkpoint of the same run there, if any, and gives bitwise the same
      result as an uninterrupted run on the same hardware. Stopped by an exception (a
      KeyboardInterrupt), `fit` first lets its pending save finish, so it can be called again at
      once in the same process.
    callback: `callback(step, metrics)` after every `eval_every` steps, metrics of shape (K, S).
    update_extras: extra arguments of the optimizer's `update` (names from
      `jaxlearn.optim.extra_args.EXTRA_ARG_NAMES`, e.g. a registry record's `update_extras`),
      built every step from `loss_fn` and the batch. `value` is always passed.
    sampling: 'without_replacement' (default): each epoch is a fresh random permutation of the
      training set cut into `n_train // batch_size` minibatches, so every example appears exactly
      once per epoch (the `n_train % batch_size` left over, a different few each epoch, wait for
      the next one). 'replacement': every minibatch is drawn uniformly with replacement. Either
      way the batch of step t depends only on the run's seed and t.
    loss_takes_indices: call the loss as `loss_fn(..., x, y, indices=indices, epoch=epoch)`:
      `indices` (int32, shape (batch,)) are the batch's positions in `data.x_train` (so
      `y == data.y_train[indices]`; full batch: `arange(n_train)`) and `epoch` (int32 scalar) is
      `step // (n_train // batch_size)` (full batch: the step), for per-example buffers kept in
      the model state (`has_state`). `eval_fn` is called as usual.
    compiler_options: XLA options for compiling the two training programs (`jax.jit`'s
      `compiler_options`), e.g. `{"xla_backend_optimization_level": 0}` for a short run whose
      programs take less time to run than to optimize; None: XLA's defaults.

  Returns:
    A `FitResult`.

  Raises:
    ValueError: for an empty `seeds` or `configs`, a bad `steps`, `batch_size`, `sampling` or
      `update_extras`, or a mesh the runs or the batch do not divide.

  Example:
    >>> import numpy as np
    >>> from jaxlearn.data import Dataset
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> data = Dataset(x[:48], y[:48], x[48:], y[48:], num_classes=2)
    >>> import optax
    >>> from jaxlearn.train import classifier, fit, grid, mlp
    >>> init_params, apply_fn = mlp((4,), (8,), 2)
    >>> loss_fn, eval_fn = classifier(apply_fn)
    >>> result = fit(loss_fn, init_params, lambda learning_rate: optax.sgd(learning_rate), data,
    ...              steps=20, batch_size=16, eval_every=10, configs=grid(learning_rate=[0.1, 0.3]),
    ...              seeds=[0, 1, 2], eval_fn=eval_fn, progress=False)
    >>> result.final("test_accuracy").shape  # (2 learning rates, 3 seeds)
    (2, 3)
  """
  if steps < 1 or eval_every < 1 or steps % eval_every:
    raise ValueError(
        f"steps ({steps}) must be a positive multiple of eval_every ({eval_every})"
    )
  n_train = len(data.x_train)
  if batch_size is not None and not 1 <= batch_size <= n_train:
    raise ValueError(f"batch_size must be in [1, {n_train}] or None, got {batch_size!r}")
  if sampling not in SAMPLINGS:
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
  seeds = [seeds] if isinstance(seeds, int) else list(seeds)
  if not seeds:
    raise ValueError("seeds must hold at least one seed, got an empty sequence")
  configs = [dict(c) for c in configs]
  if not configs:
    raise ValueError("configs must hold at least one configuration ([{}] for none swept)")
  names = sorted(configs[0])
  if any(sorted(c) != names for c in configs):
    raise ValueError("every configuration must set the same hyperparameters")
  if compiler_options is not None and not isinstance(compiler_options, Mapping):
    raise ValueError("compiler_options must be a mapping of XLA option names to values or None, "
                     f"got {compiler_options!r}")
  layout = parallel.RunLayout(mesh if mesh is not None else parallel.ambient_mesh(), param_specs)
  layout.check(len(configs) * len(seeds), batch_size)
  init, chunk = _programs(_Task(
      loss_fn, eval_fn, init_params, make_optimizer, has_state, batch_size, n_train, eval_every,
      layout, step_lib.check_update_extras(update_extras), sampling, bool(loss_takes_indices),
  ), tuple(sorted((compiler_options or {}).items())))

  # Flatten configs x seeds into R runs, config-major.
  run_hparams = {
      n: jnp.asarray([c[n] for c in configs for _ in seeds], jnp.float32) for n in names
  }
  run_keys = jnp.stack([jax.random.PRNGKey(s) for _ in configs for s in seeds])
  run_hparams, run_keys = layout.put_runs((run_hparams, run_keys))

  start = time.perf_counter()
  arrays = layout.put_replicated(
      [jnp.asarray(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)]
  )
  run_description = {
      "configs": configs, "seeds": seeds, "batch_size": batch_size, "eval_every": eval_every,
      "n_train": n_train, "sampling": sampling,
  }
  shape = (len(configs), len(seeds))
  with _checkpointing(checkpoint, eval_every) as checkpointer:
    state, records = None, []
    if checkpointer is not None:
      state, records = _resume(checkpointer, init, layout, run_hparams, run_keys, run_description)
      if len(records) > steps // eval_every:
        raise ValueError(f"the checkpoint is at step {len(records) * eval_every} > steps={steps}")
    if state is None:
      state = init(run_hparams, run_keys)
    for index in progress_bar(
        range(len(records), steps // eval_every), enabled=progress, desc=desc
    ):
      state, metrics = chunk(run_hparams, state, *arrays)
      records.append(parallel.to_host(metrics))
      step = (index + 1) * eval_every
      if checkpointer is not None and checkpointer.should_save(step, final=step == steps):
        checkpointer.save(step, state, {"run": run_description, **_records_to_json(records)})
      if callback is not None:
        callback(step, {name: value.reshape(shape) for name, value in records[-1].items()})
  history = {
      name: np.stack([r[name] for r in records], axis=-1).reshape(*shape, len(records))
      for name in records[0]
  }
  return FitResult(
      configs=configs,
      seeds=seeds,
      eval_steps=np.arange(1, len(records) + 1) * eval_every,
      history=history,
      state=state,
      wall_time_s=time.perf_counter() - start,
  )


@contextlib.contextmanager
def _checkpointing(checkpoint, eval_every: int):
  """The job's `Checkpointer` (None without `checkpoint`); one made here from a directory is
  closed at the end. Its saves have landed when the block ends, also when an exception (a
  KeyboardInterrupt) stops it: a rerun in the same process must not race a pending save."""
  if checkpoint is None:
    yield None
    return
  owned = not isinstance(checkpoint, Checkpointer)
  checkpointer = Checkpointer(checkpoint, every=eval_every) if owned else checkpoint
  try:
    yield checkpointer
  except BaseException:
    checkpointer.settle(close=owned)  # never raises: the block's own exception goes on
    raise
  checkpointer.wait()
  if owned:
    checkpointer.close()


def _resume(checkpointer, init, layout, run_hparams, run_keys, run_description):
  """(state, metric records) from the newest intact checkpoint of this run, or (None, [])."""
  abstract = jax.eval_shape(init, run_hparams, run_keys)
  shardings = layout.state_shardings(abstract)
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
  )
  restored = checkpointer.restore_latest(abstract, expect={"run": run_description})
  if restored is None:
    return None, []
  return restored.state, _records_from_json(restored.metadata)


def _records_to_json(records: list[dict[str, np.ndarray]]) -> dict[str, Any]:
  """The metric history as JSON (floats survive exactly: float32 -> float64 -> repr -> back)."""
  dtypes = {name: str(value.dtype) for name, value in records[0].items()}
  return {"metric_dtypes": dtypes, "records": [{n: v.tolist() for n, v in r.items()} for r in records]}


def _records_from_json(metadata: Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
  dtypes = metadata["metric_dtypes"]
  return [
      {name: np.asarray(values, dtypes[name]) for name, values in record.items()}
      for record in metadata["records"]
  ]


def classifier(
    apply_fn: Callable[[PyTree, jax.Array], jax.Array],
    loss: Callable[[jax.Array, jax.Array], jax.Array] = (
        optax.losses.softmax_cross_entropy_with_integer_labels
    ),
) -> tuple[Callable, Callable]:
  """`(loss_fn, eval_fn)` for `fit` from a logits function `apply_fn(params, x)`.

  `loss(logits, labels)` gives per-example losses (default: softmax cross-entropy).
  `eval_fn` reports 'loss' and 'accuracy'.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.train import classifier, mlp
    >>> init_params, apply_fn = mlp((4,), (8,), 3)
    >>> loss_fn, eval_fn = classifier(apply_fn)
    >>> params = init_params(jax.random.key(0))
    >>> x, y = jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)
    >>> sorted(jax.jit(eval_fn)(params, x, y))
    ['accuracy', 'loss']
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


def stateful_classifier(
    model: Any,
    example_input: jax.Array,
    *,
    train_kwargs: Mapping[str, Any] | None = None,
    eval_kwargs: Mapping[str, Any] | None = None,
    loss: Callable[[jax.Array, jax.Array], jax.Array] = (
        optax.losses.softmax_cross_entropy_with_integer_labels
    ),
) -> tuple[Callable, Callable, Callable]:
  """`(init_params, loss_fn, eval_fn)` for `fit(..., has_state=True)` from a Linen classifier
  whose training updates variables besides its parameters (BatchNorm's `batch_stats`).

  The model state is every collection but ``"params"``. In training the model is applied as
  `model.apply(variables, x, **train_kwargs)` with those collections mutable (their new values
  are the new state); in evaluation with `**eval_kwargs`; `init_params` initializes it on
  `example_input` with `**eval_kwargs`. `loss(logits, labels)` gives per-example losses
  (default: softmax cross-entropy); `eval_fn` reports 'loss' and 'accuracy'.

  Args:
    model: a Linen module returning logits.
    example_input: an input batch of the right shape (its values are not used by most layers).
    train_kwargs: the keyword arguments of a training call (default ``{"train": True}``).
    eval_kwargs: those of an evaluation call (default ``{"train": False}``).
    loss: the per-example loss.

  Example:
    >>> import flax.linen as linen, jax, jax.numpy as jnp
    >>> from jaxlearn.train import stateful_classifier
    >>> class Net(linen.Module):
    ...   @linen.compact
    ...   def __call__(self, x, train):
    ...     x = linen.BatchNorm(use_running_average=not train)(linen.Dense(8)(x))
    ...     return linen.Dense(3)(x)
    >>> init, loss_fn, eval_fn = stateful_classifier(Net(), jnp.zeros((2, 4)))
    >>> params, state = jax.jit(init)(jax.random.key(0))
    >>> x, y = jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)
    >>> value, new_state = jax.jit(loss_fn)(params, state, x, y)
    >>> sorted(new_state), sorted(jax.jit(eval_fn)(params, new_state, x, y))
    (['batch_stats'], ['accuracy', 'loss'])
  """
  train_kwargs = {"train": True} if train_kwargs is None else dict(train_kwargs)
  eval_kwargs = {"train": False} if eval_kwargs is None else dict(eval_kwargs)

  def init_params(key):
    variables = dict(model.init(key, example_input, **eval_kwargs))
    return variables.pop("params"), variables

  def loss_fn(params, state, x, y):
    if not state:  # nothing to update
      return jnp.mean(loss(model.apply({"params": params}, x, **train_kwargs), y)), state
    logits, updates = model.apply({"params": params, **state}, x, **train_kwargs,
                                  mutable=list(state))
    return jnp.mean(loss(logits, y)), {**state, **updates}

  def eval_fn(params, state, x, y):
    logits = model.apply({"params": params, **state}, x, **eval_kwargs)
    return {"loss": jnp.mean(loss(logits, y)), "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

  return init_params, loss_fn, eval_fn
