"""Hyperparameter sweeps: a whole training job vmapped over a grid (or a random search) and seeds.

`sweep` trains one model with one optimizer under K configurations x S seeds as one jitted
program per chunk of configurations (`jaxlearn.train.fit` does the vmapping). Any numeric argument
of the optimizer factory can be swept: the learning rate, betas, weight decay, AdamP's delta,
Lion's betas... The factory is wrapped in `jaxlearn.optim.inject_hyperparams` (`inject_swept`), so
each run's swept hyperparameters live in its optimizer state (`state.opt_state.hyperparams`) and
are checkpointed with it; every other argument stays static.

With several devices the configurations are split over them (a 'runs' mesh axis; the grid is
padded to a multiple of the device count and the padding discarded); with one device it is a
plain `vmap`. `chunk_size` bounds how many configurations share one program, for grids that do
not fit in memory at once; chunks have equal size, so they reuse one compiled program.

The optimizer can be given as a factory (`optax.adam`, `jaxlearn.optim.adamp`, a lambda), a dotted
path ('jaxlearn.optim.adamp'), a registry slug ('lion', 'ranger21': the record's jaxlearn alias of
that name, or its only one; 'adamp_sgdp', with two, asks which), or a short name ('adamp', 'adam')
looked up among the registered aliases (jaxlearn's before optax's) and then in optax. A registered
optimizer whose `update` needs more than the gradient (its record's `update_extras`, e.g.
`margins`) gets those arguments every step, on the command line too.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import inspect
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import _checks, registry
from jaxlearn.data import Dataset
from jaxlearn.train import loop, parallel
from jaxlearn.train import step as step_lib
from jaxlearn.train.loop import classifier, fit
from jaxlearn.train.models import mlp

__all__ = [
    "LogUniform", "SweepResult", "Uniform", "inject_swept", "parse_space", "random_search",
    "registered_optimizers", "registered_update_extras", "resolve_optimizer", "run_from_args",
    "save_sweep", "sweep",
]

Factory = Callable[..., optax.GradientTransformation]
_JAXLEARN = "jaxlearn.optim."  # the prefix of jaxlearn's optimizer aliases


# -- optimizers -----------------------------------------------------------------------------------


def _takes_learning_rate(obj: Any) -> bool:
  try:
    return "learning_rate" in inspect.signature(obj).parameters
  except (TypeError, ValueError):
    return False


def registered_optimizers() -> dict[str, Factory]:
  """Every registered optimizer alias (`registry.optimizer_aliases`), by dotted path."""
  return {symbol: registry.resolve(symbol) for _, symbol in registry.optimizer_aliases()}


def registered_update_extras(factory: Factory) -> tuple[str, ...]:
  """The extra `update` arguments that `factory`'s registry record names (`update_extras`), or
  () for an optimizer that is not a registered alias (optax's...)."""
  for method, symbol in registry.optimizer_aliases():
    if registry.resolve(symbol) is factory:
      return tuple(getattr(method, "update_extras", ()))
  return ()


def resolve_optimizer(optimizer: str | Factory) -> tuple[str, Factory]:
  """(name, factory) for a factory, dotted path, registry slug, or registered/optax short name.

  A slug whose record registers several aliases stands for its jaxlearn alias (`lion` ->
  jaxlearn.optim.lion, not optax.lion; `ranger21` -> jaxlearn.optim.ranger21); a slug with several
  jaxlearn aliases none of which it names (`adamp_sgdp`) raises a ValueError that lists them.
  """
  if callable(optimizer):
    return getattr(optimizer, "__name__", repr(optimizer)), optimizer
  if not isinstance(optimizer, str) or not optimizer:
    raise ValueError(f"optimizer must be a factory or a name, got {optimizer!r}")
  if "." in optimizer:
    try:
      return optimizer, registry.resolve(optimizer)
    except (ImportError, AttributeError, ValueError) as error:
      raise ValueError(f"optimizer {optimizer!r} cannot be imported: {error}") from None
  aliases = registered_optimizers()
  slugs = {m.slug: m for m in registry.all_methods("optimizer")}
  if optimizer in slugs:
    symbol = _slug_alias(optimizer, [s for s in slugs[optimizer].symbols if s in aliases])
    return symbol, aliases[symbol]
  by_short_name = {}  # jaxlearn's alias wins over optax's of the same name
  for symbol in sorted(aliases, key=lambda s: s.startswith(_JAXLEARN)):
    by_short_name[symbol.rpartition(".")[2]] = symbol
  if optimizer in by_short_name:
    return by_short_name[optimizer], aliases[by_short_name[optimizer]]
  factory = getattr(optax, optimizer, None)
  if factory is not None and _takes_learning_rate(factory):
    return f"optax.{optimizer}", factory
  raise ValueError(
      f"unknown optimizer {optimizer!r}: not a registered slug or alias "
      f"({sorted(set(slugs) | set(by_short_name))}) nor an optax optimizer"
  )


def _slug_alias(slug: str, choices: list[str]) -> str:
  """The alias that registry slug `slug` stands for, among its record's optimizer aliases
  `choices`: the only one; else jaxlearn's alias named like the slug (`ranger21`); else the only
  jaxlearn one (`lion`: jaxlearn.optim.lion, not optax.lion)."""
  ours = [s for s in choices if s.startswith(_JAXLEARN)]
  for candidates in (choices, [s for s in ours if s == _JAXLEARN + slug], ours):
    if len(candidates) == 1:
      return candidates[0]
  named = ours or choices
  if not named:
    raise ValueError(f"registry slug {slug!r} has no optimizer alias")
  raise ValueError(
      f"registry slug {slug!r} has {len(named)} optimizer aliases ({', '.join(named)}); name one "
      f"of them, e.g. {named[0].rpartition('.')[2]!r}"
  )


def _check_hyperparameters(
    name: str, factory: Factory, configs: Sequence[Mapping[str, float]], fixed: Mapping[str, Any]
) -> None:
  """Builds the optimizer once per configuration with concrete values, so that a bad value
  raises the factory's own ValueError (naming the argument and its range) before any tracing."""
  accepted = set(inspect.signature(factory).parameters)
  takes_kwargs = any(
      p.kind is inspect.Parameter.VAR_KEYWORD
      for p in inspect.signature(factory).parameters.values()
  )
  unknown = (set(configs[0]) | set(fixed)) - accepted
  if unknown and not takes_kwargs:
    raise ValueError(
        f"{name} has no hyperparameter(s) {sorted(unknown)}; it takes {sorted(accepted)}"
    )
  both = set(configs[0]) & set(fixed)
  if both:
    raise ValueError(f"{sorted(both)} are both swept and fixed; give each in one place")
  for config in configs:
    for key, value in config.items():
      if not isinstance(value, (int, float, np.number)) or isinstance(value, bool):
        raise ValueError(f"swept values must be numbers, got {key}={value!r}")
    # optax's own factories do not check their learning rate; a negative one ascends the loss.
    _checks.check_non_negative("learning_rate", {**fixed, **config}.get("learning_rate", 0.0))
    factory(**fixed, **config)


def inject_swept(
    factory: Factory, swept: Sequence[str], fixed: Mapping[str, Any] | None = None
) -> Callable[..., optax.GradientTransformationExtraArgs]:
  """`make(**swept_values) -> optimizer` whose swept hyperparameters live in the state.

  Only the swept arguments are injected (`jaxlearn.optim.inject_hyperparams`); every other
  argument, the `fixed` ones and the defaults, is static. Injecting everything would turn integer
  options that factories branch on (Adafactor's `min_dim_size_to_factor`...) into traced arrays.
  The same arguments give the same function object, so that `fit` reuses compiled programs
  across sweeps.
  """
  fixed = dict(fixed or {})
  try:
    return _inject_swept_cached(factory, tuple(sorted(swept)), tuple(sorted(fixed.items())))
  except TypeError:  # an unhashable fixed value: no caching
    return _inject_swept(factory, tuple(sorted(swept)), fixed)


def _inject_swept(factory, swept, fixed):
  from jaxlearn.optim import inject_hyperparams

  parameters = inspect.signature(factory).parameters.values()
  static = tuple(
      p.name for p in parameters
      if p.name not in swept and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
  )
  injected = inject_hyperparams(factory, static_args=static)
  return lambda **values: injected(**fixed, **values)


@functools.lru_cache(maxsize=64)
def _inject_swept_cached(factory, swept, fixed_items):
  return _inject_swept(factory, swept, dict(fixed_items))


@functools.lru_cache(maxsize=64)
def _classifier(apply_fn: Callable) -> tuple[Callable, Callable]:
  """`classifier(apply_fn)`, the same function objects for the same model, so that repeated
  sweeps of one model reuse `fit`'s compiled programs."""
  return classifier(apply_fn)


# -- configurations -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """Samples log-uniformly in [low, high] (both > 0): learning rates, weight decays, epsilons.

  Example:
    >>> from jaxlearn.train import LogUniform, random_search
    >>> configs = random_search(4, learning_rate=LogUniform(1e-4, 1e-1), seed=0)
    >>> all(1e-4 <= c["learning_rate"] <= 1e-1 for c in configs)
    True
  """

  low: float
  high: float

  def __post_init__(self):
    if not 0 < self.low < self.high:
      raise ValueError(f"LogUniform needs 0 < low < high, got low={self.low}, high={self.high}")

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(self.low), math.log(self.high), n))


@dataclasses.dataclass(frozen=True)
class Uniform:
  """Samples uniformly in [low, high): betas, momenta.

  Example:
    >>> from jaxlearn.train import Uniform, random_search
    >>> configs = random_search(4, b1=Uniform(0.8, 0.99), seed=0)
    >>> all(0.8 <= c["b1"] < 0.99 for c in configs)
    True
  """

  low: float
  high: float

  def __post_init__(self):
    if not self.low < self.high:
      raise ValueError(f"Uniform needs low < high, got low={self.low}, high={self.high}")

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(self.low, self.high, n)


def random_search(num: int, *, seed: int = 0, **space: Any) -> list[dict[str, float]]:
  """`num` configurations drawn independently from `space`.

  Each value of `space` is a `LogUniform`, a `Uniform`, or a sequence of choices; e.g.
  `random_search(16, learning_rate=LogUniform(1e-4, 1e-1), b1=Uniform(0.8, 0.99))`.

  Example:
    >>> from jaxlearn.train import LogUniform, Uniform, random_search
    >>> configs = random_search(3, learning_rate=LogUniform(1e-4, 1e-2), b1=Uniform(0.8, 0.99),
    ...                         weight_decay=[0.0, 1e-4])
    >>> sorted(configs[0])
    ['b1', 'learning_rate', 'weight_decay']
  """
  if isinstance(num, bool) or not isinstance(num, int) or num < 1:
    raise ValueError(f"num must be an integer >= 1, got {num!r}")
  if not space:
    raise ValueError("random_search needs at least one hyperparameter")
  rng = np.random.default_rng(seed)
  columns = {}
  for name, dist in space.items():
    if hasattr(dist, "sample"):
      columns[name] = dist.sample(rng, num)
    elif isinstance(dist, Sequence) and not isinstance(dist, str) and len(dist):
      columns[name] = np.asarray(dist)[rng.integers(0, len(dist), num)]
    else:
      raise ValueError(f"{name} must be a LogUniform, a Uniform or a list of choices, got {dist!r}")
  return [{name: float(col[i]) for name, col in columns.items()} for i in range(num)]


# -- results --------------------------------------------------------------------------------------


def _lower_is_better(metric: str) -> bool:
  return "loss" in metric or "error" in metric


@dataclasses.dataclass
class SweepResult:
  """What `sweep` returns.

  Attributes:
    optimizer: the optimizer's name.
    names: the swept hyperparameters.
    configs: the K configurations (no padding).
    seeds: the S seeds.
    eval_steps: steps at which metrics were recorded, shape (T,).
    history: metric -> array (K, S, T), as in `FitResult.history`.
    wall_time_s: seconds, compilation included.
    programs: how many chunks (compiled-program calls) the grid took.
    devices: how many devices shared the runs.

  Example:
    >>> import numpy as np
    >>> from jaxlearn.train import SweepResult
    >>> result = SweepResult(  # as sweep returns it: 2 configurations, 1 seed, 1 evaluation
    ...     optimizer="optax.sgd", names=["learning_rate"],
    ...     configs=[{"learning_rate": 0.1}, {"learning_rate": 0.3}], seeds=[0],
    ...     eval_steps=np.array([100]), history={"test_accuracy": np.array([[[0.7]], [[0.9]]])},
    ...     wall_time_s=1.0, programs=1, devices=1)
    >>> result.best("test_accuracy")["learning_rate"]
    0.3
  """

  optimizer: str
  names: list[str]
  configs: list[dict[str, float]]
  seeds: list[int]
  eval_steps: np.ndarray
  history: dict[str, np.ndarray]
  wall_time_s: float
  programs: int
  devices: int

  def table(self) -> list[dict[str, Any]]:
    """One row per configuration: its values, then for every metric the final value and the best
    value along training (of the seed-mean curve; min for losses, max otherwise) and the final
    value's standard deviation over seeds. Diverged runs show NaN/inf, never dropped."""
    rows = []
    for k, config in enumerate(self.configs):
      row: dict[str, Any] = dict(config)
      for metric, values in self.history.items():
        curve = values[k].mean(axis=0)
        finite = curve[np.isfinite(curve)]
        best = (finite.min() if _lower_is_better(metric) else finite.max()) if finite.size else np.nan
        row[f"final_{metric}"] = float(curve[-1])
        row[f"best_{metric}"] = float(best)
        row[f"final_{metric}_std"] = float(values[k, :, -1].std())
      rows.append(row)
    return rows

  def best(self, metric: str = "test_accuracy") -> dict[str, Any]:
    """The table row with the best final `metric` (rows with a non-finite value are skipped)."""
    key = f"final_{metric}"
    rows = [r for r in self.table() if key in r and math.isfinite(r[key])]
    if not rows:
      raise ValueError(f"no configuration has a finite {metric!r}; metrics: {list(self.history)}")
    pick = min if _lower_is_better(metric) else max
    return pick(rows, key=lambda r: r[key])

  def to_markdown(self, metrics: Sequence[str] = ("test_accuracy", "train_loss")) -> str:
    metrics = [m for m in metrics if m in self.history]
    columns = self.names + [f"{kind}_{m}" for m in metrics for kind in ("final", "best")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in self.table():
      lines.append("| " + " | ".join(f"{row[c]:.4g}" for c in columns) + " |")
    return "\n".join(lines)

  def to_csv(self, path: str | Path) -> Path:
    rows = self.table()
    path = Path(path)
    with path.open("w", newline="") as handle:
      writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
    return path

  def plot(self, metric: str = "test_accuracy", axes: Any = None) -> Any:
    """Plots the final `metric` (mean over seeds) and returns the figure.

    Two hyperparameters forming a full grid give a heat map; otherwise one panel per
    hyperparameter shows the metric against it (error bars: std over seeds; a log axis where the
    values span a decade or more). `axes`: a matplotlib Axes or a sequence of them.
    """
    panels = 1 if self._is_2d_grid() else max(1, len(self.names))
    if axes is None:
      from jaxlearn.train.results import new_figure

      _, grid_axes = new_figure(ncols=panels)
      axes = grid_axes[0]
    axes = list(np.atleast_1d(axes))
    if len(axes) < panels:
      raise ValueError(f"this sweep needs {panels} axes, got {len(axes)}")
    final = self.history[metric][..., -1].mean(axis=1)
    if self._is_2d_grid():
      self._heat_map(axes[0], metric, final)
      return axes[0].figure
    std = self.history[metric][..., -1].std(axis=1)
    for axis, name in zip(axes, self.names or ["configuration"]):
      values = np.asarray([c.get(name, i) for i, c in enumerate(self.configs)], float)
      order = np.argsort(values)
      fmt = "o-" if len(self.names) == 1 else "o"
      axis.errorbar(values[order], final[order], yerr=std[order], fmt=fmt, capsize=3)
      if values.min() > 0 and values.max() >= 10 * values.min():
        axis.set_xscale("log")
      axis.set(xlabel=name, ylabel=f"final {metric}", title=self.optimizer)
    return axes[0].figure

  def _is_2d_grid(self) -> bool:
    if len(self.names) != 2:
      return False
    a, b = ({c[n] for c in self.configs} for n in self.names)
    return len(a) * len(b) == len(self.configs) == len({tuple(c.values()) for c in self.configs})

  def _heat_map(self, ax, metric, final) -> None:
    rows, cols = (sorted({c[n] for c in self.configs}) for n in self.names)
    image = np.full((len(rows), len(cols)), np.nan)
    for config, value in zip(self.configs, final):
      image[rows.index(config[self.names[0]]), cols.index(config[self.names[1]])] = value
    mappable = ax.imshow(image, origin="lower", aspect="auto", cmap="viridis")
    ax.figure.colorbar(mappable, ax=ax, label=f"final {metric}")
    ax.set_yticks(range(len(rows)), [f"{v:.3g}" for v in rows])
    ax.set_xticks(range(len(cols)), [f"{v:.3g}" for v in cols])
    ax.set(ylabel=self.names[0], xlabel=self.names[1], title=self.optimizer)
    for (i, j), value in np.ndenumerate(image):
      ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="w", fontsize=7)


# -- the sweep ------------------------------------------------------------------------------------


def _default_mesh() -> jax.sharding.Mesh | None:
  mesh = parallel.ambient_mesh()
  if mesh is not None:
    return mesh
  return parallel.make_mesh() if jax.device_count() > 1 else None


def _device_memory_limit() -> int | None:
  """Bytes one local device can hold, or None where the backend does not say (CPU)."""
  stats = [device.memory_stats() for device in jax.local_devices()]
  limits = [s.get("bytes_limit") for s in stats if s]
  return min(limits) if limits and len(limits) == len(stats) and all(limits) else None


def _bytes_per_run(task: loop._Task, data: Dataset, names: Sequence[str]) -> tuple[int, int]:
  """(dataset bytes, bytes per run) from XLA's memory analysis of the one-run program: its
  arguments + outputs + temporaries, minus the dataset (shared by all runs)."""
  init, chunk = loop._programs(task)
  hparams = {n: jax.ShapeDtypeStruct((1,), jnp.float32) for n in names}
  keys = jax.ShapeDtypeStruct((1, 2), jnp.uint32)
  state = jax.eval_shape(init, hparams, keys)
  arrays = [
      jax.ShapeDtypeStruct(a.shape, jnp.asarray(a[:1]).dtype)
      for a in (data.x_train, data.y_train, data.x_test, data.y_test)
  ]
  stats = chunk.lower(hparams, state, *arrays).compile().memory_analysis()
  data_bytes = sum(a.size * a.dtype.itemsize for a in arrays)
  used = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
  return data_bytes, max(1, used - data_bytes)


def _auto_chunk_size(task: loop._Task, data: Dataset, names, num_configs, num_seeds, mesh) -> int:
  """How many configurations fit in one program: 70% of the smallest device's memory, less the
  dataset, over the bytes per run. Backends that do not report their memory (CPU) get every
  configuration in one program."""
  limit = _device_memory_limit()
  if limit is None:
    return num_configs
  data_bytes, per_run = _bytes_per_run(task, data, names)
  runs_per_device = int((0.7 * limit - data_bytes) // per_run)
  configs = runs_per_device * parallel.axis_size(mesh, parallel.RUNS) // num_seeds
  if configs < 1:
    raise ValueError(
        f"one configuration x {num_seeds} seeds needs about {per_run * num_seeds / 2**30:.2f} "
        f"GiB per device, more than 70% of the {limit / 2**30:.2f} GiB available; use fewer "
        "seeds or a smaller model"
    )
  return min(num_configs, configs)


def _chunks(configs: list[dict], chunk_size: int, runs_axis: int, num_seeds: int):
  """Equal-size chunks of `configs` (the last padded by repeating its final configuration) whose
  run count (chunk x seeds) is a multiple of the mesh's runs axis. Yields (chunk, real count)."""
  step = runs_axis // math.gcd(runs_axis, num_seeds)  # configs per chunk must be a multiple
  size = max(step, chunk_size // step * step)
  size = min(size, -(-len(configs) // step) * step)  # no more padding than one step needs
  for start in range(0, len(configs), size):
    chunk = configs[start:start + size]
    yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


def sweep(
    optimizer: str | Factory,
    data: Dataset,
    configs: Sequence[Mapping[str, float]],
    *,
    seeds: Sequence[int] | int = 0,
    steps: int = 500,
    batch_size: int | None = 64,
    eval_every: int = 100,
    fixed: Mapping[str, Any] | None = None,
    model: tuple[Callable, Callable] | None = None,
    task: tuple[Callable, Callable, Callable | None] | None = None,
    has_state: bool = False,
    chunk_size: int | str | None = "auto",
    mesh: jax.sharding.Mesh | None | str = "auto",
    progress: bool = True,
    update_extras: Sequence[str] | None = None,
    sampling: str = "without_replacement",
) -> SweepResult:
  """Trains every configuration x seed with `optimizer` and tabulates the results.

  Args:
    optimizer: see `resolve_optimizer`.
    data: the dataset (default model: an MLP with one hidden layer of 64 units).
    configs: the swept values, e.g. `grid(learning_rate=[...], b1=[...])` or `random_search(...)`;
      each key is an argument of the optimizer factory.
    seeds: seeds shared by all configurations (initialization and minibatch order).
    steps, batch_size, eval_every: as in `fit`.
    fixed: other factory arguments, the same for every run (`{'weight_decay': 1e-4}`,
      `{'nesterov': True}`).
    model: `(init_params, apply_fn)` of a classifier (e.g. `jaxlearn.train.mlp(...)`).
    task: instead of `model`, `(init_params, loss_fn, eval_fn)` as `fit` takes them.
    has_state: as in `fit` (with `task`).
    chunk_size: at most this many configurations per compiled program (rounded to suit the
      mesh); 'auto' sizes chunks from XLA's memory analysis on backends that report their
      memory (GPU, TPU) and puts everything in one program on CPU; None puts all in one.
    mesh: 'auto' (every device on the runs axis when there are several, the mesh set with
      `jax.set_mesh` if any), None (one device), or a mesh from `parallel.make_mesh`.
    progress: show a progress bar per chunk.
    update_extras: extra arguments of the optimizer's `update`, as in `fit`; None takes them from
      the optimizer's registry record (`registered_update_extras`), so that e.g. Normalized
      LR+GD gets its `margins`.
    sampling: as in `fit`.

  Returns:
    A `SweepResult` (`.table()`, `.best()`, `.plot()`, `.to_csv()`).
  """
  name, factory = resolve_optimizer(optimizer)
  configs = [dict(c) for c in configs]
  if not configs:
    raise ValueError("configs must hold at least one configuration")
  if any(sorted(c) != sorted(configs[0]) for c in configs):
    raise ValueError("every configuration must set the same hyperparameters")
  fixed = dict(fixed or {})
  _check_hyperparameters(name, factory, configs, fixed)
  if chunk_size not in (None, "auto") and (
      isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
  ):
    raise ValueError(f"chunk_size must be an integer >= 1, 'auto' or None, got {chunk_size!r}")
  if model is not None and task is not None:
    raise ValueError("give model or task, not both")
  if task is None:
    init_params, apply_fn = model or mlp(data.x_train.shape[1:], (64,), data.num_classes)
    loss_fn, eval_fn = _classifier(apply_fn)
  else:
    init_params, loss_fn, eval_fn = task
  if isinstance(mesh, str):
    if mesh != "auto":
      raise ValueError(f"mesh must be 'auto', None or a Mesh, got {mesh!r}")
    mesh = _default_mesh()
  seeds = [seeds] if isinstance(seeds, int) else list(seeds)
  if update_extras is None:
    update_extras = registered_update_extras(factory)
  update_extras = step_lib.check_update_extras(update_extras)

  make_optimizer = inject_swept(factory, sorted(configs[0]), fixed)
  runs_axis = parallel.axis_size(mesh, parallel.RUNS)
  start = time.perf_counter()
  if chunk_size == "auto":
    one_run = loop._Task(
        loss_fn, eval_fn, init_params, make_optimizer, has_state, batch_size,
        len(data.x_train), eval_every, parallel.RunLayout(), update_extras, sampling,
    )
    chunk_size = _auto_chunk_size(one_run, data, sorted(configs[0]), len(configs), len(seeds), mesh)
  pieces, eval_steps = [], None
  chunks = list(_chunks(configs, chunk_size or len(configs), runs_axis, len(seeds)))
  for index, (chunk, real) in enumerate(chunks):
    result = fit(
        loss_fn, init_params, make_optimizer, data, steps=steps, batch_size=batch_size,
        configs=chunk, seeds=seeds, eval_every=eval_every, eval_fn=eval_fn, has_state=has_state,
        progress=progress, desc=f"{name} {index + 1}/{len(chunks)}", mesh=mesh,
        update_extras=update_extras, sampling=sampling,
    )
    pieces.append({metric: values[:real] for metric, values in result.history.items()})
    eval_steps = result.eval_steps
  history = {metric: np.concatenate([p[metric] for p in pieces]) for metric in pieces[0]}
  return SweepResult(
      optimizer=name,
      names=sorted(configs[0]),
      configs=configs,
      seeds=seeds,
      eval_steps=eval_steps,
      history=history,
      wall_time_s=time.perf_counter() - start,
      programs=len(chunks),
      devices=1 if mesh is None else mesh.size,
  )


# -- saving and the command line ------------------------------------------------------------------


def save_sweep(result: SweepResult, out: str | Path, name: str, metric: str, extra: Mapping[str, Any]):
  """Writes `<out>/<name>.json` (table, best row, settings, versions), `.csv` and `.png`."""
  import json

  from jaxlearn.train.results import library_versions, to_jsonable

  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  record = {
      "sweep": name,
      "optimizer": result.optimizer,
      "swept": result.names,
      "seeds": result.seeds,
      "metric": metric,
      "best": result.best(metric),
      "table": result.table(),
      "eval_steps": result.eval_steps,
      "programs": result.programs,
      "devices": result.devices,
      "wall_time_s": result.wall_time_s,
      "settings": dict(extra),
      "versions": library_versions(),
      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  paths = {kind: out / f"{name}.{kind}" for kind in ("json", "csv", "png")}
  paths["json"].write_text(json.dumps(to_jsonable(record), indent=2) + "\n")
  result.to_csv(paths["csv"])
  figure = result.plot(metric)
  figure.tight_layout()
  figure.savefig(paths["png"], dpi=110)
  import matplotlib.pyplot as plt

  plt.close(figure)
  return paths


def _number(text: str) -> float | int | bool:
  lowered = text.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  try:
    return int(text)
  except ValueError:
    pass
  try:
    return float(text)
  except ValueError:
    raise ValueError(f"not a number: {text!r}") from None


def parse_space(specs: Sequence[str], *, random: bool) -> dict[str, Any]:
  """Parses `--param` specs: 'name=v1,v2,...', 'name=logspace:LOW:HIGH:N',
  'name=linspace:LOW:HIGH:N' (grids) and 'name=loguniform:LOW:HIGH', 'name=uniform:LOW:HIGH'
  (random search; a plain list is then a set of choices)."""
  space = {}
  for spec in specs:
    name, sep, values = spec.partition("=")
    if not sep or not name.isidentifier() or not values:
      raise ValueError(f"--param must look like name=1e-3,1e-2 or name=logspace:1e-4:1e-1:4, got {spec!r}")
    kind, _, rest = values.partition(":")
    args = rest.split(":") if rest else []
    if kind in ("logspace", "linspace"):
      if len(args) != 3:
        raise ValueError(f"{kind} needs LOW:HIGH:N, got {spec!r}")
      low, high, count = float(args[0]), float(args[1]), int(args[2])
      if kind == "logspace" and not 0 < low < high:
        raise ValueError(f"logspace needs 0 < LOW < HIGH, got {spec!r}")
      space[name] = list(
          np.geomspace(low, high, count) if kind == "logspace" else np.linspace(low, high, count)
      )
    elif kind in ("loguniform", "uniform"):
      if not random:
        raise ValueError(f"{kind} is a distribution: use it with --random N ({spec!r})")
      if len(args) != 2:
        raise ValueError(f"{kind} needs LOW:HIGH, got {spec!r}")
      space[name] = (LogUniform if kind == "loguniform" else Uniform)(*map(float, args))
    else:
      space[name] = [float(_number(v)) for v in values.split(",")]
  if not space:
    raise ValueError("give at least one --param")
  return space


def _load_data(name: str) -> Dataset:
  import jaxlearn.data as datasets

  loaders = sorted(n.removeprefix("load_") for n in dir(datasets) if n.startswith("load_"))
  if name not in loaders:
    raise ValueError(f"--data must be one of {loaders}, got {name!r}")
  return getattr(datasets, f"load_{name}")()


def run_from_args(args, *, mesh: Any = "auto", write: bool = True) -> SweepResult:
  """Runs the sweep described by parsed `jaxlearn.launch.add_sweep_arguments` options (the
  `jaxlearn sweep` command line); writes results if `write`."""
  from jaxlearn.train.loop import grid

  space = parse_space(args.param, random=args.random is not None)
  configs = random_search(args.random, seed=0, **space) if args.random is not None else grid(**space)
  fixed = {}
  for spec in args.fixed:
    name, sep, value = spec.partition("=")
    if not sep:
      raise ValueError(f"--fixed must look like name=value, got {spec!r}")
    fixed[name] = _number(value)
  seeds = [int(s) for s in args.seeds.split(",")]
  data = _load_data(args.data)
  hidden = tuple(int(w) for w in args.hidden.split(",") if w)
  named = {"auto": "auto", "all": None}
  if args.chunk_size not in named and not args.chunk_size.isdigit():
    raise ValueError(f"--chunk-size must be a number, 'auto' or 'all', got {args.chunk_size!r}")
  chunk = named[args.chunk_size] if args.chunk_size in named else int(args.chunk_size)
  result = sweep(
      args.optimizer, data, configs, seeds=seeds, steps=args.steps, batch_size=args.batch_size,
      eval_every=args.eval_every, fixed=fixed,
      model=mlp(data.x_train.shape[1:], hidden, data.num_classes), chunk_size=chunk, mesh=mesh,
      progress=not args.no_progress,
  )
  if write:
    name = args.name or "sweep_" + result.optimizer.rpartition(".")[2]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "handler"}
    paths = save_sweep(result, args.out, name, args.metric, settings)
    print(result.to_markdown((args.metric, "train_loss")))
    best = result.best(args.metric)
    where = ", ".join(f"{n}={best[n]:.4g}" for n in result.names)
    print(f"best final {args.metric}: {best['final_' + args.metric]:.4f} at {where}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
  return result
